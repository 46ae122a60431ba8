"""The `safe` console script: data commands, inference, evaluation and scheduling."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

for _key, _value in {"MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1",
                     "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(_key, _value)


def _model_dir(spec: str) -> Path:
    """`champion` (or `challenger`) -> the bundle registered under that alias; anything else is a bundle folder."""
    if spec in ("champion", "challenger"):
        from safe.tracking import download_bundle

        return download_bundle(spec)
    path = Path(spec)
    if not path.is_dir():
        raise SystemExit(f"error: model folder not found: {path} (use 'champion' or a SAFE bundle folder)")
    return path


def cmd_infer(args: argparse.Namespace) -> int:
    from safe.inference import SAFEPredictor

    predictor = SAFEPredictor.load(_model_dir(args.model))
    for name, value in (("image", args.image), ("audio", args.audio)):
        if value and not Path(value).is_file():
            print(f"error: {name} file not found: {value}", file=sys.stderr)
            return 2
    pred = predictor.predict(args.image, args.audio, args.question)
    result = {"answer": pred.answer, "budget": pred.budget, "gate": round(pred.gate, 4),
              "latency_ms": round(pred.latency_ms, 2), "base_answer": pred.base_answer}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"answer:      {pred.answer}")
        print(f"budget:      {pred.budget} audio tokens (gate P(audio) = {pred.gate:.3f})")
        print(f"base answer: {pred.base_answer}")
        print(f"latency:     {pred.latency_ms:.1f} ms")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from safe.data.features import extract_features
    from safe.data.manifest import read_manifest
    from safe.data.media import load_audio
    from safe.eval.criteria import Thresholds, evaluate_criteria
    from safe.eval.evaluation import measure_latency, prediction_table
    from safe.eval.metrics import compute_metrics
    from safe.eval.report import criteria_table_text
    from safe.inference import SAFEPredictor
    from safe.io import write_json_atomic

    predictor = SAFEPredictor.load(_model_dir(args.model))
    manifest = read_manifest(args.manifest)
    if predictor.model.audio_encoder is None:
        raise SystemExit("error: the model has no audio encoder to encode the manifest's audio")
    with tempfile.TemporaryDirectory() as cache:
        store, _ = extract_features(manifest, predictor.model.audio_encoder, load_audio, cache)
    table = prediction_table(predictor, manifest, store, args.split)
    latency = measure_latency(predictor, manifest, args.split, n=args.latency_examples)
    metrics = compute_metrics(table, latency.to_dict())
    write_json_atomic(args.out, metrics)
    print(criteria_table_text(evaluate_criteria(metrics, Thresholds())))
    print(f"metrics written to {args.out}")
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safe", description="SAFE: audio for a frozen LLaVA-style VL model")
    sub = parser.add_subparsers(dest="command", required=True)
    from safe.data.commands import register as register_data

    register_data(sub)

    p = sub.add_parser("infer", help="answer one question with a trained SAFE model")
    p.add_argument("--model", default="champion", help="'champion', 'challenger' or a SAFE bundle folder")
    p.add_argument("--image", help="image file (optional)")
    p.add_argument("--audio", help="audio file (optional; wav/mp3/flac, any rate)")
    p.add_argument("--question", required=True)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=cmd_infer)

    p = sub.add_parser("evaluate", help="evaluate a SAFE model on any manifest")
    p.add_argument("--model", default="champion")
    p.add_argument("--manifest", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True)
    p.add_argument("--latency-examples", type=int, default=16)
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
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
