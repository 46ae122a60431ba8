"""safe.tracking against a real MLflow SQLite store in tmp_path: nested stage runs, tags, gated registry promotion."""

from __future__ import annotations

import json
import logging
import shutil
import warnings

import numpy as np
import pytest
import yaml
from safetensors.numpy import save_file

from safe import tracking
from safe.eval.criteria import CRITERIA, Thresholds

GOOD = {"retention_drop": 0.002, "audio_gain": 0.10, "skip_rate": 0.55, "irrelevant_flip_rate": 0.0,
        "forced_flip_rate": 0.01, "vl_acc_base": 0.8, "vl_acc_safe": 0.798, "n_test": 200}
BAD = {"retention_drop": 0.02, "audio_gain": 0.01, "skip_rate": 0.9, "irrelevant_flip_rate": 0.05,
       "forced_flip_rate": 0.3}


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An MLflow SQLite file with its schema created once (creating it takes seconds); tests get copies."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking.MlflowClient(f"sqlite:///{db}").search_experiments()  # safe.tracking is the one mlflow importer
    return db


@pytest.fixture()
def project(tmp_path, monkeypatch, empty_store):
    """A project folder with params.yaml and its own MLflow store; no inherited parent run."""
    (tmp_path / "params.yaml").write_text("profile: tiny\npromote:\n  min_audio_gain: 0.05\n")
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_store, tmp_path / "mlruns" / "mlflow.db")
    monkeypatch.setenv("SAFE_PROJECT_DIR", str(tmp_path))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    monkeypatch.delenv(tracking.PARENT_ENV, raising=False)
    return tmp_path


@pytest.fixture()
def bundle(tmp_path):
    """A small real model folder: a config and a safetensors file."""
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"hidden": 4}))
    save_file({"w": np.arange(8, dtype=np.float32).reshape(2, 4)}, str(folder / "weights.safetensors"))
    return folder


def _aliases(mlf):
    found = {}
    for alias in (tracking.CHAMPION, tracking.CHALLENGER):
        version = tracking._alias_version(mlf, tracking.MODEL_NAME, alias)
        found[alias] = str(version.version) if version is not None else None
    return found


# ---------------------------------------------------------------- runs

def test_stage_runs_nest_under_the_parent_from_env(project, monkeypatch):
    (project / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  stage_a:\n    cmd: python -m pipelines.stage_a\n    deps:\n"
        "    - path: data/prepared\n      hash: md5\n      md5: abc.dir\n    outs:\n"
        "    - path: data/models/stage_a\n      hash: md5\n      md5: def.dir\n")
    parent = tracking.start_pipeline_run(project=project)
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    with tracking.stage_run("prepare_data", params={"data": {"size": 60, "seed": 0}}) as tracker:
        tracker.log_metrics({"loss": 1.0}, step=0)
        tracker.log_metrics({"loss": 0.5, "acc": {"vl": 0.9}}, step=1)
    with tracking.stage_run("stage_a", tags={"profile": "demo"}) as tracker:
        tracker.log_text("hello", "notes.md")
    mlf = tracking.client()
    runs = tracking.stage_runs(parent, mlf)
    assert [r.info.run_name for r in runs] == ["prepare_data", "stage_a"]
    first, second = runs
    assert all(r.data.tags["mlflow.parentRunId"] == parent and r.info.status == "FINISHED" for r in runs)
    assert first.data.tags["git.commit"] == "unknown"  # tmp_path is no git repository
    assert first.data.tags["profile"] == "tiny" and second.data.tags["profile"] == "demo"
    assert first.data.params == {"data.size": "60", "data.seed": "0"}
    assert [m.value for m in mlf.get_metric_history(first.info.run_id, "loss")] == [1.0, 0.5]
    assert first.data.metrics["acc.vl"] == 0.9
    assert second.data.tags["dvc.stage_a.data/prepared"] == "abc.dir"
    assert second.data.tags["dvc.stage_a.data/models/stage_a"] == "def.dir"
    assert second.data.tags["dvc.lock_state"] == "before_run"
    assert "dvc.lock_state" not in first.data.tags  # dvc.lock has no entry for prepare_data


def test_without_env_the_parent_is_found_by_execution(project):
    with tracking.stage_run("prepare_data"):
        pass
    with tracking.stage_run("extract_features"):
        pass
    parent = tracking.parent_run_id()
    assert [r.info.run_name for r in tracking.stage_runs(parent)] == ["prepare_data", "extract_features"]
    (project / "params.yaml").write_text("profile: demo\n")  # another execution
    with tracking.stage_run("prepare_data"):
        pass
    other = tracking.parent_run_id()
    assert other != parent and len(tracking.stage_runs(other)) == 1


def test_failing_stage_marks_the_run_failed(project):
    with pytest.raises(RuntimeError, match="boom"):
        with tracking.stage_run("stage_b"):
            raise RuntimeError("boom")
    with pytest.raises(SystemExit):
        with tracking.stage_run("prepare_data"):
            raise SystemExit(1)
    with pytest.raises(SystemExit):
        with tracking.stage_run("evaluate"):
            raise SystemExit(0)
    parent = tracking.parent_run_id()
    status = {r.info.run_name: r.info.status for r in tracking.stage_runs(parent)}
    assert status == {"stage_b": "FAILED", "prepare_data": "FAILED", "evaluate": "FINISHED"}
    failed = tracking.stage_runs(parent)[0]
    assert failed.data.tags["safe.error"] == "RuntimeError: boom"


def test_log_metrics_names_a_non_numeric_value(project):
    with pytest.raises(TypeError, match="'mode'"):
        with tracking.stage_run("stage_c") as tracker:
            tracker.log_metrics({"loss": 0.1, "mode": "fast"}, step=2)


def test_refresh_replaces_hashes_with_the_lock_written_after_the_run(project, monkeypatch):
    lock = "schema: '2.0'\nstages:\n  prepare_data:\n    outs:\n    - path: data/prepared\n      md5: {}\n"
    (project / "dvc.lock").write_text(lock.format("old.dir"))
    parent = tracking.start_pipeline_run(project=project)
    monkeypatch.setenv(tracking.PARENT_ENV, parent)
    with tracking.stage_run("prepare_data"):
        pass
    (project / "dvc.lock").write_text(lock.format("new.dir"))  # what DVC does after the stage succeeds
    assert tracking.refresh_dvc_tags(parent) == 1
    run = tracking.stage_runs(parent)[0]
    assert run.data.tags["dvc.prepare_data.data/prepared"] == "new.dir"
    assert run.data.tags["dvc.lock_state"] == "after_run"


# ---------------------------------------------------------------- registry

def test_all_criteria_pass_makes_champion_and_promotion_json(project, bundle):
    result = tracking.promote(bundle, GOOD, Thresholds())
    assert (result.decision, result.version, result.failed) == ("champion", "1", ())
    assert _aliases(tracking.client()) == {"champion": "1", "challenger": None}
    doc = json.loads(json.dumps(result.to_json(), allow_nan=False))
    assert set(doc) == {"decision", "model_name", "version", "criteria", "failed", "lineage", "compared_with"}
    assert doc["lineage"]["safe.profile"] == "tiny" and doc["compared_with"]["reason"] == "no champion yet"
    assert doc["model_name"] == "safe-audio-vl" and doc["decision"] == "champion" and doc["failed"] == []
    assert set(doc["criteria"]) == set(CRITERIA)
    assert all(set(c) == {"value", "bound", "n", "threshold", "gated_on", "passed"} and c["passed"]
               for c in doc["criteria"].values())
    assert doc["criteria"]["skip_rate"]["threshold"] == [0.4, 0.7]
    version = tracking.client().get_model_version(tracking.MODEL_NAME, "1")
    assert tracking.version_metrics(tracking.client(), version)["audio_gain"] == pytest.approx(0.10)


@pytest.mark.parametrize("name", CRITERIA)
def test_each_failing_criterion_alone_gives_challenger(project, bundle, name):
    tracking.promote(bundle, GOOD, Thresholds())
    result = tracking.promote(bundle, {**GOOD, name: BAD[name]}, Thresholds())
    assert (result.decision, result.version, result.failed) == ("rejected", "2", (name,))
    assert result.to_json()["criteria"][name]["passed"] is False
    mlf = tracking.client()
    assert _aliases(mlf) == {"champion": "1", "challenger": "2"}
    assert mlf.get_model_version(tracking.MODEL_NAME, "2").tags["failed_criteria"] == name


def test_a_better_model_takes_the_champion_alias(project, bundle):
    tracking.promote(bundle, GOOD, Thresholds())
    result = tracking.promote(bundle, {**GOOD, "audio_gain": 0.2}, Thresholds())
    assert (result.decision, result.version) == ("champion", "2")
    assert _aliases(tracking.client())["champion"] == "2"


def test_a_worse_but_passing_model_stays_challenger(project, bundle):
    tracking.promote(bundle, {**GOOD, "audio_gain": 0.2}, Thresholds())
    result = tracking.promote(bundle, GOOD, Thresholds())  # passes every criterion, but gains less audio accuracy
    assert (result.decision, result.failed) == ("rejected", ("worse_than_champion",))
    assert result.to_json()["failed"] == ["worse_than_champion"]  # promotion.json says why, though all criteria pass
    mlf = tracking.client()
    assert _aliases(mlf) == {"champion": "1", "challenger": "2"}
    assert mlf.get_model_version(tracking.MODEL_NAME, "2").tags["failed_criteria"] == "worse_than_champion"


DEMO_A = {"safe.profile": "demo", "safe.test_set": "aaaa"}


@pytest.mark.parametrize("other", [{"safe.profile": "smol", "safe.test_set": "aaaa"},
                                   {"safe.profile": "demo", "safe.test_set": "bbbb"}], ids=["profile", "test_set"])
def test_a_champion_of_another_profile_or_test_set_is_not_compared(project, bundle, other):
    tracking.promote(bundle, {**GOOD, "audio_gain": 0.3}, Thresholds(), lineage=DEMO_A)
    result = tracking.promote(bundle, GOOD, Thresholds(), lineage=other)  # worse numbers, but on another benchmark
    assert (result.decision, result.failed) == ("champion", ())
    assert result.compared_with["compared"] is False and result.compared_with["version"] == "1"
    differs = "profile" if other["safe.profile"] != "demo" else "test_set"
    assert result.compared_with["reason"] == f"champion has another {differs}"
    version = tracking.client().get_model_version(tracking.MODEL_NAME, "2")
    assert {k: version.tags[k] for k in other} == other and version.tags["safe.git_commit"]


def test_a_champion_of_the_same_profile_and_test_set_still_blocks_a_worse_model(project, bundle):
    tracking.promote(bundle, {**GOOD, "audio_gain": 0.3}, Thresholds(), lineage=DEMO_A)
    result = tracking.promote(bundle, GOOD, Thresholds(), lineage=DEMO_A)
    assert result.failed == ("worse_than_champion",) and result.compared_with["compared"] is True


def test_every_alias_move_is_recorded(project, bundle):
    tracking.promote(bundle, GOOD, Thresholds())
    tracking.promote(bundle, {**GOOD, "skip_rate": 0.9}, Thresholds())
    tracking.promote(bundle, {**GOOD, "audio_gain": 0.2}, Thresholds())
    history = tracking.alias_history()
    moves = [(h["alias"], h["from_version"], h["to_version"]) for h in history]
    assert moves == [("champion", None, "1"), ("challenger", None, "2"), ("champion", "1", "3")]
    assert history[1]["reason"] == "failed: skip_rate"
    assert all(h["by"] and h["at"].endswith("Z") and h["run_id"] for h in history)


def test_nan_metric_fails_and_promotion_json_stays_strict(project, bundle):
    result = tracking.promote(bundle, {**GOOD, "skip_rate": float("nan")}, Thresholds())
    assert result.failed == ("skip_rate",)
    doc = result.to_json()
    assert doc["criteria"]["skip_rate"]["value"] is None
    json.dumps(doc, allow_nan=False)


def test_promotion_logs_metrics_and_artifacts_in_a_promote_run(project, bundle, tmp_path):
    report = tmp_path / "report.md"
    report.write_text("# report\n")
    result = tracking.promote(bundle, GOOD, Thresholds(), extra_artifacts=[report])
    mlf = tracking.client()
    run = mlf.get_run(result.run_id)
    assert run.info.run_name == "promote" and run.data.tags["safe.decision"] == "champion"
    assert run.data.metrics["audio_gain"] == pytest.approx(0.10)
    assert run.data.metrics["criterion.skip_rate.passed"] == 1.0
    assert {a.path for a in mlf.list_artifacts(result.run_id)} >= {"report.md", "criteria.json"}


def test_download_bundle_returns_the_registered_folder(project, bundle):
    with pytest.raises(tracking.TrackingError, match="no version of 'safe-audio-vl' has the alias 'champion'"):
        tracking.download_bundle()
    tracking.promote(bundle, GOOD, Thresholds())
    path = tracking.download_bundle()
    assert json.loads((path / "config.json").read_text()) == {"hidden": 4}
    assert (path / "weights.safetensors").read_bytes() == (bundle / "weights.safetensors").read_bytes()
    assert tracking.download_bundle() == path  # cached per version


def test_resolve_model_uri(project, bundle):
    assert tracking.resolve_model_uri("champion") == "models:/safe-audio-vl@champion"
    assert tracking.resolve_model_uri("runs:/abc/model") == "runs:/abc/model"
    assert tracking.resolve_model_uri(bundle) == str(bundle.resolve())
    with pytest.raises(FileNotFoundError, match="neither an alias"):
        tracking.resolve_model_uri(project / "missing")


def test_promote_rejects_a_missing_folder(project):
    with pytest.raises(FileNotFoundError, match="model folder not found"):
        tracking.promote(project / "nope", GOOD, Thresholds())


@pytest.fixture()
def safe_bundle(tmp_path, tiny_base):
    """A real (tiny, untrained) SAFE bundle folder."""
    from safe.inference import assemble_bundle
    from safe.models.audio_encoders import build_audio_encoder
    from safe.models.safe_model import SAFEArchitecture, SAFEModel
    from safe.rl.state_features import state_dim
    from safe.models.budget_gate import BudgetGate, save_gate

    spec = "whisper-random:32x1"
    encoder = build_audio_encoder(spec, seed=0)
    model = SAFEModel(tiny_base, SAFEArchitecture(encoder.embed_dim, fusion_heads=4, projector_hidden=16),
                      audio_encoder=encoder)
    tiny_base.save_pretrained(tmp_path / "base")
    model.save_trainable(tmp_path / "stage_a", extra_config={"audio_encoder": spec, "seed": 0})
    save_gate(BudgetGate(state_dim(tiny_base.hidden_size), hidden_dim=0), tmp_path / "gate")
    return assemble_bundle(tmp_path / "safe", str(tmp_path / "base"), tmp_path / "stage_a", tmp_path / "gate")


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_registered_champion_loads_from_code_without_unpickling(project, safe_bundle, monkeypatch):
    """Models-from-code: no CloudPickle warning when logging or loading, and loading works with unpickling forbidden."""
    import pandas as pd

    records = _Records()
    logging.getLogger("mlflow").addHandler(records)  # MLflow's loggers do not propagate to pytest's capture
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = tracking.promote(safe_bundle, GOOD, Thresholds())
            monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")  # a pickled model would raise here
            model = tracking.load_champion()
    finally:
        logging.getLogger("mlflow").removeHandler(records)
    said = [str(w.message) for w in caught] + records.messages
    assert not [m for m in said if "cloudpickle" in m.lower()], said
    assert result.decision == "champion"
    out = model.predict(pd.DataFrame({"image": [None], "audio": [None], "question": ["how many beeps ?"]}))
    assert out.budget[0] == 0 and isinstance(out.answer[0], str)
    root = next(p for p in tracking.download_bundle().parents if (p / "MLmodel").is_file())
    flavor = yaml.safe_load((root / "MLmodel").read_text())["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in flavor
    assert not list(root.rglob("*.pkl"))


def test_registered_champion_answers_through_pyfunc(project, tmp_path, tiny_base):
    """A real (tiny, untrained) SAFE bundle goes through the registry and answers like SAFEPredictor does."""
    import pandas as pd
    import soundfile as sf
    from PIL import Image

    from safe.inference import SAFEPredictor, assemble_bundle
    from safe.models.audio_encoders import build_audio_encoder
    from safe.models.safe_model import SAFEArchitecture, SAFEModel
    from safe.rl.state_features import state_dim
    from safe.models.budget_gate import BudgetGate, save_gate

    spec = "whisper-random:32x1"
    encoder = build_audio_encoder(spec, seed=0)
    model = SAFEModel(tiny_base, SAFEArchitecture(encoder.embed_dim, fusion_heads=4, projector_hidden=16),
                      audio_encoder=encoder)
    tiny_base.save_pretrained(tmp_path / "base")
    model.save_trainable(tmp_path / "stage_a", extra_config={"audio_encoder": spec, "seed": 0})
    save_gate(BudgetGate(state_dim(tiny_base.hidden_size), hidden_dim=0), tmp_path / "gate")
    bundle = assemble_bundle(tmp_path / "safe", str(tmp_path / "base"), tmp_path / "stage_a", tmp_path / "gate")
    image, audio = tmp_path / "red.png", tmp_path / "beep.wav"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(image)
    sf.write(audio, 0.3 * np.sin(np.linspace(0, 880 * np.pi, 16000)).astype(np.float32), 16000)
    question = "what color is the circle ?"
    expected = SAFEPredictor.load(bundle).predict(str(image), str(audio), question)

    tracking.promote(bundle, GOOD, Thresholds())
    out = tracking.load_champion().predict(pd.DataFrame(
        {"image": [str(image), None], "audio": [str(audio), None], "question": [question, "how many beeps ?"]}))
    assert list(out.columns) == ["answer", "budget", "gate", "latency_ms"]
    assert (out.answer[0], out.budget[0]) == (expected.answer, expected.budget)
    assert out.gate[0] == pytest.approx(expected.gate, abs=1e-6)
    assert out.budget[1] == 0 and out.gate[1] == 0.0  # no audio: the base model answers alone
