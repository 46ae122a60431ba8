"""What a stage knows about the DVC experiment it runs in, the headline metrics file, and the MLflow tags they give."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from dvc.utils.hydra import apply_overrides
from safetensors.numpy import save_file

from pipelines.common import dvc_experiment, params_diff
from safe import tracking
from safe.config import load_config
from safe.eval.criteria import Thresholds, evaluate_criteria
from safe.eval.headline import headline_json, headline_metrics

ROOT = Path(__file__).resolve().parents[2]
METRICS = {"retention_drop": 0.002, "audio_gain": 0.10, "skip_rate": 0.8, "irrelevant_flip_rate": 0.0,
           "forced_flip_rate": 0.01, "vl_acc_base": 0.8, "vl_acc_safe": 0.798, "audio_acc_base": 0.3, "audio_acc_safe": 0.4, "n_test": 200}


def test_headline_puts_the_verdict_and_criteria_first_in_that_order():
    headline = headline_metrics(METRICS, evaluate_criteria(METRICS, Thresholds()))
    assert list(headline) == ["passed", "retention_drop", "audio_gain", "skip_rate", "irrelevant_flip_rate",
                              "forced_flip_rate", "failed", "audio_acc_safe", "vl_acc_safe"]
    assert headline["passed"] is False and headline["failed"] == "skip_rate"
    assert list(json.loads(headline_json(headline))) == list(headline)  # the file keeps the column order
    passing = {**METRICS, "skip_rate": 0.5}
    assert headline_metrics(passing, evaluate_criteria(passing, Thresholds()))["failed"] == "none"


def test_headline_names_a_missing_metric():
    with pytest.raises(KeyError, match="audio_acc_safe"):
        headline_metrics({k: v for k, v in METRICS.items() if k != "audio_acc_safe"},
                         evaluate_criteria(METRICS, Thresholds()))


@pytest.fixture()
def repo(tmp_path, monkeypatch):
    """A git repository holding the project's params.yaml at its first commit; the working directory."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@x"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for cmd in (["git", "init", "-q"], ["git", "add", "params.yaml"], ["git", "commit", "-qm", "baseline"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    return tmp_path


def _head(repo: Path) -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()


def test_params_diff_names_only_what_dvc_changed(repo):
    """DVC's rewrite unquotes `no` and re-lays lists; only the overridden value counts as a change."""
    apply_overrides("params.yaml", ["stage_b.alpha=0.2", "model.token_budgets=[0,4,8]"])
    diff = params_diff(load_config("params.yaml"), _head(repo))
    assert diff == {"stage_b.alpha": 0.2, "model.token_budgets": [0, 4, 8]}


def test_params_diff_applies_profile_defaults(repo):
    apply_overrides("params.yaml", ["profile=tiny"])
    diff = params_diff(load_config("params.yaml"), _head(repo))
    assert diff["profile"] == "tiny" and diff["data.size"] == 400  # the tiny profile's own size


def test_params_diff_sees_a_profile_file_change(repo):
    shutil.copytree(ROOT / "profiles", repo / "profiles")
    subprocess.run(["git", "add", "profiles"], cwd=repo, check=True)
    subprocess.run(["git", "commit", "-qm", "profiles"], cwd=repo, check=True)
    path = repo / "profiles" / "demo.yaml"
    path.write_text(path.read_text().replace("  steps: 800\n", "  steps: 801\n"))
    assert params_diff(load_config("params.yaml"), _head(repo)) == {"stage_b.steps": 801}


def test_params_diff_is_none_for_an_unknown_baseline(repo):
    assert params_diff(load_config("params.yaml"), "0" * 40) is None


def test_the_experiment_comes_from_dvcs_env(repo, monkeypatch):
    cfg = load_config("params.yaml")
    assert dvc_experiment(cfg) is None  # a plain `dvc repro`
    apply_overrides("params.yaml", ["stage_b.alpha=0.05"])
    monkeypatch.setenv("DVC_EXP_NAME", "silky-ease")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", _head(repo))
    exp = dvc_experiment(load_config("params.yaml"))
    assert exp.tags() == {tracking.EXP_NAME_TAG: "silky-ease", tracking.EXP_BASELINE_TAG: _head(repo),
                          tracking.EXP_PARAMS_TAG: "stage_b.alpha=0.05",
                          f"{tracking.EXP_PARAM_TAG_PREFIX}stage_b.alpha": "0.05"}


def test_the_store_is_the_dvc_projects_when_a_queue_runs_the_stage_elsewhere(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.PROJECT_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path / "project"))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'project' / 'mlruns' / 'mlflow.db'}"
    assert tracking.project_dir() == tmp_path.resolve()  # params, dvc.lock and commit: the temp copy's own


def test_runs_and_the_registered_version_name_the_experiment(tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("profile: tiny\n")
    monkeypatch.setenv(tracking.PROJECT_ENV, str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    save_file({"w": np.zeros(4, dtype=np.float32)}, str(bundle / "weights.safetensors"))
    exp = tracking.DvcExperiment("silky-ease", "a" * 40, {"stage_b.alpha": 0.05})

    with tracking.stage_run("stage_b", experiment=exp):
        pass
    result = tracking.promote(bundle, METRICS, Thresholds(), experiment=exp)

    mlf = tracking.client()
    parent = mlf.get_run(mlf.get_run(result.run_id).data.tags["mlflow.parentRunId"])
    assert parent.info.run_name == "exp silky-ease"
    stages = tracking.stage_runs(parent.info.run_id, mlf)
    assert [r.info.run_name for r in stages] == ["stage_b", "promote"]
    for run in [parent, *stages]:
        assert run.data.tags[tracking.EXP_NAME_TAG] == "silky-ease"
        assert run.data.tags[tracking.EXP_PARAMS_TAG] == "stage_b.alpha=0.05"
    version = mlf.get_model_version(tracking.MODEL_NAME, result.version)
    assert version.tags[tracking.EXP_NAME_TAG] == "silky-ease"
    assert version.tags[f"{tracking.EXP_PARAM_TAG_PREFIX}stage_b.alpha"] == "0.05"
    assert version.description.startswith("Registered from DVC experiment silky-ease (baseline aaaaaaa;")
