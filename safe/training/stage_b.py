"""Stage B: learn WHEN to consult audio, as a contextual bandit over token budgets.

Each step samples a minibatch of rows of a precomputed `OutcomeTable`, samples one budget per row from the policy,
looks the reward up (r = score - alpha * latency - gamma * irrelevance) and takes a REINFORCE step:

    loss = -mean((r' - V(s)) * log pi(a|s)) - entropy_coef * mean(H(pi(.|s))) + mean((V(s) - r')^2)

Baseline: a small LEARNED VALUE HEAD V(s) (trained by the MSE term, detached in the policy term), the usual choice
when rewards depend strongly on the state (VL-only rows sit near 1 when skipping, audio rows near 0).
`baseline="batch_mean"` (advantage = r' - mean(r') over the batch) is the cheaper alternative; on the synthetic test
table both reached the same held-out reward (0.72 vs 0.71 after 200 steps with 256-dim states, 3 seeds).

Retention constraint (Lagrangian): on VL-only rows (needs_audio False) the gap g = scores[:, 0] - scores[a] is how much
the chosen budget lost vs the base answer. The shaped reward is r' = r - lambda * g on those rows, and after every step
lambda <- max(0, lambda + lagrange_lr * (mean g over the batch's VL-only rows - retention_tolerance)).

Rows without audio can only take budget 0 (action mask). Everything is seeded: on CPU the same seed gives the same
history and weights.
"""

from __future__ import annotations

import copy
import zlib
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from safe.rl.policy import AudioPolicyNetwork, masked_entropy
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
    questions, where the base is less sure, to audio (measured on the demo: every count question with a distractor
    clip, 1.5 points of VL accuracy lost). So `fit` holds only rows whose images the base never trained on: the
    training rows that need audio and 2 in 3 validation rows; the other validation rows (by a hash of their id) are
    `select`.
    """
    if val.ids is None:
        raise ValueError("the validation table needs example ids (the held-out split is a hash of them)")
    held = np.array([zlib.crc32(str(i).encode()) % holdout_every == 0 for i in val.ids])
    if held.all() or not held.any():
        raise ValueError(f"{len(val)} validation rows cannot be split 1 in {holdout_every} into fit and select rows")
    return OutcomeTable.concat([train.subset(train.needs_audio), val.subset(~held)]), val.subset(held)


def mix_weights(table: OutcomeTable, reference: OutcomeTable) -> np.ndarray:
    """Sampling weight per row of `table` (N,) so that its mix of (needs_audio, has_audio) groups matches
    `reference`'s (the deployment mix, e.g. the held-out validation rows); weights average 1 over the table.

    Why: `bandit_tables` takes only the training rows that need audio, so VL-only questions carrying a clip (the
    rows where a wrong "consult audio" costs an answer) are about 6% of the fit rows against 25% of validation and
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


def reward_config_from(config: Any) -> RewardConfig:
    """The RewardConfig of a Stage B config (alpha, gamma; optional latency_cost; default budget / max budget)."""
    return RewardConfig(alpha=config.alpha, gamma=config.gamma, latency_cost=getattr(config, "latency_cost", None))


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
    """

    def __init__(self, policy: AudioPolicyNetwork, config: Any, logger: MetricsLogger | None = None,
                 baseline: str = "value", eval_every: int | None = None, progress: bool | None = None) -> None:
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
        self.reward_cfg = reward_config_from(config)
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

