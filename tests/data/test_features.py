"""Content-keyed feature extraction: unchanged audio is never re-encoded (nor decoded); an interrupted run resumes
by shard through the done markers; a changed clip is encoded again, alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from safe.data.features import FEATURE_LAYOUT, FeatureStore, _safe_name, audio_stats, extract_features, stack_features
from safe.data.manifest import read_manifest
from safe.data.media import load_audio
from safe.data.synth import generate_benchmark
from safe.io import file_sha256
from safe.models.audio_encoders import NUM_SEGMENTS, build_audio_encoder

SHARD = 10


class InterruptingLoader:
    """The real `load_audio`, recording what it decodes; raises on decode number `fail_at` (0-based), as a crash
    or a kill mid-run would."""

    def __init__(self, fail_at: int | None = None):
        self.fail_at = fail_at
        self.decoded: list[Path] = []

    def __call__(self, path):
        if self.fail_at is not None and len(self.decoded) == self.fail_at:
            raise RuntimeError(f"injected interruption at decode {self.fail_at}")
        self.decoded.append(Path(path))
        return load_audio(path)


class CountingEncoder:
    """The real frozen encoder; counts the clips it is asked to encode."""

    def __init__(self, encoder):
        self.encoder, self.embed_dim, self.clips = encoder, encoder.embed_dim, 0

    def fingerprint(self) -> str:
        return self.encoder.fingerprint()

    def encode(self, waves):
        self.clips += len(waves)
        return self.encoder.encode(waves)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return read_manifest(generate_benchmark(out, {"train": 30, "val": 5, "test": 5}, seed=3, speech=False,
                                            progress=False))


@pytest.fixture(scope="module")
def encoder():
    return build_audio_encoder("whisper-random:32x1", seed=0)


def _clips(manifest) -> list[Path]:
    return [manifest.resolve(r.audio) for r in manifest.records if r.audio]


def _extract(manifest, encoder, cache, loader=load_audio, **kwargs):
    return extract_features(manifest, encoder, loader, cache, **{"batch_size": 4, "shard_size": SHARD,
                                                                 "progress": False, **kwargs})


def test_second_run_decodes_and_encodes_nothing_and_gives_the_same_features(manifest, encoder, tmp_path):
    store, first = _extract(manifest, encoder, tmp_path)
    n = first.examples_with_audio
    assert n == len(_clips(manifest)) > 2 * SHARD and first.encoded == n and first.cache_hits == 0
    assert first.shards == first.shards_encoded == -(-n // SHARD) and first.shards_reused == 0
    loader, counting = InterruptingLoader(), CountingEncoder(encoder)
    again, second = _extract(manifest, counting, tmp_path, loader)
    assert second.encoded == 0 and second.cache_hits == n
    assert second.shards_reused == second.shards and second.shards_encoded == 0
    assert loader.decoded == [] and counting.clips == 0  # a finished shard is not even decoded
    assert again.ids == store.ids and torch.equal(store.pooled, again.pooled) and torch.equal(store.stats, again.stats)
    assert torch.allclose(again.stats[0], torch.from_numpy(audio_stats(load_audio(_clips(manifest)[0]))))


@pytest.mark.parametrize("fail_at", [2 * SHARD, 2 * SHARD + 6])  # at a shard boundary / mid-shard (batch 4)
def test_interrupted_run_resumes_with_only_the_unfinished_shards(manifest, encoder, tmp_path, fail_at):
    clips = _clips(manifest)
    with pytest.raises(RuntimeError, match="injected interruption"):
        _extract(manifest, encoder, tmp_path, InterruptingLoader(fail_at))
    cached_before = fail_at // 4 * 4  # whole encode batches written before the failure
    loader, counting = InterruptingLoader(), CountingEncoder(encoder)
    store, resumed = _extract(manifest, counting, tmp_path, loader)
    assert resumed.shards_reused == 2 and resumed.shards_encoded == resumed.shards - 2
    assert resumed.encoded == counting.clips == len(clips) - cached_before
    assert resumed.cache_hits == cached_before
    assert loader.decoded == clips[cached_before:]  # shards 0-1 and the cached part of shard 2: not decoded
    reference, _ = _extract(manifest, encoder, tmp_path / "fresh")
    assert store.ids == reference.ids and torch.allclose(store.pooled, reference.pooled, atol=1e-6)
    assert torch.equal(store.stats, reference.stats)


def test_a_changed_clip_is_encoded_again_alone(manifest, encoder, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(manifest.resolve("."), root)
    copy = read_manifest(root / "manifest.jsonl")
    before, _ = _extract(copy, encoder, tmp_path / "cache")
    changed = _clips(copy)[SHARD + 3]  # in shard 1
    tone = 0.3 * np.sin(np.linspace(0, 2 * np.pi * 300, 8000)).astype(np.float32)
    sf.write(changed, tone, 16000)
    loader, counting = InterruptingLoader(), CountingEncoder(encoder)
    after, report = _extract(copy, counting, tmp_path / "cache", loader)
    assert loader.decoded == [changed] and counting.clips == report.encoded == 1
    assert report.shards_reused == report.shards - 1 and [r.index for r in report.shard_log if not r.reused] == [1]
    row = after.ids.index(next(r.id for r in copy.records if r.audio and copy.resolve(r.audio) == changed))
    assert not torch.allclose(after.pooled[row], before.pooled[row]) and after.stats[row, 2] == 0.5
    others = [i for i in range(len(after.ids)) if i != row]
    assert torch.equal(after.pooled[others], before.pooled[others])


def test_a_pruned_cache_entry_or_another_audio_tag_is_encoded_again(manifest, encoder, tmp_path):
    _, first = _extract(manifest, encoder, tmp_path)
    pruned = _clips(manifest)[-1]
    next(tmp_path.rglob(f"{file_sha256(pruned)}.npy")).unlink()
    loader = InterruptingLoader()
    _, resumed = _extract(manifest, encoder, tmp_path, loader)
    assert loader.decoded == [pruned] and resumed.encoded == 1 and resumed.shards_reused == resumed.shards - 1
    _, tagged = _extract(manifest, encoder, tmp_path, audio_tag="max1s")  # features of differently loaded audio
    assert tagged.encoded == first.examples_with_audio and tagged.shards_reused == 0


def test_store_round_trip_and_batch_lookup(manifest, encoder, tmp_path):
    store, _ = extract_features(manifest, encoder, load_audio, tmp_path / "cache", progress=False)
    store.save(tmp_path / "store")
    loaded = FeatureStore.load(tmp_path / "store")
    assert loaded.ids == store.ids and torch.equal(loaded.pooled, store.pooled)
    assert torch.equal(loaded.segments, store.segments) and loaded.num_segments == NUM_SEGMENTS
    segments, stats, has = stack_features(loaded, [store.ids[0], None, "unknown"])
    assert segments.shape == (3, NUM_SEGMENTS, store.embed_dim)
    assert has.tolist() == [True, False, False] and torch.equal(segments[1], torch.zeros(NUM_SEGMENTS, store.embed_dim))
    assert torch.equal(segments[0], store.get(store.ids[0])[0])
    assert torch.equal(loaded.get_pooled(store.ids[0]), store.pooled[0])
    assert stats[0, 2] > 0  # duration in seconds
    shutil.rmtree(tmp_path / "store")
    with pytest.raises(FileNotFoundError, match="extract_features"):
        FeatureStore.load(tmp_path / "store")


def test_cached_segments_match_a_fresh_encode(manifest, encoder, tmp_path):
    """The cache holds what the model computes from the waveform: the pooled vector and the segment summaries."""
    store, _ = extract_features(manifest, encoder, load_audio, tmp_path / "cache", progress=False)
    record = next(r for r in manifest.records if r.audio)
    fresh = encoder.encode([load_audio(manifest.resolve(record.audio))])
    cached, _ = store.get(record.id)
    torch.testing.assert_close(cached, fresh.segments[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(store.get_pooled(record.id), fresh.pooled[0], atol=1e-5, rtol=1e-5)


def test_old_pooled_cache_is_never_misread(manifest, encoder, tmp_path):
    """A pooled-only cache entry (the layout before segments) at the old path is ignored: the new layout lives in
    its own folder; and a store saved without segments refuses to load with a message naming the stage."""
    record = next(r for r in manifest.records if r.audio)
    key = file_sha256(manifest.resolve(record.audio))
    old_root = tmp_path / "cache" / _safe_name(encoder.fingerprint())
    old_entry = old_root / "clips" / key[:2] / f"{key}.npy"
    old_entry.parent.mkdir(parents=True)
    np.save(old_entry, np.zeros(encoder.embed_dim + 3, np.float32))  # pooled (D,) + stats (3,)
    store, report = extract_features(manifest, encoder, load_audio, tmp_path / "cache", progress=False)
    assert report.cache_hits == 0 and report.encoded == report.examples_with_audio
    assert any(FEATURE_LAYOUT in p.name for p in (tmp_path / "cache").iterdir())
    assert store.get(record.id)[0].abs().sum() > 0
    store.save(tmp_path / "store")
    stale = tmp_path / "store" / "index.json"
    index = json.loads(stale.read_text())
    del index["layout"]
    stale.write_text(json.dumps(index))
    with pytest.raises(ValueError, match="re-run the extract_features stage"):
        FeatureStore.load(tmp_path / "store")


def test_wrong_sized_cache_entry_is_named(manifest, encoder, tmp_path):
    _extract(manifest, encoder, tmp_path)
    entry = next(tmp_path.rglob("*.npy"))
    np.save(entry, np.zeros(encoder.embed_dim + 3, np.float32))
    for marker in tmp_path.rglob("shards/*.json"):
        marker.unlink()
    with pytest.raises(ValueError, match=f"layout {FEATURE_LAYOUT}; delete it and re-run"):
        _extract(manifest, encoder, tmp_path)


def test_store_without_segments_uses_pooled_as_one_segment(tmp_path):
    store = FeatureStore(["a", "b"], torch.randn(2, 8), torch.zeros(2, 3), "enc")
    assert store.num_segments == 1 and torch.equal(store.get("a")[0], store.pooled[:1])
    store.save(tmp_path / "store")
    loaded = FeatureStore.load(tmp_path / "store")
    assert torch.equal(loaded.segments, store.segments) and torch.equal(loaded.pooled, store.pooled)


def test_audio_stats_of_silence_and_tone():
    assert np.allclose(audio_stats(np.zeros(16000, np.float32)), [0.0, 0.0, 1.0])
    tone = np.sin(np.linspace(0, 2 * np.pi * 440, 8000)).astype(np.float32)
    rms, peak, duration = audio_stats(tone)
    assert abs(rms - 1 / np.sqrt(2)) < 0.01 and abs(peak - 1.0) < 1e-3 and duration == 0.5
