"""Standardise inputs with a mean/std fitted once on training data, kept as buffers so they travel with the weights.

Used by the audio projector (pooled encoder features) and by the policy and gate (pre-audio states): both see
inputs whose raw scale says nothing useful, and inference must see exactly the scaling training saw.
"""

from __future__ import annotations

import torch
from torch import nn


class Standardizer(nn.Module):
    """x -> (x - mean) / std per feature, with mean/std fitted by `fit` (identity until then)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        """Set mean/std from training rows (N, dim). Constant features get std 1 so they pass through centred."""
        if x.dim() != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"fit expects (N, {self.mean.shape[0]}) rows, got shape {tuple(x.shape)}")
        if x.shape[0] < 2:
            raise ValueError(f"fit needs at least 2 rows, got {x.shape[0]}")
        x = x.to(self.mean.device, torch.float32)
        std = x.std(dim=0, unbiased=False)
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(torch.where(std < self.eps, torch.ones_like(std), std))
        self.fitted.fill_(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)  # same shape as x
