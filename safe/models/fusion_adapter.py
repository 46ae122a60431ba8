"""LoRA cross-attention fusion: LLM hidden states attend to audio tokens, added back through a gate in [0, 1].

The attention projections (q, k, v, o) are frozen linear layers carrying peft LoRA adapters (`LoraConfig` +
`inject_adapter_in_model`): only the low-rank updates, the norms and the gate train. The frozen output projection is
zero and peft starts every `lora_B` at zero, so a fresh block returns its input unchanged and SAFE starts as the base
model. The frozen q/k/v weights are seeded random projections, or the host decoder layer's own attention weights
(`init_from`). The gate in [0, 1] is one value per example, sigmoid(learned bias + w . q), read from q = the
prompt's text tokens pooled by the gate's own word scores (the question summary), so the question can close it for
VL-only questions (Stage A's gate loss trains it to); w starts at zero, so a fresh gate is the constant
sigmoid(bias). `floor_gate` turns gates below a floor into exactly 0. A forced gate (scalar or per example) replaces
the learned one; a forced 0 returns the input exactly without computing anything.

A question picks an audio token by its place: each key adds a learned vector for its token's place (`place_keys`),
and the query adds a projection of the prompt's words (`question_query`, from the mean of the LM's input
embeddings), both zero at start. Stage A's grounding loss reads the attention weights (`attention_sink`).
"""

from __future__ import annotations

import math

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
ADAPTER_NAME = "default"


def lora_config(rank: int) -> LoraConfig:
    """The peft LoRA every fusion block carries on its attention projections (scale alpha / r = 1, no dropout)."""
    return LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, bias="none",
                      target_modules=list(ATTENTION_PROJECTIONS), init_lora_weights=True)


def floor_gate(gate: torch.Tensor, floor: float) -> torch.Tensor:
    """gate where gate >= floor, else 0, per example: (B,) -> (B,). A gate that leans closed shuts: a fused block
    then returns its input exactly, so a misrouted VL-only question keeps the base answer. The gradient still flows
    through the gates that stay open."""
    return gate if floor <= 0 else gate * (gate >= floor).to(gate.dtype)


def is_frozen_base_weight(name: str) -> bool:
    """True for a parameter of a frozen layer that peft wrapped (it never trains)."""
    return ".base_layer." in f".{name}"


class CrossAttentionBlock(nn.Module):
    """h' = h + gate * CrossAttn(norm(h), norm(audio)). Shapes: h (B, T, D), audio (B, K, D) -> (B, T, D).

    Each of q_proj/k_proj/v_proj/o_proj is a peft `lora.Linear`: frozen `base_layer` + `lora_A`/`lora_B`."""

    def __init__(self, hidden_size: int, num_attention_heads: int, rank: int = 8, gate_init: float = 0.5,
                 init_from: nn.Module | None = None, max_tokens: int = 12):
        """`init_from`: an attention module with (hidden_size, hidden_size) q_proj/k_proj/v_proj (the host decoder
        layer's self-attention) whose weights the frozen q/k/v copy; None: seeded random projections. `max_tokens`:
        the largest budget (one learned key per token place)."""
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
        for name in ATTENTION_PROJECTIONS:
            setattr(self, name, nn.Linear(hidden_size, hidden_size, bias=False))
        nn.init.zeros_(self.o_proj.weight)  # with lora_B = 0: the block adds nothing until it trains
        if init_from is not None:
            self._copy_host_projections(init_from)
        inject_adapter_in_model(lora_config(rank), self, adapter_name=ADAPTER_NAME)
        self.place_keys = nn.Parameter(torch.zeros(max_tokens, hidden_size))  # (K_max, D): which place a key is
        self.words_norm = nn.LayerNorm(hidden_size)
        # the question's words -> a query term: "first" and "second" differ there more than at the answer's state
        self.question_query = nn.Linear(hidden_size, hidden_size, bias=False)
        nn.init.zeros_(self.question_query.weight)
        self.gate_logit = nn.Parameter(torch.tensor(math.log(gate_init / (1.0 - gate_init))))
        self.gate_proj = nn.Linear(hidden_size, 1, bias=False)
        nn.init.zeros_(self.gate_proj.weight)
        for name, param in self.named_parameters():
            param.requires_grad_(not is_frozen_base_weight(name))
        self.attention_sink: list[torch.Tensor] | None = None  # set: each pass appends its (B, H, T, K) weights

    def _copy_host_projections(self, attention: nn.Module) -> None:
        with torch.no_grad():
            for name in ("q_proj", "k_proj", "v_proj"):
                weight = getattr(getattr(attention, name, None), "weight", None)
                if weight is None or tuple(weight.shape) != (self.hidden_size, self.hidden_size):
                    raise ValueError(
                        f"cannot initialise the fusion block's {name} from the host layer: it needs a "
                        f"({self.hidden_size}, {self.hidden_size}) {name}, got "
                        f"{None if weight is None else tuple(weight.shape)} (grouped-query attention?); "
                        "use model.fusion_init: random")
                getattr(self, name).weight.copy_(weight.float())

    @property
    def gate(self) -> torch.Tensor:
        """The gate's bias value in [0, 1] (a 0-dim tensor): the gate of an example whose question says nothing."""
        return torch.sigmoid(self.gate_logit)

    def adds_nothing(self) -> bool:
        """True while the output projection is exactly zero (frozen zero weight, `lora_B` still zero): the block then
        returns its input bit for bit, whatever the audio or the gate."""
        o_proj = self.o_proj
        return not (o_proj.base_layer.weight.any() or o_proj.lora_B[ADAPTER_NAME].weight.any())

    def question_summary(self, hidden_states: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """Attention pooling of the prompt's text tokens by the gate's own score: (B, T, D), (B, T) bool -> (B, D).

        sum_t softmax_t(w . h_t) h_t over the normalised hidden states: the mean while w = 0 (a fresh gate), then
        weighted towards the words the gate finds audio-like. A question that needs audio says so in a word
        ("hear", "beeps"); reading that word rather than the sentence's mean keeps the decision when the rest of the
        sentence is phrased in a new way (docs/EXPERIMENTS.md#gate-reads-words)."""
        normed = self.query_norm(hidden_states)  # (B, T, D)
        mask = text_mask.to(normed.device)
        scores = self.gate_proj(normed).squeeze(-1).masked_fill(~mask, float("-inf"))  # (B, T)
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # (B, T); a row without text tokens: all 0
        return torch.einsum("bt,btd->bd", weights, normed)  # (B, D)

    def example_gate(self, question: torch.Tensor) -> torch.Tensor:
        """The gate in [0, 1] of each example: (B, D) question summary -> (B, 1, 1)."""
        return torch.sigmoid(self.gate_logit + self.gate_proj(question)).view(-1, 1, 1)

    def forward(
        self,
        hidden_states: torch.Tensor,
        audio_tokens: torch.Tensor,
        audio_mask: torch.Tensor | None = None,
        gate: float | torch.Tensor | None = None,
        words: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`audio_mask` (B, K) marks usable audio tokens (a budget smaller than K masks the rest); an example whose
        mask is all False is returned unchanged. `gate` forces the gate (scalar or (B,)); 0 skips the block.
        Without it, the gate is read from the mean of `hidden_states` (a whole prompt); SAFEModel instead passes the
        gate read from the prompt's text tokens, which generation's later steps (one new token each) reuse.
        `words` (B, D): the prompt's mean input word embedding, read by the query (`question_query`); None: not used."""
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
        q = self.q_proj(normed)  # (B, T, D)
        if words is not None:  # (B, D) the prompt's word embeddings, pooled: tells "first" from "second"
            q = q + self.question_query(self.words_norm(words.to(q.dtype))).unsqueeze(1)
        q = q.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)
        a = self.audio_norm(audio_tokens)
        k = self.k_proj(a) + self.place_keys[:K].to(a.dtype)  # (B, K, D)
        k = k.view(B, K, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, K, hd)
        v = self.v_proj(a).view(B, K, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, K, hd)
        # Rows with no audio attend to a dummy-unmasked key; their output is discarded below.
        attn_mask = (audio_mask | ~active.unsqueeze(-1))[:, None, None, :]  # (B, 1, 1, K)
        if self.attention_sink is None:
            ctx = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, hd)
        else:  # the same attention, its weights kept for Stage A's grounding loss
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, H, T, K)
            probs = torch.softmax(scores.masked_fill(~attn_mask, float("-inf")), dim=-1)  # (B, H, T, K)
            self.attention_sink.append(probs)
            ctx = probs @ v  # (B, H, T, hd)
        delta = self.o_proj(ctx.transpose(1, 2).reshape(B, T, D))  # (B, T, D)

        if gate is None:
            g = self.example_gate(self.question_summary(hidden_states, torch.ones(B, T, dtype=torch.bool)))
        else:
            g = torch.as_tensor(gate, dtype=delta.dtype, device=delta.device)
            g = g.view(-1, 1, 1) if g.dim() == 1 else g  # (B, 1, 1) or scalar
        fused = hidden_states + g.to(delta.dtype) * delta
        # Exactness: examples without audio keep their hidden states bit for bit.
        return torch.where(active.view(B, 1, 1), fused, hidden_states)
