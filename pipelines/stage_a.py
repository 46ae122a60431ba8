"""stage_a: train the audio projector + fusion adapters on cached features, under the retention check."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipelines.common import (
    CACHE, FEATURES, MANIFEST, METRICS, PLOTS, STAGE_A, base_vl_source, config, launch_processes, stage_code,
    run_with_error_boundary, tracked_stage,
)
from safe.data.datasets import BalancedBatchSampler, LlavaCollator, ManifestDataset, example_weights
from safe.data.features import FeatureStore
from safe.data.manifest import read_manifest
from safe.distributed import ShardedBatchSampler, make_accelerator, shard
from safe.eval.plots import plot_stage_a_retention
from safe.io import atomic_dir, content_fingerprint, write_json_atomic
from safe.models.audio_encoders import build_audio_encoder
from safe.models.base_vl import BaseVLModel
from safe.models.safe_model import SAFEArchitecture, SAFEModel
from safe.training.stage_a import StageATrainer

SILENCE_SECONDS = (0.5, 1.0, 2.0, 4.0)
"""Lengths of the silent clips VL-only training rows may carry (`stage_a.silent_share`)."""


def silent_features(cfg) -> torch.Tensor:
    """(N, S, D) segment summaries of silence: digital zeros and a -70 dBFS noise floor at each of SILENCE_SECONDS."""
    encoder = build_audio_encoder(cfg.model.audio_encoder, cache_dir=CACHE / "encoders", seed=cfg.model.seed)
    rng = np.random.default_rng(cfg.stage_a.seed)
    waves = []
    for seconds in SILENCE_SECONDS:
        n = int(16000 * seconds)
        waves += [np.zeros(n, dtype=np.float32), (rng.standard_normal(n) * 3e-4).astype(np.float32)]
    with torch.no_grad():
        return encoder.encode(waves).segments.float().cpu()


def main() -> None:
    cfg = config()
    launch_processes("pipelines.stage_a", cfg)
    accelerator = make_accelerator(cfg.accelerate.mixed_precision, cfg.accelerate.gradient_accumulation_steps)
    with tracked_stage("stage_a", cfg, "model", "accelerate", "stage_a") as tracker:
        manifest, store = read_manifest(MANIFEST), FeatureStore.load(FEATURES)
        base = BaseVLModel.from_pretrained(base_vl_source(cfg), dtype=getattr(torch, cfg.model.dtype))
        base.to(accelerator.device)  # the trainable parts are built on the base's device
        if cfg.model.activation_checkpointing:
            base.enable_activation_checkpointing()
        # Seeded: the projector's and adapters' initial weights are the same in every run (docs/EXPERIMENTS.md#seeded-stages).
        torch.manual_seed(cfg.stage_a.seed)
        model = SAFEModel(base, SAFEArchitecture.from_config(cfg.model, store.embed_dim))
        tracker.log_metrics(model.trainable_summary())
        train = ManifestDataset(manifest, "train", features=store)
        # Each process: its rows of every global batch, its share of the validation set.
        val = ManifestDataset(manifest, records=shard(manifest.by_split("val"), accelerator.state), features=store)
        sampler = BalancedBatchSampler(
            [r.needs_audio for r in train.records], cfg.stage_a.batch_size, cfg.stage_a.audio_ratio,
            num_batches=cfg.stage_a.steps * cfg.accelerate.gradient_accumulation_steps, seed=cfg.stage_a.seed,
            weights=example_weights(train.records, cfg.data.source_weights, cfg.data.family_weights),
        )
        train_loader = DataLoader(train, batch_sampler=ShardedBatchSampler(sampler, accelerator.state),
                                  collate_fn=LlavaCollator(base, store.embed_dim, True))
        val_loader = DataLoader(val, batch_size=64, collate_fn=LlavaCollator(base, store.embed_dim, False))
        # Checkpoints are keyed by everything that defines the run (settings, the base VL's weights, the examples and
        # their features, the stage's code), so only the same run is ever resumed.
        run = {k: cfg.to_dict()[k] for k in ("stage_a", "model")}
        if cfg.data.source_weights or cfg.data.family_weights:
            run["weights"] = [cfg.data.source_weights, cfg.data.family_weights]
        run["gradient_accumulation_steps"] = cfg.accelerate.gradient_accumulation_steps
        run["mixed_precision"] = cfg.accelerate.mixed_precision
        run["inputs"] = [content_fingerprint(p) for p in (base_vl_source(cfg), MANIFEST, FEATURES)]
        run["code"] = [content_fingerprint(p) for p in stage_code("stage_a")]
        key = hashlib.sha256(json.dumps(run, sort_keys=True, default=str).encode()).hexdigest()[:16]
        silence = silent_features(cfg) if cfg.stage_a.silent_share > 0 else None
        trainer = StageATrainer(model, train_loader, val_loader, cfg.stage_a, logger=tracker,
                                checkpoint_dir=CACHE / "checkpoints" / f"stage_a-{key}", accelerator=accelerator,
                                silent_pool=silence)
        if trainer.try_resume() and accelerator.is_main_process:
            print(f"stage_a: resumed from step {trainer.state.step}")
        state = trainer.train()
        if not accelerator.is_main_process:
            return  # rank 0 writes the outputs (every process holds the same weights)
        with atomic_dir(STAGE_A) as tmp:
            model.save_trainable(tmp, extra_config={"audio_encoder": cfg.model.audio_encoder,
                                                    "seed": cfg.model.seed, "base_vl": base_vl_source(cfg)})
            write_json_atomic(tmp / "history.json", state.history)
        best = next(h for h in state.history if h["step"] == state.best_step and "retention_drop" in h)
        metrics = {k: best[k] for k in ("vl_acc_base", "vl_acc_safe", "retention_drop", "audio_acc_base",
                                        "audio_acc_safe", "vl_flip_rate")}
        metrics.update(fisher_coverage=trainer.fisher_coverage, best_step=state.best_step, rollbacks=state.rollbacks,
                       final_kl_weight=state.kl_weight, **model.trainable_summary())
        print("stage_a: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        write_json_atomic(METRICS / "stage_a.json", metrics)
        # DVC plots need every row to carry every key: no Fisher yet (step 0) covers nothing, a row without a
        # rollback did not roll back.
        evals = [{"fisher_coverage": 0.0, "rollback": 0.0, **h} for h in state.history if "retention_drop" in h]
        write_json_atomic(PLOTS / "stage_a_retention.json", evals)
        plot = plot_stage_a_retention(evals, PLOTS / "stage_a_retention.png", tolerance=cfg.stage_a.retention_tolerance)
        tracker.log_artifact(str(plot))


if __name__ == "__main__":
    run_with_error_boundary(main)
