"""What a larger test (or validation) split costs: generation + a feature pass per 1000 extra examples, and the test
size that gives the promotion gate's bounds enough rows.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_split_cost.py [--n 200] [--encoder whisper-tiny.en]
       [--cache-dir .safe_cache/encoders] [--min-distractor 500] [--min-vl 1000]

Generates `--n` test-only examples (the same generator and family mix as `data.test_size` adds), times it, encodes
their clips with the frozen encoder into an empty feature cache (so nothing is reused), and extrapolates both to 1000
examples. Then prints the smallest test size whose exact family counts (FAMILY_MIX, largest remainder, as
`_family_plan` draws them) reach the requested vl_distractor and VL-only (vl + vl_distractor) rows, with the one-sided
95% Clopper-Pearson upper bound of the flip rate at 0, 1 and 2 flips there. Measured numbers only.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

from safe.data.features import extract_features
from safe.data.manifest import read_manifest
from safe.data.media import load_audio
from safe.data.synth import FAMILY_MIX, _largest_remainder, generate_benchmark
from safe.eval.metrics import flip_rate_upper
from safe.models.audio_encoders import build_audio_encoder


def smallest_test_size(min_distractor: int, min_vl: int) -> int:
    size = 1
    while True:
        counts = _largest_remainder(size, FAMILY_MIX)
        if counts["vl_distractor"] >= min_distractor and counts["vl"] + counts["vl_distractor"] >= min_vl:
            return size
        size += 1


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--encoder", default="whisper-tiny.en")
    ap.add_argument("--cache-dir", default=".safe_cache/encoders")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--min-distractor", type=int, default=500)
    ap.add_argument("--min-vl", type=int, default=1000)
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = generate_benchmark(Path(tmp) / "bench", {"test": args.n}, seed=args.seed, progress=False)
        gen_s = time.perf_counter() - start
        manifest = read_manifest(path)
        clips = sum(r.audio is not None for r in manifest)
        encoder = build_audio_encoder(args.encoder, cache_dir=args.cache_dir)
        start = time.perf_counter()
        extract_features(manifest, encoder, partial(load_audio, max_seconds=30.0), Path(tmp) / "features",
                         batch_size=args.batch_size, progress=False)
        feat_s = time.perf_counter() - start
    per_k = 1000 / args.n
    print(f"generation: {args.n} examples in {gen_s:.1f} s -> {gen_s * per_k:.1f} s per 1000 examples")
    print(f"features ({args.encoder}): {clips} clips in {feat_s:.1f} s -> {feat_s * per_k:.1f} s per 1000 examples "
          f"({feat_s / max(clips, 1) * 1000:.1f} ms per clip)")
    print(f"total: {(gen_s + feat_s) * per_k:.1f} s per 1000 extra examples")
    size = smallest_test_size(args.min_distractor, args.min_vl)
    counts = _largest_remainder(size, FAMILY_MIX)
    n_d = counts["vl_distractor"]
    bounds = ", ".join(f"{k} flips {flip_rate_upper(k, n_d):.4f}" for k in (0, 1, 2))
    print(f"test size {size}: {counts} -> {n_d} distractor rows, {counts['vl'] + n_d} VL-only rows; "
          f"95% upper flip bound on {n_d} rows: {bounds}")


if __name__ == "__main__":
    main()
