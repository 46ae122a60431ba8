"""A throwaway git + DVC copy of the repository to run the real DAG in (integration tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Mapping

import yaml

from safe.environment import OFFLINE, TELEMETRY_OFF, interpreter_first_path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, env: dict, timeout: int = 1800) -> subprocess.CompletedProcess:
    """Run a command; a non-zero exit fails with the end of its output."""
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def copy_project(parent: Path, params: Mapping[str, Any]) -> tuple[Path, dict]:
    """Copy the repository's tracked and new files to `parent/repo`, override params.yaml sections with `params`
    (a section's keys are merged), commit it in a fresh git repository; returns (folder, environment)."""
    dst = Path(parent) / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        if (ROOT / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    current = yaml.safe_load((dst / "params.yaml").read_text())
    for key, value in params.items():
        current[key] = {**(current.get(key) or {}), **value} if isinstance(value, Mapping) else value
    (dst / "params.yaml").write_text(yaml.safe_dump(current, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "SAFE_"))}
    env.update({
        "PATH": interpreter_first_path(env.get("PATH", "")),
        "PREFECT_HOME": str(dst.parent / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING", **TELEMETRY_OFF, **OFFLINE, "SAFE_CACHE_DIR": str(dst.parent / "cache"),
        "PYTHONPATH": str(dst), "GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com",
        "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com",
    })
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        run(cmd, dst, env)
    return dst, env
