"""Prefect flows: run the DVC pipeline as one tracked execution, and schedule it.

The DAG is defined once, in dvc.yaml. The flow only asks DVC to reproduce stages (`dvc repro <stage>`, which keeps
DVC's caching: an unchanged stage is skipped, a stale upstream stage runs first), one Prefect task per stage so each
stage's output, retries and duration show up in Prefect. One MLflow parent run covers the execution; its id reaches
the stage processes through env SAFE_MLFLOW_PARENT_RUN_ID, so every stage run nests under it.

    python -m pipelines.flows run [--project-dir .] [--stages a,b] [--force]
    python -m pipelines.flows schedule --cron "0 3 * * *" [--name safe-nightly] [--project-dir .]
                                       [--register-only] [--work-pool POOL] [--on-overlap queue|skip]
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
from typing import Any

from safe.environment import interpreter_first_path, set_environment

set_environment()
# the ephemeral API needs more than its default startup timeout on a busy 2-core machine
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import yaml  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy  # noqa: E402
from prefect.runtime import flow_run  # noqa: E402
from prefect.states import Completed  # noqa: E402
from prefect.types.entrypoint import EntrypointType  # noqa: E402

from safe import tracking  # noqa: E402
from safe.config import ConfigError, load_config  # noqa: E402

PROMOTION = Path("data") / "eval" / "promotion.json"
DATA_CHECK_STAGES = ("prepare_data",)
"""Stages whose GX data checks gate the DAG: run as the flow's `data-checks` task (a failed check is not retried)."""
STAGE_RETRIES = 1
STAGE_RETRY_DELAY_S = 30
"""A stage that failed for a reason that may pass (a held DVC lock, memory) is retried once, after this delay."""
ON_OVERLAP = {"queue": ConcurrencyLimitStrategy.ENQUEUE, "skip": ConcurrencyLimitStrategy.CANCEL_NEW}
"""Deployments run one at a time; a run due while another runs waits for it (AwaitingConcurrencySlot, then runs),
or with "skip" is cancelled."""
_RAN = re.compile(r"Running stage '([^']+)'")
_CHECKS_FAILED = re.compile(r"error: (data|feature) checks failed")  # what pipelines.common.fail prints for GX
_BAD_PARAMS = re.compile(r"\bConfigError\b")


class StageFailed(RuntimeError):
    """`dvc repro <stage>` exited non-zero; the message ends with the last lines it printed."""

    healable = True

    def __init__(self, stage: str, returncode: int, tail: str):
        super().__init__(self.describe(stage, returncode, tail))
        self.stage, self.returncode, self.tail = stage, returncode, tail

    @staticmethod
    def describe(stage: str, returncode: int, tail: str) -> str:
        return f"stage {stage!r} failed (dvc exit code {returncode}); last output:\n{tail}"

    def __reduce__(self):  # pickled into Prefect states: rebuild from the fields, not the message
        return type(self), (self.stage, self.returncode, self.tail)


class DataCheckFailed(StageFailed):
    """A GX check in the stage refused the data: the same inputs fail the same way, so it is not retried."""

    healable = False

    @staticmethod
    def describe(stage: str, returncode: int, tail: str) -> str:
        return f"data checks failed in stage {stage!r}; nothing was written. Report:\n{tail}"


class BadParams(StageFailed):
    """The stage refused params.yaml: retrying cannot fix the file."""

    healable = False


class ScheduleError(ValueError):
    """A schedule request that cannot work (bad cron, no server, unknown work pool, not a project folder)."""


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
    env["PATH"] = interpreter_first_path(env.get("PATH", ""))
    return env


def _retry_may_heal(task, task_run, state) -> bool:  # noqa: ANN001 (Prefect's retry_condition_fn signature)
    """Prefect retries a failed stage only when the error may pass on its own (not a failed check or bad params)."""
    try:
        state.result()
    except StageFailed as exc:
        return exc.healable
    except ConfigError:
        return False
    except Exception:  # noqa: BLE001 (anything else: unknown, worth one more try)
        return True
    return True


def _repro(stage: str, project_dir: str, parent_run_id: str, force: bool) -> list[str]:
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
    ran, tail, lines = [], collections.deque(maxlen=80), []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        logger.info("[%s] %s", stage, line)
        tail.append(line)
        ran += _RAN.findall(line)
        if _CHECKS_FAILED.search(line) or lines:  # keep the whole GX report, however long
            lines.append(line)
    returncode = proc.wait()
    if returncode == 0:
        return ran
    if lines:
        raise DataCheckFailed(stage, returncode, "\n".join(lines))
    text = "\n".join(tail)
    raise (BadParams if _BAD_PARAMS.search(text) else StageFailed)(stage, returncode, text)


@task(name="check-params", retries=0, cache_policy=NO_CACHE, task_run_name="check-params")
def check_params(project_dir: str) -> str:
    """params.yaml loads and validates before any stage runs (a ConfigError names the key; never retried)."""
    cfg = load_config(Path(project_dir) / "params.yaml")
    get_run_logger().info("params.yaml: profile %s", cfg.profile)
    return cfg.profile


@task(name="data-checks", retries=STAGE_RETRIES, retry_delay_seconds=STAGE_RETRY_DELAY_S,
      retry_condition_fn=_retry_may_heal, cache_policy=NO_CACHE, task_run_name="data-checks-{stage}")
def data_checks(stage: str, project_dir: str, parent_run_id: str, force: bool = False) -> list[str]:
    """The stage that builds the data and runs the GX checks on it; a failed check fails this task, not retried."""
    return _repro(stage, project_dir, parent_run_id, force)


@task(name="dvc-repro", retries=STAGE_RETRIES, retry_delay_seconds=STAGE_RETRY_DELAY_S,
      retry_condition_fn=_retry_may_heal, cache_policy=NO_CACHE, task_run_name="dvc-repro-{stage}")
def run_stage(stage: str, project_dir: str, parent_run_id: str, force: bool = False) -> list[str]:
    """`dvc repro` one stage (see _repro); retried after a delay unless the failure cannot heal."""
    return _repro(stage, project_dir, parent_run_id, force)


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


def outcome_message(outcome: dict[str, Any]) -> str:
    """One line for the run's final state: the promotion decision, the failed criteria, what ran."""
    failed = sorted(k for k, c in (outcome.get("criteria") or {}).items() if not c.get("passed"))
    ran = ",".join(outcome["stages_run"]) or "none (all cached)"
    return (f"decision={outcome['decision']} version={outcome['version']}"
            f"{' failed=' + ','.join(failed) if failed else ''} stages_run={ran}")


# Builtin parameter annotations only: a served flow can reach its run's process pickled by value, without this
# module's imports, and Prefect validates the run's parameters against them there.
@flow(name="safe-training")
def training_flow(project_dir: str = ".", stages: list[str] | None = None, force: bool = False):
    """Reproduce the DVC pipeline under one MLflow parent run; returns {decision, version, criteria, stages_run,
    mlflow_run_id}, and the run's final state says the decision in its message.

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
    check_params(str(project))
    parent = tracking.start_pipeline_run(project=project, tags={
        "safe.started_by": "prefect", "prefect.flow_run_id": flow_run.id or "", "safe.force": str(force).lower()})
    logger.info("MLflow parent run %s in %s", parent, tracking.tracking_uri(project))
    stages_run: list[str] = []
    try:
        for i, stage in enumerate(names):
            step = data_checks if stage in DATA_CHECK_STAGES else run_stage
            try:
                ran = step(stage, str(project), parent, force)
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
    message = outcome_message(outcome)
    logger.info(message)
    return Completed(message=message, data=outcome)


# ---------------------------------------------------------------- scheduling

DESCRIPTION = "SAFE: dvc repro under one MLflow parent run, then gated promotion in the MLflow registry"


def _deployment_kwargs(cron: str, project_dir: str | Path) -> dict[str, Any]:
    """What the served and the work-pool deployment share. The entrypoint is the module path, so any process with
    SAFE installed loads the flow the way Python imports it, whatever its working folder."""
    return dict(cron=cron, parameters={"project_dir": str(Path(project_dir).resolve())}, description=DESCRIPTION,
                entrypoint_type=EntrypointType.MODULE_PATH)


def one_at_a_time(on_overlap: str = "queue") -> ConcurrencyLimitConfig:
    return ConcurrencyLimitConfig(limit=1, collision_strategy=ON_OVERLAP[on_overlap])


def register_deployment(name: str, cron: str, project_dir: str = ".", work_pool: str | None = None,
                        on_overlap: str = "queue") -> str:
    """Create/update the scheduled deployment on the Prefect API in use; returns its id. Does not serve it:
    runs execute where `schedule` (without a work pool) serves the flow, or on `work_pool`'s workers."""
    deployment = training_flow.to_deployment(name=name, work_pool_name=work_pool,
                                             concurrency_limit=one_at_a_time(on_overlap),
                                             **_deployment_kwargs(cron, project_dir))
    return str(deployment.apply())


def serve(name: str, cron: str, project_dir: str = ".", on_overlap: str = "queue") -> None:
    """Register the scheduled deployment and serve it (blocks; Ctrl-C stops serving and pauses the schedule)."""
    training_flow.serve(name=name, global_limit=one_at_a_time(on_overlap), **_deployment_kwargs(cron, project_dir))


def check_cron(cron: str) -> None:
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError:
        raise ScheduleError(f"--cron {cron!r} is not a valid cron expression; give 5 fields "
                            "(minute hour day-of-month month day-of-week), e.g. --cron '0 3 * * *'") from None


def check_project(project_dir: str | Path) -> Path:
    """The folder the deployment will run `dvc repro` in: it must hold the project's dvc.yaml and params.yaml."""
    project = Path(project_dir).resolve()
    if not project.is_dir():
        raise ScheduleError(f"--project-dir {project_dir} ({project}) is not a folder")
    for name in ("dvc.yaml", "params.yaml"):
        if not (project / name).is_file():
            raise ScheduleError(f"{project} holds no {name}: it is not a SAFE project folder; run from the project "
                                "folder or pass --project-dir PATH")
    try:
        dvc_stages(project)
    except ValueError as exc:
        raise ScheduleError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ScheduleError(f"{project / 'dvc.yaml'}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return project


START_SERVER = ("start one with `prefect server start --host 127.0.0.1` and set "
                "PREFECT_API_URL=http://127.0.0.1:4200/api in the shell that runs `safe schedule`")


def check_api() -> str:
    """The Prefect API URL, refusing the ephemeral API (it ends with this process, so a schedule would never fire)
    and a server that does not answer."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise ScheduleError(f"no Prefect server: PREFECT_API_URL is not set, and a schedule on the temporary API "
                            f"that ends with this command would never fire; {START_SERVER}")
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        raise ScheduleError(f"the Prefect server at PREFECT_API_URL={url} does not answer "
                            f"({type(failure).__name__}); {START_SERVER}")
    return url


def check_work_pool(work_pool: str) -> None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(work_pool)
        except ObjectNotFound:
            raise ScheduleError(f"work pool {work_pool!r} not found on {client.api_url}; create it with "
                                f"`prefect work-pool create {work_pool} --type process`, then start a worker "
                                f"with `prefect worker start --pool {work_pool}`") from None


def schedule(name: str, cron: str, project_dir: str = ".", register_only: bool = False,
             work_pool: str | None = None, on_overlap: str = "queue") -> int:
    """Check everything a schedule needs, then register it (a work pool's workers run it) or serve it here."""
    check_cron(cron)
    project = check_project(project_dir)
    url = check_api()
    if work_pool:
        check_work_pool(work_pool)
    if register_only or work_pool:
        deployment_id = register_deployment(name, cron, project, work_pool, on_overlap)
        runs_on = (f"work pool {work_pool!r} (its workers run it: `prefect worker start --pool {work_pool}`)"
                   if work_pool else "no worker yet: serve it with `safe schedule` without --register-only")
        print(f"registered deployment 'safe-training/{name}' ({deployment_id}) on {url}: cron {cron!r}, "
              f"project {project}, one run at a time ({on_overlap} on overlap); runs on {runs_on}")
        return 0
    print(f"serving 'safe-training/{name}' (cron {cron!r}, project {project}, one run at a time, {on_overlap} on "
          f"overlap) on {url}; Ctrl-C stops serving and pauses the schedule", file=sys.stderr)
    serve(name, cron, project, on_overlap)
    return 0


def main(argv: list[str] | None = None) -> int:
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
    p.add_argument("--work-pool", help="register for this work pool: its workers run the flow (implies no serving)")
    p.add_argument("--on-overlap", choices=sorted(ON_OVERLAP), default="queue",
                   help="a run due while another runs: queue (wait, then run) or skip (cancelled)")
    args = parser.parse_args(argv)

    if args.command == "run":
        stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
        try:
            dvc_stages(args.project_dir)  # fail fast, before starting a temporary Prefect API
            load_config(Path(args.project_dir) / "params.yaml")
            outcome = training_flow(project_dir=args.project_dir, stages=stages, force=args.force)
        except (StageFailed, FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(outcome, indent=2))
        return 0
    try:
        return schedule(args.name, args.cron, args.project_dir, args.register_only, args.work_pool, args.on_overlap)
    except ScheduleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # through the importable module, so a deployment's entrypoint is pipelines.flows.training_flow, not __main__'s
    from pipelines import flows

    raise SystemExit(flows.main())
