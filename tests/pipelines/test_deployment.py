"""The training deployment on a real Prefect server (tests/conftest.py: prefect_server): what `safe schedule` refuses
before registering anything, one run at a time on a process worker, and (integration) the tiny-profile DAG served by
`safe schedule` and triggered twice."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from prefect_server import free_port, stop_process_group  # tests/prefect_server.py

BIN = Path(sys.executable).parent
DAG_STAGES = ["prepare_data", "extract_features", "base_vl", "stage_a", "stage_b", "stage_c", "evaluate", "promote"]

# One stage that takes a few seconds and records when it ran, to see whether two runs overlap.
WORK_SCRIPT = textwrap.dedent("""
    import pathlib, time
    with open("spans.log", "a") as log:
        log.write(f"start {time.time()}\\n")
    time.sleep(4)
    pathlib.Path("out.txt").write_text("done")
    with open("spans.log", "a") as log:
        log.write(f"end {time.time()}\\n")
""")


@pytest.fixture()
def project(tmp_path) -> Path:
    folder = tmp_path / "proj"
    folder.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=folder, check=True)
    (folder / "work.py").write_text(WORK_SCRIPT)
    (folder / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"work": {
        "cmd": "python work.py", "deps": ["work.py"], "outs": ["out.txt"]}}}))
    (folder / "params.yaml").write_text("profile: tiny\n")
    return folder


def safe_schedule(*args: str, env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "safe"), "schedule", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)


def assert_refused(result: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, one `error:` line on stderr naming what is wrong, no traceback, nothing on stdout."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def deployment_names(server) -> set[str]:
    with server.client() as client:
        return {d.name for d in client.read_deployments()}


def create_pool(server, name: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate

    with server.client() as client:
        client.create_work_pool(WorkPoolCreate(name=name, type="process"), overwrite=True)


def test_a_bad_cron_is_refused_in_one_line(prefect_server, project):
    result = safe_schedule("--cron", "61 * * * *", "--name", "bad-cron", env=prefect_server.env, cwd=project)
    assert_refused(result, "--cron '61 * * * *'", "'0 3 * * *'")
    assert "bad-cron" not in deployment_names(prefect_server)


def test_a_folder_without_dvc_yaml_is_refused(prefect_server, tmp_path):
    (tmp_path / "params.yaml").write_text("profile: tiny\n")
    result = safe_schedule("--project-dir", str(tmp_path), "--name", "not-a-project", "--register-only",
                           env=prefect_server.env, cwd=tmp_path)
    assert_refused(result, f"{tmp_path.resolve()} holds no dvc.yaml", "--project-dir")
    assert "not-a-project" not in deployment_names(prefect_server)


def test_serving_without_a_server_is_refused_and_says_how_to_start_one(project, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect_home")
    result = safe_schedule(env=env, cwd=project)
    assert_refused(result, "PREFECT_API_URL is not set", "prefect server start --host 127.0.0.1",
                   "PREFECT_API_URL=http://127.0.0.1:4200/api")


def test_a_server_that_does_not_answer_is_refused(project, tmp_path):
    url = f"http://127.0.0.1:{free_port()}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect_home"), "PREFECT_API_URL": url})
    assert_refused(safe_schedule("--register-only", env=env, cwd=project), url, "does not answer")


def test_a_missing_work_pool_is_named_with_the_command_that_creates_it(prefect_server, project):
    result = safe_schedule("--work-pool", "no-such-pool", "--name", "pool-missing", env=prefect_server.env,
                           cwd=project)
    assert_refused(result, "'no-such-pool' not found", "prefect work-pool create no-such-pool --type process")
    assert "pool-missing" not in deployment_names(prefect_server)


def test_work_pool_without_register_only_registers_for_the_pool_and_returns(prefect_server, project):
    create_pool(prefect_server, "safe-pool-a")
    result = safe_schedule("--work-pool", "safe-pool-a", "--name", "for-pool", "--cron", "*/5 * * * *",
                           env=prefect_server.env, cwd=project)
    assert result.returncode == 0, result.stderr
    assert "registered deployment 'safe-training/for-pool'" in result.stdout
    with prefect_server.client() as client:
        deployment = client.read_deployment_by_name("safe-training/for-pool")
    assert deployment.work_pool_name == "safe-pool-a"
    assert deployment.parameters == {"project_dir": str(project.resolve())}  # the default --project-dir is "."


def test_two_runs_on_a_process_worker_never_overlap(prefect_server, project):
    """Both runs are triggered at once (forced, so each does the stage's work): the deployment's concurrency limit
    makes the second wait for a slot, then run after the first has finished."""
    create_pool(prefect_server, "safe-pool-b")
    registered = safe_schedule("--work-pool", "safe-pool-b", "--name", "overlap", "--project-dir", str(project),
                               env=prefect_server.env, cwd=project)
    assert registered.returncode == 0, registered.stderr
    log = project.parent / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "safe-pool-b"],
                                  env={**prefect_server.env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with prefect_server.client() as client:
            deployment = client.read_deployment_by_name("safe-training/overlap")
            ids = [client.create_flow_run_from_deployment(deployment.id, parameters={"force": True}).id
                   for _ in range(2)]
        runs = [prefect_server.wait_for_run(run_id, timeout=600, process=worker, log=log) for run_id in ids]
        with prefect_server.client() as client:
            states = [[s.name for s in client.read_flow_run_states(run_id)] for run_id in ids]
    finally:
        stop_process_group(worker)
    assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], [r.state for r in runs]
    first, second = sorted(runs, key=lambda r: r.start_time)
    assert second.start_time >= first.end_time
    assert any("AwaitingConcurrencySlot" in names for names in states), states
    spans = [line.split() for line in (project / "spans.log").read_text().splitlines()]
    assert [kind for kind, _ in spans] == ["start", "end", "start", "end"]  # the stage never ran twice at once


@pytest.mark.integration
def test_served_deployment_runs_the_tiny_dag_then_reruns_nothing(tiny_deployment):
    first, second = tiny_deployment.runs
    assert first.state.is_completed(), first.state
    assert first.state.message.startswith("decision=") and first.state.message.endswith(
        "stages_run=" + ",".join(DAG_STAGES))
    expected_tasks = {"check-params", "data-checks-prepare_data", *(f"dvc-repro-{s}" for s in DAG_STAGES[1:])}
    assert first.tasks == dict.fromkeys(expected_tasks, "COMPLETED")  # one task per stage
    parent = first.mlflow_parent
    assert parent.info.status == "FINISHED" and parent.data.tags["safe.started_by"] == "prefect"
    assert parent.data.tags["safe.stages_run"] == ",".join(DAG_STAGES)
    dst = tiny_deployment.project
    for out in ("data/prepared/manifest.jsonl", "data/models/safe/gate", "data/eval/promotion.json"):
        assert (dst / out).exists(), out
    assert set(yaml.safe_load((dst / "dvc.lock").read_text())["stages"]) == set(DAG_STAGES)

    assert second.state.is_completed(), second.state
    assert second.state.message.endswith("stages_run=none (all cached)")
    assert second.mlflow_parent.data.tags["safe.stages_run"] == "(none: all cached)"
    assert second.mlflow_parent.data.tags["safe.decision"] == parent.data.tags["safe.decision"]
    assert second.mlflow_parent.info.run_id != parent.info.run_id
