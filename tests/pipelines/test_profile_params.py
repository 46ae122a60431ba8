"""The profile files are DVC params: a change in the active profile's file shows in `dvc params diff`, and `dvc status`
marks exactly the stages that declare the changed section (a change in another profile's file marks none).

Runs DVC on the project's real dvc.yaml params, params.yaml and profiles/, with each stage's command, deps and outs
replaced by a stub (one small file per stage, chained in dvc.yaml's order) so nothing trains."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def stub_project(tmp_path_factory) -> Path:
    """A git + DVC folder with the project's params, profiles and dvc.yaml params, stub stages, reproduced."""
    folder = tmp_path_factory.mktemp("profile_params")
    shutil.copy(ROOT / "params.yaml", folder / "params.yaml")
    shutil.copytree(ROOT / "profiles", folder / "profiles")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    stub, previous = {}, None
    for name, stage in stages.items():
        stub[name] = {"cmd": f"echo {name} > {name}.out", "deps": [previous] if previous else [],
                      "params": stage["params"], "outs": [f"{name}.out"]}
        previous = f"{name}.out"
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": stub}, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "repro", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "reproduced"]):
        _run(cmd, folder)
    return folder


def _changed_params(folder: Path) -> dict[str, dict[str, dict[str, str]]]:
    """{stage: {params file: {section: "modified" | ...}}} from `dvc status --json` (stub outs never change)."""
    status = json.loads(_run(["dvc", "status", "--json"], folder) or "{}")
    return {stage: {file: what for entry in entries for file, what in entry.get("changed deps", {}).items()}
            for stage, entries in status.items()}


def _params_diff(folder: Path) -> list[list[str]]:
    """`dvc params diff` rows as [path, param, HEAD, workspace]."""
    return [line.split() for line in _run(["dvc", "params", "diff"], folder).splitlines()[1:] if line.strip()]


@pytest.fixture()
def project(stub_project):
    yield stub_project
    _run(["git", "checkout", "--", "."], stub_project)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} in {path}"
    path.write_text(text.replace(old, new))


def test_the_reproduced_stub_project_is_up_to_date(project):
    assert _changed_params(project) == {}


def test_a_stage_b_value_in_the_active_profile_reruns_only_stage_b(project):
    _edit(project / "profiles" / "demo.yaml", "  steps: 800\n", "  steps: 801\n")
    assert _params_diff(project) == [["profiles/demo.yaml", "stage_b.steps", "800", "801"]]
    assert _changed_params(project) == {"stage_b": {"profiles/demo.yaml": {"stage_b": "modified"}}}


def test_a_model_value_marks_the_stages_that_read_the_model_section(project):
    _edit(project / "profiles" / "demo.yaml", "  lora_rank: 32\n", "  lora_rank: 16\n")
    changed = {"profiles/demo.yaml": {"model": "modified"}}
    assert _changed_params(project) == {stage: changed for stage in ("extract_features", "base_vl", "stage_a")}


def test_an_inactive_profile_marks_nothing(project):
    _edit(project / "profiles" / "tiny.yaml", "  steps: 200\n", "  steps: 201\n")
    assert _changed_params(project) == {}
    assert _params_diff(project) == []


def test_switching_the_profile_marks_every_stage(project):
    _edit(project / "params.yaml", "profile: demo\n", "profile: tiny\n")
    changed = _changed_params(project)
    assert set(changed) == set(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"])
    assert all("profiles/tiny.yaml" in files for files in changed.values())
