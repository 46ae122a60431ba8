"""The contract every refused input must meet, as helpers for the command tests (imported by name: tests/cli is on
sys.path under pytest's default import mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from safe.cli import main

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "what color is the circle ?"


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file()}


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """`safe ARGV` in-process; returns (exit code, stdout, stderr) and checks that no traceback was printed."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    return code, out, err


def expect_error(argv: list[str], capsys, code: int, *names: str) -> str:
    """Run, and check the contract of a refused input: the exit code, ONE `error:` line naming every one of
    `names` (file, row, key), no traceback, and no file created or changed in the test's folder. Returns the line."""
    here = Path.cwd()
    folder = here.parent if here.name == "cwd" else here  # the test's tmp_path (see conftest._isolated)
    before = _snapshot(folder)
    got, _, err = run(argv, capsys)
    assert _snapshot(folder) == before, "a refused command wrote something"
    assert got == code, f"exit {got}, expected {code}; stderr:\n{err}"
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for name in names:
        assert str(name) in errors[0], f"{name!r} not named in: {errors[0]}"
    return errors[0]


def run_subprocess(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 300):
    """`python -m safe.cli ARGS` as a user runs it (fresh interpreter, real exit code)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "SAFE_"))}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "safe.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
