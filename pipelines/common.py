"""What every stage entry shares: the params, the data layout under data/, and the tracked stage context."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from safe.environment import set_environment

set_environment()

from pipelines.code_deps import import_closure, stage_module  # noqa: E402
from safe.config import PROFILES, ConfigError, SafeConfig, load_config, stage_params  # noqa: E402

PARAMS = Path("params.yaml")
DATA = Path("data")
PREPARED = DATA / "prepared"  # manifest.jsonl (+ media for the synthetic benchmark)
MANIFEST = PREPARED / "manifest.jsonl"
FEATURES = DATA / "features"
MODELS = DATA / "models"
BASE_VL = MODELS / "base_vl"
STAGE_A = MODELS / "stage_a"
STAGE_B = MODELS / "stage_b"
SAFE_BUNDLE = MODELS / "safe"  # the deployable model: base VL + trainable parts + gate
METRICS = DATA / "metrics"
DATA_DOCS = DATA / "data_docs"  # GX Data Docs (HTML) of each stage's checks
PLOTS = DATA / "plots"
EVAL = DATA / "eval"
CACHE = Path(os.environ.get("SAFE_CACHE_DIR", ".safe_cache"))


def config() -> SafeConfig:
    return load_config(PARAMS)


def stage_code(stage: str) -> list[Path]:
    """The Python files `stage`'s entry module can import: what a resumable run's checkpoint key must include, so a
    checkpoint written by other code is never resumed (tests/pipelines/test_dvc_deps.py keeps dvc.yaml's deps in step)."""
    return import_closure(stage_module(stage))


def base_vl_source(cfg: SafeConfig) -> str:
    """The frozen base VL: the checkpoint in params, else the one the base_vl stage trained."""
    return cfg.model.base_vl or str(BASE_VL)


class WorkerTracker:
    """What a non-main process of a multi-process stage gets instead of an MLflow run: it logs nothing
    (rank 0 logs for everyone)."""

    def log_metrics(self, metrics, step=None) -> None: ...
    def log_params(self, params) -> None: ...
    def log_artifact(self, path, artifact_path=None) -> None: ...
    def log_text(self, text, name) -> None: ...
    def set_tags(self, tags) -> None: ...


@contextlib.contextmanager
def tracked_stage(stage: str, cfg: SafeConfig, *sections: str) -> Iterator[object]:
    """An MLflow run for this stage (nested under the pipeline's parent run), with the stage's params logged.
    Under `accelerate launch` only rank 0 opens the run."""
    from safe.distributed import is_launched, process_state
    from safe.tracking import stage_run

    if is_launched() and not process_state().is_main_process:
        yield WorkerTracker()
        return
    with stage_run(stage, params=stage_params(cfg, *sections), tags={"profile": cfg.profile},
                   experiment=dvc_experiment(cfg)) as tracker:
        yield tracker


def dvc_experiment(cfg: SafeConfig):
    """The DVC experiment this stage runs in, as a `safe.tracking.DvcExperiment`; None outside `dvc exp run`.

    DVC sets DVC_EXP_NAME and DVC_EXP_BASELINE_REV for every stage of `dvc exp run`, in the workspace and in a
    queue's temp folder alike (a plain `dvc repro` sets neither).
    """
    from safe.tracking import DvcExperiment

    name = os.environ.get("DVC_EXP_NAME")
    if not name:
        return None
    baseline = os.environ.get("DVC_EXP_BASELINE_REV", "")
    return DvcExperiment(name, baseline, params_diff(cfg, baseline) if baseline else None)


def params_diff(cfg: SafeConfig, baseline_rev: str) -> dict[str, Any] | None:
    """{"section.key": value} of every param whose effective value (profile defaults applied) differs from the one
    params.yaml gives at git commit `baseline_rev`; None when that file cannot be read there."""
    shown = subprocess.run(["git", "show", f"{baseline_rev}:{PARAMS.as_posix()}"], capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "params.yaml").write_text(shown.stdout)
        for profile in PROFILES:  # the profile files at that commit (a commit from before profiles/ uses today's)
            path = f"profiles/{profile}.yaml"
            at_rev = subprocess.run(["git", "show", f"{baseline_rev}:{path}"], capture_output=True, text=True)
            if at_rev.returncode == 0:
                (Path(tmp) / path).parent.mkdir(exist_ok=True)
                (Path(tmp) / path).write_text(at_rev.stdout)
        try:
            baseline = _flat(load_config(Path(tmp) / "params.yaml").to_dict())
        except ConfigError:
            return None
    current = _flat(dataclasses.asdict(cfg))
    return {key: value for key, value in current.items() if baseline.get(key, object()) != value}


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def launch_processes(module: str, cfg: SafeConfig) -> None:
    """Re-run this stage under `accelerate launch` when params ask for several processes (returns in the workers)."""
    from safe.distributed import relaunch_if_needed

    relaunch_if_needed(module, cfg.accelerate.num_processes, cfg.accelerate.mixed_precision)


def run_with_error_boundary(main: Callable[[], None]) -> None:
    """A stage's entry point behind the error boundary of the `safe` commands: an expected failure (bad params, a bad
    manifest row, unreadable media) prints one line naming the file and key and exits 2; a bug keeps its traceback."""
    from safe.errors import from_exception

    try:
        main()
    except Exception as err:  # noqa: BLE001 - re-raised unless it is an input error
        user_error = from_exception(err)
        if user_error is None:
            raise
        fail(user_error.render(), user_error.exit_code)


def fail(message: str, code: int = 1) -> None:
    """Stop the stage with a readable message (no traceback) and a non-zero exit: DVC stops the DAG here."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
