"""Torch datasets over a manifest, the LLaVA prompt collator, and the audio-dependent : VL-only batch sampler."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from safe.data.features import FeatureStore, STAT_NAMES
from safe.data.manifest import Manifest, ManifestRecord
from safe.models.audio_encoders import NUM_SEGMENTS
from safe.data.media import load_audio, load_image


@dataclass
class Example:
    record: ManifestRecord
    image: Image.Image | None
    audio_features: torch.Tensor | None  # (S, D) cached segment summaries, when a feature store is given
    audio_stats: torch.Tensor  # (3,) rms, peak, duration; zeros without audio
    waveform: np.ndarray | None  # raw 16 kHz audio, when load_waveforms=True


class ManifestDataset(Dataset):
    """Examples of one split of a manifest, with images decoded and audio as cached features or raw waveforms."""

    def __init__(
        self, manifest: Manifest, split: str | None = None, features: FeatureStore | None = None,
        load_waveforms: bool = False, max_audio_seconds: float | None = 30.0, records: Sequence[ManifestRecord] | None = None,
    ):
        self.manifest = manifest
        self.records = list(records) if records is not None else (
            manifest.by_split(split) if split else list(manifest.records)
        )
        self.features = features
        self.load_waveforms = load_waveforms
        self.max_audio_seconds = max_audio_seconds
        self._images: dict[str, Image.Image] = {}

    def __len__(self) -> int:
        return len(self.records)

    def image(self, record: ManifestRecord) -> Image.Image | None:
        if not record.image:
            return None
        if record.id not in self._images:  # small synthetic images: decode once
            self._images[record.id] = load_image(self.manifest.resolve(record.image))
        return self._images[record.id]

    def __getitem__(self, index: int) -> Example:
        record = self.records[index]
        feats, stats = None, torch.zeros(len(STAT_NAMES))
        if record.audio and self.features is not None and self.features.has(record.id):
            feats, stats = self.features.get(record.id)
        wave = None
        if record.audio and self.load_waveforms:
            wave = load_audio(self.manifest.resolve(record.audio), max_seconds=self.max_audio_seconds)
        return Example(record, self.image(record), feats, stats, wave)


@dataclass
class Batch:
    """A collated batch: tokenised VL inputs plus per-example audio and labels."""

    vl: "object"  # safe.models.base_vl.VLBatch
    records: list[ManifestRecord]
    audio_features: torch.Tensor  # (B, S, D) segment summaries; zeros where has_audio is False
    audio_stats: torch.Tensor  # (B, 3)
    has_audio: torch.Tensor  # (B,) bool
    needs_audio: torch.Tensor  # (B,) bool
    waveforms: list[np.ndarray | None]
    audio_spans: torch.Tensor | None = None  # (B, 2) where the answer plays, as shares of the clip; NaN: not known

    @property
    def answers(self) -> list[str]:
        return [r.answer for r in self.records]

    def to(self, device: torch.device | str) -> "Batch":
        """The tensors on `device` (the training device); records and waveforms stay as they are."""
        return replace(
            self, vl=self.vl.to(device), audio_features=self.audio_features.to(device),
            audio_stats=self.audio_stats.to(device), has_audio=self.has_audio.to(device),
            needs_audio=self.needs_audio.to(device),
            audio_spans=None if self.audio_spans is None else self.audio_spans.to(device),
        )


class LlavaCollator:
    """Builds LLaVA prompts (with `<image>` placeholders) through the base model's processor.

    With `with_answers`, the answer is appended and labelled for the new-task loss; otherwise the batch is a
    prompt for generation. Audio features are stacked as (B, num_segments, D); a store's single pooled segment
    (S = 1) is repeated over them, as the projector would.
    """

    def __init__(self, base_vl, audio_embed_dim: int, with_answers: bool = True, num_segments: int = NUM_SEGMENTS):
        self.base_vl = base_vl
        self.audio_embed_dim = audio_embed_dim
        self.with_answers = with_answers
        self.num_segments = num_segments

    def __call__(self, examples: Sequence[Example]) -> Batch:
        records = [e.record for e in examples]
        vl = self.base_vl.encode(
            [r.question for r in records], [e.image for e in examples],
            answers=[r.answer for r in records] if self.with_answers else None,
        )
        B = len(examples)
        feats = torch.zeros(B, self.num_segments, self.audio_embed_dim)
        has = torch.zeros(B, dtype=torch.bool)
        for i, e in enumerate(examples):
            if e.audio_features is not None:
                if e.audio_features.shape[-1] != self.audio_embed_dim:
                    raise ValueError(
                        f"example {e.record.id}: cached audio feature dim {e.audio_features.shape[-1]} != "
                        f"{self.audio_embed_dim}; re-run extract_features for this encoder"
                    )
                if e.audio_features.dim() == 2 and e.audio_features.shape[0] not in (1, self.num_segments):
                    raise ValueError(
                        f"example {e.record.id}: {e.audio_features.shape[0]} cached segment summaries, the collator "
                        f"stacks {self.num_segments}; re-run extract_features"
                    )
                feats[i] = e.audio_features
                has[i] = True
            elif e.waveform is not None:
                has[i] = True
        return Batch(
            vl=vl, records=records, audio_features=feats, audio_stats=torch.stack([e.audio_stats for e in examples]),
            has_audio=has, needs_audio=torch.tensor([r.needs_audio for r in records], dtype=torch.bool),
            waveforms=[e.waveform for e in examples], audio_spans=torch.stack([_span_share(e) for e in examples]),
        )


def _span_share(example: Example) -> torch.Tensor:
    """The record's `audio_span` as (start, end) shares of its clip's duration (2,); NaN without a span or a
    known duration (the cached stats hold it)."""
    span, seconds = example.record.audio_span, float(example.audio_stats[STAT_NAMES.index("duration_s")])
    if span is None or seconds <= 0:
        return torch.full((2,), float("nan"))
    return (torch.tensor(span, dtype=torch.float32) / seconds).clamp(0.0, 1.0)


class BalancedBatchSampler(Sampler[list[int]]):
    """Every batch holds round(batch_size * audio_ratio) audio-dependent examples; the rest are VL-only.

    Without `weights` each group is reshuffled when exhausted (seeded), so any number of batches can be drawn. With
    `weights` (one per example, e.g. from `example_weights`), each group's rows are drawn with probability in
    proportion to their weight (seeded), so a small source or family can be seen as often as a large one.
    """

    def __init__(self, needs_audio: Sequence[bool], batch_size: int, audio_ratio: float = 0.5,
                 num_batches: int = 100, seed: int = 0, weights: Sequence[float] | None = None):
        self.audio_idx = [i for i, n in enumerate(needs_audio) if n]
        self.vl_idx = [i for i, n in enumerate(needs_audio) if not n]
        self.n_audio = int(round(batch_size * audio_ratio))
        self.n_vl = batch_size - self.n_audio
        if self.n_audio and not self.audio_idx:
            raise ValueError("audio_ratio > 0 but the dataset has no audio-dependent examples")
        if self.n_vl and not self.vl_idx:
            raise ValueError("audio_ratio < 1 but the dataset has no VL-only examples")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (len(needs_audio),) or not np.all(np.isfinite(weights)) or (weights < 0).any():
                raise ValueError(f"weights must be {len(needs_audio)} finite values >= 0, one per example")
            groups = (("audio-dependent", self.audio_idx, self.n_audio), ("VL-only", self.vl_idx, self.n_vl))
            for name, idx, n in groups:
                if n and weights[idx].sum() <= 0:
                    raise ValueError(f"every {name} example has weight 0; give some source/family a weight > 0")
        self.weights = weights
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = seed
        self.start = 0

    def set_start(self, batch_index: int) -> None:
        """Resume: the next iteration skips the first `batch_index` batches (same order as an unbroken run)."""
        self.start = batch_index

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng(self.seed)
        pool = _Cycle if self.weights is None else (lambda items, r: _Weighted(items, self.weights, r))
        pools = {"audio": pool(self.audio_idx, rng), "vl": pool(self.vl_idx, rng)}
        start, self.start = self.start, 0
        for index in range(self.num_batches):
            batch = pools["audio"].take(self.n_audio) + pools["vl"].take(self.n_vl)
            rng.shuffle(batch)
            if index >= start:
                yield [int(i) for i in batch]


def example_weights(records: Sequence[ManifestRecord], source_weights: Mapping[str, float],
                    family_weights: Mapping[str, float]) -> list[float] | None:
    """Sampling weight per record: its source's weight x its family's (1 when not named); None when none is set."""
    if not source_weights and not family_weights:
        return None
    return [float(source_weights.get(r.source, 1.0)) * float(family_weights.get(r.family, 1.0)) for r in records]


class _Weighted:
    def __init__(self, items: Sequence[int], weights: np.ndarray, rng: np.random.Generator):
        self.items, self.rng = np.asarray(items, dtype=np.int64), rng
        w = weights[self.items] if len(self.items) else np.zeros(0)
        self.p = w / w.sum() if w.sum() > 0 else None

    def take(self, n: int) -> list[int]:
        if n == 0:
            return []
        return [int(i) for i in self.rng.choice(self.items, size=n, replace=True, p=self.p)]


class _Cycle:
    def __init__(self, items: Sequence[int], rng: np.random.Generator):
        self.items, self.rng, self.order, self.pos = list(items), rng, [], 0

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.pos >= len(self.order):
                self.order, self.pos = list(self.rng.permutation(self.items)), 0
            out.append(self.order[self.pos])
            self.pos += 1
        return out
