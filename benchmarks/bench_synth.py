"""Synthetic benchmark generation throughput (examples/s), and a cross-process determinism check.

Usage: HF_HUB_OFFLINE=1 python benchmarks/bench_synth.py [--size 6000] [--image-size 32] [--no-speech]

Prints measured numbers only; the demo profile's target is ~6000 examples in well under 2 minutes on 2 cores.
The second run happens in a fresh interpreter with another PYTHONHASHSEED, so any dependence on hash or
set order would show up as differing bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safe.data.synth import generate_benchmark, speech_available, split_sizes


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=6000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--no-speech", action="store_true")
    ap.add_argument("--skip-determinism", action="store_true")
    args = ap.parse_args(argv)
    sizes = split_sizes(args.size)
    speech = not args.no_speech
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        generate_benchmark(Path(tmp) / "a", sizes, seed=args.seed, image_size=args.image_size, speech=speech)
        seconds = time.perf_counter() - t0
        n_files = sum(1 for p in (Path(tmp) / "a").rglob("*") if p.is_file())
        mb = sum(p.stat().st_size for p in (Path(tmp) / "a").rglob("*") if p.is_file()) / 1e6
        print(f"examples={args.size} image_size={args.image_size} speech={speech and speech_available()}")
        print(f"seconds={seconds:.2f} throughput={args.size / seconds:.1f} examples/s files={n_files} size={mb:.1f} MB")
        print(f"projected seconds for 6000 examples: {6000 * seconds / args.size:.1f}")
        if args.skip_determinism:
            return
        code = (
            "import sys; from pathlib import Path; from safe.data.synth import generate_benchmark, split_sizes; "
            f"generate_benchmark(Path(sys.argv[1]), split_sizes({args.size}), seed={args.seed}, "
            f"image_size={args.image_size}, speech={speech}, progress=False)"
        )
        env = {**os.environ, "PYTHONHASHSEED": "12345"}
        subprocess.run([sys.executable, "-c", code, str(Path(tmp) / "b")], check=True, env=env)
        same = tree_digest(Path(tmp) / "a") == tree_digest(Path(tmp) / "b")
        print(f"byte-identical across processes (other PYTHONHASHSEED): {same}")


if __name__ == "__main__":
    main()
