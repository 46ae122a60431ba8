"""Stage A: supervised warm-start of the audio projector and fusion adapters, with retention guaranteed.

Loss = CE(answer | audio-dependent rows) + kl_weight * KL(base || SAFE | VL-only rows)
       + gate_weight * BCE(fusion gates, needs_audio | rows with a clip)
       + grounding_weight * -log(fusion attention on the answer's audio tokens | rows with an audio_span)
       + fisher_weight * EWC.
VL-only rows get a clip they do not need most of the time (another example's, or silence), so the adapter learns to
leave their answers alone: the gate (read from the question) learns to close for them, and the KL keeps what still
passes from changing the answer. Every `eval_every` steps the retention check answers the validation set with a clip
fused at the largest budget for every VL-only question (its own clip, else a distractor) and compares with the frozen
base. When the accuracy drop exceeds `retention_tolerance` (or the share of changed VL answers exceeds
`retention_flip_tolerance`) the trainer raises the KL weight and rolls back to the best checkpoint; the checkpoint
it returns as final always satisfies the tolerances (step 0, which IS the base model, always does). After each check
the diagonal Fisher is re-estimated at the parameters training continues from (see `FisherPenalty`).

Multi-process (accelerate DDP): each process gets a share of every global batch (`ShardedBatchSampler`) and of the
validation set. Losses are sums divided by the GLOBAL token counts, every row's audio plan depends only on its record
and the batch index, and validation predictions are gathered before any decision, so N processes train the same
weights as one (up to float summation order) and take the same rollback decisions.
"""

from __future__ import annotations

import contextlib
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm

from safe.config import StageAConfig
from safe.data.datasets import Batch
from safe.distributed import all_gather_objects, all_reduce_sum, make_accelerator
from safe.eval.metrics import score
from safe.models.safe_model import SAFEModel
from safe.training.losses import (FisherPenalty, answer_loss, answer_positions, answer_window, gate_loss,
                                  grounding_loss, grounding_targets, retention_kl)

CHECKPOINT_FILE = "stage_a_last.pt"


@dataclass
class StageAState:
    step: int = 0
    kl_weight: float = 1.0
    best_step: int = 0
    best_score: float = float("-inf")
    best_state: dict | None = None
    rollbacks: int = 0
    history: list[dict] = field(default_factory=list)


class StageATrainer:
    """`StageATrainer(safe_model, train_dataloader, val_dataloader, config)` as in the SAFE spec.

    `train_dataloader` yields collated `Batch`es (use `BalancedBatchSampler` for the audio : VL-only ratio);
    `val_dataloader` yields validation batches without answers appended (prompts for generation).
    `config` is a `StageAConfig` or a dict of its fields. `logger` needs `log_metrics(dict, step)`.
    `callbacks` run after every optimiser step as `cb(trainer, step)` (tests plant regressions with them).
    `accelerator` (safe.distributed.make_accelerator) carries DDP, mixed precision and gradient accumulation; under
    several processes pass each process its share: `ShardedBatchSampler` for training and a sharded validation set.
    `distractor_pool` (N, D): audio features VL-only rows may get as distractors; default: every cached feature of
    the training dataset. `silent_pool` (S, D): encoder features of silent clips (a `silent_share` of those
    misroutings); none: distractors only. The projector's input standardisation is fitted on the training dataset's
    cached features (else on the distractor pool) unless it already is.
    """

    def __init__(
        self, safe_model: SAFEModel, train_dataloader: Iterable[Batch], val_dataloader: Iterable[Batch],
        config: StageAConfig | dict, logger=None, checkpoint_dir: str | Path | None = None,
        callbacks: list[Callable[["StageATrainer", int], None]] | None = None, progress: bool = True,
        max_new_tokens: int = 4, accelerator=None, distractor_pool: torch.Tensor | None = None,
        silent_pool: torch.Tensor | None = None,
    ):
        self.model = safe_model
        self.train_loader = train_dataloader
        self.val_loader = val_dataloader
        self.config = config if isinstance(config, StageAConfig) else StageAConfig(**config)
        self.logger = logger
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        self.callbacks = callbacks or []
        self.progress = progress
        self.max_new_tokens = max_new_tokens
        self.accelerator = accelerator or make_accelerator()
        self.world = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        train_features = _feature_pool(train_dataloader)  # (N, D_audio), empty without a feature store
        self.distractor_pool = distractor_pool if distractor_pool is not None else train_features
        self.silent_pool = silent_pool if silent_pool is not None else torch.zeros(0, self.distractor_pool.shape[-1])
        stats_source = train_features if len(train_features) >= 2 else self.distractor_pool
        if not safe_model.projector.feature_stats_fitted and len(stats_source) >= 2:
            safe_model.projector.fit_feature_stats(stats_source)  # before DDP copies the buffers
        trainable = safe_model.trainable_parameters()
        for p in safe_model.parameters():
            p.requires_grad_(False)
        for p in trainable.values():
            p.requires_grad_(True)
        self.params = trainable
        optimizer = torch.optim.AdamW([
            {"params": [p for n, p in trainable.items() if n.startswith("projector.")],
             "lr": self.config.learning_rate_projector},
            {"params": [p for n, p in trainable.items() if n.startswith("fusion.")],
             "lr": self.config.learning_rate_adapter},
        ], weight_decay=0.0)
        # DDP wraps the whole SAFE model (its forward runs the frozen base through the fusion hooks); only the
        # trainable parts have gradients to all-reduce. `self.model` stays the plain module for generation.
        self.train_model, self.optimizer = self.accelerator.prepare(safe_model, optimizer)
        self.state = StageAState(kl_weight=self.config.kl_weight)
        self.fisher: FisherPenalty | None = None
        self._fisher_batches: list[Batch] | None = None
        self._base_val: dict[str, str] | None = None
        self.nonzero_budgets = [b for b in safe_model.token_budgets if b > 0]

    # -- batch preparation --------------------------------------------------------------------------------------
    def _row_rng(self, batch_index: int, record_id: str) -> np.random.Generator:
        """A row's own random stream: the same whichever process, batch position or batch share holds the row."""
        return np.random.default_rng([self.config.seed, batch_index & 0xFFFFFFFF, zlib.crc32(record_id.encode())])

    def _audio_plan(self, batch: Batch, batch_index: int, every_vl_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row audio features (B, D) and budgets (B,): own audio where present; for a VL-only row without
        audio, with probability distractor_prob (always with `every_vl_row`) a clip it does not need: silence for
        a silent_share of them, else another example's clip; a random non-zero budget for every row with audio."""
        feats = batch.audio_features.clone()
        budgets = torch.zeros(len(batch.records), dtype=torch.long)
        for i, record in enumerate(batch.records):
            rng = self._row_rng(batch_index, record.id)
            has = bool(batch.has_audio[i])
            if not has and not record.needs_audio and len(self.distractor_pool):
                if every_vl_row or rng.random() < self.config.distractor_prob:
                    silent = len(self.silent_pool) and rng.random() < self.config.silent_share
                    pool = self.silent_pool if silent else self.distractor_pool
                    feats[i] = pool[int(rng.integers(len(pool)))]
                    has = True
            if has:
                budgets[i] = self.nonzero_budgets[int(rng.integers(len(self.nonzero_budgets)))]
        return feats, budgets

    def _global_count(self, mask: torch.Tensor) -> torch.Tensor:
        """How many True entries `mask` has over all processes' shares of the batch (at least 1)."""
        return all_reduce_sum(mask.sum().float()).clamp(min=1.0)

    def _loss(self, batch: Batch, batch_index: int) -> dict[str, torch.Tensor]:
        batch = batch.to(self.accelerator.device)
        feats, budgets = self._audio_plan(batch, batch_index)
        window = answer_window(batch.vl.labels)
        labels = batch.vl.labels[:, -window:]  # (B, W): the answers' end of the batch
        with torch.no_grad(), self.model.recording_prefix() as recorder:
            teacher = self.model(batch.vl, 0, logits_to_keep=window)  # budget 0 == the frozen base, exactly
        # The student starts from the teacher's prompt prefix: the frozen layers below the first fusion block.
        # logits (B, W, V); gates (B, L): the learned gate of each fusion block
        grounding = self.config.grounding_weight > 0 and batch.audio_spans is not None
        with self.model.reusing_prefix(recorder.prefix), self._attention(grounding) as attention:
            logits, gates = self.train_model(batch.vl, budgets, audio_features=feats, return_gates=True,
                                             logits_to_keep=window)
        needs = batch.needs_audio.to(logits.device)
        task_labels = labels.masked_fill(~needs.unsqueeze(1), -100)
        vl_positions = answer_positions(labels) & (~needs).unsqueeze(1)
        # Sums over this share / global counts, times the process count because DDP averages the gradients.
        task = answer_loss(logits, task_labels, self._global_count(answer_positions(task_labels))) * self.world
        kl = retention_kl(logits, teacher, vl_positions, self._global_count(vl_positions)) * self.world
        fused = (budgets > 0).to(logits.device)  # rows that carry a clip
        gate = torch.zeros((), device=logits.device) if gates is None else (
            gate_loss(gates, needs, fused, self._global_count(fused)) * self.world)
        loss = task + self.state.kl_weight * kl + self.config.gate_weight * gate
        losses = {"task_loss": task, "kl": kl, "gate_loss": gate}
        if grounding:
            targets = grounding_targets(batch.audio_spans, budgets, max(self.nonzero_budgets))  # (B, K)
            positions = answer_positions(batch.vl.labels) & targets.any(-1, keepdim=True)  # (B, T-1)
            losses["grounding"] = grounding_loss(attention, targets, batch.vl.labels,
                                                 self._global_count(positions)) * self.world
            loss = loss + self.config.grounding_weight * losses["grounding"]
        return {"loss": loss, **losses}

    def _attention(self, on: bool) -> contextlib.AbstractContextManager[list[torch.Tensor]]:
        """The fusion attention weights of the student pass when the grounding loss needs them."""
        return self.model.recording_attention() if on else contextlib.nullcontext([])

    def _add_fisher_gradient(self) -> torch.Tensor:
        """Add d(fisher_weight * EWC)/d(params) to the already all-reduced gradients; returns the penalty.

        The penalty depends on the parameters only, identical in every process, so it stays outside DDP: a
        parameter used outside the wrapped forward would break DDP's gradient bookkeeping."""
        if self.fisher is None:
            return torch.zeros((), device=self.accelerator.device)
        penalty = self.fisher()
        grads = torch.autograd.grad(self.config.fisher_weight * penalty, list(self.params.values()), allow_unused=True)
        scaler = self.accelerator.scaler  # fp16: gradients are still multiplied by the loss scale here
        scale = scaler.get_scale() if scaler is not None else 1.0
        for p, g in zip(self.params.values(), grads):
            if g is not None:
                p.grad = g * scale if p.grad is None else p.grad + g * scale
        return penalty.detach()

    def _vl_loss(self, batch: Batch) -> torch.Tensor:
        """New-task loss on VL-only rows, every one carrying a clip at the largest budget (for the Fisher estimate);
        this share's sum over the global token count (the gradients are then summed over processes)."""
        batch = batch.to(self.accelerator.device)
        feats, budgets = self._audio_plan(batch, batch_index=-1, every_vl_row=True)
        budgets = torch.where(budgets > 0, torch.full_like(budgets, max(self.nonzero_budgets)), budgets)
        labels = batch.vl.labels.masked_fill(batch.needs_audio.unsqueeze(1), -100)
        window = answer_window(labels)
        with self.model.gates_unfloored():  # the floor would shut most VL rows and leave the Fisher all zero
            logits = self.model(batch.vl, budgets, audio_features=feats, logits_to_keep=window)  # (B, W, V)
        labels = labels[:, -window:]
        return answer_loss(logits, labels, self._global_count(answer_positions(labels)))

    # -- evaluation ------------------------------------------------------------------------------------------------
    def _validation_audio(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D) features and (B,) budgets of the retention check: the largest budget for every row with a clip and
        every VL-only row, which gets a distractor from the pool when it has no clip (the same one in every check)."""
        K = max(self.nonzero_budgets)
        feats = batch.audio_features.clone()
        budgets = batch.has_audio.long() * K
        if not len(self.distractor_pool):
            return feats, budgets
        for i, record in enumerate(batch.records):
            if not record.needs_audio and not bool(batch.has_audio[i]):
                pick = zlib.crc32(record.id.encode()) % len(self.distractor_pool)
                feats[i] = self.distractor_pool[pick].to(feats.device)
                budgets[i] = K
        return feats, budgets

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation accuracy of base and SAFE at the largest budget, every VL-only question with a clip fused (its
        own, else a distractor: the retention check's hard case, a misrouted question) and every audio question with
        its clip. Each process predicts its share of the validation set; the metrics come from everyone's
        predictions."""
        base_preds: list[tuple[str, str]] = []
        rows, records = [], []
        as_base = self.model.fusion_adds_nothing()  # a fresh adapter (step 0): SAFE's answers are the base's
        for batch in self.val_loader:
            batch = batch.to(self.accelerator.device)
            if self._base_val is None:
                base_preds.extend(zip([r.id for r in batch.records], self.model.generate_answers(
                    batch.vl, 0, max_new_tokens=self.max_new_tokens)))
            if as_base:
                records.extend(batch.records)
                continue
            feats, budgets = self._validation_audio(batch)
            preds = self.model.generate_answers(batch.vl, budgets, audio_features=feats,
                                                max_new_tokens=self.max_new_tokens)
            rows.extend(zip(batch.records, preds))
        if self._base_val is None:
            self._base_val = dict(all_gather_objects(base_preds))
        rows.extend((r, self._base_val[r.id]) for r in records)
        return _val_metrics(all_gather_objects(rows), self._base_val)

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def _trainable_state(self) -> dict:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def _load_trainable(self, state: dict) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None or not self.is_main:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        blob = {"state": self.state, "params": self._trainable_state(), "optimizer": self.optimizer.state_dict(),
                "fisher": None if self.fisher is None else (self.fisher.fisher, self.fisher.anchor),
                "base_val": self._base_val}
        tmp = self.checkpoint_dir / f".{CHECKPOINT_FILE}.tmp"
        torch.save(blob, tmp)
        tmp.replace(self.checkpoint_dir / CHECKPOINT_FILE)

    def try_resume(self) -> bool:
        """Continue from the last checkpoint in `checkpoint_dir` if there is one (same data order, same RNG)."""
        path = self.checkpoint_dir / CHECKPOINT_FILE if self.checkpoint_dir else None
        if path is None or not path.is_file():
            return False
        blob = torch.load(path, weights_only=False)
        self.state = blob["state"]
        self._load_trainable(blob["params"])
        self.optimizer.load_state_dict(blob["optimizer"])
        if blob["fisher"] is not None:
            self.fisher = FisherPenalty(self.params, blob["fisher"][0])
            self.fisher.anchor = blob["fisher"][1]
        self._base_val = blob["base_val"]
        return True

    # -- training ----------------------------------------------------------------------------------------------------
    def _record(self, metrics: dict, step: int) -> None:
        self.state.history.append({"step": step, **metrics})
        if self.logger is not None and self.is_main:
            self.logger.log_metrics(metrics, step=step)

    def _check_retention(self, step: int) -> None:
        metrics = self.evaluate()
        metrics["kl_weight"] = self.state.kl_weight
        broken = (metrics["retention_drop"] > self.config.retention_tolerance
                  or metrics["vl_flip_rate"] > self.config.retention_flip_tolerance)
        if broken:
            # React: stronger retention pressure, and back to the best checkpoint that kept the tolerance.
            self.state.kl_weight *= self.config.kl_weight_growth
            self.state.rollbacks += 1
            if self.state.best_state is not None:
                self._load_trainable(self.state.best_state)
            self.optimizer.state.clear()  # Adam moments belong to the abandoned trajectory
            metrics["rollback"] = 1.0
        elif metrics["audio_acc_safe"] > self.state.best_score:
            self.state.best_score = metrics["audio_acc_safe"]
            self.state.best_step = step
            self.state.best_state = self._trainable_state()
        metrics["retention_ok"] = float(not broken)
        if step > 0:  # the LoRA starts at zero: at step 0 only one tensor has gradient, so no Fisher yet
            self._refresh_fisher()
            metrics["fisher_coverage"] = self.fisher_coverage
        self._record(metrics, step)

    def _refresh_fisher(self) -> None:
        """Diagonal Fisher of the VL-only loss (every VL row carrying a clip) at the current parameters, which become
        the anchor: the state training continues from, the last one that kept retention."""
        self.fisher = FisherPenalty.estimate(self.params, self._vl_loss, self._fisher_batches or [],
                                             reduce_grad=all_reduce_sum)

    @property
    def fisher_coverage(self) -> float:
        """Share of trainable tensors with a non-zero Fisher entry (nan before the first estimate)."""
        if self.fisher is None:
            return float("nan")
        return self.fisher.coverage()

    def _batches(self) -> Iterator[Batch]:
        """Training batches from where the run stands (optimizer step x accumulation)."""
        start = self.state.step * self.accelerator.gradient_accumulation_steps
        sampler = getattr(self.train_loader, "batch_sampler", None)
        if hasattr(sampler, "set_start"):
            sampler.set_start(start)
            yield from self.train_loader
            return
        it = iter(self.train_loader)
        for _ in range(start):
            next(it)
        yield from it

    def _log_losses(self, losses: dict[str, torch.Tensor], step: int) -> None:
        """Loss terms averaged over processes (every process calls this at the same steps: it all-reduces)."""
        values = all_reduce_sum(torch.stack([v.detach().float() for v in losses.values()])) / self.world
        if self.logger is not None and self.is_main:
            self.logger.log_metrics(dict(zip(losses, values.tolist())), step=step)

    def train(self) -> StageAState:
        cfg = self.config
        accumulation = self.accelerator.gradient_accumulation_steps
        self._fisher_batches = self._first_batches(cfg.fisher_batches)
        if self.state.step == 0 and not self.state.history:
            self._check_retention(step=0)  # the base model itself: the first valid checkpoint
            self.save_checkpoint()
        bar = tqdm(total=cfg.steps, initial=self.state.step, desc="stage_a", unit="step",
                   disable=not (self.progress and self.is_main))
        batch_index = self.state.step * accumulation
        for batch in self._batches():
            if self.state.step >= cfg.steps:
                break
            self.model.projector.train()
            self.model.fusion.train()
            with self.accelerator.accumulate(self.train_model):  # no DDP all-reduce until the last micro-batch
                losses = self._loss(batch, batch_index)
                self.accelerator.backward(losses["loss"])  # scaled by 1 / accumulation
                if self.accelerator.sync_gradients:
                    losses["fisher"] = self._add_fisher_gradient()
                    self.accelerator.clip_grad_norm_(list(self.params.values()), 1.0)
                self.optimizer.step()  # (accelerate skips the step and zero_grad between micro-batches)
                self.optimizer.zero_grad(set_to_none=True)
            batch_index += 1
            if batch_index % accumulation:
                continue
            self.state.step += 1
            step = self.state.step
            for cb in self.callbacks:
                cb(self, step)
            bar.update(1)
            losses["loss"] = losses["loss"].detach() + self.config.fisher_weight * losses["fisher"]
            bar.set_postfix(loss=f"{losses['loss'].item():.3f}", kl=f"{losses['kl'].item():.4f}")
            if step % 10 == 0 or step == cfg.steps:
                self._log_losses(losses, step)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                self._check_retention(step)
                self.save_checkpoint()
        bar.close()
        self.model.projector.eval()
        self.model.fusion.eval()
        self._load_trainable(self.state.best_state)  # final = best checkpoint within the tolerance
        return self.state

    def _first_batches(self, n: int) -> list[Batch]:
        """The first `n` training batches of the run (with answers), whatever step it resumes from: the Fisher's."""
        sampler = getattr(self.train_loader, "batch_sampler", None)
        if hasattr(sampler, "set_start"):
            sampler.set_start(0)
        return [b for _, b in zip(range(n), iter(self.train_loader))]


def _feature_pool(loader: Iterable[Batch]) -> torch.Tensor:
    """(N, D) cached audio features of the loader's dataset (distractor candidates); empty without a store."""
    dataset = getattr(loader, "dataset", None)
    store = getattr(dataset, "features", None)
    if store is None:
        return torch.zeros(0, 0)
    rows = [store.get(r.id)[0] for r in dataset.records if r.audio and store.has(r.id)]
    return torch.stack(rows) if rows else torch.zeros(0, store.embed_dim)


def _val_metrics(rows: list, base_preds: dict[str, str]) -> dict[str, float]:
    vl = [(r, p) for r, p in rows if not r.needs_audio]
    au = [(r, p) for r, p in rows if r.needs_audio]
    acc = lambda pairs, use_base: (  # noqa: E731
        sum(score(base_preds[r.id] if use_base else p, r.answer, r.answers) for r, p in pairs) / max(len(pairs), 1)
    )
    out = {
        "vl_acc_base": acc(vl, True), "vl_acc_safe": acc(vl, False),
        "audio_acc_base": acc(au, True), "audio_acc_safe": acc(au, False),
    }
    out["retention_drop"] = out["vl_acc_base"] - out["vl_acc_safe"]
    out["vl_flip_rate"] = sum(base_preds[r.id] != p for r, p in vl) / max(len(vl), 1)
    return out
