"""The audio-consultation policy pi_theta(budget | state), and the budget classifier it shares with the deployed
budget gate (`safe.models.budget_gate`). Trained by Stage B (`safe.training.stage_b`).

The policy reads a cheap, pre-audio state vector (question embedding, base-answer confidence, audio energy, ...;
see `safe.rl.state_features`) and scores each audio-token budget. Budget 0 means "skip audio, answer with the
base VL model alone". `get_actions` returns BUDGET VALUES (e.g. 0, 4, 8, 12), `get_action_indices` returns
column indices into `token_budgets`; the bandit and the outcome tables work with indices.

Inputs are standardised by a `Standardizer` whose mean/std are buffers: they are fitted once on training states
(`fit_normalizer`) and travel with the saved weights, so inference sees exactly the scaling training saw.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from safe.io import atomic_write
from safe.models.standardizer import Standardizer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def check_token_budgets(token_budgets: Sequence[int]) -> tuple[int, ...]:
    """Budgets must be non-negative ints, sorted, unique, start with 0 and offer at least one audio option."""
    budgets = tuple(int(b) for b in token_budgets)
    if len(budgets) < 2:
        raise ValueError(f"token_budgets needs at least two options (0 and one audio budget), got {list(budgets)}")
    if budgets[0] != 0:
        raise ValueError(f"token_budgets must start with 0 (the skip-audio action), got {list(budgets)}")
    if any(b < 0 for b in budgets) or list(budgets) != sorted(set(budgets)):
        raise ValueError(f"token_budgets must be non-negative, sorted and unique, got {list(budgets)}")
    return budgets


def as_state_tensor(states: Any, state_feature_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Turn a (B, S) array/tensor into float32 on `device`, raising a clear error on a wrong shape."""
    x = torch.as_tensor(np.asarray(states) if not isinstance(states, torch.Tensor) else states)
    if x.ndim != 2:
        raise ValueError(f"states must be 2-D (batch, {state_feature_dim}), got shape {tuple(x.shape)}")
    if x.shape[1] != state_feature_dim:
        raise ValueError(f"state feature dim mismatch: expected {state_feature_dim}, got {x.shape[1]} "
                         f"(states shape {tuple(x.shape)})")
    return x.to(device=device, dtype=torch.float32)


def as_action_mask(action_mask: Any, batch: int, num_actions: int, device: torch.device) -> torch.Tensor | None:
    """Validate a (B, A) bool mask (True = allowed); every row must allow at least one action."""
    if action_mask is None:
        return None
    mask = torch.as_tensor(np.asarray(action_mask) if not isinstance(action_mask, torch.Tensor) else action_mask)
    mask = mask.to(device=device, dtype=torch.bool)
    if tuple(mask.shape) != (batch, num_actions):
        raise ValueError(f"action_mask must have shape ({batch}, {num_actions}), got {tuple(mask.shape)}")
    empty = (~mask.any(dim=1)).nonzero().flatten()
    if len(empty):
        raise ValueError(f"action_mask allows no action in row(s) {empty[:10].tolist()}")
    return mask


def masked_log_probs(logits: torch.Tensor, action_mask: torch.Tensor | None) -> torch.Tensor:
    """log pi(a|s) over the allowed actions; masked actions get -inf (probability exactly 0)."""
    if action_mask is not None:
        logits = logits.masked_fill(~action_mask, float("-inf"))
    return torch.log_softmax(logits, dim=-1)  # (B, A)


def masked_entropy(log_probs: torch.Tensor) -> torch.Tensor:
    """Entropy per row, treating 0 * log 0 as 0 for masked actions."""
    probs = log_probs.exp()
    return -(probs * log_probs.masked_fill(probs == 0, 0.0)).sum(dim=-1)  # (B,)


class BudgetClassifier(nn.Module):
    """Shared base of the policy and the deployment gate: normaliser + network scoring each budget.

    Subclasses set `kind` (the tag in config.json), `hidden_dim` and build `self.net` (normalised state (B, S) ->
    logits (B, A)); `__init__(state_feature_dim, token_budgets, hidden_dim, **extra)` rebuilds one from its config,
    where `extra` holds the config keys a subclass lists in `extra_config_keys`.
    """

    kind: str
    hidden_dim: int
    net: nn.Module
    extra_config_keys: tuple[str, ...] = ()

    def __init__(self, state_feature_dim: int, token_budgets: Sequence[int]) -> None:
        super().__init__()
        if int(state_feature_dim) < 1:
            raise ValueError(f"state_feature_dim must be >= 1, got {state_feature_dim}")
        self.state_feature_dim = int(state_feature_dim)
        self.token_budgets = check_token_budgets(token_budgets)
        self.normalizer = Standardizer(self.state_feature_dim)
        self.register_buffer("budgets", torch.tensor(self.token_budgets, dtype=torch.long), persistent=False)

    @property
    def num_actions(self) -> int:
        return len(self.token_budgets)

    def _device(self) -> torch.device:
        return self.normalizer.mean.device

    def fit_normalizer(self, states: Any) -> None:
        """Fit the input mean/std on training states (B, S)."""
        self.normalizer.fit(as_state_tensor(states, self.state_feature_dim, self._device()))

    def forward(self, states: Any) -> torch.Tensor:
        """Logits over budgets: (B, S) -> (B, A), in float32 also under a caller's autocast (thresholds such as the
        gate's 0.988 need more digits than bf16 has)."""
        x = as_state_tensor(states, self.state_feature_dim, self._device()).float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.net(self.normalizer(x))  # (B, A)

    def log_probs(self, states: Any, action_mask: Any = None) -> torch.Tensor:
        logits = self.forward(states)  # (B, A)
        mask = as_action_mask(action_mask, logits.shape[0], self.num_actions, logits.device)
        return masked_log_probs(logits, mask)

    def action_probs(self, states: Any, action_mask: Any = None) -> torch.Tensor:
        """pi(a|s) (B, A): rows sum to 1; actions masked out (False in `action_mask`) get probability exactly 0."""
        return self.log_probs(states, action_mask).exp()

    def get_action_indices(self, states: Any, deterministic: bool = False, action_mask: Any = None,
                           generator: torch.Generator | None = None) -> torch.Tensor:
        """Column indices into `token_budgets` (B,): argmax when deterministic, else a sample from pi."""
        probs = self.action_probs(states, action_mask)  # (B, A)
        if deterministic:
            return probs.argmax(dim=-1)
        if generator is not None:  # sample where the generator lives (a CPU generator works for CUDA policies)
            return torch.multinomial(probs.to(generator.device), 1, generator=generator).squeeze(-1).to(probs.device)
        return torch.multinomial(probs, 1).squeeze(-1)

    def get_actions(self, states: Any, deterministic: bool = False, action_mask: Any = None,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Chosen audio-token BUDGET VALUES (B,) as a LongTensor, e.g. tensor([0, 8]); not indices."""
        idx = self.get_action_indices(states, deterministic, action_mask, generator)
        return self.budgets.to(idx.device)[idx]

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "state_feature_dim": self.state_feature_dim,
                "token_budgets": list(self.token_budgets), "hidden_dim": self.hidden_dim}


class AudioPolicyNetwork(BudgetClassifier):
    """pi_theta: a 2-hidden-layer MLP over the normalised state, one logit per token budget.

    The last layer starts at zero, so a fresh policy is uniform over budgets (unbiased exploration at step 0).
    """

    kind = "audio_policy"

    def __init__(self, state_feature_dim: int, token_budgets: Sequence[int] = (0, 4, 8, 12),
                 hidden_dim: int = 128) -> None:
        super().__init__(state_feature_dim, token_budgets)
        if int(hidden_dim) < 1:
            raise ValueError(f"hidden_dim must be >= 1, got {hidden_dim}")
        self.hidden_dim = int(hidden_dim)
        head = nn.Linear(self.hidden_dim, self.num_actions)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.net = nn.Sequential(
            nn.Linear(self.state_feature_dim, self.hidden_dim), nn.Tanh(),
            nn.Linear(self.hidden_dim, self.hidden_dim), nn.Tanh(),
            head,
        )



# ---------------------------------------------------------------------------------------------- save / load


def save_module_dir(module: BudgetClassifier, path: str | Path) -> Path:
    """Write `model.safetensors` + `config.json` into the folder `path` (each file written atomically)."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    atomic_write(folder / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp))
    text = json.dumps(module.config(), indent=2, sort_keys=True) + "\n"
    atomic_write(folder / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return folder


def load_module_dir(path: str | Path, cls: type[BudgetClassifier],
                    map_location: str | torch.device = "cpu") -> BudgetClassifier:
    """Rebuild a `cls` from a folder written by `save_module_dir` (config kind must match); eval mode."""
    folder = Path(path)
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} not found (expected a folder saved from a {cls.__name__})")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{config_path}: invalid JSON: {exc}") from exc
    if config.get("kind") != cls.kind:
        raise ValueError(f"{config_path}: expected kind {cls.kind!r}, got {config.get('kind')!r}")
    extra = {k: config[k] for k in cls.extra_config_keys if k in config}  # absent in older saves: the default
    module = cls(config["state_feature_dim"], config["token_budgets"], config["hidden_dim"], **extra)
    module.load_state_dict(load_file(str(weights_path)))
    return module.to(map_location).eval()


def save_policy(policy: AudioPolicyNetwork, path: str | Path) -> Path:
    """Save the policy to the folder `path` (safetensors weights incl. normaliser + json config)."""
    return save_module_dir(policy, path)


def load_policy(path: str | Path, map_location: str | torch.device = "cpu") -> AudioPolicyNetwork:
    """Load a policy saved by `save_policy`; returned in eval mode."""
    return load_module_dir(path, AudioPolicyNetwork, map_location)
