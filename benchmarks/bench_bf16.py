"""bf16 autocast against float32 on the smol profile's LLaVA: a base_vl training step and a rollout forward pass.

The profile's LLaVA (SmolLM2-135M) is built as the base_vl stage builds it, with random weights for the new parts
(timing does not depend on training), on a batch of the synthetic benchmark's question shapes. A training step is
forward, answer loss (answer window) and backward at base_vl's batch size; a forward pass is one no-grad pass of
Stage B's and evaluate's batch of 64 keeping the last position's logits. Prints the median times and the ratios,
for each thread count asked. It pays only where the CPU has native bf16 (AMX-BF16, AVX512-BF16) or on a GPU.

    python benchmarks/bench_bf16.py                  # 2 threads and 1
    python benchmarks/bench_bf16.py --threads 2
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image

from _common import median_ms, report
from bench_answer_window import ANSWERS, QUESTIONS


def main() -> list[dict]:
    from safe.config import build_config
    from safe.models.base_vl import PromptEncoder, build_trainable_vl
    from safe.training.losses import answer_loss, answer_window

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="smol")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    cfg = build_config({"profile": args.profile})
    llava, processor = build_trainable_vl(cfg.model, QUESTIONS + ANSWERS, cfg.data.image_size)

    def batch_of(n: int):
        images = [Image.new("RGB", (cfg.data.image_size,) * 2, (40 * i % 255, 0, 0)) for i in range(n)]
        return PromptEncoder(processor).encode([QUESTIONS[i % 4] for i in range(n)], images,
                                               [ANSWERS[i % 4] for i in range(n)])

    train, rollout = batch_of(cfg.base_vl.batch_size), batch_of(cfg.evaluate.batch_size)
    window = answer_window(train.labels)

    def step() -> None:
        llava.train()
        logits = llava(input_ids=train.input_ids, attention_mask=train.attention_mask,
                       position_ids=train.position_ids, pixel_values=train.pixel_values, logits_to_keep=window).logits
        answer_loss(logits, train.labels[:, -window:]).backward()
        llava.zero_grad(set_to_none=True)

    @torch.no_grad()
    def forward() -> None:
        llava.eval()
        llava(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask, position_ids=rollout.position_ids,
              pixel_values=rollout.pixel_values, logits_to_keep=1)

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = {}
        for name, fn in (("train", step), ("forward", forward)):
            times[f"{name}_fp32_ms"] = median_ms(fn, repeats=args.repeats, warmup=1)
            with torch.autocast("cpu", torch.bfloat16):
                times[f"{name}_bf16_ms"] = median_ms(fn, repeats=args.repeats, warmup=1)
        report(f"{args.profile} profile, {threads} torch thread(s): training step (batch {cfg.base_vl.batch_size}) "
               f"and forward pass (batch {cfg.evaluate.batch_size})",
               [(key, value) for key, value in times.items()],
               ("ratio bf16 / fp32, training step", times["train_bf16_ms"] / times["train_fp32_ms"]))
        print(f"ratio bf16 / fp32, forward pass: {times['forward_bf16_ms'] / times['forward_fp32_ms']:.3f}")
        rows.append({"profile": args.profile, "threads": threads, **times})
    return rows


if __name__ == "__main__":
    main()
