"""MLflow tracking for SAFE: one parent run per pipeline execution, a nested run per stage, and the gated registry.

This is the only module of the project that imports mlflow. Everything else receives plain objects from it:
stages get a `StageTracker` (it satisfies the training code's `log_metrics(metrics, step)` logger protocol), the
promote stage gets a `PromotionResult`, the CLI gets a bundle folder from `download_bundle`.

Store: env MLFLOW_TRACKING_URI when set, else SQLite at `<project>/mlruns/mlflow.db` with artifacts under
`<project>/mlruns/artifacts` (`<project>` = env SAFE_PROJECT_DIR, else the DVC project root DVC passes its stages in
DVC_ROOT, else the working directory). No server is needed.

Grouping: the Prefect flow creates the parent run and hands its id to `dvc repro` via env SAFE_MLFLOW_PARENT_RUN_ID.
A bare `dvc repro` has no such id; then the parent is found (or created) by the tag `safe.execution`, a hash of the git
commit and params.yaml bytes, so the stages of one execution group together across processes.

DVC hashes: a stage run is tagged `dvc.<stage>.<path>` = md5 from dvc.lock. DVC rewrites dvc.lock only after a stage
succeeds, so at stage start those are the hashes of the previous successful run (`dvc.lock_state=before_run`);
`refresh_dvc_tags` (called at the start of every later stage and at the end of the flow) replaces them with the
hashes DVC recorded for this run (`dvc.lock_state=after_run`).

DVC experiments: under `dvc exp run` (in the workspace or a queue's temp folder) the parent run is named after the
experiment and it, its stage runs and any model version it registers carry the `dvc.exp_*` tags of `DvcExperiment`:
the experiment name, its baseline commit and the params that differ from the baseline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator, Mapping

from safe import provenance
from safe.environment import set_environment

set_environment()

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402  (mlflow imports it anyway)
import mlflow.models  # noqa: E402
import mlflow.pyfunc  # noqa: E402
import yaml  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.models.signature import ModelSignature  # noqa: E402
from mlflow.types.schema import ColSpec, Schema  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID  # noqa: E402

MODEL_NAME = "safe-audio-vl"
EXPERIMENT = "safe"
CHAMPION, CHALLENGER = "champion", "challenger"
PARENT_ENV = "SAFE_MLFLOW_PARENT_RUN_ID"
PROJECT_ENV = "SAFE_PROJECT_DIR"
EXECUTION_TAG = "safe.execution"
ROLE_TAG = "safe.role"  # "pipeline" on parent runs, "stage" on nested ones
STAGE_TAG = "safe.stage"
METRIC_TAG_PREFIX = "metric."  # model-version tags holding the metrics the version was promoted with
LINEAGE_KEYS = ("safe.profile", "safe.test_set")  # versions are compared only when these tags are equal
ALIAS_LOG_PREFIX = "safe.alias_move."  # registered-model tags: one JSON record per alias move, numbered
EXP_NAME_TAG = "dvc.exp_name"
EXP_BASELINE_TAG = "dvc.exp_baseline_rev"
EXP_PARAMS_TAG = "dvc.exp_params"  # "stage_b.alpha=0.2, ...": every param that differs from the baseline commit
EXP_PARAM_TAG_PREFIX = "dvc.exp_param."  # one tag per differing param, to filter or sort a sweep by its value


class TrackingError(RuntimeError):
    """A tracking or registry operation cannot proceed; the message says what is missing and what to do."""


# ---------------------------------------------------------------- store, experiment, project facts

def project_dir() -> Path:
    """The checkout whose params, dvc.lock and commit a run records: env SAFE_PROJECT_DIR or the working directory."""
    return Path(os.environ.get(PROJECT_ENV) or os.getcwd()).resolve()


def store_dir() -> Path:
    """The project that holds the MLflow store: env SAFE_PROJECT_DIR, else env DVC_ROOT (a queued DVC experiment runs
    in a temp copy, but DVC points DVC_ROOT at the project, so the sweep's runs land in the project's store), else the
    working directory."""
    return Path(os.environ.get(PROJECT_ENV) or os.environ.get("DVC_ROOT") or os.getcwd()).resolve()


def tracking_uri(project: Path | None = None) -> str:
    """env MLFLOW_TRACKING_URI, else the project's SQLite store (created on first use)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(project or store_dir()).resolve() / "mlruns"
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def _artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite store (`<db folder>/artifacts`); a remote server chooses its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return None


def client(project: Path | None = None) -> MlflowClient:
    """A client on the project store; also points the fluent API (used to log models) at it."""
    uri = tracking_uri(project)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlf: MlflowClient) -> str:
    """Id of the "safe" experiment, created (with the project's artifact location) on first use."""
    experiment = mlf.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlf.create_experiment(EXPERIMENT, artifact_location=_artifact_location(mlf.tracking_uri))
    except MlflowException:  # another stage process created it first
        experiment = mlf.get_experiment_by_name(EXPERIMENT)
        if experiment is None:
            raise
        return experiment.experiment_id


def git_commit(project: Path | None = None) -> str:
    """The project's full commit hash, or "unknown" (no git, no commit yet)."""
    return provenance.git_commit(project or project_dir())


def execution_id(project: Path | None = None) -> str:
    """Hash of (git commit, params.yaml bytes): equal for every stage of one `dvc repro`."""
    project = project or project_dir()
    params = project / "params.yaml"
    digest = hashlib.sha256(git_commit(project).encode())
    digest.update(params.read_bytes() if params.is_file() else b"")
    return digest.hexdigest()[:16]


def _profile(project: Path) -> str:
    try:
        params = yaml.safe_load((project / "params.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return "unknown"
    return str(params.get("profile", "unknown")) if isinstance(params, dict) else "unknown"


def dvc_lock_tags(stage: str, project: Path | None = None) -> dict[str, str]:
    """{"dvc.<stage>.<path>": md5} for the stage's deps and outs as recorded in dvc.lock ({} without a lock)."""
    lock_path = (project or project_dir()) / "dvc.lock"
    if not lock_path.is_file():
        return {}
    try:
        lock = yaml.safe_load(lock_path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TrackingError(f"{lock_path}: not valid YAML ({exc})") from exc
    entry = (lock.get("stages") or {}).get(stage) or {}
    tags = {}
    for item in [*(entry.get("deps") or []), *(entry.get("outs") or [])]:
        if isinstance(item, dict) and item.get("path") and item.get("md5"):
            tags[f"dvc.{stage}.{item['path']}"] = str(item["md5"])
    return tags


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {name!r} must be a number, got {type(value).__name__} {value!r}") from None


# ---------------------------------------------------------------- DVC experiments

@dataclass(frozen=True)
class DvcExperiment:
    """The DVC experiment a pipeline run belongs to (`dvc exp run`, queued or not)."""

    name: str
    baseline_rev: str
    params_diff: Mapping[str, Any] | None
    """{"section.key": value in this experiment} for every param that differs from the baseline commit's;
    None when the baseline's params could not be read."""

    def tags(self) -> dict[str, str]:
        tags = {EXP_NAME_TAG: self.name, EXP_BASELINE_TAG: self.baseline_rev}
        if self.params_diff is not None:
            tags[EXP_PARAMS_TAG] = ", ".join(f"{k}={v}" for k, v in sorted(self.params_diff.items())) or "none"
            tags.update({f"{EXP_PARAM_TAG_PREFIX}{k}": str(v) for k, v in self.params_diff.items()})
        return {k: v[:5000] for k, v in tags.items()}

    def description(self) -> str:
        """One line for a model version registered from this experiment."""
        changed = self.tags().get(EXP_PARAMS_TAG, "unknown")
        return (f"Registered from DVC experiment {self.name} (baseline {self.baseline_rev[:7]}; "
                f"params changed: {changed}).")


# ---------------------------------------------------------------- runs

@dataclass
class StageTracker:
    """Logs into one stage run. Satisfies the training loops' logger protocol `log_metrics(metrics, step)`."""

    run_id: str
    client: MlflowClient = field(repr=False)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numbers only (bools become 0/1; nested dicts are flattened with dots); a non-number raises TypeError."""
        now = int(time.time() * 1000)
        entries = [Metric(k, _number(k, v), now, step or 0) for k, v in flatten(metrics).items()]
        for i in range(0, len(entries), 1000):  # MLflow's batch limit
            self.client.log_batch(self.run_id, metrics=entries[i:i + 1000])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Nested dicts are flattened with dots; values are logged as strings (MLflow caps them at 6000 chars)."""
        entries = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(entries), 100):
            self.client.log_batch(self.run_id, params=entries[i:i + 100])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path or path.name)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path)
        else:
            raise FileNotFoundError(f"cannot log artifact {path}: no such file or folder")

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        entries = [RunTag(k, str(v)) for k, v in tags.items()]
        if entries:
            self.client.log_batch(self.run_id, tags=entries)


def start_pipeline_run(name: str | None = None, tags: Mapping[str, Any] | None = None,
                       project: Path | None = None) -> str:
    """Create a parent run for one pipeline execution (the Prefect flow calls this); returns its id."""
    project = Path(project or project_dir()).resolve()
    mlf = client(project)
    execution = execution_id(project)
    run = mlf.create_run(experiment_id(mlf), run_name=name or f"pipeline-{execution[:8]}", tags={
        ROLE_TAG: "pipeline", EXECUTION_TAG: execution, "git.commit": git_commit(project),
        "profile": _profile(project), **{k: str(v) for k, v in (tags or {}).items()}})
    return run.info.run_id


def end_pipeline_run(run_id: str, status: str = "FINISHED", project: Path | None = None) -> None:
    client(project).set_terminated(run_id, status)


def parent_run_id(mlf: MlflowClient | None = None, experiment: DvcExperiment | None = None) -> str:
    """The parent of the stage runs: env SAFE_MLFLOW_PARENT_RUN_ID, else found or created by execution tag.
    Under a DVC experiment the parent is named after it and carries its tags."""
    mlf = mlf or client()
    exp_tags = experiment.tags() if experiment else {}
    if os.environ.get(PARENT_ENV):
        run_id = os.environ[PARENT_ENV]
        try:
            mlf.get_run(run_id)
        except MlflowException as exc:
            raise TrackingError(f"{PARENT_ENV}={run_id} is not a run in {mlf.tracking_uri}: {exc}") from exc
        if exp_tags:
            mlf.log_batch(run_id, tags=[RunTag(k, v) for k, v in exp_tags.items()])
        return run_id
    execution = execution_id()
    found = mlf.search_runs([experiment_id(mlf)], max_results=1, order_by=["attributes.start_time DESC"],
                            filter_string=f"tags.`{EXECUTION_TAG}` = '{execution}' and tags.`{ROLE_TAG}` = 'pipeline'")
    if found:
        if exp_tags:  # e.g. the same params run again as another experiment: the latest name wins
            mlf.log_batch(found[0].info.run_id, tags=[RunTag(k, v) for k, v in exp_tags.items()])
        return found[0].info.run_id
    started_by = "dvc exp run" if experiment else "dvc repro"
    run_id = start_pipeline_run(name=f"exp {experiment.name}" if experiment else None,
                                tags={"safe.started_by": started_by, **exp_tags})
    mlf.set_terminated(run_id, "FINISHED")  # stage runs extend it; nothing keeps it open between processes
    return run_id


def stage_runs(parent_id: str, mlf: MlflowClient | None = None) -> list:
    """The stage runs nested under a parent run, oldest first."""
    mlf = mlf or client()
    experiment = mlf.get_run(parent_id).info.experiment_id
    return mlf.search_runs([experiment], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_id}'",
                           order_by=["attributes.start_time ASC"], max_results=1000)


def refresh_dvc_tags(parent_id: str, mlf: MlflowClient | None = None, project: Path | None = None) -> int:
    """Re-tag the finished stage runs under `parent_id` with the hashes dvc.lock now holds; returns how many.

    Only the latest finished run of each stage is refreshed: dvc.lock describes that one.
    """
    mlf = mlf or client(project)
    latest = {}
    for run in stage_runs(parent_id, mlf):
        if run.info.status == "FINISHED" and STAGE_TAG in run.data.tags:
            latest[run.data.tags[STAGE_TAG]] = run
    for stage, run in latest.items():
        tags = dvc_lock_tags(stage, project)
        if tags:
            mlf.log_batch(run.info.run_id, tags=[RunTag(k, v) for k, v in
                                                 {**tags, "dvc.lock_state": "after_run"}.items()])
    return len(latest)


@contextlib.contextmanager
def stage_run(stage: str, params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None,
              experiment: DvcExperiment | None = None) -> Iterator[StageTracker]:
    """A run named `stage`, nested under the pipeline's parent run; FAILED when the block raises (or exits non-0).
    `experiment`: the DVC experiment this runs in (its tags go on the stage run and the parent)."""
    mlf = client()
    project = project_dir()
    parent = parent_run_id(mlf, experiment)
    with contextlib.suppress(MlflowException):
        refresh_dvc_tags(parent, mlf)  # earlier stages of this execution are in dvc.lock by now
    lock_tags = dvc_lock_tags(stage, project)
    run_tags = {MLFLOW_PARENT_RUN_ID: parent, ROLE_TAG: "stage", STAGE_TAG: stage,
                "git.commit": git_commit(project), "profile": _profile(project), **lock_tags,
                **({"dvc.lock_state": "before_run"} if lock_tags else {}),
                **(experiment.tags() if experiment else {}),
                **{k: str(v) for k, v in (tags or {}).items()}}
    run = mlf.create_run(mlf.get_run(parent).info.experiment_id, run_name=stage, tags=run_tags)
    tracker = StageTracker(run.info.run_id, mlf)
    if params:
        tracker.log_params(params)
    status = "FINISHED"
    try:
        yield tracker
    except SystemExit as exc:  # pipelines' fail() exits non-zero on purpose; a clean exit is a success
        status = "FINISHED" if exc.code in (None, 0) else "FAILED"
        if status == "FAILED":
            tracker.set_tags({"safe.error": f"exit {exc.code}"})
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except BaseException as exc:
        status = "FAILED"
        tracker.set_tags({"safe.error": f"{type(exc).__name__}: {exc}"[:4000]})
        raise
    finally:
        mlf.set_terminated(run.info.run_id, status)
        if not os.environ.get(PARENT_ENV):  # a parent we found ourselves: keep its status and end time current
            mlf.set_terminated(parent, "FAILED" if status != "FINISHED" else "FINISHED")


# ---------------------------------------------------------------- the deployable model as an MLflow pyfunc

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "image", required=False), ColSpec("string", "audio", required=False),
                   ColSpec("string", "question")]),
    outputs=Schema([ColSpec("string", "answer"), ColSpec("long", "budget"), ColSpec("double", "gate"),
                    ColSpec("double", "latency_ms")]),
)
INPUT_EXAMPLE = {"image": ["scene.png"], "audio": ["clip.wav"], "question": ["how many beeps do you hear ?"]}
_REQUIREMENTS = ("torch", "transformers", "safetensors", "numpy", "pandas", "pillow", "soundfile", "librosa", "mlflow")


def _media(value: Any) -> str | None:
    """A path from a DataFrame cell; None / NaN / "" mean no media."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


class SAFEPyfuncModel(mlflow.pyfunc.PythonModel):
    """The SAFE bundle behind MLflow's pyfunc interface: rows (image, audio, question) -> (answer, budget, ...)."""

    def load_context(self, context) -> None:
        from safe.inference import SAFEPredictor  # lazy: torch/transformers load only when the model does

        self.predictor = SAFEPredictor.load(context.artifacts["model"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        missing = {"question"} - set(model_input.columns)
        if missing:
            raise ValueError(f"model input lacks column(s) {sorted(missing)}; expected image, audio, question")
        rows = []
        for i, row in enumerate(model_input.to_dict("records")):
            try:
                p = self.predictor.predict(_media(row.get("image")), _media(row.get("audio")), str(row["question"]))
            except Exception as exc:
                raise ValueError(f"row {i}: {exc}") from exc
            rows.append({"answer": p.answer, "budget": int(p.budget), "gate": float(p.gate),
                         "latency_ms": float(p.latency_ms)})
        return pd.DataFrame(rows, columns=["answer", "budget", "gate", "latency_ms"])


MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
"""The models-from-code file logged as the pyfunc's `python_model`; it calls `serve_safe_model`."""


def serve_safe_model() -> None:
    """Declare the model MLflow serves when it loads a SAFE model logged from code (called by MODEL_CODE)."""
    mlflow.models.set_model(SAFEPyfuncModel())


def _pip_requirements() -> list[str]:
    """Pinned from the running environment (explicit: MLflow would otherwise load the model to infer them)."""
    pins = []
    for name in _REQUIREMENTS:
        with contextlib.suppress(metadata.PackageNotFoundError):
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
    return pins


# ---------------------------------------------------------------- registry: gated promotion

@dataclass(frozen=True)
class PromotionResult:
    decision: str  # "champion" | "rejected"
    model_name: str
    version: str
    criteria: dict[str, dict[str, Any]]
    failed: tuple[str, ...] = ()  # failed criteria, or ("worse_than_champion",)
    run_id: str = ""
    lineage: dict[str, str] = field(default_factory=dict)  # profile, test set, commit of this version
    compared_with: dict[str, Any] = field(default_factory=dict)  # the champion it was (or was not) compared with

    def to_json(self) -> dict[str, Any]:
        """The data/eval/promotion.json schema; NaN values become null so the file is strict JSON."""
        def clean(value):
            return None if isinstance(value, float) and not math.isfinite(value) else value

        criteria = {name: {"value": clean(c["value"]), "bound": clean(c.get("bound")), "n": c.get("n"),
                           "threshold": c["threshold"], "gated_on": c.get("gated_on", "value"),
                           "passed": bool(c["passed"])}
                    for name, c in self.criteria.items()}
        return {"decision": self.decision, "model_name": self.model_name, "version": str(self.version),
                "criteria": criteria, "failed": list(self.failed), "lineage": dict(self.lineage),
                "compared_with": dict(self.compared_with)}


def _alias_version(mlf: MlflowClient, model_name: str, alias: str):
    """The model version holding `alias`, or None."""
    try:
        return mlf.get_model_version_by_alias(model_name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def version_metrics(mlf: MlflowClient, version) -> dict[str, float]:
    """Metrics a registered version was promoted with: its `metric.*` tags, else its run's metrics."""
    tagged = {k[len(METRIC_TAG_PREFIX):]: float(v) for k, v in version.tags.items() if k.startswith(METRIC_TAG_PREFIX)}
    if tagged or not version.run_id:
        return tagged
    return dict(mlf.get_run(version.run_id).data.metrics)


def comparable_champion(mlf: MlflowClient, model_name: str, lineage: Mapping[str, str]) -> tuple[Any, dict]:
    """(the champion version to compare a new version with, or None; a record of that choice for promotion.json).

    A champion trained on another profile or scored on another test set is not evidence against the new version:
    its metrics measure a different thing, so it is neither compared with nor allowed to block the new version.
    """
    current = _alias_version(mlf, model_name, CHAMPION)
    if current is None:
        return None, {"version": None, "reason": "no champion yet"}
    theirs = {key: current.tags.get(key, "unknown") for key in LINEAGE_KEYS}
    ours = {key: str(lineage.get(key, "unknown")) for key in LINEAGE_KEYS}
    if theirs != ours:
        differs = [key for key in LINEAGE_KEYS if theirs[key] != ours[key]]
        return None, {"version": str(current.version), "compared": False,
                      "reason": "champion has another " + " and ".join(k.split(".", 1)[1] for k in differs),
                      "champion_lineage": theirs}
    return current, {"version": str(current.version), "compared": True, "reason": "same profile and test set"}


def move_alias(mlf: MlflowClient, model_name: str, alias: str, version: str, reason: str, run_id: str = "") -> dict:
    """Point `alias` at `version` and append an audit record (who, when, from which version, why) to the model."""
    previous = _alias_version(mlf, model_name, alias)
    mlf.set_registered_model_alias(model_name, alias, version)
    record = {"alias": alias, "from_version": str(previous.version) if previous is not None else None,
              "to_version": str(version), "by": _user(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "reason": reason, "run_id": run_id}
    number = len([k for k in mlf.get_registered_model(model_name).tags if k.startswith(ALIAS_LOG_PREFIX)])
    mlf.set_registered_model_tag(model_name, f"{ALIAS_LOG_PREFIX}{number:05d}", json.dumps(record))
    return record


def alias_history(model_name: str = MODEL_NAME, mlf: MlflowClient | None = None) -> list[dict]:
    """Every alias move recorded by `move_alias`, oldest first."""
    tags = (mlf or client()).get_registered_model(model_name).tags
    return [json.loads(tags[key]) for key in sorted(k for k in tags if k.startswith(ALIAS_LOG_PREFIX))]


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def promote(model_dir: str | Path, metrics: Mapping[str, Any], thresholds, extra_artifacts=None,
            model_name: str = MODEL_NAME, lineage: Mapping[str, str] | None = None,
            experiment: DvcExperiment | None = None) -> PromotionResult:
    """Log `model_dir` as a pyfunc model, register it, and alias it `champion` only if it earns it.

    Champion = every success criterion passes AND `is_not_worse` than the current champion's metrics, when that
    champion shares this version's profile and test set (`lineage`: `safe.profile`, `safe.test_set`, plus
    `safe.git_commit`, all set as version tags). Otherwise the new version gets the `challenger` alias and a
    `failed_criteria` tag; the champion alias is left untouched. Every alias move is recorded (`alias_history`).
    A version registered from a DVC experiment carries its `dvc.exp_*` tags and says so in its description.
    The pyfunc is logged as models-from-code (`MODEL_CODE`): loading it runs that file, never unpickles an object.
    """
    from safe.eval.criteria import all_passed, evaluate_criteria, failed_criteria, is_not_worse

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model folder not found: {model_dir}")
    criteria = evaluate_criteria(metrics, thresholds)
    numeric = {k: _number(k, v) for k, v in metrics.items() if isinstance(v, (int, float))}
    mlf = client()
    lineage = {"safe.profile": _profile(project_dir()), "safe.test_set": "unknown",
               "safe.git_commit": git_commit(), **{k: str(v) for k, v in (lineage or {}).items()}}
    current, compared_with = comparable_champion(mlf, model_name, lineage)
    champion_metrics = version_metrics(mlf, current) if current is not None else None
    failed = failed_criteria(criteria)
    if not failed and not is_not_worse(numeric, champion_metrics):
        failed = ["worse_than_champion"]
    passed = not failed and all_passed(criteria)
    with stage_run("promote", tags={"safe.model_name": model_name}, experiment=experiment) as tracker:
        tracker.log_metrics(numeric)
        tracker.log_text(json.dumps(criteria, indent=2, default=str), "criteria.json")
        for path in extra_artifacts or []:
            tracker.log_artifact(path)
        with mlflow.start_run(run_id=tracker.run_id), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example was not provided.*")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=str(MODEL_CODE), artifacts={"model": str(model_dir.resolve())},
                signature=SIGNATURE, pip_requirements=_pip_requirements(), registered_model_name=model_name,
                metadata={"input_example": INPUT_EXAMPLE, "bundle": model_dir.name},
                # no input_example=: MLflow would load the whole model at registration to validate it
            )
        version = str(info.registered_model_version)
        for key, value in numeric.items():
            mlf.set_model_version_tag(model_name, version, f"{METRIC_TAG_PREFIX}{key}", str(value))
        mlf.set_model_version_tag(model_name, version, "criteria_passed", str(passed).lower())
        for key, value in lineage.items():
            mlf.set_model_version_tag(model_name, version, key, value)
        if experiment:
            for key, value in experiment.tags().items():
                mlf.set_model_version_tag(model_name, version, key, value)
            mlf.update_model_version(model_name, version, description=experiment.description())
        if passed:
            move_alias(mlf, model_name, CHAMPION, version, "all criteria passed; " + compared_with["reason"],
                       tracker.run_id)
        else:
            move_alias(mlf, model_name, CHALLENGER, version, "failed: " + ",".join(failed), tracker.run_id)
            mlf.set_model_version_tag(model_name, version, "failed_criteria", ",".join(failed))
        decision = CHAMPION if passed else "rejected"
        tracker.set_tags({"safe.decision": decision, "safe.model_version": version,
                          **({"failed_criteria": ",".join(failed)} if failed else {})})
        tracker.log_metrics({f"criterion.{name}.passed": c["passed"] for name, c in criteria.items()})
    return PromotionResult(decision, model_name, version, criteria, tuple(failed), tracker.run_id, lineage,
                           compared_with)


def resolve_model_uri(spec: str | Path, model_name: str = MODEL_NAME) -> str:
    """"champion"/"challenger" -> models:/<name>@alias; models:/ or runs:/ URIs pass through; else a local folder."""
    text = str(spec)
    if text in (CHAMPION, CHALLENGER):
        return f"models:/{model_name}@{text}"
    if text.startswith(("models:/", "runs:/")):
        return text
    path = Path(text)
    if not path.exists():
        raise FileNotFoundError(f"model {text!r} is neither an alias ({CHAMPION}, {CHALLENGER}), "
                                f"a models:/ or runs:/ URI, nor an existing folder")
    return str(path.resolve())


def existing_registry_uri() -> str:
    """The tracking URI of a registry that already exists, without creating anything.

    Looked up in order: env MLFLOW_TRACKING_URI (a sqlite:/// file must exist), else `<project>/mlruns/mlflow.db`
    where `<project>` is env SAFE_PROJECT_DIR or the working folder. Raises TrackingError saying where it looked
    and how to point at the project otherwise (reading a registry must never create a stray store).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
            raise TrackingError(f"MLFLOW_TRACKING_URI={uri} names a SQLite store that does not exist; point it at "
                                f"the project's mlruns/mlflow.db, or pass --model with a bundle folder")
        return uri
    project = project_dir()
    store = project / "mlruns" / "mlflow.db"
    if not store.is_file():
        origin = f"{PROJECT_ENV}={os.environ[PROJECT_ENV]}" if os.environ.get(PROJECT_ENV) else "the working folder"
        raise TrackingError(f"no model registry found: {store} does not exist (project folder {project}, from "
                            f"{origin}); run from the SAFE project folder after `dvc repro`, or set {PROJECT_ENV} to "
                            f"it, or MLFLOW_TRACKING_URI to its store, or pass --model with a bundle folder")
    return f"sqlite:///{store}"


def _registry_client() -> MlflowClient:
    """A client on the registry that exists (see `existing_registry_uri`); also points the fluent API at it."""
    uri = existing_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _require_alias(mlf: MlflowClient, model_name: str, alias: str):
    version = _alias_version(mlf, model_name, alias)
    if version is None:
        raise TrackingError(f"no version of {model_name!r} has the alias {alias!r} in {mlf.tracking_uri}; "
                            f"run the pipeline (dvc repro) to register one")
    return version


def load_champion(model_name: str = MODEL_NAME):
    """The champion as an MLflow pyfunc model (predict(DataFrame[image, audio, question]))."""
    _require_alias(_registry_client(), model_name, CHAMPION)
    return mlflow.pyfunc.load_model(resolve_model_uri(CHAMPION, model_name))


def download_bundle(alias: str = CHAMPION, model_name: str = MODEL_NAME, dst: str | Path | None = None) -> Path:
    """The SAFE bundle folder of the version holding `alias`, downloaded once per version.

    Default cache: <project>/.safe_cache/registry/<model_name>/v<version>/ (downloaded to a temp folder, then renamed);
    the bundle is the model's pyfunc artifact "model" inside it. The registry must exist already (nothing is created
    when it does not; see `existing_registry_uri`).
    """
    mlf = _registry_client()
    version = _require_alias(mlf, model_name, alias)
    target = Path(dst) if dst else project_dir() / ".safe_cache" / "registry" / model_name / f"v{version.version}"
    if (target / "MLmodel").is_file():
        return _bundle_in(target)
    if target.exists() and any(target.iterdir()):
        raise FileExistsError(f"{target} exists and is not a downloaded model; choose an empty or new folder")
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version.version}", dst_path=str(tmp),
                                        tracking_uri=mlf.tracking_uri)
    try:
        _bundle_in(tmp)
    except TrackingError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        target.rmdir()  # empty (checked above)
    os.replace(tmp, target)
    return _bundle_in(target)


def _bundle_in(model_root: Path) -> Path:
    """The SAFE bundle inside a downloaded MLflow model: the pyfunc artifact named "model"."""
    from mlflow.models import Model

    flavor = Model.load(str(model_root / "MLmodel")).flavors.get("python_function", {})
    relative = (flavor.get("artifacts") or {}).get("model", {}).get("path")
    if not relative or not (model_root / relative).is_dir():
        raise TrackingError(f"{model_root} holds no SAFE bundle (pyfunc artifact 'model'); "
                            f"was it logged by safe.tracking.promote?")
    return model_root / relative
