"""base_vl: train the small LLaVA from scratch (offline profiles); with a real checkpoint, record which one."""

from __future__ import annotations

from pipelines.common import BASE_VL, MANIFEST, METRICS, PLOTS, config, tracked_stage
from safe.data.manifest import read_manifest
from safe.data.synth import derived_vl_questions
from safe.io import write_json_atomic
from safe.training.base_vl import train_base_vl


def main() -> None:
    cfg = config()
    with tracked_stage("base_vl", cfg, "model", "base_vl") as tracker:
        if cfg.model.base_vl:  # a real checkpoint: nothing to train, keep the DAG shape
            BASE_VL.mkdir(parents=True, exist_ok=True)
            write_json_atomic(BASE_VL / "reference.json", {"checkpoint": cfg.model.base_vl})
            write_json_atomic(METRICS / "base_vl.json", {"trained_here": 0})
            return
        derive = derived_vl_questions if cfg.base_vl.derived_questions else None
        report = train_base_vl(read_manifest(MANIFEST), cfg.model, cfg.base_vl, cfg.data.image_size, BASE_VL,
                               logger=tracker, derive_questions=derive)
        metrics = {"trained_here": 1, "val_acc": report.best_val_acc, "best_epoch": report.best_epoch,
                   "epochs_run": report.epochs_run, "train_examples": report.train_examples}
        print(f"base_vl: VL-only validation accuracy {report.best_val_acc:.3f} (epoch {report.best_epoch})")
        write_json_atomic(METRICS / "base_vl.json", metrics)
        write_json_atomic(PLOTS / "base_vl_history.json", report.history)


if __name__ == "__main__":
    main()
