"""A base_vl training step with the LM head on every position vs on the answers only (`answer_window`).

The profile's LLaVA (the smol profile: SmolLM2-135M, a 49k vocabulary) is built as the base_vl stage builds it, with
random weights for the new parts (timing does not depend on training). One step = forward, answer loss, backward,
on a batch of the synthetic benchmark's question shapes. Prints the median step time of each and their ratio.

    python benchmarks/bench_answer_window.py --profile smol
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image

from _common import median_ms, report

QUESTIONS = ["what color is the circle?", "how many shapes are in the image?", "is there a red square in the picture?",
             "which shape is blue?"]
ANSWERS = ["red", "three", "yes", "triangle"]


def main() -> dict:
    from safe.config import build_config
    from safe.models.base_vl import PromptEncoder, build_trainable_vl
    from safe.training.losses import answer_loss, answer_window

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smol")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cfg = build_config({"profile": args.profile})
    llava, processor = build_trainable_vl(cfg.model, QUESTIONS + ANSWERS, cfg.data.image_size)
    llava.train()
    n = args.batch_size
    images = [Image.new("RGB", (cfg.data.image_size,) * 2, (40 * i % 255, 0, 0)) for i in range(n)]
    batch = PromptEncoder(processor).encode([QUESTIONS[i % 4] for i in range(n)], images,
                                            [ANSWERS[i % 4] for i in range(n)])

    def step(window: int) -> None:
        labels = batch.labels if window == 0 else batch.labels[:, -window:]
        logits = llava(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                       pixel_values=batch.pixel_values, logits_to_keep=window).logits
        answer_loss(logits, labels).backward()
        llava.zero_grad(set_to_none=True)

    window = answer_window(batch.labels)
    full = median_ms(lambda: step(0), repeats=args.repeats, warmup=1)
    kept = median_ms(lambda: step(window), repeats=args.repeats, warmup=1)
    T, V = batch.input_ids.shape[1], llava.config.text_config.vocab_size
    report(f"base_vl training step, {args.profile} profile (batch {n}, {T} positions, vocabulary {V})",
           [("LM head on every position", full), (f"LM head on the last {window} positions", kept)],
           ("ratio answers-only / every position", kept / full))
    return {"profile": args.profile, "full_ms": full, "window_ms": kept, "ratio": kept / full}


if __name__ == "__main__":
    main()
