"""evaluate: metrics.json (all), headline.json (what DVC shows), report.md, plots and MODEL_CARD.md for the deployed
SAFE model on the test split."""

from __future__ import annotations

from pipelines.common import (
    CACHE, EVAL, FEATURES, MANIFEST, SAFE_BUNDLE, config, run_with_error_boundary, tracked_stage,
)
from safe.data.features import FeatureStore
from safe.data.manifest import read_manifest
from safe.distributed import inference_autocast, process_state, resolve_inference_precision
from safe.eval.criteria import Thresholds, evaluate_criteria
from safe.eval.evaluation import measure_latency, prediction_table
from safe.eval.headline import headline_json, headline_metrics
from safe.eval.metrics import compute_details, compute_metrics
from safe.eval.plots import plot_accuracy_vs_budget, plot_skip_rate_per_family
from safe.eval.report import criteria_table_text, render_model_card, render_report
from safe.inference import SAFEPredictor
from safe.io import write_json_atomic, write_text_atomic


def thresholds(cfg) -> Thresholds:
    return Thresholds.from_config(cfg.promote)


def main() -> None:
    cfg = config()
    with tracked_stage("evaluate", cfg, "evaluate", "promote") as tracker:
        manifest, store = read_manifest(MANIFEST), FeatureStore.load(FEATURES)
        predictor = SAFEPredictor.load(SAFE_BUNDLE, cache_dir=CACHE / "encoders", dtype=cfg.model.dtype,
                                       device=process_state().device)
        predictor.max_new_tokens = cfg.evaluate.max_new_tokens
        with inference_autocast(cfg.evaluate.mixed_precision):  # the model passes; latency is timed as deployed
            table = prediction_table(predictor, manifest, store, "test", cfg.evaluate.batch_size,
                                     cfg.evaluate.max_new_tokens, cfg.evaluate.seed)
        latency = measure_latency(predictor, manifest, "test", cfg.evaluate.latency_examples)
        metrics = compute_metrics(table, latency.to_dict())
        details = compute_details(table, n_boot=cfg.evaluate.bootstrap, seed=cfg.evaluate.seed)
        criteria = evaluate_criteria(metrics, thresholds(cfg))
        run_info = {"profile": cfg.profile, "base_vl": cfg.model.base_vl or "small LLaVA trained here (base_vl stage)",
                    "audio_encoder": cfg.model.audio_encoder, "token_budgets": list(cfg.model.token_budgets),
                    "inference_precision": resolve_inference_precision(cfg.evaluate.mixed_precision),
                    **predictor.model.trainable_summary()}
        EVAL.mkdir(parents=True, exist_ok=True)
        table.to_json(EVAL / ".predictions.jsonl.tmp", orient="records", lines=True)
        (EVAL / ".predictions.jsonl.tmp").replace(EVAL / "predictions.jsonl")
        write_json_atomic(EVAL / "metrics.json", metrics)
        write_text_atomic(EVAL / "headline.json", headline_json(headline_metrics(metrics, criteria)))
        write_json_atomic(EVAL / "details.json", details)
        write_text_atomic(EVAL / "report.md", render_report(metrics, criteria, details))
        write_text_atomic(EVAL / "MODEL_CARD.md", render_model_card(metrics, criteria, details, run_info))
        plots = [plot_accuracy_vs_budget(details, EVAL / "plots" / "accuracy_vs_budget.png"),
                 plot_skip_rate_per_family(table, EVAL / "plots" / "skip_rate_per_family.png")]
        tracker.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        for path in [*plots, EVAL / "report.md", EVAL / "MODEL_CARD.md", EVAL / "metrics.json"]:
            tracker.log_artifact(str(path))
        print(criteria_table_text(criteria))


if __name__ == "__main__":
    run_with_error_boundary(main)
