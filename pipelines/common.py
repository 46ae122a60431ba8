"""What every stage entry shares: the params, the data layout under data/, and the tracked stage context."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator

import yaml

for _key, _value in {
    "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "DO_NOT_TRACK": "1",
}.items():
    os.environ.setdefault(_key, _value)

from safe.config import SafeConfig, load_config, stage_params  # noqa: E402

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
    """The Python files dvc.yaml lists as `stage`'s dependencies: what a resumable run's checkpoint key must include,
    so a checkpoint written by other code is never resumed (DVC reruns the stage when they change)."""
    stages = (yaml.safe_load(Path("dvc.yaml").read_text()) or {}).get("stages") or {}
    if stage not in stages:
        raise KeyError(f"dvc.yaml has no stage {stage!r}")
    return [Path(d) for d in stages[stage].get("deps", []) if str(d).endswith(".py")]


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
    with stage_run(stage, params=stage_params(cfg, *sections), tags={"profile": cfg.profile}) as tracker:
        yield tracker


def launch_processes(module: str, cfg: SafeConfig) -> None:
    """Re-run this stage under `accelerate launch` when params ask for several processes (returns in the workers)."""
    from safe.distributed import relaunch_if_needed

    relaunch_if_needed(module, cfg.accelerate.num_processes, cfg.accelerate.mixed_precision)


def fail(message: str, code: int = 1) -> None:
    """Stop the stage with a readable message (no traceback) and a non-zero exit: DVC stops the DAG here."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)
