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
from PIL import Image
from tokenizers import models as tokenizer_models
from tqdm import tqdm

from safe.config import BaseVLConfig, ModelConfig
from safe.data.manifest import Manifest, ManifestRecord
from safe.data.media import load_image
from safe.distributed import all_reduce_sum, make_accelerator
from safe.eval.metrics import score
from safe.io import atomic_dir
from safe.training.losses import answer_loss, answer_positions, answer_window
from safe.training.schedules import warmup_cosine
from safe.models.base_vl import PromptEncoder, VLBatch, build_trainable_vl
from safe.training.vision_pretrain import VisionPretrainReport, pretrain_vision_tower


@dataclass
class BaseVLReport:
    epochs_run: int
    best_val_acc: float
    best_epoch: int
    train_examples: int
    val_examples: int
    history: list[dict]
    vision: VisionPretrainReport | None = None
    blind_val_acc: float | None = None
    """The best model's VL-only validation accuracy with every image blanked: what the questions alone give away."""

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if k != "vision"}
        if self.vision is not None:
            out["vision"] = dict(self.vision.__dict__)
        return out


def blank_like(image: Image.Image | None) -> Image.Image | None:
    """A mid-grey image of the same size and mode (None stays None): the blind baseline's input."""
    return None if image is None else Image.new(image.mode, image.size, (128,) * len(image.getbands()))


def vl_only(records: Sequence[ManifestRecord]) -> list[ManifestRecord]:
    return [r for r in records if not r.needs_audio]


@torch.no_grad()
def greedy_accuracy(llava, prompts: PromptEncoder, records, images, batch_size: int = 64, max_new_tokens: int = 4) -> float:
    """Share of `records` whose greedy answer scores as correct (exact match / VQA soft accuracy)."""
    return greedy_score_sum(llava, prompts, records, images, batch_size, max_new_tokens) / max(len(records), 1)


@torch.no_grad()
def greedy_score_sum(llava, prompts: PromptEncoder, records, images, batch_size: int = 64, max_new_tokens: int = 4) -> float:
    """Sum of the greedy answers' scores over `records` (processes add up their shares)."""
    llava.eval()
    total = 0.0
    for start in range(0, len(records), batch_size):
        recs = records[start:start + batch_size]
        batch = prompts.encode([r.question for r in recs], images[start:start + batch_size]).to(llava.device)
        out = llava.generate(
            **batch.model_inputs(), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=prompts.tokenizer.pad_token_id,
            eos_token_id=prompts.tokenizer.eos_token_id,
        )
        preds = prompts.tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
        total += sum(score(p.strip(), r.answer, r.answers) for p, r in zip(preds, recs))
    return total


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
    accelerator=None, image_tags: Callable[[ManifestRecord], list[str]] | None = None,
) -> BaseVLReport:
    """Train, keep the best epoch by VL-only validation accuracy, stop early at `cfg.target_val_acc`, save.

    `derive_questions(record) -> [(question, answer)]` adds more questions about each training image (the synthetic
    benchmark knows every scene; real datasets already have several questions per image).
    `image_tags(record) -> [tag]` names what each image shows; with `cfg.vision_pretrain_epochs` the new vision
    tower first learns those tags (`safe.training.vision_pretrain`) on every training image that has some.
    `accelerator` (safe.distributed.make_accelerator): under several processes each one trains on its rows of
    every global batch (losses normalised by the global token count, DDP all-reduces the gradients) and scores its
    share of the validation set; only rank 0 logs and saves. Batch size stays global.
    """
    accelerator = accelerator or make_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    train_all = manifest.by_split("train")
    val = vl_only(manifest.by_split("val"))
    train_records = vl_only(train_all)
    train = training_pairs(train_records, derive_questions)
    if not train or not val:
        raise ValueError(f"{manifest.path}: need VL-only examples in train and val (got {len(train)} and {len(val)})")
    # Small LLaVA from scratch (word vocabulary from these texts), or a new vision tower around a pretrained LM.
    texts = [r.question for r in train_all] + [r.answer for r in train_all] + [q.question for q in train]
    llava, processor = build_trainable_vl(model_cfg, texts, image_size)
    prompts = PromptEncoder(processor)
    images = {r.id: (load_image(manifest.resolve(r.image)) if r.image else None) for r in train_records + val}
    questions = sorted({r.question for r in train_all})  # every training question's text, audio ones included
    vision = None
    if cfg.vision_pretrain_epochs and image_tags is not None:
        vision = _pretrain_vision(llava, processor, manifest, train_all, val, images, image_tags, cfg,
                                  logger if accelerator.is_main_process else None,
                                  progress and accelerator.is_main_process)
        if vision is not None and cfg.freeze_pretrained_vision:
            llava.model.vision_tower.requires_grad_(False)

    accumulation = accelerator.gradient_accumulation_steps
    total_steps = math.ceil(math.ceil(len(train) / cfg.batch_size) / accumulation) * cfg.epochs  # optimizer steps
    optimizer = torch.optim.AdamW([p for p in llava.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    warmup = min(100, total_steps // 10 + 1)
    schedule = warmup_cosine(optimizer, warmup, total_steps)
    llava.to(accelerator.device)
    train_llava, optimizer = accelerator.prepare(llava, optimizer)  # DDP (identity in one process)
    my_val = val[rank::world]
    my_val_images = [images[r.id] for r in my_val]
    out_dir = Path(out_dir)
    best = {"acc": -1.0, "epoch": 0, "state": None}
    history: list[dict] = []
    step = 0
    bar = tqdm(total=total_steps, desc="base_vl", unit="step", disable=not (progress and accelerator.is_main_process))
    epoch = 0
    for epoch in range(1, cfg.epochs + 1):
        llava.train()
        order = rng.permutation(len(train))  # the same global order in every process (same seed)
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            global_batch = [train[i] for i in order[start:start + cfg.batch_size]]
            pairs = global_batch[rank::world]  # this process's rows
            batch = prompts.encode([p.question for p in pairs], [images[p.image_id] for p in pairs],
                                   [p.answer for p in pairs]).to(accelerator.device)
            with accelerator.accumulate(train_llava):
                window = answer_window(batch.labels)
                logits = train_llava(
                    input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids,
                    pixel_values=batch.pixel_values, logits_to_keep=window,
                ).logits  # (B_local, window, V)
                loss = _global_mean_loss(logits, batch.labels[:, -window:], world)
                if cfg.question_lm_weight:
                    loss = loss + cfg.question_lm_weight * _question_lm_loss(
                        train_llava, prompts, [questions[i] for i in rng.integers(len(questions), size=len(pairs))],
                        accelerator.device, world, rng, cfg.subword_dropout)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(llava.parameters(), 1.0)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            losses.append(float(all_reduce_sum(loss.detach())) / world)
            if accelerator.sync_gradients:
                schedule.step()
                step += 1
                bar.update(1)
        row = {"step": step, "epoch": epoch, "train_loss": float(np.mean(losses))}
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            correct = all_reduce_sum(torch.tensor(greedy_score_sum(llava, prompts, my_val, my_val_images)))
            row["val_acc"] = float(correct) / len(val)
            if row["val_acc"] > best["acc"]:
                best = {"acc": row["val_acc"], "epoch": epoch,
                        "state": {k: v.detach().clone() for k, v in llava.state_dict().items()}}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{row.get('val_acc', float('nan')):.3f}")
        if logger is not None and accelerator.is_main_process:
            logger.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
        if best["acc"] >= cfg.target_val_acc:
            break
    bar.close()
    llava.load_state_dict(best["state"])
    blind = all_reduce_sum(torch.tensor(greedy_score_sum(llava, prompts, my_val, [blank_like(i) for i in my_val_images])))
    if accelerator.is_main_process:
        with atomic_dir(out_dir) as tmp:  # no half-written checkpoint is ever left
            llava.save_pretrained(tmp)
            processor.save_pretrained(tmp)
    accelerator.wait_for_everyone()
    return BaseVLReport(epoch, best["acc"], best["epoch"], len(train), len(val), history, vision,
                        blind_val_acc=float(blind) / len(val))


def split_subwords(tokenizer, ids: Sequence[int], rng: np.random.Generator, rate: float) -> list[int]:
    """Seeded BPE-dropout (Provilkov et al., 2020): each ordinary token is, with probability `rate`, replaced by the
    BPE model's tokens of its text cut at a random point, and each piece again. A word training never had breaks into
    such pieces at test time; without this their embeddings are never trained."""
    model, special = tokenizer.backend_tokenizer.model, set(tokenizer.all_special_ids)

    def split(token: int) -> list[int]:
        text = tokenizer.convert_ids_to_tokens(token)
        if token in special or len(text) < 2 or rng.random() >= rate:
            return [token]
        cut = int(rng.integers(1, len(text)))
        return [p for part in (text[:cut], text[cut:]) for piece in model.tokenize(part) for p in split(piece.id)]

    return [p for token in ids for p in split(token)]


def question_batch(prompts: PromptEncoder, questions: Sequence[str], rng: np.random.Generator | None = None,
                   rate: float = 0.0) -> VLBatch:
    """Text-only prompts of `questions`, left-padded; with `rate` > 0 and a BPE tokenizer, cut by `split_subwords`."""
    tokenizer = prompts.tokenizer
    if rate <= 0 or rng is None or not isinstance(tokenizer.backend_tokenizer.model, tokenizer_models.BPE):
        return prompts.encode(list(questions), [None] * len(questions))
    rows = [split_subwords(tokenizer, tokenizer(prompts.prompt(q, False))["input_ids"], rng, rate) for q in questions]
    enc = tokenizer.pad({"input_ids": rows}, return_tensors="pt")  # (B, T), left-padded (PromptEncoder's side)
    return VLBatch(enc["input_ids"], enc["attention_mask"], None, None)


def _question_lm_loss(llava, prompts: PromptEncoder, questions: list[str], device, world: int,
                      rng: np.random.Generator | None = None, subword_dropout: float = 0.0) -> torch.Tensor:
    """Next-token cross-entropy over text-only prompts of `questions` (no image, no answer): the language model
    learns the questions' words, the audio ones included, without ever seeing an audio answer."""
    batch = question_batch(prompts, questions, rng, subword_dropout).to(device)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)  # (B, T): every real token
    logits = llava(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids).logits  # (B, T, V)
    return _global_mean_loss(logits, labels, world)


def _global_mean_loss(logits: torch.Tensor, labels: torch.Tensor, world: int) -> torch.Tensor:
    """Cross-entropy over this process's labelled tokens divided by the global batch's token count, times the
    process count because DDP averages the gradients: every process's share adds up to the one-process mean."""
    tokens = all_reduce_sum(answer_positions(labels).sum().float()).clamp(min=1.0)
    return answer_loss(logits, labels, tokens) * world


def _pretrain_vision(llava, processor, manifest: Manifest, train_all, val, images: dict, image_tags, cfg: BaseVLConfig,
                     logger, progress: bool) -> VisionPretrainReport | None:
    """Tag-pretrain `llava`'s vision tower on the training images `image_tags` describes (VL-only and audio rows:
    the images are the same kind of scene), validated on the VL-only validation images."""
    tagged = [r for r in train_all if r.image and image_tags(r)]
    val_tagged = [r for r in val if r.image and image_tags(r)]
    if not tagged or not val_tagged:
        return None  # nothing describes these images (e.g. a real dataset): the LLaVA learns to see on its own
    def pixels(records):
        loaded = [images[r.id] if r.id in images else load_image(manifest.resolve(r.image)) for r in records]
        return processor.image_processor(loaded, return_tensors="pt")["pixel_values"]  # (N, 3, H, W)
    log = (lambda row: logger.log_metrics({k: v for k, v in row.items() if k != "vision_epoch"},
                                          step=row["vision_epoch"])) if logger is not None else None
    return pretrain_vision_tower(
        llava.model.vision_tower, pixels(tagged), [image_tags(r) for r in tagged], pixels(val_tagged),
        [image_tags(r) for r in val_tagged], epochs=cfg.vision_pretrain_epochs,
        batch_size=cfg.vision_pretrain_batch_size, lr=cfg.vision_pretrain_lr, weight_decay=cfg.weight_decay,
        seed=cfg.seed, log=log, progress=progress,
    )
