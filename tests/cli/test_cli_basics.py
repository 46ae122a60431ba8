"""What every command shares: --version, help for every option, documented exit codes, the error boundary."""

from __future__ import annotations

import argparse

import pytest

from cli_contract import QUESTION, run, run_subprocess
from safe import cli


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.startswith("safe 0.")


@pytest.mark.parametrize("command", ["infer", "evaluate", "validate", "ingest", "synth"])
def test_every_option_has_help_and_exit_codes_are_documented(command, capsys):
    parser = _subparsers(cli.build_parser())[command]
    undocumented = [a.dest for a in parser._actions if not a.help]
    assert undocumented == []
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and "exit codes:" in out


def test_help_is_fast_and_needs_no_heavy_import(tmp_path):
    code = ("import sys, safe.cli; safe.cli.build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'transformers', 'mlflow', 'great_expectations') if m in sys.modules))")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(__import__("cli_contract").ROOT), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"


def test_unexpected_error_is_one_line_exit_3(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("something inside broke")

    monkeypatch.setattr(cli, "cmd_infer", broken)
    code, _, err = run(["infer", "--question", QUESTION], capsys)
    assert code == 3 and err.count("\n") == 1 and "RuntimeError: something inside broke" in err and "--debug" in err


def test_debug_shows_the_traceback(monkeypatch):
    def broken(args):
        raise RuntimeError("inside")

    monkeypatch.setattr(cli, "cmd_infer", broken)
    with pytest.raises(RuntimeError, match="inside"):
        cli.main(["infer", "--question", QUESTION, "--debug"])
    with pytest.raises(RuntimeError, match="inside"):
        cli.main(["--debug", "infer", "--question", QUESTION])


def test_unknown_command_and_option_are_usage_errors(tmp_path):
    result = run_subprocess(["frobnicate"], tmp_path)
    assert result.returncode == 2 and "invalid choice" in result.stderr and "Traceback" not in result.stderr
    result = run_subprocess(["infer", "--question", QUESTION, "--colour", "red"], tmp_path)
    assert result.returncode == 2 and "--colour" in result.stderr
