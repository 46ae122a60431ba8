"""LoRA cross-attention fusion: LLM hidden states attend to audio tokens, added back through a gate in [0, 1].

Every projection is low-rank (d -> r -> d), as in LoRA; the output projection's up-matrix starts at zero
(peft's `lora_B` convention), so a fresh block returns its input unchanged and SAFE starts as the base model.
The gate in [0, 1] is one value per example, sigmoid(learned bias + w . q), read from q = the mean of the
normalised hidden states over the prompt's text tokens (the question summary), so the question can close it for
VL-only questions (Stage A's gate loss trains it to). Why the whole prompt and not each token's own hidden state:
a base that never trained on audio questions mixes their words poorly into later positions. On the demo a linear
probe on the answer position's hidden state told audio from VL-only test questions at 82-87%, one on the prompt's
mean embedding at 92%. w starts at zero, so a fresh gate is the constant sigmoid(bias). A forced gate (scalar or per
example) replaces it; a forced 0 returns the input exactly without computing anything.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """x -> B(A x): (…, d_in) -> (…, d_out) through rank r. `zero_init` starts B at zero (output 0)."""

    def __init__(self, d_in: int, d_out: int, rank: int, zero_init: bool = False):
        super().__init__()
        self.lora_A = nn.Linear(d_in, rank, bias=False)
        self.lora_B = nn.Linear(rank, d_out, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        if zero_init:
            nn.init.zeros_(self.lora_B.weight)
        else:
            nn.init.normal_(self.lora_B.weight, std=1.0 / math.sqrt(rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lora_B(self.lora_A(x))


class CrossAttentionBlock(nn.Module):
    """h' = h + gate * CrossAttn(norm(h), norm(audio)). Shapes: h (B, T, D), audio (B, K, D) -> (B, T, D)."""

    def __init__(self, hidden_size: int, num_attention_heads: int, rank: int = 8, gate_init: float = 0.5):
        super().__init__()
        if hidden_size % num_attention_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_attention_heads {num_attention_heads}")
        if not 0.0 < gate_init < 1.0:
            raise ValueError(f"gate_init must be in (0, 1), got {gate_init}")
        self.hidden_size = hidden_size
        self.num_heads = num_attention_heads
        self.head_dim = hidden_size // num_attention_heads
        self.query_norm = nn.LayerNorm(hidden_size)
        self.audio_norm = nn.LayerNorm(hidden_size)
        self.q_proj = LowRankLinear(hidden_size, hidden_size, rank)
        self.k_proj = LowRankLinear(hidden_size, hidden_size, rank)
        self.v_proj = LowRankLinear(hidden_size, hidden_size, rank)
        self.o_proj = LowRankLinear(hidden_size, hidden_size, rank, zero_init=True)
        self.gate_logit = nn.Parameter(torch.tensor(math.log(gate_init / (1.0 - gate_init))))
        self.gate_proj = nn.Linear(hidden_size, 1, bias=False)
        nn.init.zeros_(self.gate_proj.weight)

    @property
    def gate(self) -> torch.Tensor:
        """The gate's bias value in [0, 1] (a 0-dim tensor): the gate of an example whose question says nothing."""
        return torch.sigmoid(self.gate_logit)

    def question_summary(self, hidden_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the normalised hidden states over the prompt's text tokens: (B, T, D), (B, T) bool -> (B, D)."""
        normed = self.query_norm(hidden_states)  # (B, T, D)
        m = text_mask.to(device=normed.device, dtype=normed.dtype).unsqueeze(-1)  # (B, T, 1)
        return (normed * m).sum(1) / m.sum(1).clamp(min=1.0)

    def example_gate(self, question: torch.Tensor) -> torch.Tensor:
        """The gate in [0, 1] of each example: (B, D) question summary -> (B, 1, 1)."""
        return torch.sigmoid(self.gate_logit + self.gate_proj(question)).view(-1, 1, 1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        audio_tokens: torch.Tensor,
        audio_mask: torch.Tensor | None = None,
        gate: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`audio_mask` (B, K) marks usable audio tokens (a budget smaller than K masks the rest); an example whose
        mask is all False is returned unchanged. `gate` forces the gate (scalar or (B,)); 0 skips the block.
        Without it, the gate is read from the mean of `hidden_states` (a whole prompt); SAFEModel instead passes the
        gate read from the prompt's text tokens, which generation's later steps (one new token each) reuse."""
        if isinstance(gate, (int, float)) and gate == 0:
            return hidden_states
        if hidden_states.dim() != 3 or audio_tokens.dim() != 3:
            raise ValueError(
                f"expected hidden_states (B, T, D) and audio_tokens (B, K, D), got {tuple(hidden_states.shape)} "
                f"and {tuple(audio_tokens.shape)}"
            )
        B, T, D = hidden_states.shape
        if audio_tokens.shape[0] != B or audio_tokens.shape[-1] != D:
            raise ValueError(
                f"audio_tokens {tuple(audio_tokens.shape)} do not match hidden_states {tuple(hidden_states.shape)} "
                f"(need the same batch size and hidden size {D})"
            )
        K = audio_tokens.shape[1]
        if audio_mask is None:
            audio_mask = torch.ones(B, K, dtype=torch.bool, device=hidden_states.device)
        active = audio_mask.any(-1)  # (B,)
        if K == 0 or not bool(active.any()):
            return hidden_states

        normed = self.query_norm(hidden_states)  # (B, T, D)
        q = self.q_proj(normed).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        a = self.audio_norm(audio_tokens)
        k = self.k_proj(a).view(B, K, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, K, hd)
        v = self.v_proj(a).view(B, K, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, K, hd)
        # Rows with no audio attend to a dummy-unmasked key; their output is discarded below.
        attn_mask = (audio_mask | ~active.unsqueeze(-1))[:, None, None, :]  # (B, 1, 1, K)
        ctx = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, hd)
        delta = self.o_proj(ctx.transpose(1, 2).reshape(B, T, D))  # (B, T, D)

        if gate is None:
            g = self.example_gate(normed.mean(1))  # (B, 1, 1)
        else:
            g = torch.as_tensor(gate, dtype=delta.dtype, device=delta.device)
            g = g.view(-1, 1, 1) if g.dim() == 1 else g  # (B, 1, 1) or scalar
        fused = hidden_states + g.to(delta.dtype) * delta
        # Exactness: examples without audio keep their hidden states bit for bit.
        return torch.where(active.view(B, 1, 1), fused, hidden_states)
