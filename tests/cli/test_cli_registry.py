"""`--model champion` resolution (project folder, SAFE_PROJECT_DIR, MLFLOW_TRACKING_URI) and the README's pyfunc
snippet, run as written against a real registry in a temporary project."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from cli_contract import QUESTION, ROOT, expect_error, files_under, run

GOOD = {"retention_drop": 0.0, "audio_gain": 0.1, "skip_rate": 0.5, "irrelevant_flip_rate": 0.0, "forced_flip_rate": 0.0,
        "n_test": 4}


@pytest.fixture(scope="module")
def project(tmp_path_factory, bundle):
    """A project folder (params.yaml, dvc.yaml) whose registry holds the tiny bundle as `champion`."""
    from safe import tracking
    from safe.eval.criteria import Thresholds

    folder = tmp_path_factory.mktemp("project")
    (folder / "params.yaml").write_text("profile: tiny\n")
    (folder / "dvc.yaml").write_text("stages: {}\n")
    env = {"SAFE_PROJECT_DIR": str(folder), "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"}
    saved = {k: tracking.os.environ.get(k) for k in env}
    tracking.os.environ.update(env)
    try:
        (folder / "mlruns").mkdir()
        assert tracking.promote(bundle, GOOD, Thresholds()).decision == "champion"
    finally:
        for key, value in saved.items():
            tracking.os.environ.pop(key) if value is None else tracking.os.environ.__setitem__(key, value)
    return folder


def test_champion_from_the_project_folder(project, media, capsys, monkeypatch):
    monkeypatch.chdir(project)
    code, out, err = run(["infer", "--image", media["image"], "--question", QUESTION, "--json"], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["budget"] == 0  # no audio: the base answers
    assert (project / ".safe_cache" / "registry" / "safe-audio-vl" / "v1" / "MLmodel").is_file()


def test_champion_through_safe_project_dir_creates_nothing_here(project, media, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SAFE_PROJECT_DIR", str(project))
    before = files_under(tmp_path)
    code, _, err = run(["infer", "--image", media["image"], "--question", QUESTION], capsys)
    assert code == 0, err
    assert files_under(tmp_path) == before


def test_project_dir_without_a_registry(media, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SAFE_PROJECT_DIR", str(tmp_path))
    expect_error(["infer", "--question", QUESTION], capsys, 2, f"SAFE_PROJECT_DIR={tmp_path}",
                 str(tmp_path / "mlruns" / "mlflow.db"))
    assert not (tmp_path / "mlruns").exists()


def test_registry_without_the_alias(project, capsys, monkeypatch):
    monkeypatch.chdir(project)
    expect_error(["infer", "--model", "challenger", "--question", QUESTION], capsys, 2, "'challenger'",
                 "safe-audio-vl")


def test_readme_pyfunc_snippet_runs_as_written(project):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    snippet = next(b for b in blocks if "models:/safe-audio-vl@champion" in b)
    code = "\n".join(line[2:] if line.startswith("  ") else line for line in snippet.splitlines())
    before = files_under(project)
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MLFLOW_TRACKING", "SAFE_"))}
    result = subprocess.run([sys.executable, "-c", code], cwd=project, env={**env, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "answer" in result.stdout and "budget" in result.stdout
    created = files_under(project) - before
    assert not any(p.endswith("mlflow.db") for p in created), created  # no stray store


def test_a_store_that_is_not_a_database(media, capsys, monkeypatch, tmp_path):
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "mlruns" / "mlflow.db").write_text("not sqlite")
    monkeypatch.chdir(tmp_path)
    expect_error(["infer", "--question", QUESTION], capsys, 2, "--model champion", "mlflow.db")
