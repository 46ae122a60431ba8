"""Does Stage A learn where an answer plays, or learn its training clips by heart?

For the rows whose manifest gives an `audio_span` (the synthetic `audio_sequence` family), at every non-zero budget:
the answer's teacher-forced exact match and the fusion attention mass (mean over heads) that the answer's positions
put on the grounding target (`safe.training.losses.grounding_targets`, the tokens that hold the span), per fusion
block, on the training split and on validation (validation split into training and held-out phrasings). A model that
learnt the place puts the same mass on the target in both splits; one that learnt its clips answers training rows
even at budgets whose tokens cannot tell the asked sound from its neighbours (budget 4 for the first or second of
12 sounds) and puts less mass on the target in validation.

Run in a project where `dvc repro` has run (reads data/models/stage_a, the manifest and the feature store):

    python benchmarks/bench_grounding_fit.py [--model data/models/stage_a] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

import _common  # noqa: F401 - puts the project on sys.path, offline environment


def fit_table(model, manifest, store, records, budgets, batch_size: int = 64) -> dict[str, dict]:
    """Per budget: {"exact": share of rows whose every answer token is the argmax, "mass": [per block], "n"}."""
    from torch.utils.data import DataLoader

    from safe.data.datasets import LlavaCollator, ManifestDataset
    from safe.training.losses import answer_positions, grounding_targets, target_attention

    loader = DataLoader(ManifestDataset(manifest, None, features=store, records=records), batch_size=batch_size,
                        collate_fn=LlavaCollator(model.base, store.embed_dim, with_answers=True))
    table = {}
    for budget in budgets:
        exact, mass = [], []
        for batch in loader:
            with torch.no_grad(), model.recording_attention() as attention:
                logits = model(batch.vl, budget, audio_features=batch.audio_features)  # (B, T, V)
            rows = len(batch.records)
            targets = grounding_targets(batch.audio_spans, torch.full((rows,), budget), max(budgets))  # (B, K)
            where = answer_positions(batch.vl.labels)  # (B, T-1): positions that predict an answer token
            right = logits[:, :-1].argmax(-1) == batch.vl.labels[:, 1:]  # (B, T-1)
            exact += (right | ~where).all(-1).tolist()
            # mass on the target per block, averaged over each row's answer positions
            mass.append(torch.stack([
                (target_attention(a, targets)[:, :-1] * where).sum(-1) / where.sum(-1).clamp(min=1)
                for a in attention], 1))  # (B, blocks)
        table[str(budget)] = {"exact": round(float(np.mean(exact)), 3),
                              "mass": [round(float(m), 3) for m in torch.cat(mass).mean(0)], "n": len(exact)}
    return table


def main() -> None:
    from pipelines.common import CACHE, FEATURES, MANIFEST, STAGE_A, config
    from safe.data.features import FeatureStore
    from safe.data.manifest import read_manifest
    from safe.inference import load_safe_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=STAGE_A, help="a saved SAFE model (default: Stage A's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the tables here")
    args = parser.parse_args()
    cfg = config()
    manifest, store = read_manifest(MANIFEST), FeatureStore.load(FEATURES)
    model = load_safe_model(args.model, cache_dir=CACHE / "encoders", dtype=cfg.model.dtype)
    budgets = [b for b in model.token_budgets if b > 0]
    spanned = [r for r in manifest.records if r.audio_span is not None]
    if not spanned:
        raise SystemExit(f"{MANIFEST}: no row gives an audio_span; nothing to measure")
    groups = {
        "train": [r for r in spanned if r.split == "train"],
        "val, training phrasings": [r for r in spanned if r.split == "val" and not r.extras.get("paraphrase_heldout")],
        "val, held-out phrasings": [r for r in spanned if r.split == "val" and r.extras.get("paraphrase_heldout")],
    }
    out = {name: fit_table(model, manifest, store, rows, budgets) for name, rows in groups.items() if rows}
    for name, table in out.items():
        print(f"\n== {name} ({next(iter(table.values()))['n']} rows): exact match / attention mass on the target "
              "per fusion block")
        for budget, row in table.items():
            print(f"  budget {budget:>2}: {row['exact']:.3f} / {' '.join(f'{m:.3f}' for m in row['mass'])}")
    if args.json:
        from safe.provenance import provenance

        args.json.write_text(json.dumps({"provenance": provenance(), "model": str(args.model), "groups": out},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
