"""Stage B: learn WHEN to consult audio, as a contextual bandit over token budgets.

Each step samples a minibatch of rows of a precomputed `OutcomeTable`, samples one budget per row from the policy,
looks the reward up (r = score - alpha * latency - gamma * irrelevance) and takes a REINFORCE step:

    loss = -mean((r' - V(s)) * log pi(a|s)) - entropy_coef * mean(H(pi(.|s))) + mean((V(s) - r')^2)

Baseline: a small LEARNED VALUE HEAD V(s) (trained by the MSE term, detached in the policy term), the usual choice
when rewards depend strongly on the state (VL-only rows sit near 1 when skipping, audio rows near 0).
`baseline="batch_mean"` (advantage = r' - mean(r') over the batch) is the cheaper alternative
(docs/EXPERIMENTS.md#stage-b-baseline).

Retention constraint (Lagrangian): on VL-only rows (needs_audio False) the gap g = scores[:, 0] - scores[a] is how much
the chosen budget lost vs the base answer. The shaped reward is r' = r - lambda * g on those rows, and after every step
lambda <- max(0, lambda + lagrange_lr * (mean g over the batch's VL-only rows - retention_tolerance)).

Rows without audio can only take budget 0 (action mask). Everything is seeded: on CPU the same seed gives the same
history and weights.

Latency cost: measured, not assumed (`measure_budget_costs`). Before training, a few validation examples are timed on
the machine Stage B runs on: the base answer (budget 0: prompt encoding + base generate) and, for each budget k > 0,
the audio path the deployed cascade adds after the base answer (audio encoder on the waveform + the fused generate at
k tokens). cost[k] = (t_k - t_0) / (t_max - t_0) from a fit that is robust to timing noise
(`budget_costs_from_times`), rounded to COST_STEP, so skipping costs 0 and the slowest budget 1. The costs, the
measured milliseconds and the fit go to stage_b.json.
"""

from __future__ import annotations

import copy
import time
import zlib
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from safe.models.policy import AudioPolicyNetwork, masked_entropy
from safe.rl.reward import (OutcomeTable, RewardConfig, evaluate_actions, fixed_action_indices, reward_terms)

REQUIRED_FIELDS = ("steps", "batch_size", "lr", "entropy_coef", "alpha", "gamma", "retention_tolerance",
                   "lagrange_lr", "seed")


class MetricsLogger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


def bandit_tables(train: OutcomeTable, val: OutcomeTable, holdout_every: int = 3) -> tuple[OutcomeTable, OutcomeTable]:
    """(fit, select): the rows the bandit learns from, and the held-out rows that pick its checkpoint and compare it
    with the fixed policies.

    Why not simply the training rows: the base VL was trained on every VL-only training image, so on those rows its
    answer confidence (a state feature) is inflated exactly where audio is not needed, while the audio rows' images
    are new to it. A bandit fitted there learns "unsure -> consult audio" and then sends VL-only validation and test
    questions, where the base is less sure, to audio (docs/EXPERIMENTS.md#stage-b-fit-rows). So `fit` holds only rows whose images the base never trained on: the
    training rows that need audio and 2 in 3 validation rows; the other validation rows (by a hash of their id) are
    `select`.
    """
    if val.ids is None:
        raise ValueError("the validation table needs example ids (the held-out split is a hash of them)")
    held = np.array([zlib.crc32(str(i).encode()) % holdout_every == 0 for i in val.ids])
    if held.all() or not held.any():
        raise ValueError(f"{len(val)} validation rows cannot be split 1 in {holdout_every} into fit and select rows")
    return OutcomeTable.concat([train.subset(train.needs_audio), val.subset(~held)]), val.subset(held)


def bandit_train_records(records: Sequence[Any]) -> list[Any]:
    """The training records whose outcomes `bandit_tables` keeps (those that need audio), so Stage B rolls out only
    them: the VL-only training rows it would drop are about half the training split, each generated at every budget."""
    return [r for r in records if r.needs_audio]


def mix_weights(table: OutcomeTable, reference: OutcomeTable) -> np.ndarray:
    """Sampling weight per row of `table` (N,) so that its mix of (needs_audio, has_audio) groups matches
    `reference`'s (the deployment mix, e.g. the held-out validation rows); weights average 1 over the table.

    Why: `bandit_tables` takes only the training rows that need audio, so VL-only questions carrying a clip (the
    rows where a wrong "consult audio" costs an answer) are a far smaller share of the fit rows than of validation and
    test; sampled uniformly, the bandit barely sees them and learns that questions like "how many shapes ..." go to
    audio, like "how many beeps ...". A group missing from `reference` gets weight 0."""
    def groups(t: OutcomeTable) -> np.ndarray:
        return t.needs_audio.astype(np.int64) * 2 + t.has_audio.astype(np.int64)  # (N,) in 0..3

    g, ref = groups(table), groups(reference)
    fit_share = np.bincount(g, minlength=4) / len(g)
    ref_share = np.bincount(ref, minlength=4) / len(ref)
    weights = (ref_share / np.where(fit_share > 0, fit_share, 1.0))[g]  # (N,)
    if not weights.any():
        raise ValueError("no row of the table belongs to a (needs_audio, has_audio) group the reference has")
    return weights / weights.mean()


def check_row_weights(row_weights: Any, n: int) -> np.ndarray:
    """Per-row weights as float64 (n,): finite, non-negative, not all 0; else a ValueError naming the problem."""
    w = np.asarray(row_weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any() or not w.any():
        raise ValueError(f"row_weights must be {n} finite non-negative numbers, not all 0; got shape {w.shape}")
    return w


def reward_config_from(config: Any, latency_cost: Sequence[float] | None = None) -> RewardConfig:
    """The RewardConfig of a Stage B config (alpha, gamma) with `latency_cost` (one cost per budget, e.g. measured by
    `measure_budget_costs`); without it the config's own `latency_cost` if it has one, else budget / max budget."""
    cost = latency_cost if latency_cost is not None else getattr(config, "latency_cost", None)
    return RewardConfig(alpha=config.alpha, gamma=config.gamma, latency_cost=None if cost is None else tuple(cost))


# -- measured latency cost per budget --------------------------------------------------------------------------------

COST_STEP = 0.05
"""Measured costs are rounded to this step. Wall times vary from run to run (a few percent on an idle machine, 2-5x
when other processes share the cores); unrounded, every Stage B run would train on slightly different rewards and
pick a different policy. With the robust fit of `budget_costs_from_times` and this rounding, the same machine gives
the same costs (so the same seed gives the same policy) unless a cost sits right at a rounding boundary;
stage_b.json records the costs that were used."""


@dataclass(frozen=True)
class TimingExample:
    """One example to time: the question and image, and its clip as a waveform (16 kHz float32) and/or as the
    cached pooled encoder features (D,) that training uses."""

    question: str
    image: Any
    waveform: np.ndarray | None = None
    features: torch.Tensor | None = None


@dataclass(frozen=True)
class BudgetTimes:
    """Per-example wall times in ms: base (N,) = prompt + base answer; encoder (N,) = audio encoder on the clip (0
    when timed on cached features); generate (N, A-1) = the fused generate at each budget k > 0."""

    token_budgets: tuple[int, ...]
    base: np.ndarray
    encoder: np.ndarray
    generate: np.ndarray


@dataclass(frozen=True)
class BudgetCosts:
    """The latency cost of each token budget, as the reward uses it, and where it came from.

    costs: in [0, 1], rounded to COST_STEP; ms: measured median wall time per example of the deployed cascade at each
    budget (t_0 = base answer; t_k = t_0 + encoder + fused generate at k); fit: the robust fit the costs come from
    (`budget_costs_from_times`); source: `waveforms` (audio encoder on the clip + fused generate), `cached_features`
    (fused generate on the cached encoder features: the encoder's time is missing), `params` (stage_b.latency_cost)
    or `budgets` (budget / max budget, nothing timed)."""

    token_budgets: tuple[int, ...]
    costs: tuple[float, ...]
    source: str
    ms: tuple[float, ...] | None = None
    n_examples: int = 0
    note: str = ""
    fit: dict[str, float] | None = None

    def to_json(self) -> dict[str, Any]:
        """The stage_b.json entries: budget_costs_ms and budget_costs by budget, budget_costs_source, the number of
        timed examples, and the fit and a note when there are."""
        out: dict[str, Any] = {
            "budget_costs_ms": None if self.ms is None else {str(b): round(float(m), 3)
                                                             for b, m in zip(self.token_budgets, self.ms)},
            "budget_costs": {str(b): float(c) for b, c in zip(self.token_budgets, self.costs)},
            "budget_costs_source": self.source,
            "budget_costs_examples": int(self.n_examples),
        }
        if self.fit is not None:
            out["budget_costs_fit"] = {k: round(float(v), 4) for k, v in self.fit.items()}
        if self.note:
            out["budget_costs_note"] = self.note
        return out


def normalise_costs(audio_ms: Sequence[float], token_budgets: Sequence[int],
                    step: float = COST_STEP) -> tuple[float, ...]:
    """Cost per budget from the extra time each budget adds to the base answer (`audio_ms`, one per budget, 0 for
    budget 0): (t_k - t_0) / (t_max - t_0), clipped to [0, 1] and rounded to `step`.

    When no budget adds time (nothing measurable), falls back to budget / max budget (exact, not rounded)."""
    extra = np.asarray(audio_ms, dtype=np.float64)
    if extra.shape != (len(token_budgets),) or not np.isfinite(extra).all():
        raise ValueError(f"need one finite time per budget {list(token_budgets)}, got {list(audio_ms)}")
    extra = extra - extra[0]  # (A,)
    span = float(extra.max())
    if span <= 0:
        return tuple(float(b) / max(token_budgets) for b in token_budgets)
    rounded = np.round(np.clip(extra / span, 0.0, 1.0) / step) * step
    return tuple(float(round(c, 6)) for c in rounded)


def budget_costs_from_times(times: BudgetTimes, step: float = COST_STEP) -> tuple[tuple[float, ...], dict[str, float]]:
    """Costs per budget from per-example timings, robust to the noise of a shared machine -> (costs, fit).

    The extra time of budget k > 0 is modelled as encoder + g0 + slope * k: the encoder's time is the median over the
    examples (it does not depend on k: it is timed once per example); the fused generate's dependence on k is a
    Theil-Sen line through every (k, time) point, and its slope is kept only when its 99% interval excludes 0 and it
    moves the largest budget's cost by at least one `step` (else the generate costs its median at every k). On small
    models the audio tokens add no measurable time, so every k > 0 then costs exactly 1: a step, and run-to-run noise
    cannot reorder the budgets."""
    from scipy.stats import theilslopes

    budgets = np.asarray(times.token_budgets[1:], dtype=np.float64)  # (A-1,)
    gen = np.asarray(times.generate, dtype=np.float64)  # (N, A-1)
    encoder = float(np.median(times.encoder))
    slope, intercept = 0.0, float(np.median(gen))
    if len(budgets) >= 2:
        x = np.broadcast_to(budgets, gen.shape).ravel()
        with np.errstate(invalid="ignore"):  # identical times (a fake clock) give a NaN interval: no slope
            fit = theilslopes(gen.ravel(), x, alpha=0.99)
        spread = fit.slope * (budgets[-1] - budgets[0])  # what the tokens add between the smallest and largest budget
        if fit.low_slope > 0 and spread >= step * (encoder + fit.intercept + fit.slope * budgets[-1]):
            slope, intercept = float(fit.slope), float(fit.intercept)
    audio = encoder + np.maximum(intercept + slope * budgets, 0.0)  # (A-1,)
    costs = normalise_costs([0.0, *audio.tolist()], times.token_budgets, step)
    return costs, {"base_ms": float(np.median(times.base)), "encoder_ms": encoder,
                   "generate_ms_at_0_tokens": intercept, "generate_ms_per_token": slope}


def _sync(model: Any) -> None:
    device = getattr(getattr(model, "base", None), "device", None)
    if isinstance(device, (str, torch.device)) and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_budgets(model: Any, examples: Sequence[TimingExample], max_new_tokens: int = 4,
                 use_waveforms: bool = True, warmup: int = 1) -> BudgetTimes:
    """Wall times of the deployed cascade's parts on each example, one at a time (`BudgetTimes`).

    base: prompt encoding + the base answer, what every example costs. With `use_waveforms`, the model's audio
    encoder on the waveform (`encode_audio`, timed once: it does not depend on the budget) and then the fused generate
    at each budget k > 0 on those features, from the base pass's prompt prefix as the predictor runs it; otherwise
    the fused generate on the cached features (the encoder's time is not counted: 0). The first `warmup` examples
    are run once untimed first.
    """
    budgets = tuple(model.token_budgets)
    if not examples:
        raise ValueError("no examples to time")
    if use_waveforms and any(e.waveform is None for e in examples):
        raise ValueError("use_waveforms needs a waveform for every example")
    if not use_waveforms and any(e.features is None for e in examples):
        raise ValueError("timing without waveforms needs cached features for every example")

    def clocked(fn):
        _sync(model)
        start = time.perf_counter()
        out = fn()
        _sync(model)
        return out, (time.perf_counter() - start) * 1000.0

    def one(example):
        batch, t_prompt = clocked(lambda: model.base.encode([example.question], [example.image]))
        with model.recording_prefix() as recorder:
            _, t_base = clocked(lambda: model.generate_answers(batch, 0, max_new_tokens=max_new_tokens))
        if use_waveforms:
            feats, t_enc = clocked(lambda: model.encode_audio([example.waveform]))
        else:
            feats, t_enc = example.features[None], 0.0

        def fused(k: int) -> float:
            with model.reusing_prefix(recorder.prefix):  # as the predictor does
                return clocked(lambda: model.generate_answers(batch, k, audio_features=feats,
                                                              max_new_tokens=max_new_tokens))[1]

        gen = [fused(k) for k in budgets[1:]]
        return t_prompt + t_base, t_enc, gen

    for example in examples[:warmup]:
        one(example)
    rows = [one(example) for example in examples]
    return BudgetTimes(budgets, np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                       np.array([r[2] for r in rows], dtype=np.float64).reshape(len(rows), len(budgets) - 1))


def measure_budget_costs(model: Any, examples: Sequence[TimingExample], max_new_tokens: int = 4,
                         use_waveforms: bool = True, note: str = "") -> BudgetCosts:
    """Time `examples` (`time_budgets`) and turn the times into the reward's cost per budget
    (`budget_costs_from_times`); `ms` holds the measured medians of the cascade at each budget."""
    times = time_budgets(model, examples, max_new_tokens, use_waveforms)
    costs, fit = budget_costs_from_times(times)
    t0 = float(np.median(times.base))
    per_example = times.encoder[:, None] + times.generate  # (N, A-1) extra time of each budget
    ms = (t0, *(t0 + float(np.median(per_example[:, j])) for j in range(per_example.shape[1])))
    return BudgetCosts(times.token_budgets, costs, "waveforms" if use_waveforms else "cached_features", ms,
                       len(examples), note, fit)


def evaluate_policy(policy: AudioPolicyNetwork, table: OutcomeTable, reward_cfg: RewardConfig) -> dict[str, float]:
    """Deterministic (argmax) policy on a whole table -> mean_reward, score, skip_rate, mean_tokens, vl_drop,
    irrelevance (+ latency_cost, audio_gain, n)."""
    with torch.no_grad():
        idx = policy.get_action_indices(table.states, deterministic=True, action_mask=table.action_mask())
    return evaluate_actions(table, idx.cpu(), reward_cfg)


def fixed_policy_rewards(table: OutcomeTable, reward_cfg: RewardConfig) -> dict[str, dict[str, float]]:
    """The two reference policies: `always_0` (never audio) and `always_max` (largest budget whenever audio exists)."""
    return {name: evaluate_actions(table, fixed_action_indices(table, name), reward_cfg)
            for name in ("always_0", "always_max")}


class StageBTrainer:
    """REINFORCE + value baseline + entropy bonus + Lagrangian VL-retention constraint on an outcome table.

    config: any object with the fields in REQUIRED_FIELDS (e.g. `safe.config.StageBConfig`).
    logger: anything with `log_metrics(metrics, step)` (e.g. the MLflow StageTracker); every step is logged.
    eval_every: evaluate the deterministic policy on the validation table every N steps (and at the end); the
    weights with the best validation reward among checkpoints meeting the retention tolerance are restored at the
    end (if none meets it: the smallest VL drop). 0 disables checkpoint selection (the last weights are kept).
    reward_cfg: the reward (e.g. with measured latency costs); default `reward_config_from(config)`.
    """

    def __init__(self, policy: AudioPolicyNetwork, config: Any, logger: MetricsLogger | None = None,
                 baseline: str = "value", eval_every: int | None = None, progress: bool | None = None,
                 reward_cfg: RewardConfig | None = None) -> None:
        missing = [f for f in REQUIRED_FIELDS if not hasattr(config, f)]
        if missing:
            raise ValueError(f"Stage B config lacks field(s) {missing}")
        if config.steps < 1 or config.batch_size < 1 or config.lr <= 0:
            raise ValueError(f"Stage B needs steps >= 1, batch_size >= 1, lr > 0; got steps={config.steps}, "
                             f"batch_size={config.batch_size}, lr={config.lr}")
        if baseline not in ("value", "batch_mean"):
            raise ValueError(f"baseline must be 'value' or 'batch_mean', got {baseline!r}")
        self.policy, self.config, self.logger = policy, config, logger
        self.baseline = baseline
        self.reward_cfg = reward_cfg if reward_cfg is not None else reward_config_from(config)
        self.eval_every = max(config.steps // 10, 1) if eval_every is None else int(eval_every)
        self.progress = progress
        self.lagrange = 0.0
        self.best_step: int | None = None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            hidden = max(getattr(policy, "hidden_dim", 64), 8)
            self.value_head = nn.Sequential(nn.Linear(policy.state_feature_dim, hidden), nn.Tanh(),
                                            nn.Linear(hidden, 1)).to(policy.normalizer.mean.device)

    def _check_table(self, table: OutcomeTable, name: str) -> None:
        if table.state_dim != self.policy.state_feature_dim:
            raise ValueError(f"{name} table has state dim {table.state_dim}, policy expects "
                             f"{self.policy.state_feature_dim}")
        if table.token_budgets != self.policy.token_budgets:
            raise ValueError(f"{name} table budgets {list(table.token_budgets)} != policy budgets "
                             f"{list(self.policy.token_budgets)}")

    def _step(self, table: OutcomeTable, mask: torch.Tensor, rows: torch.Tensor, gen: torch.Generator,
              optimizer: torch.optim.Optimizer) -> dict[str, float]:
        states = torch.from_numpy(table.states)[rows]  # (B, S)
        log_probs = self.policy.log_probs(states, mask[rows])  # (B, A)
        with torch.no_grad():
            actions = torch.multinomial(log_probs.exp().cpu(), 1, generator=gen).squeeze(1)  # (B,) on CPU
        terms = reward_terms(table, actions, self.reward_cfg, rows=rows)
        vl = torch.from_numpy(~table.needs_audio)[rows]  # (B,)
        gap = terms["retention_gap"]  # (B,)
        shaped = terms["reward"] - self.lagrange * gap * vl.float()  # (B,)
        device = log_probs.device
        shaped_d = shaped.to(device)
        if self.baseline == "value":
            value = self.value_head(self.policy.normalizer(states.to(device))).squeeze(1)  # (B,)
            value_loss = ((value - shaped_d) ** 2).mean()
            advantage = shaped_d - value.detach()
        else:
            value_loss = torch.zeros((), device=device)
            advantage = shaped_d - shaped_d.mean()
        chosen = log_probs.gather(1, actions.to(device)[:, None]).squeeze(1)  # (B,)
        entropy = masked_entropy(log_probs).mean()  # ()
        policy_loss = -(advantage * chosen).mean() - self.config.entropy_coef * entropy
        optimizer.zero_grad(set_to_none=True)
        (policy_loss + value_loss).backward()
        optimizer.step()
        vl_drop = float(gap[vl].mean()) if bool(vl.any()) else 0.0
        metrics = {
            "reward": float(terms["reward"].mean()), "score": float(terms["score"].mean()),
            "latency_cost": float(terms["latency_cost"].mean()), "irrelevance": float(terms["irrelevance"].mean()),
            "lagrange": self.lagrange, "entropy": entropy.item(), "policy_loss": policy_loss.item(),
            "value_loss": value_loss.item(), "vl_drop": vl_drop, "shaped_reward": float(shaped.mean()),
            "skip_rate": float((actions == 0).float().mean()),
        }
        if bool(vl.any()):  # dual ascent on the retention constraint, after the primal step
            violation = vl_drop - self.config.retention_tolerance
            self.lagrange = max(0.0, self.lagrange + self.config.lagrange_lr * violation)
        return metrics

    def _is_better(self, candidate: dict[str, float], best: dict[str, float] | None) -> bool:
        if best is None:
            return True
        tol = self.config.retention_tolerance
        ok_c, ok_b = candidate["vl_drop"] <= tol, best["vl_drop"] <= tol
        if ok_c != ok_b:
            return ok_c
        return candidate["mean_reward"] > best["mean_reward"] if ok_c else candidate["vl_drop"] < best["vl_drop"]

    def train(self, train_table: OutcomeTable, val_table: OutcomeTable | None = None,
              row_weights: np.ndarray | None = None) -> list[dict[str, float]]:
        """Fit the input normaliser on the train states, then run `config.steps` bandit steps.

        Minibatches are drawn with replacement, uniformly or in proportion to `row_weights` (N,) (see
        `mix_weights`). `lagrange` in a record is the lambda that step's reward used; lambda starts at 0 on every
        call. Returns the history: one dict per step with `step` and every logged term (val_* keys on evaluation
        steps).
        """
        self._check_table(train_table, "train")
        if val_table is not None:
            self._check_table(val_table, "val")
        cfg = self.config
        self.lagrange, self.best_step = 0.0, None
        self.policy.fit_normalizer(train_table.states)
        self.policy.train()
        gen = torch.Generator().manual_seed(cfg.seed)
        params = list(self.policy.parameters())
        if self.baseline == "value":
            params += list(self.value_head.parameters())
        optimizer = torch.optim.Adam(params, lr=cfg.lr)
        mask = torch.from_numpy(train_table.action_mask())  # (N, A)
        history: list[dict[str, float]] = []
        best_eval, best_state = None, None
        n = len(train_table)
        if row_weights is not None:
            sampling = torch.from_numpy(check_row_weights(row_weights, n))
        disable = None if self.progress is None else not self.progress  # None: tqdm shows a bar only on a TTY
        for step in tqdm(range(1, cfg.steps + 1), desc="stage_b", disable=disable):
            if row_weights is None:
                rows = torch.randint(0, n, (min(cfg.batch_size, n),), generator=gen)
            else:
                rows = torch.multinomial(sampling, cfg.batch_size, replacement=True, generator=gen)
            record = {"step": step, **self._step(train_table, mask, rows, gen, optimizer)}
            if val_table is not None and self.eval_every and (step % self.eval_every == 0 or step == cfg.steps):
                self.policy.eval()
                val = evaluate_policy(self.policy, val_table, self.reward_cfg)
                self.policy.train()
                record.update({f"val_{k}": v for k, v in val.items() if k != "n"})
                if self._is_better(val, best_eval):
                    best_eval, best_state, self.best_step = val, copy.deepcopy(self.policy.state_dict()), step
            history.append(record)
            if self.logger is not None:
                self.logger.log_metrics({k: v for k, v in record.items() if k != "step"}, step)
        if best_state is not None:
            self.policy.load_state_dict(best_state)
        self.policy.eval()
        return history


def summarize(policy: AudioPolicyNetwork, table: OutcomeTable, reward_cfg: RewardConfig) -> dict[str, float]:
    """Flat metrics of the learned policy and both fixed policies on one table (e.g. for metrics.json)."""
    out = {f"policy_{k}": v for k, v in evaluate_policy(policy, table, reward_cfg).items()}
    for name, metrics in fixed_policy_rewards(table, reward_cfg).items():
        out.update({f"{name}_{k}": v for k, v in metrics.items()})
    return out

