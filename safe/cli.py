"""The `safe` console script: data commands, inference, evaluation and scheduling.

One error boundary (`main`): an expected failure (bad media, manifest, model folder, question, params, registry)
prints one line on stderr naming the file, row or key, what is wrong and what to do. Exit codes: 0 success;
1 the command ran but what it checked failed (validation checks, success criteria); 2 bad input (nothing was
written); 3 an unexpected error (a bug). A traceback is printed only with --debug.
Heavy libraries (torch, transformers, mlflow, Great Expectations) are imported inside the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

from safe.environment import set_environment

set_environment()

from safe.data.commands import positive_int  # noqa: E402
from safe.errors import EXIT_CRITERIA_FAILED, EXIT_INTERNAL, UserError, describe_path, from_exception  # noqa: E402

ALIASES = ("champion", "challenger")
EXIT_CODES = ("exit codes: 0 success; 1 the command ran but its checks or success criteria failed; 2 bad input "
              "(a file, row, key or option; nothing written); 3 unexpected error (rerun with --debug for the "
              "traceback)")


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("safe-audio-vl")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


# ---------------------------------------------------------------- inputs, checked before any model loads


def _project_dir() -> Path:
    return Path(os.environ.get("SAFE_PROJECT_DIR") or os.getcwd())


def _encoder_cache() -> Path | None:
    """The pipeline's converted-weights cache (<project>/.safe_cache/encoders or $SAFE_CACHE_DIR/encoders), so a
    command never converts Whisper a second time; None outside a project (then the library default)."""
    if os.environ.get("SAFE_CACHE_DIR"):
        return Path(os.environ["SAFE_CACHE_DIR"]) / "encoders"
    project = _project_dir()
    return project / ".safe_cache" / "encoders" if (project / "dvc.yaml").is_file() else None


def _model_dir(spec: str) -> Path:
    """`champion` / `challenger` -> the bundle registered under that alias; anything else is a bundle folder,
    checked file by file (JSON parses, safetensors sizes match) without loading it."""
    if spec in ALIASES and not Path(spec).is_dir():
        from safe.tracking import TrackingError, download_bundle, existing_registry_uri

        try:
            return download_bundle(spec)
        except TrackingError:
            raise
        except Exception as err:  # MlflowException, sqlite errors: the store itself is unusable
            raise UserError(f"could not read the model registry {existing_registry_uri()}: {type(err).__name__}: "
                            f"{' '.join(str(err).split())[:300]}", where=f"--model {spec}",
                            fix="check the store, or pass --model with a bundle folder") from err
    from safe.inference import BundleError, check_bundle

    path = Path(spec)
    if not path.exists():
        raise UserError("model folder not found", path=path,
                        fix="use 'champion', 'challenger' or a SAFE bundle folder (data/models/safe after dvc repro)")
    try:
        check_bundle(path)
    except BundleError as err:
        raise UserError(str(err), fix=BundleError.fix) from None
    return path


def _check_media(image: str | None, audio: str | None, max_audio_seconds: float, notes: list[str]):
    """Decode the image and the (cropped) clip now, so a bad file is named before the model loads."""
    from safe.data.media import MediaError, load_audio, load_image

    loaded = []
    for option, value, load in (("--image", image, lambda p: load_image(p, notes=notes)),
                                ("--audio", audio, lambda p: load_audio(p, max_seconds=max_audio_seconds))):
        if value is None:
            loaded.append(None)
            continue
        path = Path(value)
        if not path.is_file():
            raise UserError("file not found" if not path.exists() else "not a file", path=path, where=option,
                            fix=f"pass an existing {option[2:]} file")
        try:
            loaded.append(load(path))
        except MediaError as err:
            reason = str(err).removeprefix(f"{path}: ")
            raise UserError(reason, path=path, where=option, fix=f"pass a readable {option[2:]} file") from None
    return loaded


def _check_question(question: str, bundle: Path | None = None) -> None:
    from safe.inference import QuestionError, check_question

    try:
        check_question(question, bundle)
    except QuestionError as err:
        raise UserError(str(err), where="--question", fix=QuestionError.fix if "empty" not in str(err)
                        else "pass a non-empty question") from None


def _load_predictor(bundle: Path, audio_threshold: float | None = None):
    """Load the model; a bundle that passed the file checks but still does not load names the folder."""
    from transformers.utils import logging as hf_logging

    from safe.inference import BundleError, SAFEPredictor

    hf_logging.disable_progress_bar()  # one answer: a "Loading weights" bar is noise on stderr
    try:
        return SAFEPredictor.load(bundle, cache_dir=_encoder_cache(), audio_threshold=audio_threshold)
    except BundleError as err:
        raise UserError(str(err), fix=BundleError.fix) from None
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"could not load the model: {type(err).__name__}: {' '.join(str(err).split())[:400]}",
                        path=bundle, fix="the bundle is corrupt or from another SAFE version; rebuild it with "
                        "dvc repro (or pass --debug for the traceback)") from err


# ---------------------------------------------------------------- commands


def cmd_infer(args: argparse.Namespace) -> int:
    from safe.inference import DEFAULT_MAX_AUDIO_SECONDS

    _check_question(args.question)
    if args.audio_threshold is not None and not 0.0 <= args.audio_threshold <= 1.0:
        raise UserError(f"must be between 0 and 1, got {args.audio_threshold}", where="--audio-threshold",
                        fix="pass a probability, e.g. --audio-threshold 0.7 to consult audio less often")
    notes: list[str] = []
    image, wave = _check_media(args.image, args.audio, DEFAULT_MAX_AUDIO_SECONDS, notes)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    bundle = _model_dir(args.model)
    _check_question(args.question, bundle)
    predictor = _load_predictor(bundle, args.audio_threshold)
    pred = predictor.predict(image, wave, args.question)
    result = {"answer": pred.answer, "budget": pred.budget, "gate": round(pred.gate, 4),
              "latency_ms": round(pred.latency_ms, 2), "base_answer": pred.base_answer}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"answer:      {pred.answer}")
        print(f"budget:      {pred.budget} audio tokens (gate P(audio) = {pred.gate:.3f}, threshold "
              f"{predictor.gate.audio_threshold:.2f})")
        print(f"base answer: {pred.base_answer}")
        print(f"latency:     {pred.latency_ms:.1f} ms")
    return 0


def _thresholds(params: Path | None):
    """(Thresholds, where they came from): --params, else the project's params.yaml, else the spec's defaults."""
    from safe.config import PromoteConfig, load_config
    from safe.eval.criteria import Thresholds

    path = params if params is not None else _project_dir() / "params.yaml"
    if params is None and not path.is_file():
        return Thresholds.from_config(PromoteConfig()), "the spec's defaults (no params.yaml in the project folder)"
    if not path.is_file():
        raise UserError("params file not found", path=path, where="--params")
    return Thresholds.from_config(load_config(path).promote), str(path.resolve())


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Check everything that can be checked (thresholds, manifest, split, media, output path), then load the model,
    score the split and write strict JSON; exit 1 when a criterion fails."""
    import tempfile
    from functools import partial

    from safe.data.commands import _check_output_file
    from safe.data.manifest import read_manifest
    from safe.eval.manifest_eval import check_rows, criterion_counts, metric_counts, select_split, strict_report
    from safe.inference import DEFAULT_MAX_AUDIO_SECONDS

    thresholds, thresholds_from = _thresholds(args.params)
    _check_output_file(args.out, "--out")
    manifest = read_manifest(args.manifest)  # ManifestError names the file and line
    split, note = select_split(manifest, args.split)
    if note:
        print(f"note: {note}", file=sys.stderr)
    check_rows(manifest, split, DEFAULT_MAX_AUDIO_SECONDS)
    bundle = _model_dir(args.model)
    predictor = _load_predictor(bundle)
    if predictor.model.audio_encoder is None:
        raise UserError("the model has no audio encoder to encode the manifest's audio", path=bundle)

    from safe.data.features import extract_features
    from safe.data.media import load_audio
    from safe.eval.criteria import FAIL, criterion_status, evaluate_criteria
    from safe.eval.evaluation import measure_latency, prediction_table
    from safe.eval.metrics import compute_metrics
    from safe.eval.report import criteria_table_text
    from safe.io import write_text_atomic

    split_only = type(manifest)(path=manifest.path, records=tuple(manifest.by_split(split)))
    with tempfile.TemporaryDirectory() as cache:
        store, _ = extract_features(split_only, predictor.model.audio_encoder,
                                    partial(load_audio, max_seconds=DEFAULT_MAX_AUDIO_SECONDS), cache,
                                    progress=False, audio_tag=f"max{DEFAULT_MAX_AUDIO_SECONDS:g}s")
    table = prediction_table(predictor, split_only, store, split, progress=False)
    latency = measure_latency(predictor, split_only, split, n=args.latency_examples, progress=False)
    metrics = compute_metrics(table, latency.to_dict())
    criteria = evaluate_criteria(metrics, thresholds)
    counts = metric_counts(table, latency.n)
    report = strict_report(metrics, criteria, counts, {
        "split": split, "manifest": str(manifest.path), "model": str(args.model), "thresholds_from": thresholds_from})
    write_text_atomic(args.out, json.dumps(report, indent=2, allow_nan=False) + "\n")
    print(criteria_table_text(criteria, criterion_counts(criteria, counts)))
    for name, reason in report["not_computed"].items():
        print(f"note: {name} not computed: {reason}", file=sys.stderr)
    print(f"metrics written to {describe_path(args.out)} (split {split}, n={counts['all']}; thresholds: "
          f"{thresholds_from})")
    return EXIT_CRITERIA_FAILED if any(criterion_status(c) == FAIL for c in criteria.values()) else 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """Check, register and serve the scheduled Prefect deployment: pipelines.flows does it in a child process (the
    library never imports pipelines) and prints its own one-line errors (exit 2)."""
    command = [sys.executable, "-m", "pipelines.flows", "schedule", "--cron", args.cron, "--name", args.name,
               "--project-dir", args.project_dir]
    if args.register_only:
        command.append("--register-only")
    if args.work_pool:
        command += ["--work-pool", args.work_pool]
    command += ["--on-overlap", args.on_overlap]
    child = subprocess.Popen(command)
    try:
        return child.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches the child too: it stops serving and pauses the schedule
        return child.wait()


def _add_debug(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the full traceback of an error instead of the one-line message")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safe", description="SAFE: audio for a frozen LLaVA-style VL model",
                                     epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print the installed version and exit")
    _add_debug(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from safe.data.commands import register as register_data

    register_data(sub, _add_debug)

    p = sub.add_parser("infer", help="answer one question with a trained SAFE model",
                       description="Answer one question about an image and/or an audio clip. Inputs are checked "
                       "before the model loads; clips longer than 30 s are cropped while decoding.", epilog=EXIT_CODES)
    p.add_argument("--model", default="champion",
                   help="'champion' or 'challenger' (the registered model: the project's mlruns/ in the working "
                   "folder, $SAFE_PROJECT_DIR, or $MLFLOW_TRACKING_URI), or a SAFE bundle folder (default: champion)")
    p.add_argument("--image", help="image file (optional; PNG/JPEG/...; above 36 megapixels refused, JPEGs downscaled)")
    p.add_argument("--audio", help="audio file (optional; wav/mp3/flac/ogg, any rate; cropped to 30 s)")
    p.add_argument("--question", required=True, help="the question, in words (must fit the model's context)")
    p.add_argument("--json", action="store_true", help="print one JSON line instead of the labelled lines")
    p.add_argument("--audio-threshold", type=float, default=None, metavar="P",
                   help="consult audio when the gate's P(audio) >= P (default: the threshold saved with the gate, "
                   "stage_c.audio_threshold); higher skips audio more often; data/eval/report.md shows the trade")
    _add_debug(p)
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("evaluate", help="evaluate a SAFE model on any manifest",
                       description="Validate the manifest's split (schema, non-empty questions, media that decode), "
                       "then score the model on it and write strict JSON metrics (null plus a reason where a metric "
                       "cannot be computed). The success criteria's thresholds come from params.yaml.",
                       epilog="exit codes: 0 every computed criterion met (criteria that could not be computed are "
                       "listed, not failed); 1 a criterion failed; 2 bad input (nothing written); 3 unexpected error")
    p.add_argument("--model", default="champion", help="'champion', 'challenger' or a SAFE bundle folder "
                   "(default: champion)")
    p.add_argument("--manifest", required=True, type=Path, help="manifest (.jsonl) holding the examples")
    p.add_argument("--split", choices=("train", "val", "test"),
                   help="split to evaluate (default: test, or the manifest's only split when it has one)")
    p.add_argument("--out", required=True, type=Path, help="metrics file to write (strict JSON)")
    p.add_argument("--params", type=Path, help="params.yaml whose promote: thresholds are used (default: "
                   "params.yaml of the project folder when there is one, else the spec's thresholds)")
    p.add_argument("--latency-examples", type=positive_int, default=16,
                   help="examples timed one at a time for the latency numbers (default: 16)")
    _add_debug(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("schedule", help="schedule the training flow on a Prefect server (PREFECT_API_URL) and serve it",
                       description="Register the cron-scheduled deployment of the training flow (dvc repro of the "
                                   "project, one run at a time) on the Prefect server in PREFECT_API_URL, then serve "
                                   "it here until Ctrl-C, or leave it to a work pool's workers. Start a server with "
                                   "`prefect server start --host 127.0.0.1`.")
    p.add_argument("--cron", default="0 3 * * *", help="when to run, 5 cron fields (default: '0 3 * * *', 03:00 daily)")
    p.add_argument("--name", default="safe-nightly", help="deployment name (default: safe-nightly)")
    p.add_argument("--project-dir", default=".",
                   help="the SAFE project folder (holds dvc.yaml and params.yaml) the runs execute in (default: .)")
    p.add_argument("--register-only", action="store_true",
                   help="register the deployment and exit, without serving it here")
    p.add_argument("--work-pool", help="register for this Prefect work pool and exit: its workers "
                                       "(`prefect worker start --pool NAME`) run the flow")
    p.add_argument("--on-overlap", choices=["queue", "skip"], default="queue",
                   help="a run that comes due while another runs: queue (wait for it, then run; default) or skip "
                        "(cancelled)")
    p.set_defaults(func=cmd_schedule)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; the error boundary turns expected failures into one line and an exit code."""
    args = build_parser().parse_args(argv)  # usage errors: argparse prints them and exits 2
    debug = bool(getattr(args, "debug", False)) or os.environ.get("SAFE_DEBUG") == "1"
    try:
        with warnings.catch_warnings():
            _show_media_warnings_as_notes()
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        user = from_exception(err)
        if user is not None:
            print(f"error: {user}", file=sys.stderr)
            return user.exit_code
        text = " ".join(str(err).split())[:500]
        print(f"error: unexpected {type(err).__name__}: {text} (this is a bug; rerun with --debug for the "
              f"traceback and report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _show_media_warnings_as_notes() -> None:
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001 - warnings' signature
        print(f"note: {message}", file=sys.stderr)

    warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
