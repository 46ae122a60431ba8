"""Prefect flows: run the DVC pipeline as one tracked execution, and schedule it.

The DAG is defined once, in dvc.yaml. The flow only asks DVC to reproduce stages (`dvc repro <stage>`, which keeps
DVC's caching: an unchanged stage is skipped, a stale upstream stage runs first), one Prefect task per stage so each
stage's output, retries and duration show up in Prefect. One MLflow parent run covers the execution; its id reaches
the stage processes through env SAFE_MLFLOW_PARENT_RUN_ID, so every stage run nests under it.

    python -m pipelines.flows run [--project-dir .] [--stages a,b] [--force]
    python -m pipelines.flows schedule --cron "0 3 * * *" [--name safe-nightly] [--register-only]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

for _key, _value in {"MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                     "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                     # the ephemeral API needs > 20 s (the default) on a busy 2-core machine
                     "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}.items():
    os.environ.setdefault(_key, _value)

import yaml  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402

from safe import tracking  # noqa: E402

DEFAULT_STAGES: tuple[str, ...] | None = None
"""None = every stage of dvc.yaml, in the file's order."""
PROMOTION = Path("data") / "eval" / "promotion.json"
_RAN = re.compile(r"Running stage '([^']+)'")


class StageFailed(RuntimeError):
    """`dvc repro <stage>` exited non-zero; the message ends with the last lines it printed."""

    def __init__(self, stage: str, returncode: int, tail: str):
        super().__init__(f"stage {stage!r} failed (dvc exit code {returncode}); last output:\n{tail}")
        self.stage, self.returncode, self.tail = stage, returncode, tail


def dvc_stages(project_dir: str | Path) -> list[str]:
    """Stage names of dvc.yaml, in file order."""
    path = Path(project_dir) / "dvc.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no dvc.yaml in {Path(project_dir).resolve()}: not a SAFE/DVC project folder")
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    if not stages:
        raise ValueError(f"{path} defines no stages")
    return list(stages)


def _stage_env(project: Path, parent_run_id: str) -> dict[str, str]:
    """The stage processes' environment: the parent run, the project's store, this interpreter's `python` first."""
    env = dict(os.environ)
    env[tracking.PARENT_ENV] = parent_run_id
    env[tracking.PROJECT_ENV] = str(project)
    env["MLFLOW_TRACKING_URI"] = tracking.tracking_uri(project)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@task(retries=1, retry_delay_seconds=0, cache_policy=NO_CACHE, task_run_name="dvc-repro-{stage}")
def run_stage(stage: str, project_dir: str, parent_run_id: str, force: bool = False) -> list[str]:
    """`dvc repro` one stage, streaming its output to the Prefect log; returns the stages DVC actually ran.

    Without force: `dvc repro <stage>` (upstream stages are checked and rerun only if stale). With force:
    `dvc repro --force --single-item <stage>`, so forcing one stage does not rerun its whole upstream again.
    """
    logger = get_run_logger()
    command = [sys.executable, "-m", "dvc", "repro", *(["--force", "--single-item"] if force else []), stage]
    logger.info("$ %s", " ".join(command[2:]))
    project = Path(project_dir)
    proc = subprocess.Popen(command, cwd=project, env=_stage_env(project, parent_run_id), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    ran, tail = [], collections.deque(maxlen=80)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        logger.info("[%s] %s", stage, line)
        tail.append(line)
        ran += _RAN.findall(line)
    returncode = proc.wait()
    if returncode != 0:
        raise StageFailed(stage, returncode, "\n".join(tail))
    return ran


def read_outcome(project_dir: str | Path) -> dict[str, Any]:
    """decision, version and criteria from data/eval/promotion.json (all None/empty when it does not exist)."""
    path = Path(project_dir) / PROMOTION
    if not path.is_file():
        return {"decision": None, "version": None, "criteria": {}}
    try:
        promotion = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    missing = [k for k in ("decision", "version", "criteria") if k not in promotion]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}")
    return {"decision": promotion["decision"], "version": promotion["version"], "criteria": promotion["criteria"]}


@flow(name="safe-training")
def training_flow(project_dir: str = ".", stages: Sequence[str] | None = DEFAULT_STAGES,
                  force: bool = False) -> dict[str, Any]:
    """Reproduce the DVC pipeline under one MLflow parent run; returns {decision, version, criteria, stages_run}.

    Stages run in the given order (default: dvc.yaml's). A failing stage stops the flow, so a failed data check in
    prepare_data stops it before any training, with DVC's output (the GX report) in the log.
    """
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    known = dvc_stages(project)
    names = list(stages) if stages else known
    unknown = [s for s in names if s not in known]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; dvc.yaml has {known}")
    parent = tracking.start_pipeline_run(project=project, tags={
        "safe.started_by": "prefect", "prefect.flow_run_id": flow_run.id or "", "safe.force": str(force).lower()})
    logger.info("MLflow parent run %s in %s", parent, tracking.tracking_uri(project))
    stages_run: list[str] = []
    try:
        for i, stage in enumerate(names):
            try:
                ran = run_stage(stage, str(project), parent, force)
            except StageFailed as exc:
                where = "before training: the data checks failed" if i == 0 else f"after {names[:i]}"
                logger.error("stage %s failed; flow stopped %s. Last output:\n%s", stage, where, exc.tail)
                raise
            stages_run += [s for s in ran if s not in stages_run]
        outcome = {**read_outcome(project), "stages_run": stages_run, "mlflow_run_id": parent}
    except BaseException:
        tracking.end_pipeline_run(parent, "FAILED", project)
        raise
    tracking.refresh_dvc_tags(parent, project=project)
    mlf = tracking.client(project)
    mlf.set_tag(parent, "safe.decision", str(outcome["decision"]))
    mlf.set_tag(parent, "safe.stages_run", ",".join(stages_run) or "(none: all cached)")
    tracking.end_pipeline_run(parent, "FINISHED", project)
    logger.info("decision=%s version=%s stages_run=%s", outcome["decision"], outcome["version"], stages_run)
    return outcome


# ---------------------------------------------------------------- scheduling

def register_deployment(name: str, cron: str, project_dir: str = ".", work_pool: str | None = None) -> str:
    """Create/update the scheduled deployment on the Prefect API in use; returns its id. Does not serve it:
    runs execute where `schedule` (without --register-only) serves the flow, or on `work_pool`'s workers."""
    deployment = training_flow.to_deployment(name=name, cron=cron, work_pool_name=work_pool,
                                             parameters={"project_dir": str(Path(project_dir).resolve())},
                                             description="SAFE: dvc repro under one MLflow parent run, then gated "
                                                         "promotion in the MLflow registry")
    return str(deployment.apply())


def serve(name: str, cron: str, project_dir: str = ".") -> None:
    """Register the scheduled deployment and serve it (blocks; Ctrl-C stops serving)."""
    training_flow.serve(name=name, cron=cron, parameters={"project_dir": str(Path(project_dir).resolve())})


def _api_url() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.flows", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the training flow now (ephemeral Prefect; no server needed)")
    p.add_argument("--project-dir", default=".")
    p.add_argument("--stages", help="comma-separated stage names (default: all of dvc.yaml)")
    p.add_argument("--force", action="store_true", help="rerun the stages even if DVC finds them up to date")
    p = sub.add_parser("schedule", help="create the scheduled deployment on the server in PREFECT_API_URL")
    p.add_argument("--cron", default="0 3 * * *")
    p.add_argument("--name", default="safe-nightly")
    p.add_argument("--project-dir", default=".")
    p.add_argument("--register-only", action="store_true", help="register the deployment and exit (no serving)")
    p.add_argument("--work-pool", help="with --register-only: the work pool whose workers run it")
    args = parser.parse_args(argv)

    if args.command == "run":
        stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
        try:
            dvc_stages(args.project_dir)  # fail fast, before starting a temporary Prefect API
            outcome = training_flow(project_dir=args.project_dir, stages=stages, force=args.force)
        except (StageFailed, FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(outcome, indent=2))
        return 0
    if not _api_url():
        message = "no Prefect server: set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api after `prefect server start`)"
        if args.register_only:
            print(f"error: {message}", file=sys.stderr)
            return 2
        print(f"warning: {message}; serving against a temporary local API that ends with this process",
              file=sys.stderr)
    if args.register_only:
        deployment_id = register_deployment(args.name, args.cron, args.project_dir, args.work_pool)
        print(f"registered deployment 'safe-training/{args.name}' ({deployment_id}) cron={args.cron!r}")
        return 0
    serve(args.name, args.cron, args.project_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
