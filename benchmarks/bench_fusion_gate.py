"""Where the fusion gate opens: its value per question kind and phrasing, from a trained bundle and the run's data.

The learned fusion gate (one value per example, read from the question) is what keeps a misrouted VL-only question's
answer: this prints its 10th/50th/90th percentiles for test VL-only questions carrying another example's clip and for
audio-dependent questions with their own, each split by training vs held-out phrasing (`extras.paraphrase_heldout`).

    python benchmarks/bench_fusion_gate.py            # after `make demo`: data/models/safe, data/prepared, data/features
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from torch.utils.data import DataLoader

from safe.data.datasets import LlavaCollator, ManifestDataset
from safe.data.features import FeatureStore
from safe.data.manifest import read_manifest
from safe.inference import load_safe_model


@torch.no_grad()
def gates(model, manifest, store, records, distractors: bool) -> dict[bool, list[float]]:
    """Mean fusion gate over blocks per example, keyed by held-out phrasing; budget forced to the largest."""
    loader = DataLoader(ManifestDataset(manifest, records=records, features=store), batch_size=64,
                        collate_fn=LlavaCollator(model.base, store.embed_dim, False))
    out: dict[bool, list[float]] = {False: [], True: []}
    offset = 0
    for batch in loader:
        feats = batch.audio_features
        if distractors:  # another example's clip, the same one in every run
            feats = store.segments[(torch.arange(len(batch.records)) + offset + 1) % len(store.segments)]
        offset += len(batch.records)
        _, g = model(batch.vl, max(model.token_budgets), audio_features=feats, return_gates=True)  # g: (B, L)
        for record, value in zip(batch.records, g.mean(1).tolist()):
            out[bool(record.extras.get("paraphrase_heldout"))].append(value)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="data/models/safe")
    parser.add_argument("--split", default="test")
    parser.add_argument("--n", type=int, default=400, help="questions of each kind")
    args = parser.parse_args()
    model = load_safe_model(args.bundle, with_encoder=False)
    manifest, store = read_manifest("data/prepared/manifest.jsonl"), FeatureStore.load("data/features")
    rows = manifest.by_split(args.split)
    for label, records, distractors in (("VL-only + another clip", [r for r in rows if not r.needs_audio], True),
                                        ("audio-dependent", [r for r in rows if r.needs_audio and r.audio], False)):
        for heldout, values in gates(model, manifest, store, records[:args.n], distractors).items():
            if values:
                p10, p50, p90 = np.percentile(values, [10, 50, 90])
                print(f"{label:<24} {'held-out' if heldout else 'training':<9} phrasing  n={len(values):<4} "
                      f"gate p10 {p10:.3f}  median {p50:.3f}  p90 {p90:.3f}")


if __name__ == "__main__":
    main()
