"""Audio-dependent accuracy at fixed budgets, per question family, from a trained SAFE model and its run's data.

Answers every audio-dependent question of a split at each non-zero budget from the cached features (greedy, as the
evaluation does) and prints, per family and over all of them, the accuracy at each budget and how many answers differ
between the smallest and the largest budget. `audio_order` (which of two sounds came first) is the family that needs
time; the others are the families a pooled clip summary can answer. Uses only the library's public calls, so the same
script measures a checkout from before the temporal features (pooled features) and one after.

    python benchmarks/bench_temporal_budgets.py --project DIR              # DIR holds data/prepared, data/features
    python benchmarks/bench_temporal_budgets.py --project DIR --model data/models/stage_a --split val --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from safe.data.datasets import LlavaCollator, ManifestDataset
from safe.data.features import FeatureStore
from safe.data.manifest import read_manifest
from safe.eval.metrics import score
from safe.inference import load_safe_model


@torch.no_grad()
def budget_answers(model, manifest, store, records, max_new_tokens: int) -> dict[int, list[str]]:
    """budget -> answers of `records` at that budget (every non-zero budget of the model)."""
    loader = DataLoader(ManifestDataset(manifest, records=records, features=store), batch_size=64,
                        collate_fn=LlavaCollator(model.base, store.embed_dim, False))
    out: dict[int, list[str]] = defaultdict(list)
    for batch in loader:
        for k in (b for b in model.token_budgets if b > 0):
            out[k] += model.generate_answers(batch.vl, k, audio_features=batch.audio_features,
                                             max_new_tokens=max_new_tokens)
    return out


def family_table(records, answers: dict[int, list[str]]) -> dict[str, dict]:
    """family (and `all`, `all_but_audio_order`) -> n, accuracy per budget, answers changed smallest vs largest."""
    budgets = sorted(answers)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[r.family].append(i)
        groups["all"].append(i)
        if r.family != "audio_order":
            groups["all_but_audio_order"].append(i)
    table = {}
    for name, rows in sorted(groups.items()):
        acc = {k: sum(score(answers[k][i], records[i].answer, records[i].answers) for i in rows) / len(rows)
               for k in budgets}
        changed = sum(answers[budgets[0]][i] != answers[budgets[-1]][i] for i in rows)
        table[name] = {"n": len(rows), "accuracy": {str(k): round(v, 4) for k, v in acc.items()},
                       f"changed_{budgets[0]}_vs_{budgets[-1]}": changed}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default=".", help="run folder with data/prepared and data/features")
    parser.add_argument("--model", default="data/models/stage_a", help="trained SAFE folder, relative to --project")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--json", help="also write the table here")
    args = parser.parse_args()
    os.chdir(args.project)  # the model's config names its base VL relative to the run folder
    manifest, store = read_manifest("data/prepared/manifest.jsonl"), FeatureStore.load("data/features")
    model = load_safe_model(args.model, with_encoder=False)
    records = [r for r in manifest.by_split(args.split) if r.needs_audio and r.audio and store.has(r.id)]
    table = family_table(records, budget_answers(model, manifest, store, records, args.max_new_tokens))
    for name, row in table.items():
        accs = "  ".join(f"b{k} {v:.3f}" for k, v in row["accuracy"].items())
        changed = next(v for k, v in row.items() if k.startswith("changed"))
        print(f"{args.split} {name:<22} n={row['n']:<4} {accs}  changed {changed}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"split": args.split, "model": args.model, "families": table}, indent=2))


if __name__ == "__main__":
    main()
