"""Precomputed outcome tables and the Stage B reward r = score - alpha * latency - gamma * irrelevance.

Stage B is a contextual bandit: the state is known before audio is touched, the action is a token budget, and the
outcome of every (example, budget) pair can be computed once with the frozen SAFE model. An `OutcomeTable` stores
those outcomes, so the bandit looks rewards up instead of running the model and is exact and fast.

Irrelevance = 1 when the example does NOT need audio and the answer at the chosen budget differs from the base
model's answer (audio changed the answer to a question that does not need it).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from safe.models.policy import check_token_budgets


class OutcomeTableError(ValueError):
    """An outcome table is malformed; the message names the field, and the file when loaded from disk."""


@dataclass(frozen=True)
class OutcomeTable:
    """Outcomes of N examples under each of A token budgets (column a <-> token_budgets[a]).

    states: float32 (N, S) pre-audio state; scores: float32 (N, A) in [0, 1], score of the SAFE answer at each
    budget; changed: bool (N, A), answer differs from the base answer (column 0 = base, so all False);
    needs_audio: bool (N,); has_audio: bool (N,), rows without audio can only take budget 0;
    ids: optional example ids (N,) for tracing a row back to the manifest.
    """

    states: np.ndarray
    scores: np.ndarray
    changed: np.ndarray
    needs_audio: np.ndarray
    has_audio: np.ndarray
    token_budgets: tuple[int, ...] = (0, 4, 8, 12)
    ids: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        fix = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        try:
            fix("token_budgets", check_token_budgets(self.token_budgets))
        except ValueError as exc:
            raise OutcomeTableError(str(exc)) from exc
        fix("states", np.asarray(self.states, dtype=np.float32))
        fix("scores", np.asarray(self.scores, dtype=np.float32))
        for name in ("changed", "needs_audio", "has_audio"):
            value = np.asarray(getattr(self, name))
            if value.dtype != np.bool_:
                raise OutcomeTableError(f"{name} must be boolean, got dtype {value.dtype}")
            fix(name, value)
        n, a = len(self.states), len(self.token_budgets)
        if self.states.ndim != 2 or n == 0:
            raise OutcomeTableError(f"states must be a non-empty (N, S) array, got shape {self.states.shape}")
        expected = {"scores": (n, a), "changed": (n, a), "needs_audio": (n,), "has_audio": (n,)}
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise OutcomeTableError(f"{name} must have shape {shape} (N={n}, A={a} budgets), "
                                        f"got {getattr(self, name).shape}")
        if not np.isfinite(self.states).all():
            rows = np.flatnonzero(~np.isfinite(self.states).all(axis=1))
            raise OutcomeTableError(f"states has non-finite values in row(s) {rows[:10].tolist()}")
        bad = ~((self.scores >= 0) & (self.scores <= 1))  # also catches NaN
        if bad.any():
            rows = np.flatnonzero(bad.any(axis=1))[:10].tolist()
            raise OutcomeTableError(f"scores must lie in [0, 1]; bad row(s) {rows}")
        if self.changed[:, 0].any():
            raise OutcomeTableError(f"changed[:, 0] must be False (budget 0 is the base answer); True in row(s) "
                                    f"{np.flatnonzero(self.changed[:, 0])[:10].tolist()}")
        if self.ids is not None:
            fix("ids", np.asarray(self.ids, dtype=str))
            if self.ids.shape != (n,):
                raise OutcomeTableError(f"ids must have shape ({n},), got {self.ids.shape}")

    def __len__(self) -> int:
        return len(self.states)

    @property
    def state_dim(self) -> int:
        return self.states.shape[1]

    def action_mask(self) -> np.ndarray:
        """bool (N, A), True = allowed: every row may skip (budget 0); only rows with audio may use more."""
        mask = np.ones(self.scores.shape, dtype=bool)
        mask[:, 1:] = self.has_audio[:, None]
        return mask

    def subset(self, idx: Any) -> "OutcomeTable":
        """Rows `idx` (int indices or a bool mask) as a new table."""
        idx = np.asarray(idx)
        pick = lambda x: None if x is None else x[idx]  # noqa: E731
        return OutcomeTable(pick(self.states), pick(self.scores), pick(self.changed), pick(self.needs_audio),
                            pick(self.has_audio), self.token_budgets, pick(self.ids))

    @classmethod
    def concat(cls, tables: Sequence["OutcomeTable"]) -> "OutcomeTable":
        """The rows of several tables with the same budgets, in order (ids kept only when every table has them)."""
        if not tables or len({t.token_budgets for t in tables}) != 1:
            raise OutcomeTableError("concat needs at least one table, all with the same token budgets")
        join = lambda name: np.concatenate([getattr(t, name) for t in tables])  # noqa: E731
        ids = join("ids") if all(t.ids is not None for t in tables) else None
        return cls(join("states"), join("scores"), join("changed"), join("needs_audio"), join("has_audio"),
                   tables[0].token_budgets, ids)

    def save(self, path: str | Path) -> Path:
        """Write an .npz (uncompressed, no pickle) atomically: temp file in the same folder, then os.replace."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"states": self.states, "scores": self.scores, "changed": self.changed,
                  "needs_audio": self.needs_audio, "has_audio": self.has_audio,
                  "token_budgets": np.asarray(self.token_budgets, dtype=np.int64)}
        if self.ids is not None:
            arrays["ids"] = self.ids
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path) -> "OutcomeTable":
        path = Path(path)
        if not path.is_file():
            raise OutcomeTableError(f"{path}: outcome table not found")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except (OSError, ValueError) as exc:
            raise OutcomeTableError(f"{path}: not a readable .npz outcome table: {exc}") from exc
        required = {"states", "scores", "changed", "needs_audio", "has_audio", "token_budgets"}
        missing = sorted(required - arrays.keys())
        if missing:
            raise OutcomeTableError(f"{path}: missing array(s) {missing}")
        try:
            return cls(arrays["states"], arrays["scores"], arrays["changed"], arrays["needs_audio"],
                       arrays["has_audio"], tuple(arrays["token_budgets"].tolist()), arrays.get("ids"))
        except OutcomeTableError as exc:
            raise OutcomeTableError(f"{path}: {exc}") from exc


@dataclass(frozen=True)
class RewardConfig:
    """r = score - alpha * latency_cost[budget] - gamma * irrelevance.

    latency_cost: one cost per budget (same order as token_budgets); None = budget / max_budget, so skipping costs 0
    and the largest budget costs 1.
    """

    alpha: float = 0.1
    gamma: float = 1.0
    latency_cost: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.gamma < 0:
            raise ValueError(f"alpha and gamma must be >= 0, got alpha={self.alpha}, gamma={self.gamma}")
        if self.latency_cost is not None:
            object.__setattr__(self, "latency_cost", tuple(float(c) for c in self.latency_cost))

    def latency_costs(self, token_budgets: Sequence[int]) -> np.ndarray:
        """float32 (A,) cost of each budget."""
        budgets = np.asarray(token_budgets, dtype=np.float32)
        if self.latency_cost is None:
            return budgets / budgets.max()
        if len(self.latency_cost) != len(budgets):
            raise ValueError(f"latency_cost has {len(self.latency_cost)} entries but there are {len(budgets)} "
                             f"budgets {list(token_budgets)}")
        return np.asarray(self.latency_cost, dtype=np.float32)


def reward_terms(table: OutcomeTable, action_idx: Any, config: RewardConfig = RewardConfig(),
                 rows: Any = None) -> dict[str, torch.Tensor]:
    """Per-example reward terms for budget indices `action_idx` (B,) taken on table rows `rows` (default: all rows).

    Returns float32 tensors (B,): score, latency_cost, irrelevance, reward, plus retention_gap =
    scores[:, 0] - scores[a] (how much the choice lost vs the base answer; used for the VL retention constraint).
    """
    a = torch.as_tensor(np.asarray(action_idx) if not isinstance(action_idx, torch.Tensor) else action_idx)
    a = a.cpu().long()
    r = torch.arange(len(table)) if rows is None else torch.as_tensor(np.asarray(rows)).long()
    if a.shape != r.shape:
        raise ValueError(f"action_idx has shape {tuple(a.shape)} but {tuple(r.shape)} rows were given")
    if len(a) and (a.min() < 0 or a.max() >= len(table.token_budgets)):
        raise ValueError(f"action_idx must be in [0, {len(table.token_budgets) - 1}], got range "
                         f"[{int(a.min())}, {int(a.max())}]")
    scores = torch.from_numpy(table.scores)[r]  # (B, A)
    score = scores.gather(1, a[:, None]).squeeze(1)  # (B,)
    latency = torch.from_numpy(config.latency_costs(table.token_budgets))[a]  # (B,)
    changed = torch.from_numpy(table.changed)[r].gather(1, a[:, None]).squeeze(1)  # (B,)
    irrelevance = (changed & ~torch.from_numpy(table.needs_audio)[r]).float()  # (B,)
    reward = score - config.alpha * latency - config.gamma * irrelevance
    return {"score": score, "latency_cost": latency, "irrelevance": irrelevance, "reward": reward,
            "retention_gap": scores[:, 0] - score}


def evaluate_actions(table: OutcomeTable, action_idx: Any, config: RewardConfig = RewardConfig()) -> dict[str, float]:
    """Summary of a whole-table decision (B = N): mean reward and terms, skip rate, tokens, VL-only drop.

    vl_drop = mean over VL-only rows (needs_audio False) of scores[:, 0] - scores[a]; audio_gain = mean over
    audio-needing rows of scores[a] - scores[:, 0]. Both are 0 when the table has no such rows.
    """
    terms = reward_terms(table, action_idx, config)
    a = torch.as_tensor(np.asarray(action_idx) if not isinstance(action_idx, torch.Tensor) else action_idx).cpu().long()
    vl = torch.from_numpy(~table.needs_audio)
    mean_over = lambda x, m: float(x[m].mean()) if bool(m.any()) else 0.0  # noqa: E731
    budgets = torch.tensor(table.token_budgets, dtype=torch.float32)
    return {
        "mean_reward": float(terms["reward"].mean()),
        "score": float(terms["score"].mean()),
        "latency_cost": float(terms["latency_cost"].mean()),
        "irrelevance": float(terms["irrelevance"].mean()),
        "skip_rate": float((a == 0).float().mean()),
        "mean_tokens": float(budgets[a].mean()),
        "vl_drop": mean_over(terms["retention_gap"], vl),
        "audio_gain": mean_over(-terms["retention_gap"], ~vl),
        "n": float(len(table)),
    }


def fixed_action_indices(table: OutcomeTable, which: str) -> np.ndarray:
    """Budget indices (N,) of a fixed policy: `always_0` skips audio; `always_max` takes the largest allowed budget."""
    if which == "always_0":
        return np.zeros(len(table), dtype=np.int64)
    if which == "always_max":
        return np.where(table.has_audio, len(table.token_budgets) - 1, 0).astype(np.int64)
    raise ValueError(f"unknown fixed policy {which!r} (use always_0 or always_max)")
