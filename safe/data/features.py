"""Cached audio features: the frozen encoder runs once per distinct clip, keyed by the clip's content.

`extract_features` walks a manifest in shards of `shard_size` clips and splits the shards across processes
(round-robin by rank, `safe.distributed.shard`; one process when not launched). For each of its shards a process:

1. hashes the clips' bytes (sha256; reading bytes, no decoding) -> the shard key = hash(encoder fingerprint,
   audio tag, clip hashes);
2. if the shard's done marker `<root>/shards/<shard key>.json` exists (and its clips are in the cache), skips the
   shard without decoding any audio -- an interrupted run resumes here;
3. otherwise decodes and encodes only the clips missing from the content cache
   `<root>/clips/<sha256[:2]>/<sha256>.npy` (pooled embedding (D,), the coarse-to-fine segment summaries
   (NUM_SEGMENTS, D) of `safe.models.audio_encoders.temporal_segments`, then stats (3,)), then writes the marker.

`<root>` = `<cache_dir>/<encoder fingerprint>[-<audio tag>]-<FEATURE_LAYOUT>`: the layout names what an entry holds,
so entries of an older layout (pooled only) live in another folder and are never read as this one's. Every cache file is written atomically (temp file +
rename), so a killed process leaves whole entries or none, and two processes writing the same clip cannot corrupt
it. A changed clip has a new hash: its shard's key changes and only that clip is encoded again.

After `wait_for_everyone()`, rank 0 alone assembles the `FeatureStore` from the cache, in manifest order; the
other ranks get `None` (and the same report). The processes must share `cache_dir` (one machine, or a shared disk).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from safe.data.manifest import Manifest
from safe.distributed import all_gather_objects, process_state, shard
from safe.io import atomic_write, file_sha256, write_json_atomic
from safe.models.audio_encoders import COARSE_SEGMENTS, NUM_SEGMENTS

if TYPE_CHECKING:
    from accelerate import PartialState

POOLED_FILE = "features.safetensors"
INDEX_FILE = "index.json"
STAT_NAMES = ("rms", "peak", "duration_s")
CLIP_DIR = "clips"  # <root>/clips/<sha256[:2]>/<sha256>.npy
MARKER_DIR = "shards"  # <root>/shards/<shard key>.json
FEATURE_LAYOUT = f"seg{COARSE_SEGMENTS}to{NUM_SEGMENTS}"
"""What a cache entry and a saved store hold besides the pooled vector; part of the cache folder and the index."""


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
    """Audio features for the examples that have audio, by example id: the pooled embedding (N, D), the
    coarse-to-fine segment summaries (N, S, D) the projector turns into audio tokens, and stats (N, 3).

    Built without `segments`, the pooled vector is the clip's only segment (S = 1: the projector repeats it).
    """

    ids: list[str]
    pooled: torch.Tensor  # (N, D)
    stats: torch.Tensor  # (N, 3)
    encoder: str
    segments: torch.Tensor | None = None  # (N, S, D); None -> pooled as one segment

    def __post_init__(self) -> None:
        if self.segments is None:
            self.segments = self.pooled.unsqueeze(1).clone()  # (N, 1, D), own storage: safetensors refuses shared
        if self.segments.shape[0] != self.pooled.shape[0] or self.segments.shape[-1] != self.pooled.shape[-1]:
            raise ValueError(f"feature store: segments {tuple(self.segments.shape)} do not match pooled "
                             f"{tuple(self.pooled.shape)}")
        self._row = {id_: i for i, id_ in enumerate(self.ids)}

    @property
    def embed_dim(self) -> int:
        return int(self.pooled.shape[1])

    @property
    def num_segments(self) -> int:
        return int(self.segments.shape[1])

    def has(self, example_id: str) -> bool:
        return example_id in self._row

    def get(self, example_id: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The projector's input (S, D) segment summaries and the stats (3,) of one example."""
        row = self._row[example_id]
        return self.segments[row], self.stats[row]

    def get_pooled(self, example_id: str) -> torch.Tensor:
        """The pooled embedding (D,) of one example."""
        return self.pooled[self._row[example_id]]

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"pooled": self.pooled.contiguous(), "segments": self.segments.contiguous(),
                   "stats": self.stats.contiguous()}
        atomic_write(folder / POOLED_FILE, lambda p: save_file(tensors, p))
        index = {"ids": self.ids, "encoder": self.encoder, "embed_dim": self.embed_dim, "stats": list(STAT_NAMES),
                 "segments": self.num_segments, "layout": FEATURE_LAYOUT}
        atomic_write(folder / INDEX_FILE, lambda p: Path(p).write_text(json.dumps(index)))

    @classmethod
    def load(cls, folder: str | Path) -> "FeatureStore":
        folder = Path(folder)
        for name in (POOLED_FILE, INDEX_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"feature store {folder} is missing {name}; run the extract_features stage")
        tensors = load_file(str(folder / POOLED_FILE))
        index = json.loads((folder / INDEX_FILE).read_text())
        if "segments" not in tensors or index.get("layout") != FEATURE_LAYOUT:
            raise ValueError(f"feature store {folder}: {INDEX_FILE} has layout {index.get('layout')!r}, this code "
                             f"reads {FEATURE_LAYOUT!r} (segment summaries per clip); re-run the extract_features stage")
        return cls(index["ids"], tensors["pooled"], tensors["stats"], index["encoder"], tensors["segments"])


@dataclass
class ShardResult:
    """What one process did with one shard (gathered on every rank after the shards are done)."""

    index: int  # position of the shard in the manifest's audio rows (rows index*shard_size ...)
    rank: int  # the process that handled it
    keys: list[str]  # content key (sha256) of each clip, in row order
    reused: bool  # skipped through its done marker: nothing decoded or encoded
    encoded: int  # clips this shard ran through the encoder
    cache_hits: int  # clips served from the content cache (all of them when reused)


@dataclass
class ExtractionReport:
    """Counts for one extraction; `encoded + cache_hits == examples_with_audio`,
    `shards_reused + shards_encoded == shards`."""

    examples_with_audio: int = 0
    encoded: int = 0  # clips run through the encoder this run
    cache_hits: int = 0  # clips served from the content cache
    shards: int = 0
    shards_reused: int = 0  # finished in an earlier run (done marker): no audio decoded
    shards_encoded: int = 0  # looked up clip by clip this run, misses encoded (possibly none)
    processes: int = 1
    shard_log: list[ShardResult] = field(default_factory=list, repr=False)  # by shard index

    @classmethod
    def from_shards(cls, results: Sequence[ShardResult], examples_with_audio: int,
                    processes: int) -> "ExtractionReport":
        results = sorted(results, key=lambda r: r.index)
        reused = sum(r.reused for r in results)
        return cls(examples_with_audio=examples_with_audio, encoded=sum(r.encoded for r in results),
                   cache_hits=sum(r.cache_hits for r in results), shards=len(results), shards_reused=reused,
                   shards_encoded=len(results) - reused, processes=processes, shard_log=list(results))

    def to_json(self) -> dict:
        """The counters (numbers only: the stage's DVC/MLflow metrics)."""
        return {k: v for k, v in self.__dict__.items() if k != "shard_log"}

    def summary(self) -> str:
        return (f"{self.shards_encoded}/{self.shards} shards encoded, {self.shards_reused} reused; "
                f"{self.encoded} clips encoded, {self.cache_hits} from the content cache "
                f"({self.processes} process{'es' if self.processes > 1 else ''})")


def extract_features(
    manifest: Manifest,
    encoder,
    load_audio: Callable[[Path], np.ndarray],
    cache_dir: str | Path,
    batch_size: int = 32,
    shard_size: int = 256,
    progress: bool = True,
    audio_tag: str = "",
    state: "PartialState | None" = None,
) -> tuple[FeatureStore | None, ExtractionReport]:
    """Encode every clip of `manifest` with the frozen `encoder` (cached by content), sharded across processes.

    `load_audio(path)` decodes one clip (it is only called for clips missing from the cache). `audio_tag` names
    whatever `load_audio` does that changes the features (e.g. `max30s` for cropping): it is part of the cache
    folder, so changing it never reuses features computed the other way. `state` is accelerate's process state
    (default `safe.distributed.process_state()`). Returns the store on rank 0 (None on other ranks) and the
    report on every rank. Collective: every process must call it with the same manifest and settings.
    """
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"extract_features: shard_size and batch_size must be >= 1, got {shard_size}, {batch_size}")
    state = state or process_state()
    fingerprint = encoder.fingerprint()
    folder = f"{fingerprint}-{audio_tag}" if audio_tag else fingerprint
    cache_root = Path(cache_dir) / _safe_name(f"{folder}-{FEATURE_LAYOUT}")
    rows = [(r.id, manifest.resolve(r.audio)) for r in manifest.records if r.audio]  # (example id, clip path)
    shards = [rows[start:start + shard_size] for start in range(0, len(rows), shard_size)]
    mine = shard(list(range(len(shards))), state)  # this rank's shard indices: rank, rank + world, ...
    salt = _shard_salt(fingerprint, audio_tag)
    bar = tqdm(total=sum(len(shards[i]) for i in mine), desc="extract_features", unit="clip",
               disable=not progress or not state.is_main_process)
    local: list[ShardResult] = []
    for index in mine:
        local.append(_process_shard(index, shards[index], state.process_index, encoder, load_audio, cache_root,
                                    salt, batch_size))
        bar.update(len(shards[index]))
    bar.close()
    state.wait_for_everyone()  # every rank's cache entries and markers are on disk
    report = ExtractionReport.from_shards(all_gather_objects(local, state), len(rows), state.num_processes)
    if not state.is_main_process:
        return None, report
    keys = [key for result in report.shard_log for key in result.keys]  # manifest order: shards are contiguous
    return _assemble([row[0] for row in rows], keys, cache_root, fingerprint, int(encoder.embed_dim)), report


def _process_shard(index: int, rows: list[tuple[str, Path]], rank: int, encoder, load_audio, cache_root: Path,
                   salt: str, batch_size: int) -> ShardResult:
    """Reuse the shard through its done marker, else encode its clips that miss the cache, then mark it done."""
    keys = [file_sha256(path) for _, path in rows]
    marker = cache_root / MARKER_DIR / f"{_shard_key(salt, keys)}.json"
    if marker.is_file() and all(_clip_path(cache_root, k).is_file() for k in keys):
        return ShardResult(index, rank, keys, reused=True, encoded=0, cache_hits=len(keys))
    todo, seen = [], set()  # first row of each clip missing from the cache (a clip used twice is encoded once)
    for i, key in enumerate(keys):
        if key not in seen and not _clip_path(cache_root, key).is_file():
            todo.append(i)
        seen.add(key)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        waves = [load_audio(rows[i][1]) for i in chunk]
        encoding = encoder.encode(waves)
        pooled = encoding.pooled.float().cpu().numpy()  # (b, D)
        segments = encoding.segments.float().cpu().numpy()  # (b, S, D)
        for i, wave, vec, segs in zip(chunk, waves, pooled, segments):
            _write_clip(_clip_path(cache_root, keys[i]), vec, segs, audio_stats(wave))
    write_json_atomic(marker, {"shard_index": index, "clips": len(keys), "keys": keys})
    return ShardResult(index, rank, keys, reused=False, encoded=len(todo), cache_hits=len(keys) - len(todo))


def _assemble(ids: list[str], keys: list[str], cache_root: Path, fingerprint: str, dim: int) -> FeatureStore:
    """The store, read back from the content cache: pooled (N, D), segments (N, S, D), stats (N, 3)."""
    if len(ids) != len(keys):
        raise RuntimeError(f"extract_features: {len(keys)} clip keys gathered for {len(ids)} clips with audio")
    if not ids:
        return FeatureStore([], torch.zeros(0, dim), torch.zeros(0, len(STAT_NAMES)), fingerprint,
                            torch.zeros(0, NUM_SEGMENTS, dim))
    pooled, segments, stats = zip(*(_read_clip(_clip_path(cache_root, key), id_, dim) for id_, key in zip(ids, keys)))
    return FeatureStore(ids, torch.from_numpy(np.stack(pooled)), torch.from_numpy(np.stack(stats)), fingerprint,
                        torch.from_numpy(np.stack(segments)))


def _write_clip(path: Path, pooled: np.ndarray, segments: np.ndarray, stats: np.ndarray) -> None:
    """One .npy per clip: pooled (D,), segments (S, D) flattened, then the stats (3,), float32 (3x faster to read
    back than an .npz)."""
    entry = np.concatenate([pooled, segments.reshape(-1), stats]).astype(np.float32)  # (D + S * D + 3,)
    atomic_write(path, lambda p: np.save(p, entry), suffix=".npy")


def _read_clip(path: Path, example_id: str, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pooled (D,), segments (S, D), stats (3,)) of one cache entry."""
    try:
        entry = np.load(path)  # (D + S * D + 3,)
    except FileNotFoundError:
        raise FileNotFoundError(f"extract_features: cache entry {path} for example {example_id!r} vanished while "
                                "the store was assembled (was the cache pruned concurrently?); re-run") from None
    size = dim * (1 + NUM_SEGMENTS) + len(STAT_NAMES)
    if entry.shape != (size,):
        raise ValueError(f"extract_features: cache entry {path} (example {example_id!r}) has shape {entry.shape}, "
                         f"expected ({size},) for layout {FEATURE_LAYOUT}; delete it and re-run")
    segments = entry[dim:dim * (1 + NUM_SEGMENTS)].reshape(NUM_SEGMENTS, dim)
    return entry[:dim], segments, entry[-len(STAT_NAMES):]


def stack_features(
    store: FeatureStore, ids: Sequence[str | None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features for a batch of example ids (None or unknown = no audio): segments (B, S, D), stats (B, 3), has (B,)."""
    B, D = len(ids), store.embed_dim
    segments = torch.zeros(B, store.num_segments, D)
    stats = torch.zeros(B, len(STAT_NAMES))
    has = torch.zeros(B, dtype=torch.bool)
    for i, id_ in enumerate(ids):
        if id_ is not None and store.has(id_):
            segments[i], stats[i] = store.get(id_)
            has[i] = True
    return segments, stats, has


def _shard_salt(fingerprint: str, audio_tag: str) -> str:
    return json.dumps({"encoder": fingerprint, "audio_tag": audio_tag, "layout": FEATURE_LAYOUT})


def _shard_key(salt: str, keys: Sequence[str]) -> str:
    """A shard's identity: what it was encoded with and the content of its clips, in order."""
    digest = hashlib.sha256(salt.encode())
    for key in keys:
        digest.update(key.encode())
    return digest.hexdigest()


def _clip_path(root: Path, key: str) -> Path:
    return root / CLIP_DIR / key[:2] / f"{key}.npy"


def _safe_name(text: str, limit: int = 120) -> str:
    """`text` as a folder name; a long one keeps its head plus a hash of the whole, so two never collide."""
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    if len(name) <= limit:
        return name
    return f"{name[:limit - 17]}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
