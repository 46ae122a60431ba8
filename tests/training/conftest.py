"""A synthetic outcome table whose best policy is known: skip VL-only rows, use budget 4 on audio rows."""

from __future__ import annotations

import numpy as np

from safe.rl.reward import OutcomeTable

BUDGETS = (0, 4, 8, 12)


def make_bandit_table(n: int = 400, seed: int = 0, state_dim: int = 8, flip_rate: float = 0.3,
                      no_audio_rate: float = 0.1) -> OutcomeTable:
    """Half VL-only rows, half audio rows; column 0 of the state says which (plus noise), column 1 has_audio.

    VL-only rows: audio never helps; at each budget > 0 it flips the answer (score -> 0, changed) with prob flip_rate.
    Some VL-only rows have no audio at all. Audio rows: score 0 at budget 0, 1 at every budget >= 4.
    """
    rng = np.random.default_rng(seed)
    needs = rng.random(n) < 0.5
    has = needs | (rng.random(n) >= no_audio_rate)
    states = rng.normal(size=(n, state_dim)).astype(np.float32)
    states[:, 0] = np.where(needs, 1.0, -1.0) + 0.3 * rng.normal(size=n)
    states[:, 1] = has
    a = len(BUDGETS)
    base_right = rng.random(n) < 0.8
    flips = (rng.random((n, a)) < flip_rate) & has[:, None]
    flips[:, 0] = False
    scores = np.where(base_right[:, None] & ~flips, 1.0, 0.0)
    changed = flips.copy()
    scores[needs, 0], scores[needs, 1:] = 0.0, 1.0
    changed[needs, 0], changed[needs, 1:] = False, True
    return OutcomeTable(states, scores.astype(np.float32), changed, needs, has, BUDGETS,
                        ids=np.array([f"ex{i}" for i in range(n)]))
