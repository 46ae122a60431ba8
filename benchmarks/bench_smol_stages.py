"""Wall time of each pipeline stage (meant for the smol profile: SmolLM2-135M inside the base VL).

Usage, in a project whose params.yaml says `profile: smol`:

    python benchmarks/bench_smol_stages.py            # each stage's newest finished run in the MLflow store
    python benchmarks/bench_smol_stages.py --run      # run every stage now (`dvc repro -f -s <stage>`) and time it

The first form reads what `dvc repro` logged (each stage is an MLflow run with a start and an end time; process
start-up, imports and DVC's hashing and caching are not in it). The second one times each stage as DVC runs it, so
it includes both, and reruns the whole DAG. Prints measured seconds only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def dag_stages(project: Path) -> list[str]:
    """Stage names in dvc.yaml order (the order `dvc repro` runs them in this linear DAG)."""
    return list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])


def profile_of(project: Path) -> str:
    return str((yaml.safe_load((project / "params.yaml").read_text()) or {}).get("profile", "demo"))


def time_stages(project: Path, stages: list[str]) -> list[tuple[str, str, float]]:
    """Run `dvc repro -f -s <stage>` for each stage in turn; stop at the first failure."""
    rows = []
    for stage in stages:
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "-f", "-s", stage], cwd=project)
        rows.append((stage, "ok" if proc.returncode == 0 else f"exit {proc.returncode}", time.perf_counter() - start))
        print(f"  {stage:<18} {rows[-1][2]:9.1f} s  {rows[-1][1]}", flush=True)
        if proc.returncode:
            break
    return rows


def logged_stages(project: Path, stages: list[str]) -> list[tuple[str, str, float]]:
    """(stage, run id, seconds) of the newest FINISHED MLflow run of each stage, over the project's pipeline runs.

    A `dvc repro` that finds a stage cached does not run it, so the times can come from several pipeline runs
    (e.g. base_vl from the first repro, stage_a onwards from one after a stage_a parameter changed)."""
    from safe import tracking

    os.chdir(project)  # the store and the execution tags are resolved from the working directory
    mlf = tracking.client(project)
    parents = mlf.search_runs([tracking.experiment_id(mlf)], max_results=50, order_by=["attributes.start_time DESC"],
                              filter_string=f"tags.`{tracking.ROLE_TAG}` = 'pipeline'")
    if not parents:
        raise SystemExit(f"no pipeline run in {tracking.tracking_uri(project)}; run `dvc repro` first (or use --run)")
    newest: dict[str, object] = {}
    for parent in parents:
        for run in tracking.stage_runs(parent.info.run_id, mlf):
            stage = run.data.tags.get(tracking.STAGE_TAG, run.info.run_name)
            if run.info.status == "FINISHED" and run.info.end_time and (
                    stage not in newest or run.info.start_time > newest[stage].info.start_time):
                newest[stage] = run
    return [(stage, newest[stage].info.run_id[:8], (newest[stage].info.end_time - newest[stage].info.start_time) / 1000)
            for stage in stages if stage in newest]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", type=Path, default=Path.cwd(), help="project root (dvc.yaml, params.yaml)")
    ap.add_argument("--run", action="store_true", help="run and time every stage now instead of reading MLflow")
    args = ap.parse_args(argv)
    project = args.project.resolve()
    profile = profile_of(project)
    if profile != "smol":
        print(f"note: {project}/params.yaml has profile {profile!r}, not 'smol'")
    print(f"== stage wall times, profile {profile} ({'timed now' if args.run else 'newest finished MLflow runs'})")
    stages = dag_stages(project)
    rows = time_stages(project, stages) if args.run else logged_stages(project, stages)
    if not args.run:
        for stage, run_id, seconds in rows:
            print(f"  {stage:<18} {seconds:9.1f} s  (MLflow run {run_id})")
        missing = [s for s in stages if s not in {r[0] for r in rows}]
        if missing:
            print(f"  no finished run of: {', '.join(missing)}")
    print(f"  {'total':<18} {sum(s for _, _, s in rows):9.1f} s  ({sum(s for _, _, s in rows) / 60:.1f} min)")


if __name__ == "__main__":
    main()
