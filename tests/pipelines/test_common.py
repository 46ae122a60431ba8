"""pipelines/common.py: the code a resumable stage's checkpoint key covers is what the stage imports."""

from __future__ import annotations

from pipelines.common import stage_code


def test_the_real_stage_a_key_covers_its_trainer_and_augmentation():
    names = {str(p) for p in stage_code("stage_a")}
    assert {"safe/training/stage_a.py", "safe/training/losses.py", "pipelines/stage_a.py"} <= names
