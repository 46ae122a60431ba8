"""The whole DVC DAG on the tiny profile, run by the served Prefect deployment (tests/conftest.py: tiny_deployment)
in a temporary copy of the repo.

Checks the outputs, the metrics' schema, the registry alias, and that a second `dvc repro` reruns nothing.
Several minutes on 2 CPU cores: the one integration test of the suite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from project_copy import run as _run  # tests/project_copy.py

from pipelines.flows import read_outcome

METRIC_KEYS = {
    "vl_acc_base", "vl_acc_safe", "retention_drop", "audio_acc_base", "audio_acc_safe", "audio_gain", "skip_rate",
    "irrelevant_flip_rate", "mean_audio_tokens", "latency_ms_policy", "latency_ms_always_audio", "latency_ms_base",
    "n_test",
}

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tiny_deployment) -> tuple[Path, dict]:
    """The git + DVC copy of the repository, on the tiny profile, that the served deployment ran."""
    return tiny_deployment.project, tiny_deployment.env


@pytest.fixture(scope="module")
def flow_outcome(tiny_deployment) -> dict:
    """What the first triggered run of the served deployment did, as its MLflow parent run and DVC outputs say."""
    first = tiny_deployment.runs[0]
    assert first.state.is_completed(), first.state
    tags = first.mlflow_parent.data.tags
    return {**read_outcome(tiny_deployment.project), "stages_run": tags["safe.stages_run"].split(","),
            "mlflow_run_id": first.mlflow_parent.info.run_id}


def test_flow_runs_every_stage_and_writes_the_outputs(project, flow_outcome):
    dst, _ = project
    assert flow_outcome["stages_run"] == ["prepare_data", "extract_features", "base_vl", "stage_a", "stage_b",
                                          "stage_c", "evaluate", "promote"]
    for out in ("data/prepared/manifest.jsonl", "data/features/features.safetensors", "data/models/base_vl/config.json",
                "data/models/stage_a/safe_trainable.safetensors", "data/models/stage_b/policy",
                "data/models/safe/gate", "data/eval/report.md", "data/eval/MODEL_CARD.md",
                "data/eval/plots/accuracy_vs_budget.png", "data/plots/stage_a_retention.png",
                "data/plots/stage_b_rewards.png"):
        assert (dst / out).exists(), out


def test_metrics_have_the_contract_keys_and_come_from_the_run(project, flow_outcome):
    dst, _ = project
    metrics = json.loads((dst / "data/eval/metrics.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    assert metrics["n_test"] == sum(1 for line in (dst / "data/prepared/manifest.jsonl").read_text().splitlines()
                                    if '"split": "test"' in line)
    for key in ("vl_acc_base", "vl_acc_safe", "audio_acc_base", "audio_acc_safe", "skip_rate", "irrelevant_flip_rate"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["retention_drop"] == pytest.approx(metrics["vl_acc_base"] - metrics["vl_acc_safe"])
    assert metrics["latency_ms_base"] > 0


def test_registry_alias_follows_the_criteria(project, flow_outcome):
    dst, env = project
    promotion = json.loads((dst / "data/eval/promotion.json").read_text())
    assert promotion["model_name"] == "safe-audio-vl"
    assert promotion["lineage"]["safe.profile"] == "tiny" and len(promotion["lineage"]["safe.test_set"]) == 16
    assert set(promotion["criteria"]) == {"retention_drop", "audio_gain", "skip_rate", "irrelevant_flip_rate",
                                          "forced_flip_rate"}
    passed = all(c["passed"] for c in promotion["criteria"].values())
    assert promotion["decision"] == ("champion" if passed else "rejected")
    alias = "champion" if passed else "challenger"
    code = ("import mlflow; from safe import tracking; mlflow.set_tracking_uri(tracking.tracking_uri()); "
            f"mv = mlflow.MlflowClient().get_model_version_by_alias('safe-audio-vl', '{alias}'); print(mv.version)")
    out = _run([sys.executable, "-c", code], dst, {**env, "SAFE_PROJECT_DIR": str(dst)})
    assert out.stdout.strip().splitlines()[-1] == str(promotion["version"])


def test_second_repro_reruns_nothing(project, flow_outcome):
    dst, env = project
    result = _run(["dvc", "repro"], dst, env)
    assert "Running stage" not in result.stdout, result.stdout


def test_safe_infer_answers_a_test_example_with_the_registered_model(project, flow_outcome):
    dst, env = project
    promotion = json.loads((dst / "data/eval/promotion.json").read_text())
    alias = "champion" if promotion["decision"] == "champion" else "challenger"
    row = next(json.loads(line) for line in (dst / "data/prepared/manifest.jsonl").read_text().splitlines()
               if '"split": "test"' in line and '"audio": "audio/' in line)
    prepared = dst / "data/prepared"
    result = _run([sys.executable, "-m", "safe.cli", "infer", "--model", alias, "--image", str(prepared / row["image"]),
                   "--audio", str(prepared / row["audio"]), "--question", row["question"], "--json"],
                  dst, {**env, "SAFE_PROJECT_DIR": str(dst)})
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["budget"] in (0, 4, 8, 12) and 0.0 <= answer["gate"] <= 1.0 and answer["latency_ms"] > 0
    assert isinstance(answer["answer"], str)


def _stage_runs(dst: Path, env: dict, stage: str) -> int:
    code = ("import mlflow; from safe import tracking; mlflow.set_tracking_uri(tracking.tracking_uri()); "
            f"print(len(mlflow.search_runs(search_all_experiments=True, filter_string=\"attributes.run_name = '{stage}'\")))")
    return int(_run([sys.executable, "-c", code], dst, {**env, "SAFE_PROJECT_DIR": str(dst)}).stdout.split()[-1])


def _out_hashes(dst: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((dst / "dvc.lock").read_text())
    return {o["path"]: o["md5"] for o in lock["stages"][stage]["outs"]}


def test_training_stages_rerun_from_scratch_give_the_same_weights(project, flow_outcome):
    """Stage A and Stage B retrained (forced, with an empty checkpoint cache so nothing resumes) reproduce their
    outputs bit for bit: every random draw, the trainable parts' initial weights included, is seeded; Stage B's
    measured latency costs are rounded so that timing noise does not change them."""
    dst, env = project
    # stage_b.json also holds the milliseconds Stage B timed for its latency costs (budget_costs_ms, budget_costs_fit):
    # measurements, like evaluate's latencies. Every other output, and the costs the reward used, must repeat.
    timed = "data/metrics/stage_b.json"
    measured = ("budget_costs_ms", "budget_costs_fit")

    def outputs():
        hashes = {stage: _out_hashes(dst, stage) for stage in ("stage_a", "stage_b")}
        hashes["stage_b"].pop(timed)
        return hashes, {k: v for k, v in json.loads((dst / timed).read_text()).items() if k not in measured}

    before = outputs()
    fresh = {**env, "SAFE_CACHE_DIR": str(dst.parent / "cache-rerun")}
    for stage in ("stage_a", "stage_b"):
        _run(["dvc", "repro", "--force", "--single-item", stage], dst, fresh)
    assert outputs() == before


def test_stage_a_runs_under_accelerate_launch_with_two_processes(project, flow_outcome):
    """Last on purpose: it edits params.yaml. The process count is not a stage param (results do not depend on it)."""
    dst, env = project
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["accelerate"]["num_processes"] = 2
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in _run(["dvc", "status"], dst, env).stdout
    before = _stage_runs(dst, env, "stage_a")
    result = _run(["dvc", "repro", "--single-item", "--force", "stage_a"], dst, env)
    assert "pipelines.stage_a: launching 2 processes" in result.stdout + result.stderr
    metrics = json.loads((dst / "data/metrics/stage_a.json").read_text())
    assert 0.0 <= metrics["vl_acc_safe"] <= 1.0 and metrics["retention_drop"] <= params["stage_a"].get(
        "retention_tolerance", 1.0)
    assert _stage_runs(dst, env, "stage_a") == before + 1  # rank 0 tracks; the other process logs nothing
