"""Stage A: supervised warm-start of the audio projector and fusion adapters, with retention guaranteed.

Loss = CE(answer | audio-dependent rows) + kl_weight * KL(base || SAFE | VL-only rows) + fisher_weight * EWC.
VL-only rows get a distractor clip most of the time, so the adapter learns to leave their answers alone.
Every `eval_every` steps the VL-only validation accuracy is compared with the frozen base (the retention check).
When the drop exceeds `retention_tolerance` the trainer raises the KL weight and rolls back to the best checkpoint;
the checkpoint it returns as final always satisfies the tolerance (step 0, which IS the base model, always does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from tqdm import tqdm

from safe.config import StageAConfig
from safe.data.datasets import Batch
from safe.eval.metrics import score
from safe.models.safe_model import SAFEModel
from safe.training.losses import FisherPenalty, answer_loss, answer_positions, retention_kl

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
    """

    def __init__(
        self, safe_model: SAFEModel, train_dataloader: Iterable[Batch], val_dataloader: Iterable[Batch],
        config: StageAConfig | dict, logger=None, checkpoint_dir: str | Path | None = None,
        callbacks: list[Callable[["StageATrainer", int], None]] | None = None, progress: bool = True,
        max_new_tokens: int = 4,
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
        for p in safe_model.parameters():
            p.requires_grad_(False)
        for module in safe_model.trainable_modules().values():
            for p in module.parameters():
                p.requires_grad_(True)
        self.params = {n: p for n, p in safe_model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW([
            {"params": list(safe_model.projector.parameters()), "lr": self.config.learning_rate_projector},
            {"params": list(safe_model.fusion.parameters()), "lr": self.config.learning_rate_adapter},
        ], weight_decay=0.0)
        self.state = StageAState(kl_weight=self.config.kl_weight)
        self.fisher: FisherPenalty | None = None
        self._base_val: dict[str, str] | None = None
        self.nonzero_budgets = [b for b in safe_model.token_budgets if b > 0]

    # -- batch preparation --------------------------------------------------------------------------------------
    def _audio_plan(self, batch: Batch, step: int, inject: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row audio features (B, D) and budgets (B,): own audio where present, a distractor clip from another
        row for VL-only rows without audio (with probability distractor_prob, when `inject`), a random non-zero
        budget."""
        g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + step)
        feats = batch.audio_features.clone()
        has = batch.has_audio.clone()
        donors = has.nonzero().flatten()
        if len(donors) and inject:
            for i in (~has & ~batch.needs_audio).nonzero().flatten().tolist():
                if torch.rand((), generator=g) < self.config.distractor_prob:
                    feats[i] = batch.audio_features[donors[torch.randint(len(donors), (), generator=g)]]
                    has[i] = True
        choice = torch.randint(len(self.nonzero_budgets), (len(has),), generator=g)
        budgets = torch.tensor(self.nonzero_budgets)[choice] * has
        return feats, budgets

    def _loss(self, batch: Batch, step: int) -> dict[str, torch.Tensor]:
        feats, budgets = self._audio_plan(batch, step)
        logits = self.model(batch.vl, budgets, audio_features=feats)  # (B, T, V)
        with torch.no_grad():
            teacher = self.model(batch.vl, 0)  # budget 0 == the frozen base, exactly
        needs = batch.needs_audio.to(logits.device)
        task_labels = batch.vl.labels.masked_fill(~needs.unsqueeze(1), -100)
        task = answer_loss(logits, task_labels)
        vl_positions = answer_positions(batch.vl.labels) & (~needs).unsqueeze(1)
        kl = retention_kl(logits, teacher, vl_positions)
        fisher = self.fisher() if self.fisher is not None else logits.new_zeros(())
        total = task + self.state.kl_weight * kl + self.config.fisher_weight * fisher
        return {"loss": total, "task_loss": task, "kl": kl, "fisher": fisher}

    def _vl_loss(self, batch: Batch) -> torch.Tensor:
        """New-task loss on VL-only rows with distractor audio at the largest budget (for the Fisher estimate)."""
        feats, budgets = self._audio_plan(batch, step=-1)
        budgets = torch.where(budgets > 0, torch.full_like(budgets, max(self.nonzero_budgets)), budgets)
        logits = self.model(batch.vl, budgets, audio_features=feats)
        labels = batch.vl.labels.masked_fill(batch.needs_audio.unsqueeze(1), -100)
        return answer_loss(logits, labels)

    # -- evaluation ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation accuracy of base and SAFE at the largest budget, every example with the audio it comes with
        (VL-only questions that carry an unrelated clip get it fused: the retention check's hard case)."""
        K = max(self.nonzero_budgets)
        base_preds: dict[str, str] = {}
        rows = []
        for i, batch in enumerate(self.val_loader):
            if self._base_val is None:
                base_preds.update(zip([r.id for r in batch.records], self.model.generate_answers(
                    batch.vl, 0, max_new_tokens=self.max_new_tokens)))
            feats, budgets = self._audio_plan(batch, step=-2 - i, inject=False)
            budgets = (budgets > 0).long() * K
            preds = self.model.generate_answers(batch.vl, budgets, audio_features=feats, max_new_tokens=self.max_new_tokens)
            rows.extend(zip(batch.records, preds))
        if self._base_val is None:
            self._base_val = base_preds
        return _val_metrics(rows, self._base_val)

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def _trainable_state(self) -> dict:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def _load_trainable(self, state: dict) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state[n])

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
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
        if self.logger is not None:
            self.logger.log_metrics(metrics, step=step)

    def _check_retention(self, step: int) -> None:
        metrics = self.evaluate()
        metrics["kl_weight"] = self.state.kl_weight
        broken = metrics["retention_drop"] > self.config.retention_tolerance
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
        self._record(metrics, step)

    def _batches(self) -> Iterator[Batch]:
        sampler = getattr(self.train_loader, "batch_sampler", None)
        if hasattr(sampler, "set_start"):
            sampler.set_start(self.state.step)
            yield from self.train_loader
            return
        it = iter(self.train_loader)
        for _ in range(self.state.step):
            next(it)
        yield from it

    def train(self) -> StageAState:
        cfg = self.config
        if self.state.step == 0 and self.fisher is None:
            fisher_batches = [b for _, b in zip(range(cfg.fisher_batches), iter(self.val_loader_for_fisher()))]
            self.fisher = FisherPenalty.estimate(self.params, self._vl_loss, fisher_batches)
            self._check_retention(step=0)  # the base model itself: the first valid checkpoint
            self.save_checkpoint()
        bar = tqdm(total=cfg.steps, initial=self.state.step, desc="stage_a", unit="step", disable=not self.progress)
        for batch in self._batches():
            if self.state.step >= cfg.steps:
                break
            self.model.projector.train()
            self.model.fusion.train()
            losses = self._loss(batch, self.state.step)
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
            self.optimizer.step()
            self.state.step += 1
            step = self.state.step
            for cb in self.callbacks:
                cb(self, step)
            bar.update(1)
            bar.set_postfix(loss=f"{losses['loss'].item():.3f}", kl=f"{losses['kl'].item():.4f}")
            if self.logger is not None and (step % 10 == 0 or step == cfg.steps):
                self.logger.log_metrics({k: float(v.detach()) for k, v in losses.items()}, step=step)
            if step % cfg.eval_every == 0 or step == cfg.steps:
                self._check_retention(step)
                self.save_checkpoint()
        bar.close()
        self.model.projector.eval()
        self.model.fusion.eval()
        self._load_trainable(self.state.best_state)  # final = best checkpoint within the tolerance
        return self.state

    def val_loader_for_fisher(self) -> Iterable[Batch]:
        """Training batches (with answers) for the Fisher estimate; uses the train loader's first batches."""
        return self.train_loader


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
