"""The trained base's VL-only validation accuracy with float32 and with bf16 inference (`evaluate.mixed_precision`).

Run in a project whose `dvc repro` has trained the base (data/models/base_vl): greedy answers to every VL-only
validation question, once in float32 and once under `safe.distributed.inference_autocast("bf16")`, as Stage B's
rollouts and evaluate's test table run them. Reads validation only. Prints both accuracies, the share of answers
that differ and the wall times.

    python benchmarks/bench_bf16_accuracy.py
"""

from __future__ import annotations

import time

import torch

import _common  # noqa: F401 - puts the project on sys.path, offline environment


def main() -> dict:
    from pipelines.common import BASE_VL, MANIFEST
    from safe.data.manifest import read_manifest
    from safe.data.media import load_image
    from safe.distributed import inference_autocast
    from safe.eval.metrics import score
    from safe.models.base_vl import BaseVLModel
    from safe.training.base_vl import vl_only

    manifest = read_manifest(MANIFEST)
    val = vl_only(manifest.by_split("val"))
    images = [load_image(manifest.resolve(r.image)) if r.image else None for r in val]
    base = BaseVLModel.from_pretrained(BASE_VL)
    answers, results = {}, {}
    for precision in ("no", "bf16"):
        start = time.perf_counter()
        with inference_autocast(precision), torch.no_grad():
            answers[precision] = base_answers(base, val, images)
        seconds = time.perf_counter() - start
        accuracy = sum(score(a, r.answer, r.answers) for a, r in zip(answers[precision], val)) / len(val)
        results[precision] = {"accuracy": accuracy, "seconds": seconds}
        print(f"  {precision:<5} VL-only validation accuracy {accuracy:.4f} on {len(val)} questions ({seconds:.0f} s)")
    differ = sum(a != b for a, b in zip(answers["no"], answers["bf16"])) / len(val)
    print(f"  answers that differ between float32 and bf16: {differ:.4f}; "
          f"time ratio bf16 / float32: {results['bf16']['seconds'] / results['no']['seconds']:.3f}")
    return {"float32": results["no"], "bf16": results["bf16"], "differ": differ}


def base_answers(base, records, images, batch_size: int = 16, max_new_tokens: int = 4) -> list[str]:
    """The base's greedy answers, as base_vl's validation reads them (stripped)."""
    prompts, tokenizer = base.prompts, base.tokenizer
    out = []
    for start in range(0, len(records), batch_size):
        batch = prompts.encode([r.question for r in records[start:start + batch_size]],
                               images[start:start + batch_size]).to(base.llava.device)
        ids = base.llava.generate(**batch.model_inputs(), max_new_tokens=max_new_tokens, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += [p.strip() for p in tokenizer.batch_decode(ids[:, batch.input_ids.shape[1]:], skip_special_tokens=True)]
    return out


if __name__ == "__main__":
    main()
