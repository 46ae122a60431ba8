"""Audio projector: a 2-layer MLP from the audio encoder's space to k LLM-space audio tokens.

Budgets are nested: the projector always computes the largest budget's tokens and a budget-k request keeps the
first k of them, so one projector (and one training run) serves every budget in {0, 4, 8, 12}.
"""

from __future__ import annotations

import torch
from torch import nn

from safe.models.standardizer import Standardizer


class AudioProjector(nn.Module):
    """(B, D_audio) pooled or (B, T, D_audio) sequence -> (B, k, D_llm) audio tokens.

    A sequence input is mean-pooled over its valid frames first (pass `mask` for padded batches). The pooled vector
    is standardised with a per-feature mean/std fitted on the training clips (`fit_feature_stats`, buffers saved with
    the weights). Why: pooled encoder outputs share a large common component, which leaves the projector only small
    differences to learn from (docs/EXPERIMENTS.md#projector-standardisation).
    """

    def __init__(self, audio_embed_dim: int, llm_hidden_size: int, num_audio_tokens: int, hidden_dim: int | None = None):
        super().__init__()
        if min(audio_embed_dim, llm_hidden_size, num_audio_tokens) < 1:
            raise ValueError("audio_embed_dim, llm_hidden_size and num_audio_tokens must all be >= 1")
        self.audio_embed_dim = audio_embed_dim
        self.llm_hidden_size = llm_hidden_size
        self.num_audio_tokens = num_audio_tokens
        hidden_dim = hidden_dim or max(llm_hidden_size, 256)
        self.feature_stats = Standardizer(audio_embed_dim)
        self.norm = nn.LayerNorm(audio_embed_dim)
        self.mlp = nn.Sequential(
            nn.Linear(audio_embed_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, num_audio_tokens * llm_hidden_size),
        )
        # Tokens come out at the LLM's hidden-state scale: an RMSNorm-style rescale per token keeps them there.
        self.token_scale = nn.Parameter(torch.ones(llm_hidden_size))

    def fit_feature_stats(self, features: torch.Tensor) -> None:
        """Fit the input standardisation on training clips' pooled features (N, D_audio)."""
        self.feature_stats.fit(features)

    @property
    def feature_stats_fitted(self) -> bool:
        return bool(self.feature_stats.fitted)

    def forward(
        self, audio_features: torch.Tensor, num_tokens: int | None = None, mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        k = self.num_audio_tokens if num_tokens is None else num_tokens
        if not 0 <= k <= self.num_audio_tokens:
            raise ValueError(f"num_tokens must be in [0, {self.num_audio_tokens}], got {k}")
        if audio_features.dim() == 3:  # (B, T, D) -> masked mean -> (B, D)
            if mask is None:
                audio_features = audio_features.mean(1)
            else:
                m = mask.unsqueeze(-1).to(audio_features.dtype)  # (B, T, 1)
                audio_features = (audio_features * m).sum(1) / m.sum(1).clamp(min=1.0)
        if audio_features.dim() != 2:
            raise ValueError(f"audio_features must be (B, D) or (B, T, D), got shape {tuple(audio_features.shape)}")
        if audio_features.shape[-1] != self.audio_embed_dim:
            raise ValueError(
                f"audio embedding dim mismatch: projector expects {self.audio_embed_dim}, got {audio_features.shape[-1]}"
            )
        B = audio_features.shape[0]
        x = self.norm(self.feature_stats(audio_features))  # (B, D_audio)
        tokens = self.mlp(x).view(B, self.num_audio_tokens, self.llm_hidden_size)  # (B, K, D)
        tokens = tokens * torch.rsqrt(tokens.pow(2).mean(-1, keepdim=True) + 1e-6) * self.token_scale
        return tokens[:, :k]  # (B, k, D_llm)
