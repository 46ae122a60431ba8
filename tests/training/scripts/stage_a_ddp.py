"""Stage A on the tiny test benchmark, in as many processes as it is launched with (the DDP equivalence test).

usage: stage_a_ddp.py <bench dir with manifest.jsonl + features/> <base_vl folder> <out.pt> <steps> <accumulation>
Rank 0 saves the starting weights, the weights after the last optimizer step (`last`), the returned best checkpoint (`best`) and the
history; every process checks it ends with the same weights as rank 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from safe.config import StageAConfig
from safe.data.datasets import BalancedBatchSampler, LlavaCollator, ManifestDataset
from safe.data.features import FeatureStore
from safe.data.manifest import read_manifest
from safe.distributed import ShardedBatchSampler, all_gather_objects, make_accelerator, shard
from safe.models.base_vl import BaseVLModel
from safe.models.safe_model import SAFEArchitecture, SAFEModel
from safe.training.stage_a import StageATrainer


def main(bench: Path, base_dir: Path, out: Path, steps: int, accumulation: int) -> None:
    accelerator = make_accelerator(gradient_accumulation_steps=accumulation)
    manifest, store = read_manifest(bench / "manifest.jsonl"), FeatureStore.load(bench / "features")
    base = BaseVLModel.from_pretrained(base_dir)
    torch.manual_seed(0)
    model = SAFEModel(base, SAFEArchitecture(audio_embed_dim=store.embed_dim, projector_hidden=32))
    train = ManifestDataset(manifest, "train", features=store)
    val = ManifestDataset(manifest, records=shard(manifest.by_split("val"), accelerator.state), features=store)
    sampler = BalancedBatchSampler([r.needs_audio for r in train.records], 8, 0.5, num_batches=steps * accumulation,
                                   seed=0)
    train_loader = DataLoader(train, batch_sampler=ShardedBatchSampler(sampler, accelerator.state),
                              collate_fn=LlavaCollator(base, store.embed_dim, True))
    val_loader = DataLoader(val, batch_size=16, collate_fn=LlavaCollator(base, store.embed_dim, False))
    cfg = StageAConfig(steps=steps, batch_size=8, eval_every=3, fisher_batches=2, learning_rate_projector=3e-3,
                       learning_rate_adapter=3e-3, kl_weight=1.0, retention_tolerance=0.005)
    last = {}
    trainer = StageATrainer(
        model, train_loader, val_loader, cfg, progress=False, max_new_tokens=2, accelerator=accelerator,
        callbacks=[lambda t, step: last.update(t._trainable_state()) if step == steps else None],
    )
    start = trainer._trainable_state()
    state = trainer.train()
    best = trainer._trainable_state()
    # Every process must hold rank 0's weights (DDP keeps the replicas identical).
    everyone = all_gather_objects([{k: v for k, v in best.items()}], accelerator.state)
    assert all(torch.equal(everyone[0][k], other[k]) for other in everyone for k in best), "replicas differ"
    if accelerator.is_main_process:
        torch.save({"start": start, "last": last, "best": best, "history": state.history, "world": accelerator.num_processes}, out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
