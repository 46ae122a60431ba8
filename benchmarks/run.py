"""Every benchmark in one run, then the measured ratios side by side.

    python benchmarks/run.py            (or `make bench`)

Ratios only mean something measured on one machine in one run; nothing here asserts a speed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import _common  # noqa: F401  (repo root on sys.path, offline env)
import bench_loader
import bench_safe_forward
import bench_stage_a

ROOT = Path(__file__).resolve().parents[1]


def dvc_noop_seconds() -> float | None:
    """Wall time of `dvc repro` when everything is up to date (None when the pipeline has not run here)."""
    if not (ROOT / "dvc.lock").is_file():
        return None
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=ROOT, capture_output=True, text=True)
    if "changed" in status.stdout:
        return None
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=ROOT, capture_output=True, check=True)
    return time.perf_counter() - start


def main() -> None:
    results: dict[str, float | None] = {}
    results.update(bench_safe_forward.main())
    results.update(bench_stage_a.main([]))
    results.update(bench_loader.main())
    whisper = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_whisper_slicing.py"))],
                             capture_output=True, text=True)
    print(whisper.stdout)
    for line in whisper.stdout.splitlines():
        if "padded/sliced" in line and "end" in line:
            results["whisper_padded_over_sliced"] = float(line.split("=")[-1].strip().rstrip("x"))
    predictor_latency = ROOT / "data" / "eval" / "metrics.json"
    if predictor_latency.is_file():
        import json

        m = json.loads(predictor_latency.read_text())
        results["latency_always_audio_over_gate"] = m["latency_ms_always_audio"] / m["latency_ms_policy"]
    results["dvc_repro_noop_seconds"] = dvc_noop_seconds()
    print("\n== summary (measured now, this machine)")
    for name, value in results.items():
        print(f"  {name:<40} {'n/a (run `make demo` first)' if value is None else f'{value:.3f}'}")


if __name__ == "__main__":
    main()
