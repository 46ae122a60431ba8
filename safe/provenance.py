"""Where a number was measured: the commit, the machine and the date that benchmarks and generated results carry."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path


def git_commit(cwd: Path | None = None, short: bool = False) -> str:
    """`git rev-parse [--short] HEAD` in `cwd` (default: the working directory), or "unknown" (no git, not a
    repository, no commit yet)."""
    try:
        out = subprocess.run(["git", "rev-parse", *(["--short"] if short else []), "HEAD"], cwd=cwd,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def short_commit(cwd: Path | None = None) -> str:
    """The abbreviated commit benchmarks and results.md print."""
    return git_commit(cwd, short=True)


def machine() -> str:
    """'host (N cores, arch)'."""
    return f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})"


def provenance(cwd: Path | None = None) -> dict[str, str]:
    """{"commit", "machine", "date" (UTC, ISO 8601)} for a benchmark's result file."""
    return {"commit": short_commit(cwd), "machine": machine(),
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
