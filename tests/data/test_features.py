"""Content-keyed feature extraction: unchanged audio is never re-encoded; an interrupted run resumes by shard."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from safe.data.features import FeatureStore, extract_features, stack_features
from safe.data.manifest import read_manifest
from safe.data.media import load_audio
from safe.data.synth import generate_benchmark
from safe.models.audio_encoders import build_audio_encoder


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return read_manifest(generate_benchmark(out, {"train": 30, "val": 5, "test": 5}, seed=3, speech=False,
                                            progress=False))


@pytest.fixture(scope="module")
def encoder():
    return build_audio_encoder("whisper-random:32x1", seed=0)


def test_second_run_encodes_nothing_and_gives_the_same_features(manifest, encoder, tmp_path):
    store, first = extract_features(manifest, encoder, load_audio, tmp_path, batch_size=8, shard_size=10,
                                    progress=False)
    assert first.encoded == first.examples_with_audio > 0 and first.cache_hits == 0
    again, second = extract_features(manifest, encoder, load_audio, tmp_path, batch_size=8, shard_size=10,
                                     progress=False)
    assert second.encoded == 0 and second.cache_hits == first.examples_with_audio
    assert second.shards_reused == second.shards
    assert torch.equal(store.pooled, again.pooled)


def test_interrupted_run_reencodes_only_the_unfinished_shard(manifest, encoder, tmp_path):
    store, first = extract_features(manifest, encoder, load_audio, tmp_path, batch_size=8, shard_size=10,
                                    progress=False)
    # Simulate an interruption: the last shard's clips never reached the cache.
    cache_root = next(p for p in tmp_path.iterdir() if p.is_dir())
    last_shard = [r for r in manifest.records if r.audio][-(first.examples_with_audio % 10 or 10):]
    from safe.data.features import file_sha256

    for r in last_shard:
        (cache_root / file_sha256(manifest.resolve(r.audio))[:2] / f"{file_sha256(manifest.resolve(r.audio))}.npy").unlink()
    _, resumed = extract_features(manifest, encoder, load_audio, tmp_path, batch_size=8, shard_size=10,
                                  progress=False)
    assert resumed.encoded == len(last_shard)
    assert resumed.shards_reused == resumed.shards - 1


def test_store_round_trip_and_batch_lookup(manifest, encoder, tmp_path):
    store, _ = extract_features(manifest, encoder, load_audio, tmp_path / "cache", progress=False)
    store.save(tmp_path / "store")
    loaded = FeatureStore.load(tmp_path / "store")
    assert loaded.ids == store.ids and torch.equal(loaded.pooled, store.pooled)
    pooled, stats, has = stack_features(loaded, [store.ids[0], None, "unknown"])
    assert has.tolist() == [True, False, False] and torch.equal(pooled[1], torch.zeros(store.embed_dim))
    assert stats[0, 2] > 0  # duration in seconds
    shutil.rmtree(tmp_path / "store")
    with pytest.raises(FileNotFoundError, match="extract_features"):
        FeatureStore.load(tmp_path / "store")


def test_audio_stats_of_silence_and_tone():
    from safe.data.features import audio_stats

    assert np.allclose(audio_stats(np.zeros(16000, np.float32)), [0.0, 0.0, 1.0])
    tone = np.sin(np.linspace(0, 2 * np.pi * 440, 8000)).astype(np.float32)
    rms, peak, duration = audio_stats(tone)
    assert abs(rms - 1 / np.sqrt(2)) < 0.01 and abs(peak - 1.0) < 1e-3 and duration == 0.5
