"""Shared fixtures: a tiny LLaVA built from config (CPU, seconds), telemetry off for every test, a tiny-profile copy
of the repository, a real Prefect server, and the tiny DAG run through a served deployment on it."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from prefect_server import PrefectServer, stop_process_group  # tests/prefect_server.py
from project_copy import copy_project  # tests/project_copy.py

from safe.environment import set_environment  # noqa: E402

set_environment()


@pytest.fixture(autouse=True)
def _tracking_uri_stays_with_its_test():
    """mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI (and keeps a module global); a test that points MLflow at its
    own store must not leave later tests, or their subprocesses, reading a store that no longer exists."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None and getattr(utils, "_tracking_uri", None) != before:
        utils._tracking_uri = before
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


TINY_TEXTS = [
    "what color is the circle ?", "how many shapes are there ?", "how many beeps do you hear ?",
    "red blue green yellow one two three four yes no dog cat",
]


@pytest.fixture(scope="session")
def tiny_base():
    """A frozen BaseVLModel around a 2-layer LLaVA (hidden 32) with a byte-level BPE tokenizer."""
    from safe.config import build_config
    from safe.models.base_vl import BaseVLModel, build_llava, build_processor, build_subword_tokenizer

    cfg = build_config({"profile": "tiny", "model": {
        "vision_hidden": 32, "text_hidden": 32, "text_intermediate": 64, "text_heads": 4, "fusion_heads": 4}}).model
    tokenizer = build_subword_tokenizer(TINY_TEXTS)
    return BaseVLModel(build_llava(cfg, tokenizer, 32), build_processor(tokenizer, 32, 8))


@pytest.fixture()
def tiny_batch(tiny_base):
    images = [Image.new("RGB", (32, 32), (255, 0, 0)), None, Image.new("RGB", (32, 32), (0, 0, 255))]
    questions = ["what color is the circle?", "how many beeps do you hear?", "how many shapes are there?"]
    return tiny_base.encode(questions, images, answers=["red", "two", "one"])


@pytest.fixture(scope="session")
def tiny_project_copy():
    """Factory: tiny_project_copy(parent) -> (parent/repo, env), a git copy of this repository set to `profile: tiny`."""
    return lambda parent: copy_project(parent, {"profile": "tiny"})


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real Prefect server for the session (started on first use, stopped by its process group at the end)."""
    server = PrefectServer(tmp_path_factory.mktemp("prefect_server"))
    yield server
    server.stop()


@dataclasses.dataclass
class DeploymentRun:
    state: Any  # the flow run's final state, as the server has it
    states: list[str]  # the names of every state it went through
    tasks: dict[str, str]  # task run name -> final state type
    mlflow_parent: Any  # the MLflow parent run tagged with this flow run's id (None if none)


@dataclasses.dataclass
class TinyDeployment:
    project: Path
    env: dict
    runs: list[DeploymentRun]


@pytest.fixture(scope="session")
def tiny_deployment(tmp_path_factory, tiny_project_copy, prefect_server) -> TinyDeployment:
    """The tiny-profile DAG run the way a scheduled user runs it: `safe schedule` serves the deployment of a tiny
    copy of the repository on a real Prefect server, and two runs are triggered one after the other. The one DAG run
    of the suite: tests/integration/test_dag.py checks its outputs."""
    from safe import tracking

    dst, env = tiny_project_copy(tmp_path_factory.mktemp("safe"))
    serve_env = {**env, "PREFECT_API_URL": prefect_server.url, "PREFECT_RUNNER_POLL_FREQUENCY": "2",
                 "PREFECT_LOGGING_LEVEL": "INFO"}
    log = dst.parent / "serve.log"
    with open(log, "w") as out:
        serving = subprocess.Popen([str(Path(sys.executable).parent / "safe"), "schedule", "--project-dir", str(dst),
                                    "--name", "tiny", "--cron", "0 3 * * *"], cwd=dst.parent, env=serve_env,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    runs = []
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with prefect_server.client() as client:
                    deployment = client.read_deployment_by_name("safe-training/tiny")
                break
            except Exception:  # noqa: BLE001 (not registered yet)
                if serving.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"`safe schedule` did not register the deployment:\n{log.read_text()[-6000:]}")
                time.sleep(2)
        for _ in range(2):
            with prefect_server.client() as client:
                run_id = client.create_flow_run_from_deployment(deployment.id).id
            run = prefect_server.wait_for_run(run_id, timeout=1800, process=serving, log=log)
            runs.append(_deployment_run(prefect_server, run, dst, tracking))
    finally:
        stop_process_group(serving)
    return TinyDeployment(dst, env, runs)


def _deployment_run(server: PrefectServer, run, project: Path, tracking) -> DeploymentRun:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with server.client() as client:
        states = [s.name for s in client.read_flow_run_states(run.id)]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)  # an earlier test's store (mlflow exports the URI it is given)
    try:
        mlf = tracking.client(project)
        parents = mlf.search_runs([tracking.experiment_id(mlf)],
                                  filter_string=f"tags.`prefect.flow_run_id` = '{run.id}'")
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return DeploymentRun(run.state, states, {t.name: t.state.type.value for t in tasks}, parents[0] if parents else None)
