"""Loader throughput: examples/s over raw media (decode audio) vs over cached encoder features."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from _common import demo_base_vl


def main(n_examples: int = 400) -> dict:
    from safe.data.datasets import LlavaCollator, ManifestDataset
    from safe.data.features import FeatureStore
    from safe.data.manifest import read_manifest
    from safe.data.synth import generate_benchmark

    with tempfile.TemporaryDirectory() as tmp:
        manifest = read_manifest(generate_benchmark(Path(tmp) / "bench", {"train": n_examples, "val": 20, "test": 20},
                                                    seed=0, speech=False, progress=False))
        ids = [r.id for r in manifest.records if r.audio]
        store = FeatureStore(ids, torch.randn(len(ids), 384), torch.zeros(len(ids), 3), "bench")
        _, base = demo_base_vl()
        results = {}
        for name, kwargs in (("raw media (decode wav)", {"load_waveforms": True}), ("cached features", {"features": store})):
            dataset = ManifestDataset(manifest, "train", **kwargs)
            collate = LlavaCollator(base, 384, with_answers=True)
            start = time.perf_counter()
            for i in range(0, len(dataset), 32):
                collate([dataset[j] for j in range(i, min(i + 32, len(dataset)))])
            results[name] = len(dataset) / (time.perf_counter() - start)
    print("\n== loader throughput (examples/s, batches of 32, incl. prompt building)")
    for name, value in results.items():
        print(f"  {name:<44} {value:10.1f}")
    ratio = results["cached features"] / results["raw media (decode wav)"]
    print(f"  {'ratio cached / raw':<44} {ratio:10.2f}")
    return {"loader_cached_over_raw": ratio}


if __name__ == "__main__":
    main()
