"""What starting fused passes from the base pass's prompt prefix saves (`SAFEModel.recording_prefix`), on a finished run.

The frozen decoder layers below the first fusion block compute the same states for a prompt at every budget. Run in
a project whose `dvc repro` has finished (data/models/stage_a, the manifest and the feature cache), this times on
validation rows with a clip, batch by batch:
- rollout: the base answer, then the fused generate at each budget k > 0, every layer run (`full`) or from the
  base pass's prefix (`prefix`), and checks both give the same answers;
- a Stage A step: the frozen teacher's forward, the fused student's forward and its backward, in full or with the
  student starting from the teacher's prefix.
Prints the ratios (full / prefix) and, with --json, writes them with commit, machine and date.

    python benchmarks/bench_prompt_prefix.py [--batches 3] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import torch

import _common  # noqa: F401 - puts the project on sys.path, offline environment


def clocked(fn) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=3, help="validation batches of 64 rows with a clip")
    parser.add_argument("--json", type=Path, help="write the timings here")
    args = parser.parse_args()
    from torch.utils.data import DataLoader

    from pipelines.common import FEATURES, MANIFEST, STAGE_A
    from safe.data.datasets import LlavaCollator, ManifestDataset
    from safe.data.features import FeatureStore
    from safe.data.manifest import read_manifest
    from safe.inference import load_safe_model
    from safe.provenance import provenance
    from safe.training.losses import answer_window

    model = load_safe_model(STAGE_A, with_encoder=False)
    manifest, store = read_manifest(MANIFEST), FeatureStore.load(FEATURES)
    records = [r for r in manifest.by_split("val") if r.audio][: 64 * args.batches]
    batches = {answers: list(DataLoader(ManifestDataset(manifest, features=store, records=records), batch_size=64,
                                        collate_fn=LlavaCollator(model.base, store.embed_dim, with_answers=answers)))
               for answers in (False, True)}
    budgets = [b for b in model.token_budgets if b > 0]
    params = list(model.trainable_parameters().values())
    times = {"base_generate": 0.0, "fused_generate_full": 0.0, "fused_generate_prefix": 0.0,
             "stage_a_step_full": 0.0, "stage_a_step_prefix": 0.0}
    same, answers_total = 0, 0
    with torch.no_grad():
        model.generate_answers(batches[False][0].vl, 0, max_new_tokens=4)  # warm-up
    for batch in batches[False]:
        with torch.no_grad():
            with model.recording_prefix() as recorder:
                _, t = clocked(lambda: model.generate_answers(batch.vl, 0, max_new_tokens=4))
            times["base_generate"] += t
            for k in budgets:
                full, t = clocked(lambda: model.generate_answers(batch.vl, k, audio_features=batch.audio_features,
                                                                 max_new_tokens=4))
                times["fused_generate_full"] += t
                with model.reusing_prefix(recorder.prefix):
                    fast, t = clocked(lambda: model.generate_answers(batch.vl, k, audio_features=batch.audio_features,
                                                                     max_new_tokens=4))
                times["fused_generate_prefix"] += t
                same += sum(a == b for a, b in zip(full, fast))
                answers_total += len(full)
    for batch in batches[True]:
        window = answer_window(batch.vl.labels)  # as Stage A's loss keeps it

        def step(reuse: bool) -> None:
            with torch.no_grad(), model.recording_prefix() as recorder:
                model(batch.vl, 0, logits_to_keep=window)
            with model.reusing_prefix(recorder.prefix) if reuse else contextlib.nullcontext():
                logits = model(batch.vl, max(budgets), audio_features=batch.audio_features, logits_to_keep=window)
            torch.autograd.grad(logits.float().logsumexp(-1).mean(), params, allow_unused=True)

        times["stage_a_step_full"] += clocked(lambda: step(False))[1]
        times["stage_a_step_prefix"] += clocked(lambda: step(True))[1]
    n_layers = len(model.base.decoder_layers)
    rollout_full = times["base_generate"] + times["fused_generate_full"]
    rollout_prefix = times["base_generate"] + times["fused_generate_prefix"]
    result = {
        "stage_a": str(STAGE_A), "decoder_layers": n_layers, "first_fusion_layer": model.fusion_layer_ids[0],
        "batches": len(batches[False]), "rows": len(records), "budgets": budgets,
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "fused_generate_ratio": round(times["fused_generate_full"] / times["fused_generate_prefix"], 3),
        "rollout_ratio": round(rollout_full / rollout_prefix, 3),
        "stage_a_step_ratio": round(times["stage_a_step_full"] / times["stage_a_step_prefix"], 3),
        "answers_identical": same / max(answers_total, 1), **provenance(),
    }
    print(f"{len(records)} validation rows, {n_layers} decoder layers, first fusion layer {model.fusion_layer_ids[0]}")
    for key, value in result["seconds"].items():
        print(f"  {key:<24} {value:8.2f} s")
    print(f"  fused generate full / prefix: {result['fused_generate_ratio']:.2f}x; rollout (base + budgets) "
          f"{result['rollout_ratio']:.2f}x; Stage A step {result['stage_a_step_ratio']:.2f}x; answers identical "
          f"{result['answers_identical']:.3f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
