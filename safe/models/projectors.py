"""Audio projector: a shared per-segment 2-layer MLP from the audio encoder's space to k LLM-space audio tokens.

Token i is the projection of the clip's segment summary i (`safe.models.audio_encoders.temporal_segments`, coarse to
fine) plus a learned embedding of position i, so budgets are nested exactly: a budget-k request keeps the first k of
the largest budget's tokens, which are the coarse view (budget 4: the clip's quarters) and, with more tokens, finer
temporal detail. One projector (and one training run) serves every budget in {0, 4, 8, 12}.
"""

from __future__ import annotations

import torch
from torch import nn

from safe.models.audio_encoders import temporal_segments
from safe.models.standardizer import Standardizer


class AudioProjector(nn.Module):
    """(B, D_audio) pooled or (B, S, D_audio) segment summaries -> (B, k, D_llm) audio tokens.

    A frame sequence (B, T, D_audio) passed with its (B, T) `mask` is first summarised into segments
    (`temporal_segments`); a 3-D input without a mask is taken as segment summaries already.

    Segment s goes through one shared MLP (D_audio -> hidden -> D_llm) with a learned position embedding added to
    its hidden layer, and becomes token s; segments past num_audio_tokens are ignored. A pooled (B, D_audio) input
    -- the seed's call, or a feature store without segments -- is one segment standing for the whole clip: it is
    repeated at every position (a coarse-only view; the tokens differ by their position embedding alone). The
    input is standardised with a per-feature mean/std fitted on the training clips' segments (`fit_feature_stats`,
    buffers saved with the weights). Why: encoder outputs share a large common component, which leaves the
    projector only small differences to learn from (docs/EXPERIMENTS.md#projector-standardisation).
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
            nn.Linear(hidden_dim, llm_hidden_size),
        )
        # Which segment a token summarises: cross-attention over the tokens is otherwise blind to their order.
        self.position = nn.Parameter(torch.randn(num_audio_tokens, hidden_dim) * 0.02)  # (K, hidden)
        # Tokens come out at the LLM's hidden-state scale: an RMSNorm-style rescale per token keeps them there.
        self.token_scale = nn.Parameter(torch.ones(llm_hidden_size))

    def fit_feature_stats(self, features: torch.Tensor) -> None:
        """Fit the input standardisation on training clips' features: (N, D_audio) pooled or (N, S, D_audio)
        segments (every segment is a row)."""
        self.feature_stats.fit(features.reshape(-1, features.shape[-1]))

    @property
    def feature_stats_fitted(self) -> bool:
        return bool(self.feature_stats.fitted)

    def forward(
        self, audio_features: torch.Tensor, num_tokens: int | None = None, mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        k = self.num_audio_tokens if num_tokens is None else num_tokens
        K = self.num_audio_tokens
        if not 0 <= k <= K:
            raise ValueError(f"num_tokens must be in [0, {K}], got {k}")
        if mask is not None:  # (B, T, D) frames -> (B, S, D) segment summaries
            audio_features = temporal_segments(audio_features, mask)
        if audio_features.dim() == 2:  # (B, D): one segment for the whole clip
            audio_features = audio_features.unsqueeze(1)  # (B, 1, D)
        if audio_features.dim() != 3:
            raise ValueError(f"audio_features must be (B, D) pooled or (B, S, D) segments, got shape "
                             f"{tuple(audio_features.shape)}")
        if audio_features.shape[-1] != self.audio_embed_dim:
            raise ValueError(
                f"audio embedding dim mismatch: projector expects {self.audio_embed_dim}, got {audio_features.shape[-1]}"
            )
        B, S = audio_features.shape[:2]
        if S == 1:
            audio_features = audio_features.expand(B, K, self.audio_embed_dim)  # (B, K, D_audio)
        elif S < K:
            raise ValueError(f"{S} segment summaries per clip cannot feed {K} audio tokens; extract at least {K} "
                             "(safe.models.audio_encoders.NUM_SEGMENTS) or lower model.token_budgets")
        x = self.norm(self.feature_stats(audio_features[:, :K]))  # (B, K, D_audio)
        first, act, second = self.mlp
        tokens = second(act(first(x) + self.position))  # (B, K, D_llm)
        tokens = tokens * torch.rsqrt(tokens.pow(2).mean(-1, keepdim=True) + 1e-6) * self.token_scale
        return tokens[:, :k]  # (B, k, D_llm)
