"""Pretrain a new LLaVA vision tower on image tags before the LLaVA learns to answer (offline profiles).

A real LLaVA starts from a CLIP tower that already sees objects. The offline profiles build their tower from
scratch, and learning to see through the language model's answer loss is slow: on the demo data a whole 10-epoch
base_vl run (~13 min on 2 cores) left shape questions at ~0.5. Tagging is the cheap substitute for CLIP's
pretraining: a linear head on every patch state scores each tag (e.g. "red circle"), a max over the patches says
whether the image has it (an object is in one place), and binary cross-entropy trains the tower. The tower alone is
~30x cheaper per image than the LLaVA, so it gets the many passes it needs. The head is thrown away; the patch
states it trained are what LLaVA's projector reads (`vision_feature_layer=-1`, CLS dropped).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from tqdm import tqdm

from safe.training.schedules import warmup_cosine


@dataclass
class VisionPretrainReport:
    epochs: int
    tags: list[str]
    best_epoch: int
    best_val_exact: float
    """Share of validation images whose whole tag set is predicted exactly (every tag right)."""
    history: list[dict]
    train_images: int


class PatchTagHead(nn.Module):
    """Scores tags per patch and keeps each tag's best patch: (B, P, D) -> (B, n_tags) logits."""

    def __init__(self, hidden: int, n_tags: int):
        super().__init__()
        self.score = nn.Linear(hidden, n_tags)

    def forward(self, patch_states: torch.Tensor) -> torch.Tensor:
        return self.score(patch_states).amax(dim=1)  # (B, P, n_tags) -> (B, n_tags)


def tag_targets(tag_sets: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> torch.Tensor:
    """(N, n_tags) 0/1 matrix: row i has a 1 for every tag of image i."""
    index = {t: i for i, t in enumerate(vocabulary)}
    out = torch.zeros(len(tag_sets), len(vocabulary))
    for row, tags in enumerate(tag_sets):
        for tag in tags:
            if tag in index:
                out[row, index[tag]] = 1.0
    return out


def patch_states(vision_tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The patch states LLaVA reads from a CLIP tower: last layer, CLS dropped. (B, 3, H, W) -> (B, P, D)."""
    return vision_tower(pixel_values=pixel_values).last_hidden_state[:, 1:]


@torch.no_grad()
def exact_match(vision_tower: nn.Module, head: PatchTagHead, pixels: torch.Tensor, targets: torch.Tensor,
                batch_size: int = 256) -> float:
    """Share of images whose predicted tag set (logit > 0) equals their true one."""
    vision_tower.eval()
    hits = 0
    for start in range(0, len(pixels), batch_size):
        logits = head(patch_states(vision_tower, pixels[start:start + batch_size]))
        hits += int(((logits > 0).float() == targets[start:start + batch_size]).all(dim=1).sum())
    return hits / max(len(pixels), 1)


def pretrain_vision_tower(
    vision_tower: nn.Module, train_pixels: torch.Tensor, train_tags: Sequence[Sequence[str]],
    val_pixels: torch.Tensor, val_tags: Sequence[Sequence[str]], epochs: int, batch_size: int, lr: float,
    weight_decay: float = 0.01, seed: int = 0, hflip: bool = True, eval_every: int = 5,
    log: Callable[[dict], None] | None = None, progress: bool = True,
) -> VisionPretrainReport:
    """Train `vision_tower` in place on multi-label tags; it ends at its best validation epoch.

    Pixels are what the LLaVA processor makes of the images, (N, 3, H, W). `hflip` mirrors half of every batch
    (tags about shapes and colours survive a left-right mirror; set it False when tags do not, e.g. "arrow left").
    Every process of a multi-process run calls this with the same inputs and seed and gets the same tower, so no
    communication is needed; DDP then starts the LLaVA from rank 0's copy anyway.
    """
    if len(train_pixels) != len(train_tags) or len(val_pixels) != len(val_tags):
        raise ValueError("pretrain_vision_tower: pixels and tag lists differ in length")
    vocabulary = sorted({t for tags in train_tags for t in tags})
    if not vocabulary:
        raise ValueError("pretrain_vision_tower: the training images have no tags")
    train_y, val_y = tag_targets(train_tags, vocabulary), tag_targets(val_tags, vocabulary)
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        head = PatchTagHead(vision_tower.config.hidden_size, len(vocabulary))
    params = list(vision_tower.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_pixels) / batch_size)
    total = steps_per_epoch * epochs
    warmup = max(1, total // 10)
    schedule = warmup_cosine(optimizer, warmup, total)
    best = {"exact": -1.0, "epoch": 0, "state": None}
    history: list[dict] = []
    bar = tqdm(total=total, desc="vision pretrain", unit="step", disable=not progress)
    for epoch in range(1, epochs + 1):
        vision_tower.train()
        order = torch.randperm(len(train_pixels), generator=generator)
        losses = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            pixels = train_pixels[rows]  # (b, 3, H, W)
            if hflip:
                flip = torch.rand(len(rows), generator=generator) < 0.5
                pixels = torch.where(flip[:, None, None, None], pixels.flip(-1), pixels)
            logits = head(patch_states(vision_tower, pixels))  # (b, n_tags)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, train_y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            bar.update(1)
        row = {"vision_epoch": epoch, "vision_loss": sum(losses) / len(losses)}
        if epoch % eval_every == 0 or epoch == epochs:
            row["vision_val_exact"] = exact_match(vision_tower, head, val_pixels, val_y)
            if row["vision_val_exact"] > best["exact"]:
                best = {"exact": row["vision_val_exact"], "epoch": epoch,
                        "state": copy.deepcopy(vision_tower.state_dict())}
            bar.set_postfix(loss=f"{row['vision_loss']:.3f}", val_exact=f"{row['vision_val_exact']:.3f}")
        history.append(row)
        if log is not None:
            log(row)
    bar.close()
    vision_tower.load_state_dict(best["state"])
    return VisionPretrainReport(epochs, vocabulary, best["epoch"], best["exact"], history, len(train_pixels))
