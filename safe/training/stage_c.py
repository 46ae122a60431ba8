"""Stage C: distil the Stage B policy into the deployment budget gate (`safe.models.budget_gate.BudgetGate`).

The gate is trained by supervised learning on (state -> policy's argmax budget) pairs, from the same pre-audio
state the policy reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from safe.models.budget_gate import BudgetGate, consults_audio
from safe.models.policy import AudioPolicyNetwork, as_action_mask, as_state_tensor
from safe.training.stage_b import MetricsLogger, check_row_weights


def _agreement(gate: BudgetGate, states: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None) -> float:
    if len(states) == 0:
        return float("nan")
    return float((gate.decide_indices(states, mask) == targets).float().mean())


def distill_gate(policy: AudioPolicyNetwork, states: Any, config: Any, action_mask: Any = None,
                 logger: MetricsLogger | None = None, soft_targets: bool = False, holdout_fraction: float = 0.2,
                 log_every: int = 10, row_weights: Any = None) -> tuple[BudgetGate, dict[str, float]]:
    """Train a BudgetGate to imitate `policy` on `states` (N, S).

    config: any object with epochs, lr, hidden_dim, seed and optionally audio_threshold (`safe.config.StageCConfig`).
    Targets: the policy's argmax budget (cross-entropy); with soft_targets=True the policy's probabilities instead.
    A seeded `holdout_fraction` of the rows is kept out of training to measure held-out agreement. Training is
    full-batch Adam for `config.epochs` steps; the same action mask (rows without audio -> budget 0) is applied to the
    gate's logits as to the policy's. `row_weights` (N,) weigh each row's loss (Stage B's `mix_weights`, so the
    gate imitates the policy hardest where deployment questions are); agreement is reported unweighted.

    Report: agreement_train, agreement_heldout (share of rows where the gate's decision == policy argmax), n_train,
    n_heldout, final_loss, skip_rate_policy, skip_rate_gate (over all rows).
    """
    for name in ("epochs", "lr", "hidden_dim", "seed"):
        if not hasattr(config, name):
            raise ValueError(f"Stage C config lacks field {name!r}")
    if not 0.0 <= holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in [0, 1), got {holdout_fraction}")
    x = as_state_tensor(states, policy.state_feature_dim, torch.device("cpu"))  # (N, S)
    n = len(x)
    w = torch.ones(n) if row_weights is None else torch.from_numpy(check_row_weights(row_weights, n)).float()
    mask = as_action_mask(action_mask, n, policy.num_actions, torch.device("cpu"))
    policy_device = policy.normalizer.mean.device
    with torch.no_grad():
        probs = policy.action_probs(x.to(policy_device), None if mask is None else mask.to(policy_device)).cpu()
    targets = probs.argmax(dim=-1)  # (N,)

    gen = torch.Generator().manual_seed(config.seed)
    order = torch.randperm(n, generator=gen)
    n_held = int(round(n * holdout_fraction))
    if n - n_held < 2:
        raise ValueError(f"distill_gate needs at least 2 training rows, got {n} rows with holdout {holdout_fraction}")
    held, tr = order[:n_held], order[n_held:]
    pick_mask = lambda idx: None if mask is None else mask[idx]  # noqa: E731

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        gate = BudgetGate(policy.state_feature_dim, policy.token_budgets, config.hidden_dim,
                          audio_threshold=getattr(config, "audio_threshold", 0.5))
    gate.fit_normalizer(x[tr])
    gate.train()
    optimizer = torch.optim.Adam(gate.parameters(), lr=config.lr)
    loss = torch.zeros(())
    for epoch in range(1, config.epochs + 1):
        log_probs = gate.log_probs(x[tr], pick_mask(tr))  # (N_train, A)
        if soft_targets:  # cross-entropy against the policy distribution; masked entries have p = 0
            per_row = -(probs[tr] * log_probs.masked_fill(probs[tr] == 0, 0.0)).sum(dim=-1)  # (N_train,)
        else:
            per_row = nn.functional.nll_loss(log_probs, targets[tr], reduction="none")  # (N_train,)
        loss = (per_row * w[tr]).sum() / w[tr].sum().clamp(min=1e-12)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if logger is not None and (epoch % log_every == 0 or epoch == config.epochs):
            logger.log_metrics({"distill_loss": loss.item(),
                                "agreement_train": _agreement(gate, x[tr], targets[tr], pick_mask(tr))}, epoch)
    gate.eval()
    gate_idx = gate.decide_indices(x, mask)
    report = {
        "agreement_train": _agreement(gate, x[tr], targets[tr], pick_mask(tr)),
        "agreement_heldout": _agreement(gate, x[held], targets[held], pick_mask(held)),
        "n_train": float(len(tr)), "n_heldout": float(len(held)), "final_loss": loss.item(),
        "skip_rate_policy": float((targets == 0).float().mean()),
        "skip_rate_gate": float((gate_idx == 0).float().mean()),
    }
    return gate, report


def skip_rate_interval(skipped: int, n: int, confidence: float) -> tuple[float, float]:
    """Two-sided exact (Clopper-Pearson) interval of a skip rate seen as `skipped` of `n`; the point when
    confidence is 0, (nan, nan) when n is 0."""
    if n == 0:
        return float("nan"), float("nan")
    if confidence == 0:
        return skipped / n, skipped / n
    from scipy.stats import binomtest

    ci = binomtest(int(skipped), int(n)).proportion_ci(confidence, method="exact")
    return float(ci.low), float(ci.high)


@torch.no_grad()
def threshold_for_skip_band(gate: BudgetGate, states: Any, action_mask: Any, has_audio: Any, low: float,
                            high: float, confidence: float = 0.95) -> dict[str, float]:
    """The audio threshold nearest the gate's own whose skip rate over the rows with a clip (validation rows:
    choose on validation) lies in [low, high] with its exact `confidence` interval, not only its point estimate;
    the gate's own when it already does.

    Stage B maximises reward and nothing else holds its operating point inside the skip-rate band the promotion
    gate checks; the threshold moves it without retraining. Raising it skips the rows the gate is least sure need
    audio. A point estimate inside the band is not enough on a few hundred validation rows: the interval must fit
    (docs/EXPERIMENTS.md#skip-band-bound). When no threshold's interval fits, the one whose interval sticks out least.
    Returns threshold, skip_rate_before, skip_rate_after, its interval (skip_rate_low, skip_rate_high) and n."""
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"skip-rate band must satisfy 0 <= low <= high <= 1, got [{low}, {high}]")
    if not 0.0 <= confidence < 1.0:
        raise ValueError(f"skip-band confidence must lie in [0, 1), got {confidence}")
    rows = torch.as_tensor(np.asarray(has_audio, dtype=bool))
    p = gate.audio_probability(states, action_mask).cpu()[rows]  # (N_audio,) P(budget > 0)
    n = len(p)
    own = float(gate.audio_threshold)
    skipped = lambda t: int((~consults_audio(p, t)).sum())  # noqa: E731

    def outside(t: float) -> float:
        """How far the threshold's interval sticks out of [low, high] (0 when it fits)."""
        lo, hi = skip_rate_interval(skipped(t), n, confidence)
        return max(low - lo, hi - high, 0.0)

    best = own
    if n and outside(own) > 0:
        # Every distinct skip rate is reached at one of the observed probabilities (or above them all).
        candidates = sorted({*p.tolist(), 1.0, own})
        best = min(candidates, key=lambda t: (outside(t), abs(t - own)))
    interval = skip_rate_interval(skipped(best), n, confidence)
    return {"threshold": best, "skip_rate_before": skipped(own) / n if n else 0.0,
            "skip_rate_after": skipped(best) / n if n else 0.0, "skip_rate_low": interval[0],
            "skip_rate_high": interval[1], "n": float(n)}
