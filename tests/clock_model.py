"""A stand-in for SAFEModel's timing interface whose calls advance a fake clock, for the Stage B latency-cost tests:
prompt 1 ms, base answer 2 ms, audio encoder 20 ms, fused generate 3 ms + 0.25 ms per audio token. A fused generate
must start from the base answer's prompt prefix, as the predictor runs it (asserted)."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch


class ClockModel:
    token_budgets = (0, 4, 8, 12)

    def __init__(self, with_encoder: bool = True, cached_features_only: bool = False):
        """`cached_features_only`: a fused generate must get cached features, never waveforms (asserted)."""
        self.now, self.calls = 0.0, []
        self.base = self
        self.audio_encoder = object() if with_encoder else None
        self.cached_features_only = cached_features_only
        self.recorded, self.reusing = None, False

    @contextlib.contextmanager
    def recording_prefix(self):
        self.recorded = object()
        yield SimpleNamespace(prefix=self.recorded)

    @contextlib.contextmanager
    def reusing_prefix(self, prefix):
        assert prefix is self.recorded, "a fused generate starts from this example's base pass"
        self.reusing = True
        try:
            yield
        finally:
            self.reusing = False

    def clock(self):
        return self.now / 1000.0

    def encode(self, questions, images):
        self.now += 1.0
        return questions

    def encode_audio(self, waveforms):
        self.calls.append(("encoder", len(waveforms)))
        self.now += 20.0
        return torch.zeros(len(waveforms), 8)

    def generate_answers(self, batch, budget, audio_features=None, waveforms=None, max_new_tokens=4):
        if self.cached_features_only:
            assert waveforms is None and (budget == 0) == (audio_features is None)
        assert (budget > 0) == self.reusing
        self.calls.append((budget, audio_features is not None))
        self.now += 2.0 if budget == 0 else 3.0 + 0.25 * budget
        return ["x"]
