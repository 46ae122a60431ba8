"""Do the promotion criteria hold across training seeds? Retrain Stage A -> promote for several seeds.

Usage, in a project where `dvc repro` has run (any profile):

    python benchmarks/bench_seeds.py --seeds 5          # seeds 0..4
    python benchmarks/bench_seeds.py --seeds 1 3 --keep  # seeds 1 and 3, keep the seed folders
    python benchmarks/bench_seeds.py --seeds 5 --jobs 2  # two seeds at a time, one torch thread each (2 cores)

For each seed it copies the project (code, params, dvc.lock and data/; the `.safe_cache` is shared) into a temporary
folder, sets `stage_a.seed` and `stage_b.seed` in its params.yaml, and runs `dvc repro promote` there: DVC reruns
stage_a and everything after it, and reuses prepare_data, extract_features and base_vl. Each seed registers into its
own MLflow store, so no seed competes with another's champion. It prints, per seed, each criterion with its 95%
bound and the promotion decision, then the range over seeds, and appends one JSON line per run to
`benchmarks/results_seeds.jsonl` (commit, machine, date, profile, per-seed metrics) for docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import yaml

from _common import set_params
from safe.environment import interpreter_first_path
from safe.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results_seeds.jsonl"
COPIED = ("safe", "pipelines", "params.yaml", "profiles", "dvc.yaml", "dvc.lock", ".dvc", ".dvcignore", "pyproject.toml", "data")
SHOWN = (("retention_drop", "retention_drop_upper"), ("audio_gain", "audio_gain_lower"), ("skip_rate", None),
         ("irrelevant_flip_rate", "irrelevant_flip_rate_upper"), ("forced_flip_rate", "forced_flip_rate_upper"))


def seed_project(project: Path, dst: Path, seed: int) -> None:
    """A copy of `project` whose params.yaml trains Stage A and Stage B with `seed`."""
    for name in COPIED:
        src = project / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.is_file():
            shutil.copy2(src, dst / name)
    set_params(dst, [f"stage_a.seed={seed}", f"stage_b.seed={seed}"])
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)  # dvc needs a repository root; nothing is committed


def run_seed(project: Path, seed: int, keep: bool, threads: int | None = None) -> dict:
    """Retrain stage_a -> promote with `seed` in a copy of `project`; `threads`: torch threads of its processes."""
    folder = Path(tempfile.mkdtemp(prefix=f"safe-seed{seed}-"))
    try:
        seed_project(project, folder, seed)
        env = {**os.environ, "PATH": interpreter_first_path(), "SAFE_PROJECT_DIR": str(folder),
               "SAFE_CACHE_DIR": str(project / ".safe_cache"),
               "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"}
        if threads is not None:  # seeds side by side: one thread each beats oversubscribed OpenMP spinning
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("SAFE_MLFLOW_PARENT_RUN_ID", None)
        (folder / "mlruns").mkdir(exist_ok=True)
        start = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "dvc", "repro", "promote"], cwd=folder, env=env,
                                capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-15:])
            raise SystemExit(f"seed {seed}: dvc repro failed in {folder}:\n{tail}")
        metrics = json.loads((folder / "data/eval/metrics.json").read_text())
        promotion = json.loads((folder / "data/eval/promotion.json").read_text())
        by_budget = json.loads((folder / "data/eval/details.json").read_text())["accuracy_vs_budget"]["audio"]
        return {"seed": seed, "seconds": round(seconds, 1), "decision": promotion["decision"],
                "failed": promotion["failed"], "metrics": metrics, "audio_acc_by_budget": by_budget}
    finally:
        if keep:
            print(f"  seed {seed} kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[5],
                        help="one number N = seeds 0..N-1; several numbers = those seeds")
    parser.add_argument("--project", type=Path, default=ROOT, help="project folder where dvc repro has run")
    parser.add_argument("--keep", action="store_true", help="keep each seed's folder (printed) for inspection")
    parser.add_argument("--jobs", type=int, default=1,
                        help="seeds trained side by side, each with cores / jobs torch threads (default 1)")
    args = parser.parse_args()
    project = args.project.resolve()
    if not (project / "dvc.lock").is_file() or not (project / "data/eval/metrics.json").is_file():
        raise SystemExit(f"{project}: run `dvc repro` (or `make demo`) there first; this benchmark reuses its "
                         "prepared data, features and base VL")
    seeds = list(range(args.seeds[0])) if len(args.seeds) == 1 else args.seeds
    profile = (yaml.safe_load((project / "params.yaml").read_text()) or {}).get("profile", "demo")
    print(f"seeds {seeds} on {project} ({profile} profile): stage_a -> promote retrained per seed")
    header = "  ".join(f"{name + (' (bound)' if bound else ''):>30}" for name, bound in SHOWN)
    print(f"  {'seed':>4}  {header}  {'decision':>9}  {'time':>7}")
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None
    start = time.perf_counter()
    runs = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # each seed is a `dvc repro` subprocess
        for future in as_completed([pool.submit(run_seed, project, seed, args.keep, threads) for seed in seeds]):
            run = future.result()
            runs.append(run)
            m = run["metrics"]
            cells = "  ".join(f"{m[name]:>14.4f} ({m[bound]:.4f})".rjust(30) if bound else f"{m[name]:>30.4f}"
                              for name, bound in SHOWN)
            budgets = " / ".join(f"{v:.3f}" for v in run["audio_acc_by_budget"].values())
            print(f"  {run['seed']:>4}  {cells}  {run['decision']:>9}  {run['seconds']:>6.0f}s  "
                  f"audio-dependent by budget {' / '.join(run['audio_acc_by_budget'])}: {budgets}", flush=True)
    runs.sort(key=lambda r: r["seed"])
    wall = time.perf_counter() - start
    print("  range over seeds:")
    for name, bound in SHOWN:
        for key in (name, bound) if bound else (name,):
            values = [r["metrics"][key] for r in runs]
            print(f"    {key:<28} {min(values):.4f} .. {max(values):.4f}")
    for budget in runs[0]["audio_acc_by_budget"]:
        values = [r["audio_acc_by_budget"][budget] for r in runs]
        print(f"    {'audio-dependent at budget ' + budget:<28} {min(values):.4f} .. {max(values):.4f}")
    gaps = [r["audio_acc_by_budget"][max(r["audio_acc_by_budget"], key=int)] - r["audio_acc_by_budget"]["4"]
            for r in runs if "4" in r["audio_acc_by_budget"]]
    if gaps:
        print(f"    {'largest budget - budget 4':<28} {min(gaps):.4f} .. {max(gaps):.4f}")
    passed = sum(r["decision"] == "champion" for r in runs)
    print(f"  seeds promoted (every criterion): {passed}/{len(runs)}; {wall / 60:.1f} min wall time "
          f"({args.jobs} side by side)")
    record = {**provenance(ROOT), "profile": profile, "jobs": args.jobs, "wall_seconds": round(wall, 1), "runs": runs}
    with RESULTS.open("a") as fh:
        fh.write(json.dumps(record) + "\n")
    print(f"  appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())
