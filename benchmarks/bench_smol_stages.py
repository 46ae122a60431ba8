"""Wall time of each pipeline stage (meant for the smol profile: SmolLM2-135M inside the base VL).

Usage, in a project whose params.yaml says `profile: smol`:

    python benchmarks/bench_smol_stages.py            # each stage's newest finished run in the MLflow store
    python benchmarks/bench_smol_stages.py --run      # run every stage now (`dvc repro -f -s <stage>`) and time it
    python benchmarks/bench_smol_stages.py --run --direct --set data.size=16000 --json OUT.json

The first form reads what `dvc repro` logged (each stage is an MLflow run with a start and an end time; process
start-up, imports and DVC's hashing and caching are not in it). The second one times each stage as DVC runs it, so
it includes both, and reruns the whole DAG. The third runs each stage's command from dvc.yaml without DVC (a machine
that has the project's other packages but not DVC, e.g. a lent GPU box), after writing the `--set` values into
params.yaml, and writes the times, the stages' metrics and the promotion decision to
OUT.json after every stage, so a run cut short still leaves what it measured. Prints measured seconds only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import yaml

from _common import set_params  # also puts the project on sys.path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def dag_stages(project: Path) -> list[str]:
    """Stage names in dvc.yaml order (the order `dvc repro` runs them in this linear DAG)."""
    return list(yaml.safe_load((project / "dvc.yaml").read_text())["stages"])


def profile_of(project: Path) -> str:
    return str((yaml.safe_load((project / "params.yaml").read_text()) or {}).get("profile", "demo"))


def stage_command(project: Path, stage: str, direct: bool) -> list[str]:
    """`dvc repro -f -s <stage>`, or with `direct` the stage's own `cmd` from dvc.yaml (run by this interpreter)."""
    if not direct:
        return [sys.executable, "-m", "dvc", "repro", "-f", "-s", stage]
    cmd = shlex.split(yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]["cmd"])
    return [sys.executable, *cmd[1:]] if cmd[0] == "python" else cmd


def stage_outputs(project: Path) -> dict:
    """The metrics files the stages wrote so far, and the promotion decision."""
    files = {p.stem: p for p in sorted((project / "data" / "metrics").glob("*.json"))}
    evaluation = project / "data" / "eval"
    files.update(evaluate=evaluation / "metrics.json", promotion=evaluation / "promotion.json")
    return {name: json.loads(p.read_text()) for name, p in files.items() if p.is_file()}


def time_stages(project: Path, stages: list[str], direct: bool = False,
                record: Callable[[list], None] | None = None) -> list[tuple[str, str, float]]:
    """Run each stage in turn (see `stage_command`); stop at the first failure. `record(rows)` after each stage."""
    rows = []
    for stage in stages:
        start = time.perf_counter()
        proc = subprocess.run(stage_command(project, stage, direct), cwd=project)
        rows.append((stage, "ok" if proc.returncode == 0 else f"exit {proc.returncode}", time.perf_counter() - start))
        print(f"  {stage:<18} {rows[-1][2]:9.1f} s  {rows[-1][1]}", flush=True)
        if record is not None:
            record(rows)
        if proc.returncode:
            break
    return rows


def json_recorder(path: Path, project: Path, profile: str, assigned: dict, direct: bool,
                  label: str) -> Callable[[list], None]:
    """What `time_stages` calls after each stage: rewrite `path` with provenance, the times so far and the outputs."""
    import torch

    from safe.io import write_json_atomic
    from safe.provenance import provenance

    info = provenance(project)
    if label:  # a copied working tree can hold another checkout's git, or none
        info["commit"] = label
    info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"

    def record(rows: list) -> None:
        write_json_atomic(path, {**info, "profile": profile, "set": assigned, "direct": direct,
                                 "stages": [{"stage": s, "status": st, "seconds": round(t, 1)} for s, st, t in rows],
                                 "outputs": stage_outputs(project)})
    return record


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
    ap.add_argument("--direct", action="store_true", help="with --run: each stage's dvc.yaml command, without DVC")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="with --run: write into params.yaml first (repeatable)")
    ap.add_argument("--json", type=Path, help="with --run: write times, metrics and decision here after every stage")
    ap.add_argument("--label", default="",
                    help="with --json: the commit to record (a copied tree's git may say another)")
    args = ap.parse_args(argv)
    project = args.project.resolve()
    if (args.direct or args.set or args.json) and not args.run:
        raise SystemExit("--direct, --set and --json go with --run")
    assigned = set_params(project, args.set) if args.set else {}
    profile = profile_of(project)
    if profile != "smol":
        print(f"note: {project}/params.yaml has profile {profile!r}, not 'smol'")
    print(f"== stage wall times, profile {profile} ({'timed now' if args.run else 'newest finished MLflow runs'})")
    stages = dag_stages(project)
    record = json_recorder(args.json, project, profile, assigned, args.direct, args.label) if args.json else None
    rows = time_stages(project, stages, args.direct, record) if args.run else logged_stages(project, stages)
    if not args.run:
        for stage, run_id, seconds in rows:
            print(f"  {stage:<18} {seconds:9.1f} s  (MLflow run {run_id})")
        missing = [s for s in stages if s not in {r[0] for r in rows}]
        if missing:
            print(f"  no finished run of: {', '.join(missing)}")
    print(f"  {'total':<18} {sum(s for _, _, s in rows):9.1f} s  ({sum(s for _, _, s in rows) / 60:.1f} min)")


if __name__ == "__main__":
    main()
