"""Train the small LLaVA of the offline profiles (tiny, demo) from scratch on the VL-only training split.

Real-checkpoint profiles skip this. The result is saved as a normal transformers folder (model + processor) and is
frozen for everything after. Audio-question words are in the tokenizer's vocabulary (it is built from every training
question and answer), but the model never sees audio, so on audio questions it can only guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from safe.config import BaseVLConfig, ModelConfig
from safe.data.manifest import Manifest, ManifestRecord
from safe.data.media import load_image
from safe.eval.metrics import score
from safe.io import atomic_dir
from safe.training.losses import answer_loss
from safe.models.base_vl import PromptEncoder, build_llava, build_processor, build_word_tokenizer


@dataclass
class BaseVLReport:
    epochs_run: int
    best_val_acc: float
    best_epoch: int
    train_examples: int
    val_examples: int
    history: list[dict]

    def to_json(self) -> dict:
        return dict(self.__dict__)


def vl_only(records: Sequence[ManifestRecord]) -> list[ManifestRecord]:
    return [r for r in records if not r.needs_audio]


@torch.no_grad()
def greedy_accuracy(llava, prompts: PromptEncoder, records, images, batch_size: int = 64, max_new_tokens: int = 4) -> float:
    """Share of `records` whose greedy answer scores as correct (exact match / VQA soft accuracy)."""
    llava.eval()
    total = 0.0
    for start in range(0, len(records), batch_size):
        recs = records[start:start + batch_size]
        batch = prompts.encode([r.question for r in recs], images[start:start + batch_size])
        out = llava.generate(
            **batch.model_inputs(), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=prompts.tokenizer.pad_token_id,
            eos_token_id=prompts.tokenizer.eos_token_id,
        )
        preds = prompts.tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
        total += sum(score(p.strip(), r.answer, r.answers) for p, r in zip(preds, recs))
    return total / max(len(records), 1)


@dataclass(frozen=True)
class QA:
    image_id: str
    question: str
    answer: str


def training_pairs(records: Sequence[ManifestRecord], derive: Callable[[ManifestRecord], list] | None) -> list[QA]:
    """The manifest's question per record, plus the extra questions `derive` finds for the same image."""
    pairs: list[QA] = []
    for r in records:
        seen = {(r.question, r.answer)}
        pairs.append(QA(r.id, r.question, r.answer))
        for question, answer in (derive(r) if derive else []):
            if (question, answer) not in seen:
                seen.add((question, answer))
                pairs.append(QA(r.id, question, answer))
    return pairs


def train_base_vl(
    manifest: Manifest, model_cfg: ModelConfig, cfg: BaseVLConfig, image_size: int, out_dir: str | Path,
    logger=None, progress: bool = True, derive_questions: Callable[[ManifestRecord], list] | None = None,
) -> BaseVLReport:
    """Train, keep the best epoch by VL-only validation accuracy, stop early at `cfg.target_val_acc`, save.

    `derive_questions(record) -> [(question, answer)]` adds more questions about each training image (the synthetic
    benchmark knows every scene; real datasets already have several questions per image).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_all = manifest.by_split("train")
    val = vl_only(manifest.by_split("val"))
    train_records = vl_only(train_all)
    train = training_pairs(train_records, derive_questions)
    if not train or not val:
        raise ValueError(f"{manifest.path}: need VL-only examples in train and val (got {len(train)} and {len(val)})")
    tokenizer = build_word_tokenizer([r.question for r in train_all] + [r.answer for r in train_all]
                                     + [q.question for q in train])
    processor = build_processor(tokenizer, image_size, model_cfg.patch_size)
    prompts = PromptEncoder(processor)
    llava = build_llava(model_cfg, tokenizer, image_size)
    images = {r.id: (load_image(manifest.resolve(r.image)) if r.image else None) for r in train_records + val}
    val_images = [images[r.id] for r in val]

    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    optimizer = torch.optim.AdamW(llava.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = min(100, total_steps // 10 + 1)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)),
    )
    out_dir = Path(out_dir)
    best = {"acc": -1.0, "epoch": 0, "state": None}
    history: list[dict] = []
    step = 0
    bar = tqdm(total=total_steps, desc="base_vl", unit="step", disable=not progress)
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        llava.train()
        order = rng.permutation(len(train))
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            pairs = [train[i] for i in order[start:start + cfg.batch_size]]
            batch = prompts.encode([p.question for p in pairs], [images[p.image_id] for p in pairs],
                                   [p.answer for p in pairs])
            logits = llava(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                pixel_values=batch.pixel_values,
            ).logits  # (B, T, V)
            loss = answer_loss(logits, batch.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(llava.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
        row = {"step": step, "epoch": epoch, "train_loss": float(np.mean(losses))}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            row["val_acc"] = greedy_accuracy(llava, prompts, val, val_images)
            if row["val_acc"] > best["acc"]:
                best = {"acc": row["val_acc"], "epoch": epoch,
                        "state": {k: v.detach().clone() for k, v in llava.state_dict().items()}}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row.get('val_acc', float('nan')):.3f}")
        if logger is not None:
            logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        if best["acc"] >= cfg.target_val_acc:
            break
    bar.close()
    llava.load_state_dict(best["state"])
    with atomic_dir(out_dir) as tmp:  # no half-written checkpoint is ever left
        llava.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return BaseVLReport(epoch, best["acc"], best["epoch"], len(train), len(val), history)
