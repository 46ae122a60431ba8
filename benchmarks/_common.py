"""Helpers shared by the benchmark scripts: timing and a demo-size model built from config (no training)."""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of fn() in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def demo_base_vl(profile: str = "demo"):
    """A BaseVLModel with the profile's sizes (random weights: timing does not depend on training)."""
    from safe.config import build_config
    from safe.models.base_vl import BaseVLModel, build_llava, build_processor, build_subword_tokenizer

    cfg = build_config({"profile": profile})
    words = ["what color is the circle ?", "how many beeps do you hear ?", "red blue green yellow one two three four"]
    tokenizer = build_subword_tokenizer(words)
    base = BaseVLModel(build_llava(cfg.model, tokenizer, cfg.data.image_size),
                       build_processor(tokenizer, cfg.data.image_size, cfg.model.patch_size))
    return cfg, base


def report(title: str, rows: list[tuple[str, float]], ratio: tuple[str, float] | None = None) -> None:
    print(f"\n== {title}")
    for name, value in rows:
        print(f"  {name:<44} {value:10.3f} ms")
    if ratio:
        print(f"  {ratio[0]:<44} {ratio[1]:10.3f}")
