"""Cached audio features: the frozen encoder runs once per distinct clip, keyed by the clip's content.

`extract_features` walks a manifest in shards, looks every clip up in a content-addressed cache
(`<cache_dir>/<encoder fingerprint>/<sha256[:2]>/<sha256>.npy`), encodes only the misses, and writes one
`FeatureStore` (pooled embeddings + cheap audio statistics per example id). Unchanged audio is never re-encoded,
and an interrupted run resumes from the cache: shards whose clips are all cached are counted as reused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from safe.data.manifest import Manifest
from safe.io import atomic_write, file_sha256

POOLED_FILE = "features.safetensors"
INDEX_FILE = "index.json"
STAT_NAMES = ("rms", "peak", "duration_s")


def audio_stats(wave: np.ndarray, sampling_rate: int = 16000) -> np.ndarray:
    """Cheap statistics computed without any model: RMS energy, peak amplitude, duration in seconds. (3,)"""
    if wave.size == 0:
        return np.zeros(3, dtype=np.float32)
    return np.array(
        [float(np.sqrt(np.mean(wave.astype(np.float64) ** 2))), float(np.abs(wave).max()), wave.size / sampling_rate],
        dtype=np.float32,
    )


@dataclass
class FeatureStore:
    """Pooled audio embeddings (N, D) and stats (N, 3) for the examples that have audio, by example id."""

    ids: list[str]
    pooled: torch.Tensor  # (N, D)
    stats: torch.Tensor  # (N, 3)
    encoder: str

    def __post_init__(self) -> None:
        self._row = {id_: i for i, id_ in enumerate(self.ids)}

    @property
    def embed_dim(self) -> int:
        return int(self.pooled.shape[1])

    def has(self, example_id: str) -> bool:
        return example_id in self._row

    def get(self, example_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        row = self._row[example_id]
        return self.pooled[row], self.stats[row]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / POOLED_FILE, lambda p: save_file({"pooled": self.pooled.contiguous(), "stats": self.stats.contiguous()}, p))
        index = {"ids": self.ids, "encoder": self.encoder, "embed_dim": self.embed_dim, "stats": list(STAT_NAMES)}
        atomic_write(folder / INDEX_FILE, lambda p: Path(p).write_text(json.dumps(index)))

    @classmethod
    def load(cls, folder: str | Path) -> "FeatureStore":
        folder = Path(folder)
        for name in (POOLED_FILE, INDEX_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"feature store {folder} is missing {name}; run the extract_features stage")
        tensors = load_file(str(folder / POOLED_FILE))
        index = json.loads((folder / INDEX_FILE).read_text())
        return cls(index["ids"], tensors["pooled"], tensors["stats"], index["encoder"])


@dataclass
class ExtractionReport:
    examples_with_audio: int = 0
    encoded: int = 0
    cache_hits: int = 0
    shards: int = 0
    shards_reused: int = 0

    def to_json(self) -> dict:
        return dict(self.__dict__)


def extract_features(
    manifest: Manifest,
    encoder,
    load_audio: Callable[[Path], np.ndarray],
    cache_dir: str | Path,
    batch_size: int = 32,
    shard_size: int = 256,
    progress: bool = True,
) -> tuple[FeatureStore, ExtractionReport]:
    """Encode every clip of `manifest` with the frozen `encoder` (cached by content), returning the store."""
    cache_root = Path(cache_dir) / _safe_name(encoder.fingerprint())
    report = ExtractionReport()
    rows = [(r.id, manifest.resolve(r.audio)) for r in manifest.records if r.audio]
    report.examples_with_audio = len(rows)
    pooled: list[np.ndarray] = []
    stats: list[np.ndarray] = []
    bar = tqdm(total=len(rows), desc="extract_features", unit="clip", disable=not progress)
    for start in range(0, len(rows), shard_size):
        shard = rows[start:start + shard_size]
        report.shards += 1
        shard_encoded = _encode_shard(shard, encoder, load_audio, cache_root, batch_size, pooled, stats, report, bar)
        report.shards_reused += int(shard_encoded == 0)
    bar.close()
    dim = int(getattr(encoder, "embed_dim"))
    store = FeatureStore(
        ids=[r[0] for r in rows],
        pooled=torch.from_numpy(np.stack(pooled)) if pooled else torch.zeros(0, dim),
        stats=torch.from_numpy(np.stack(stats)) if stats else torch.zeros(0, len(STAT_NAMES)),
        encoder=encoder.fingerprint(),
    )
    return store, report


def _encode_shard(shard, encoder, load_audio, cache_root, batch_size, pooled, stats, report, bar) -> int:
    keys = [file_sha256(path) for _, path in shard]
    todo: list[int] = []
    results: dict[int, np.ndarray] = {}
    for i, key in enumerate(keys):
        cached = _cache_path(cache_root, key)
        if cached.is_file():
            results[i] = np.load(cached)
            report.cache_hits += 1
        else:
            todo.append(i)
    waves = {i: load_audio(shard[i][1]) for i in range(len(shard))}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        enc = encoder.encode([waves[i] for i in chunk]).pooled.float().cpu().numpy()  # (b, D)
        for i, vec in zip(chunk, enc):
            results[i] = vec.astype(np.float32)
            atomic_write(_cache_path(cache_root, keys[i]), lambda p, v=results[i]: np.save(p, v), suffix=".npy")
        report.encoded += len(chunk)
    for i in range(len(shard)):
        pooled.append(results[i])
        stats.append(audio_stats(waves[i]))
    bar.update(len(shard))
    return len(todo)


def stack_features(
    store: FeatureStore, ids: Sequence[str | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features for a batch of example ids (None or unknown = no audio): pooled (B, D), stats (B, 3), has (B,)."""
    B, D = len(ids), store.embed_dim
    pooled = torch.zeros(B, D)
    stats = torch.zeros(B, len(STAT_NAMES))
    has = torch.zeros(B, dtype=torch.bool)
    for i, id_ in enumerate(ids):
        if id_ is not None and store.has(id_):
            pooled[i], stats[i] = store.get(id_)
            has[i] = True
    return pooled, stats, has


def _cache_path(root: Path, key: str) -> Path:
    return root / key[:2] / f"{key}.npy"


def _safe_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:120]
