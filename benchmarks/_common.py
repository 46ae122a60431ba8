"""Helpers shared by the benchmark scripts: timing, a demo-size model built from config (no training), and params
set in a project copy."""

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


def set_params(project: Path, assignments: list[str]) -> dict:
    """Write `section.key=value` assignments into `project`/params.yaml; returns them as {key: value}.

    Read and written as YAML 1.2 with its comments kept, the way DVC rewrites it (`dvc exp run -S`) and safe.config
    reads it: YAML 1.1 would read `1e-05` as text and `no` as false."""
    from ruamel.yaml import YAML

    path = project / "params.yaml"
    document, value_reader = YAML(), YAML(typ="safe", pure=True)
    document.preserve_quotes = True
    params = document.load(path.read_text()) or {}
    done = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected section.key=value")
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SystemExit(f"--set {item!r}: {part!r} in params.yaml is not a section")
            node = child
        node[leaf] = done[key] = value_reader.load(raw)
    with path.open("w") as f:
        document.dump(params, f)
    return done
