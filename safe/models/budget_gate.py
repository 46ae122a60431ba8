"""The deployment budget gate: what inference runs before touching audio.

A tiny classifier (one hidden layer, or multinomial logistic regression with hidden_dim=0) from the pre-audio state
to a token budget, distilled from the Stage B policy by Stage C (`safe.training.stage_c.distill_gate`).
`audio_probability` = P(budget > 0) is "the gate value" in [0, 1], and the decision is a threshold on it: consult
audio when P(budget > 0) >= `audio_threshold`, then with the most probable non-zero budget. So the printed value
never contradicts the budget chosen, and `audio_threshold` is the deploy-time knob that trades skip rate against
accuracy without retraining (saved with the gate; `safe infer --audio-threshold` overrides it). Not to be confused
with the fusion block's gate (`safe.models.fusion_adapter`), which scales how much the audio tokens change a decoder
layer's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from safe.models.policy import BudgetClassifier, load_module_dir, save_module_dir


class BudgetGate(BudgetClassifier):
    """state (B, S) -> logits over budgets (B, A); same input normalisation as the policy.

    hidden_dim > 0: Linear -> Tanh -> Linear; hidden_dim = 0: a single Linear (logistic regression).
    """

    kind = "deployment_gate"
    extra_config_keys = ("audio_threshold",)

    def __init__(self, state_feature_dim: int, token_budgets: Sequence[int] = (0, 4, 8, 12),
                 hidden_dim: int = 32, audio_threshold: float = 0.5) -> None:
        super().__init__(state_feature_dim, token_budgets)
        if int(hidden_dim) < 0:
            raise ValueError(f"hidden_dim must be >= 0 (0 = logistic regression), got {hidden_dim}")
        self.hidden_dim = int(hidden_dim)
        self.audio_threshold = check_audio_threshold(audio_threshold)
        if self.hidden_dim == 0:
            self.net = nn.Linear(self.state_feature_dim, self.num_actions)
        else:
            self.net = nn.Sequential(nn.Linear(self.state_feature_dim, self.hidden_dim), nn.Tanh(),
                                     nn.Linear(self.hidden_dim, self.num_actions))

    def _decide(self, states: Any, action_mask: Any, audio_threshold: float | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(chosen column (B,), P(budget > 0) (B,), most probable non-zero column (B,)) from one forward pass."""
        threshold = self.audio_threshold if audio_threshold is None else check_audio_threshold(audio_threshold)
        audio = self.action_probs(states, action_mask)[:, 1:]  # (B, A-1); column 0 is budget 0
        p_audio, best = audio.sum(dim=-1), audio.argmax(dim=-1) + 1  # (B,), (B,)
        consult = consults_audio(p_audio, threshold)  # (B,)
        return torch.where(consult, best, torch.zeros_like(best)), p_audio, best

    @torch.no_grad()
    def decide_indices(self, states: Any, action_mask: Any = None, audio_threshold: float | None = None) -> torch.Tensor:
        """Column indices into `token_budgets` (B,): the most probable non-zero budget where P(budget > 0) >=
        `audio_threshold` (default: the gate's own), else 0."""
        return self._decide(states, action_mask, audio_threshold)[0]

    @torch.no_grad()
    def decide(self, states: Any, action_mask: Any = None, audio_threshold: float | None = None
               ) -> dict[str, torch.Tensor]:
        """Each (B,): `budget` the gate chooses (see `decide_indices`), `p_audio` = P(budget > 0) and
        `audio_budget`, the budget it would use wherever it consults audio."""
        chosen, p_audio, best = self._decide(states, action_mask, audio_threshold)
        budgets = self.budgets.to(chosen.device)
        return {"budget": budgets[chosen], "p_audio": p_audio, "audio_budget": budgets[best]}

    @torch.no_grad()
    def predict_budget(self, states: Any, action_mask: Any = None, audio_threshold: float | None = None) -> torch.Tensor:
        """Budget VALUES (B,) the gate chooses (see `decide_indices`)."""
        return self.decide(states, action_mask, audio_threshold)["budget"]

    @torch.no_grad()
    def audio_probability(self, states: Any, action_mask: Any = None) -> torch.Tensor:
        """P(budget > 0) (B,): the gate value in [0, 1]; the gate consults audio where it reaches `audio_threshold`."""
        return self._decide(states, action_mask, None)[1]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "audio_threshold": self.audio_threshold}


def consults_audio(p_audio: torch.Tensor, threshold: float) -> torch.Tensor:
    """The gate's decision rule on P(budget > 0): audio where it reaches `threshold`, never where the mask forbids it
    (p = 0)."""
    return (p_audio >= threshold) & (p_audio > 0)


def check_audio_threshold(value: float) -> float:
    """The threshold on P(budget > 0) as a float in [0, 1] (0: always audio when there is a clip; 1: almost never)."""
    threshold = float(value)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"audio_threshold must be in [0, 1], got {value}")
    return threshold



def save_gate(gate: BudgetGate, path: str | Path) -> Path:
    """Save the gate to the folder `path` (safetensors weights incl. normaliser + json config, atomic per file)."""
    return save_module_dir(gate, path)


def load_gate(path: str | Path, map_location: str | torch.device = "cpu") -> BudgetGate:
    """Load a gate saved by `save_gate`; returned in eval mode."""
    return load_module_dir(path, BudgetGate, map_location)


def gate_actions_on(gate: BudgetGate, states: Any, action_mask: Any = None) -> np.ndarray:
    """Budget indices (N,) as numpy, e.g. to score the gate with `safe.rl.reward.evaluate_actions`."""
    return gate.decide_indices(states, action_mask).cpu().numpy()
