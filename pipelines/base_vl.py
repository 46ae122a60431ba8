"""base_vl: train the small LLaVA from scratch (offline profiles); with a real checkpoint, record which one."""

from __future__ import annotations

from pipelines.common import (
    BASE_VL, MANIFEST, METRICS, PLOTS, config, launch_processes, run_with_error_boundary, tracked_stage,
)
from safe.data.manifest import read_manifest
from safe.data.synth import derived_vl_questions, scene_tags
from safe.distributed import make_accelerator
from safe.io import write_json_atomic
from safe.training.base_vl import train_base_vl


def main() -> None:
    cfg = config()
    if not cfg.model.base_vl:
        launch_processes("pipelines.base_vl", cfg)
    with tracked_stage("base_vl", cfg, "model", "accelerate", "base_vl") as tracker:
        if cfg.model.base_vl:  # a real checkpoint: nothing to train, keep the DAG shape
            BASE_VL.mkdir(parents=True, exist_ok=True)
            write_json_atomic(BASE_VL / "reference.json", {"checkpoint": cfg.model.base_vl})
            write_json_atomic(METRICS / "base_vl.json", {"trained_here": 0})
            write_json_atomic(PLOTS / "base_vl_history.json", [])  # a declared plot: no epochs were trained here
            return
        derive = derived_vl_questions if cfg.base_vl.derived_questions else None
        accelerator = make_accelerator(cfg.accelerate.mixed_precision, cfg.accelerate.gradient_accumulation_steps)
        report = train_base_vl(read_manifest(MANIFEST), cfg.model, cfg.base_vl, cfg.data.image_size, BASE_VL,
                               logger=tracker, derive_questions=derive, accelerator=accelerator,
                               image_tags=scene_tags)
        if not accelerator.is_main_process:
            return  # rank 0 wrote the model; it writes the metrics too
        metrics = {"trained_here": 1, "val_acc": report.best_val_acc, "val_acc_blind": report.blind_val_acc,
                   "best_epoch": report.best_epoch,
                   "epochs_run": report.epochs_run, "train_examples": report.train_examples}
        if report.vision is not None:
            metrics["vision_val_exact"] = report.vision.best_val_exact
            print(f"base_vl: vision tower tag-pretrained on {report.vision.train_images} training images, validation "
                  f"exact-match {report.vision.best_val_exact:.3f} (epoch {report.vision.best_epoch})")
        print(f"base_vl: VL-only validation accuracy {report.best_val_acc:.3f} (epoch {report.best_epoch}); "
              f"{report.blind_val_acc:.3f} with every image blanked (what the questions alone give away)")
        write_json_atomic(METRICS / "base_vl.json", metrics)
        write_json_atomic(PLOTS / "base_vl_history.json", report.history)


if __name__ == "__main__":
    run_with_error_boundary(main)
