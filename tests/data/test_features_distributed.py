"""extract_features over 2 processes (`accelerate launch`, gloo on the CPU): the shards are split between the ranks,
rank 0 assembles the same store as one process, and a second extraction on 2 processes reuses every shard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safe.data.features import FeatureStore, extract_features
from safe.data.manifest import read_manifest
from safe.data.media import load_audio
from safe.data.synth import generate_benchmark
from safe.models.audio_encoders import build_audio_encoder

WORKER = Path(__file__).with_name("extract_features_worker.py")
SHARD = 4


def _launch(manifest_path: Path, cache: Path, out: Path) -> dict[str, list[dict]]:
    """Run the worker on 2 processes; per pass ("first", "again"), each rank's record (what it decoded, the report,
    the shard log)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
           "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
           str(WORKER), str(manifest_path), str(cache), str(out), str(SHARD)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (f"accelerate launch failed ({done.returncode}):\n"
                                  f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {name: [json.loads((out / f"{name}.rank{r}.json").read_text()) for r in range(2)]
            for name in ("first", "again")}


@pytest.fixture(scope="module")
def manifest_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_benchmark(out, {"train": 20, "val": 4, "test": 4}, seed=5, speech=False, progress=False)


def test_two_processes_split_the_shards_and_match_one_process(manifest_path, tmp_path):
    manifest = read_manifest(manifest_path)
    clips = [str(manifest.resolve(r.audio)) for r in manifest.records if r.audio]
    n_shards = -(-len(clips) // SHARD)
    assert n_shards >= 3

    runs = _launch(manifest_path, tmp_path / "cache", tmp_path / "out")
    ranks = runs["first"]
    first, second = ranks
    assert first["report"] == second["report"]  # every rank gets the gathered report
    report = first["report"]
    assert report["processes"] == 2 and report["shards"] == report["shards_encoded"] == n_shards
    assert report["encoded"] == len(clips) and report["shards_reused"] == 0
    log = first["shards"]
    assert [s["index"] for s in log] == list(range(n_shards))
    assert all(s["rank"] == s["index"] % 2 and not s["reused"] for s in log)  # round-robin by rank
    decoded = [set(r["decoded"]) for r in ranks]
    assert decoded[0] and decoded[1] and not decoded[0] & decoded[1]  # disjoint work ...
    assert decoded[0] | decoded[1] == set(clips)  # ... covering every clip once
    for rank, seen in enumerate(decoded):  # each rank decoded exactly the clips of the shards it owns
        own = {clips[i] for s in log if s["rank"] == rank for i in range(s["index"] * SHARD, (s["index"] + 1) * SHARD)
               if i < len(clips)}
        assert seen == own

    store = FeatureStore.load(tmp_path / "out" / "first.store")
    encoder = build_audio_encoder("whisper-random:64x2", seed=0)
    single, single_report = extract_features(manifest, encoder, load_audio, tmp_path / "single", batch_size=4,
                                             shard_size=SHARD, progress=False)
    assert single_report.processes == 1 and single_report.encoded == len(clips)
    assert store.ids == single.ids and store.encoder == single.encoder
    assert torch.allclose(store.pooled, single.pooled, atol=1e-5) and torch.allclose(store.stats, single.stats)

    again = runs["again"]  # the same extraction again on 2 processes: every shard reused, nothing decoded
    assert again[0]["report"]["shards_reused"] == n_shards and again[0]["report"]["encoded"] == 0
    assert again[0]["decoded"] == again[1]["decoded"] == []
    assert torch.equal(FeatureStore.load(tmp_path / "out" / "again.store").pooled, store.pooled)
