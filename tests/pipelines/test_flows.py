"""The Prefect training flow on a throwaway DVC project (git + dvc init in tmp_path), against a temporary Prefect API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from pipelines import flows
from safe import tracking

ROOT = Path(__file__).resolve().parents[2]

# One stage tracks itself through safe.tracking (to check nesting under the flow's parent run); the others are plain.
STAGE_SCRIPT = textwrap.dedent("""
    import json, pathlib, sys
    name = sys.argv[1]
    out = pathlib.Path("data")
    out.mkdir(exist_ok=True)
    if name == "prepare_data":
        with open("attempts.log", "a") as f:
            f.write("x\\n")
        if pathlib.Path("FAIL_CHECKS").exists():
            print("GX report: expectation expect_column_values_to_not_be_null failed on column 'question'")
            sys.exit(1)
        (out / "prepared.txt").write_text("rows")
    elif name == "train":
        from safe.tracking import stage_run
        with stage_run("train", params={"lr": 0.1}) as tracker:
            tracker.log_metrics({"loss": 0.5}, step=1)
            (out / "model.txt").write_text("weights")
    else:
        (out / "eval").mkdir(exist_ok=True)
        (out / "eval" / "promotion.json").write_text(json.dumps({"decision": "champion", "model_name": "m",
            "version": "3", "criteria": {"audio_gain": {"value": 0.1, "threshold": 0.05, "passed": True}}}))
""")

DVC_YAML = {"stages": {
    "prepare_data": {"cmd": "python stage.py prepare_data", "deps": ["stage.py"], "outs": ["data/prepared.txt"]},
    "train": {"cmd": "python stage.py train", "deps": ["stage.py", "data/prepared.txt"], "outs": ["data/model.txt"]},
    "promote": {"cmd": "python stage.py promote", "deps": ["data/model.txt"],
                "outs": [{"data/eval/promotion.json": {"cache": False}}]},
}}


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A temporary Prefect server and database for this module (a real API; starting it takes seconds)."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_HOME: str(tmp_path_factory.mktemp("prefect_home"))}):
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture()
def project(tmp_path, monkeypatch):
    folder = tmp_path / "proj"
    folder.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=folder, check=True)
    (folder / "stage.py").write_text(STAGE_SCRIPT)
    (folder / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (folder / "params.yaml").write_text("profile: tiny\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the flow uses the project's own store
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    return folder


def test_flow_runs_the_dag_nests_runs_and_then_reruns_nothing(prefect_api, project):
    outcome = flows.training_flow(project_dir=str(project))
    assert outcome["stages_run"] == ["prepare_data", "train", "promote"]
    assert (outcome["decision"], outcome["version"]) == ("champion", "3")
    assert outcome["criteria"]["audio_gain"]["passed"] is True

    mlf = tracking.client(project)
    parent = mlf.get_run(outcome["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["safe.started_by"] == "prefect"
    (train,) = tracking.stage_runs(parent.info.run_id, mlf)
    assert train.info.run_name == "train" and train.data.params == {"lr": "0.1"}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]
    assert train.data.tags["dvc.lock_state"] == "after_run"  # refreshed from the lock DVC wrote after the stage
    for entry in lock["deps"] + lock["outs"]:
        assert train.data.tags[f"dvc.train.{entry['path']}"] == entry["md5"]

    again = flows.training_flow(project_dir=str(project))
    assert again["stages_run"] == [] and again["decision"] == "champion"
    assert (project / "attempts.log").read_text().count("x") == 1  # DVC's cache kept prepare_data from running


def test_failing_first_stage_stops_the_flow_before_training(prefect_api, project):
    (project / "FAIL_CHECKS").write_text("")
    with pytest.raises(flows.StageFailed, match="GX report: expectation") as failure:
        flows.training_flow(project_dir=str(project))
    assert failure.value.stage == "prepare_data"
    assert (project / "attempts.log").read_text().count("x") == 2  # retried once, then stopped
    assert not (project / "data" / "model.txt").exists() and not (project / "data" / "eval").exists()
    mlf = tracking.client(project)
    parents = mlf.search_runs([tracking.experiment_id(mlf)], filter_string="tags.`safe.role` = 'pipeline'")
    assert [p.info.status for p in parents] == ["FAILED"]


def test_unknown_stage_is_named(prefect_api, project):
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['trian'\]"):
        flows.training_flow(project_dir=str(project), stages=["trian"])


def test_register_deployment_creates_the_cron_schedule(prefect_api, project):
    from prefect import get_client

    deployment_id = flows.register_deployment("safe-test", "0 3 * * *", str(project))
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.name == "safe-test"
    assert deployment.parameters == {"project_dir": str(project.resolve())}
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]


def test_read_outcome_checks_the_promotion_file(tmp_path):
    assert flows.read_outcome(tmp_path) == {"decision": None, "version": None, "criteria": {}}
    path = tmp_path / flows.PROMOTION
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"decision": "rejected"}))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['version', 'criteria'\]"):
        flows.read_outcome(tmp_path)
