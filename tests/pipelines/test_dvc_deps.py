"""dvc.yaml's deps cover the code each stage imports, so a code change always reruns the stages it can change."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.code_deps import import_closure, missing_code_deps
from pipelines.common import stage_code


def test_every_stage_lists_the_code_it_imports():
    assert missing_code_deps() == {}, "add these files to the stages' deps in dvc.yaml"


def test_a_dep_removed_from_dvc_yaml_is_reported(tmp_path):
    spec = yaml.safe_load(Path("dvc.yaml").read_text())
    spec["stages"]["stage_a"]["deps"].remove("safe/models/standardizer.py")
    edited = tmp_path / "dvc.yaml"
    edited.write_text(yaml.safe_dump(spec))
    assert missing_code_deps(edited) == {"stage_a": ["safe/models/standardizer.py"]}


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def test_closure_follows_module_level_and_stage_imports_not_library_lazy_ones(tmp_path):
    _write(tmp_path, {
        "pipelines/__init__.py": "",
        "pipelines/train.py": "from pipelines.common import x\n\ndef main():\n    from safe.data import synth\n",
        "pipelines/common.py": "x = 1\n",
        "safe/__init__.py": "",
        "safe/data/__init__.py": "",
        "safe/data/synth.py": "from . import media\ntry:\n    import safe.io\nexcept ImportError:\n    pass\n"
                              "def later():\n    import safe.inference\n",
        "safe/data/media.py": "",
        "safe/io.py": "",
        "safe/inference.py": "",
    })
    found = {p.relative_to(tmp_path).as_posix() for p in import_closure("pipelines.train", tmp_path)}
    assert found == {"pipelines/__init__.py", "pipelines/train.py", "pipelines/common.py", "safe/__init__.py",
                     "safe/data/__init__.py", "safe/data/synth.py", "safe/data/media.py", "safe/io.py"}


def test_stage_a_checkpoint_key_covers_the_code_dvc_yaml_once_missed():
    names = {p.as_posix() for p in stage_code("stage_a")}
    assert {"safe/models/standardizer.py", "safe/distributed.py", "safe/data/features.py",
            "safe/training/stage_a.py", "pipelines/stage_a.py"} <= names
