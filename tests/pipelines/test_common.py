"""pipelines/common.py: the code a resumable stage's checkpoint key covers is what the stage imports, and every
stage entry point fails on bad input with one line instead of a traceback."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.common import stage_code

REPO = Path(__file__).resolve().parents[2]
STAGES = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


def test_the_real_stage_a_key_covers_its_trainer_and_augmentation():
    names = {str(p) for p in stage_code("stage_a")}
    assert {"safe/training/stage_a.py", "safe/training/losses.py", "pipelines/stage_a.py"} <= names


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_entry_point_runs_behind_the_error_boundary(stage):
    tree = ast.parse((REPO / "pipelines" / f"{stage}.py").read_text())
    guard = tree.body[-1]
    assert isinstance(guard, ast.If) and "__main__" in ast.unparse(guard.test)
    assert ast.unparse(guard.body[0]).strip() == "run_with_error_boundary(main)"


def test_a_stage_given_bad_params_prints_one_line_naming_the_key(tmp_path):
    shutil.copytree(REPO / "profiles", tmp_path / "profiles")
    params = (REPO / "params.yaml").read_text().replace("  seed: 0\n", "  seed: -3x\n", 1)
    assert "seed: -3x" in params
    (tmp_path / "params.yaml").write_text(params)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipelines.prepare_data"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: params.yaml: data.seed must be an integer >= 0, got '-3x' (string)"
    assert not (tmp_path / "data").exists()  # nothing written
