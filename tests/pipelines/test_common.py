"""pipelines/common.py: the code a resumable stage's checkpoint key covers comes from dvc.yaml."""

from __future__ import annotations

import pytest

from pipelines.common import stage_code


def test_stage_code_lists_the_python_deps_of_the_stage(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  stage_a:\n    cmd: python -m pipelines.stage_a\n"
        "    deps: [pipelines/stage_a.py, safe/training/stage_a.py, data/prepared, data/features]\n")
    monkeypatch.chdir(tmp_path)
    assert [str(p) for p in stage_code("stage_a")] == ["pipelines/stage_a.py", "safe/training/stage_a.py"]
    with pytest.raises(KeyError, match="no stage 'stage_z'"):
        stage_code("stage_z")


def test_the_real_stage_a_key_covers_its_trainer_and_augmentation():
    names = {str(p) for p in stage_code("stage_a")}
    assert {"safe/training/stage_a.py", "safe/training/augment.py", "pipelines/stage_a.py"} <= names
