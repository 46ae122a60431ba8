"""The Prefect training flow on a throwaway DVC project (git + dvc init in tmp_path), against a temporary Prefect API."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pipelines import flows
from safe import tracking
from safe.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# One stage tracks itself through safe.tracking (to check nesting under the flow's parent run); the others are plain.
STAGE_SCRIPT = textwrap.dedent("""
    import json, pathlib, sys, time
    name = sys.argv[1]
    out = pathlib.Path("data")
    out.mkdir(exist_ok=True)
    with open(f"{name}.attempts", "a") as f:
        f.write(f"{time.time()}\\n")
    if name == "prepare_data":
        if pathlib.Path("FAIL_CHECKS").exists():  # what pipelines.common.fail prints when a GX check fails
            print("error: data checks failed for manifest.jsonl; nothing was written.", file=sys.stderr)
            print("| expect_column_values_to_not_be_null | question | 3 rows |", file=sys.stderr)
            sys.exit(1)
        (out / "prepared.txt").write_text("rows")
    elif name == "train":
        if pathlib.Path("BAD_PARAMS").exists():
            from safe.config import load_config
            load_config("BAD_PARAMS")
        flaky = pathlib.Path("FLAKY_ONCE")
        if flaky.exists():
            flaky.unlink()
            sys.exit("killed (out of memory)")
        from safe.tracking import stage_run
        with stage_run("train", params={"lr": 0.1}) as tracker:
            tracker.log_metrics({"loss": 0.5}, step=1)
            (out / "model.txt").write_text("weights")
    else:
        (out / "eval").mkdir(exist_ok=True)
        (out / "eval" / "promotion.json").write_text(json.dumps({"decision": "champion", "model_name": "m",
            "version": "3", "criteria": {"audio_gain": {"value": 0.1, "threshold": 0.05, "passed": True}}}))
""")


def attempts(project: Path, stage: str) -> list[float]:
    """When the stage's command started, once per attempt."""
    path = project / f"{stage}.attempts"
    return [float(t) for t in path.read_text().split()] if path.exists() else []


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
    state = flows.training_flow(project_dir=str(project), return_state=True)
    assert state.is_completed()
    assert state.message == "decision=champion version=3 stages_run=prepare_data,train,promote"
    outcome = state.result()
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
    assert len(attempts(project, "prepare_data")) == 1  # DVC's cache kept prepare_data from running


def _task_runs(flow_state) -> dict[str, tuple[str, str]]:
    """{task run name: (state type, everything it logged)} of one flow run, read back from the Prefect API (logs
    reach it in batches: wait until each task's closing "Finished in state" line is there)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterTaskRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id])))
        while True:
            logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[r.id for r in runs])))
            text = {r.id: "\n".join(log.message for log in logs if log.task_run_id == r.id) for r in runs}
            if all("Finished in state" in t for t in text.values()) or time.monotonic() > deadline:
                return {r.name: (r.state.type.value, text[r.id]) for r in runs}
            time.sleep(1)


def test_failed_data_check_fails_its_own_task_once_with_the_report_and_stops_before_training(prefect_api, project):
    (project / "FAIL_CHECKS").write_text("")
    state = flows.training_flow(project_dir=str(project), return_state=True)
    assert state.is_failed()
    with pytest.raises(flows.DataCheckFailed, match="expect_column_values_to_not_be_null") as failure:
        state.result()
    assert failure.value.stage == "prepare_data"
    assert str(pickle.loads(pickle.dumps(failure.value))) == str(failure.value)  # Prefect may pickle it into a state
    assert len(attempts(project, "prepare_data")) == 1  # a failed check is not retried
    tasks = _task_runs(state)
    assert set(tasks) == {"check-params", "data-checks-prepare_data"}  # nothing after the data checks ran
    status, log = tasks["data-checks-prepare_data"]
    assert status == "FAILED" and "expect_column_values_to_not_be_null | question | 3 rows" in log
    assert not (project / "data" / "model.txt").exists() and not (project / "data" / "eval").exists()
    mlf = tracking.client(project)
    parents = mlf.search_runs([tracking.experiment_id(mlf)], filter_string="tags.`safe.role` = 'pipeline'")
    assert [p.info.status for p in parents] == ["FAILED"]


def test_a_stage_that_may_heal_is_retried_once_after_the_delay(prefect_api, project, monkeypatch):
    assert flows.run_stage.retries == 1 and flows.run_stage.retry_delay_seconds == flows.STAGE_RETRY_DELAY_S \
        and flows.STAGE_RETRY_DELAY_S >= 10
    monkeypatch.setattr(flows, "run_stage", flows.run_stage.with_options(retry_delay_seconds=3))
    (project / "FLAKY_ONCE").write_text("")
    outcome = flows.training_flow(project_dir=str(project))
    assert outcome["stages_run"] == ["prepare_data", "train", "promote"]
    first, second = attempts(project, "train")
    assert second - first >= 3


def test_a_stage_refusing_params_is_not_retried(prefect_api, project):
    (project / "BAD_PARAMS").write_text("profile: tiny\nstage_a: {lr: 1}\n")
    with pytest.raises(flows.BadParams, match="unknown key stage_a.lr"):
        flows.training_flow(project_dir=str(project))
    assert len(attempts(project, "train")) == 1


def test_bad_params_stop_the_flow_before_any_stage_or_run(prefect_api, project):
    (project / "params.yaml").write_text("profile: tiny\ntrain_steps: 3\n")
    with pytest.raises(ConfigError, match="unknown top-level key 'train_steps'"):
        flows.training_flow(project_dir=str(project))
    assert attempts(project, "prepare_data") == []
    assert not (project / "mlruns").exists()


def test_unknown_stage_is_named(prefect_api, project):
    with pytest.raises(ValueError, match=r"unknown stage\(s\) \['trian'\]"):
        flows.training_flow(project_dir=str(project), stages=["trian"])


def test_a_deployment_run_validates_the_flow_parameters():
    """A served flow defined in `__main__` reaches the run's process pickled by value, with only the globals its code
    uses: parameter annotations that need other names (`Sequence` under postponed annotations) then cannot resolve.
    A work-pool run imports the module-path entrypoint instead."""
    import cloudpickle
    from prefect.flows import load_flow_from_entrypoint

    cloudpickle.register_pickle_by_value(flows)
    try:
        shipped = cloudpickle.loads(cloudpickle.dumps(flows.training_flow))
    finally:
        cloudpickle.unregister_pickle_by_value(flows)
    imported = load_flow_from_entrypoint("pipelines.flows.training_flow")
    for loaded in (shipped, imported):
        assert loaded.validate_parameters({"project_dir": "/p", "stages": ["train"], "force": "true"}) == {
            "project_dir": "/p", "stages": ["train"], "force": True}


def test_register_deployment_creates_the_cron_schedule_one_run_at_a_time(prefect_api, project):
    from prefect import get_client

    deployment_id = flows.register_deployment("safe-test", "0 3 * * *", str(project))
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert deployment.name == "safe-test"
    assert deployment.parameters == {"project_dir": str(project.resolve())}
    assert [s.schedule.cron for s in deployment.schedules] == ["0 3 * * *"]
    assert deployment.entrypoint == "pipelines.flows.training_flow"
    assert deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
    skipping = flows.register_deployment("safe-test", "0 3 * * *", str(project), on_overlap="skip")
    with get_client(sync_client=True) as client:
        assert client.read_deployment(skipping).concurrency_options.collision_strategy.value == "CANCEL_NEW"


def test_read_outcome_checks_the_promotion_file(tmp_path):
    assert flows.read_outcome(tmp_path) == {"decision": None, "version": None, "criteria": {}}
    path = tmp_path / flows.PROMOTION
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"decision": "rejected"}))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['version', 'criteria'\]"):
        flows.read_outcome(tmp_path)


def test_run_command_prints_the_outcome_and_names_bad_params(prefect_api, project, capsys):
    assert flows.main(["run", "--project-dir", str(project), "--stages", "prepare_data"]) == 0
    assert json.loads(capsys.readouterr().out)["stages_run"] == ["prepare_data"]
    (project / "params.yaml").write_text("profile: huge\n")
    assert flows.main(["run", "--project-dir", str(project)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "profile must be one of" in err and "Traceback" not in err
