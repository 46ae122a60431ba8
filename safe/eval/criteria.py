"""The success criteria that gate promotion to `champion`, and the champion-vs-candidate rule (pure functions).

Rules shared by every criterion:
  - a value exactly at its threshold passes (the bounds are inclusive). Differences of accuracies carry float
    rounding (0.805 - 0.8 = 0.0050000000000000044), so comparisons allow FLOAT_TOL; accuracies are multiples of at
    least 1/(30 n), so no real difference is absorbed while n_test < ~3e7;
  - NaN (or a missing / non-numeric value) fails: a criterion that could not be measured is not met;
  - the gate reads each criterion's one-sided 95% confidence bound on the side that matters (the upper bound of a
    drop or a flip rate, the lower bound of a gain) whenever metrics.json carries it, so a model passes when the
    test split shows the criterion holds, not when one lucky sample does. The skip-rate band, a design target rather
    than a risk, reads the value. Metrics without bounds (another tool's file) are gated on their values, and each
    criterion records what it was gated on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from safe.config import PromoteConfig

FLOAT_TOL = 1e-9
NOT_WORSE_EPS = 1e-3
"""Allowed slack (0.1 percentage point) when comparing a candidate with the champion (see `is_not_worse`)."""

CRITERIA = ("retention_drop", "audio_gain", "skip_rate", "irrelevant_flip_rate", "forced_flip_rate")
BOUND_AND_N = {"retention_drop": ("retention_drop_upper", "n_vl"), "audio_gain": ("audio_gain_lower", "n_audio"),
               "skip_rate": (None, "n_with_audio"), "irrelevant_flip_rate": ("irrelevant_flip_rate_upper", "n_irrelevant"),
               "forced_flip_rate": ("forced_flip_rate_upper", "n_vl")}
"""Per criterion: the metrics.json key of its 95% bound on the side that matters (none for the skip-rate band,
which is a design target, not a risk), and of the sample size behind it."""


@dataclass(frozen=True)
class Thresholds:
    """Success thresholds; defaults are `safe.config.PromoteConfig`'s (params.yaml `promote:` overrides them)."""

    max_retention_drop: float = PromoteConfig.max_retention_drop
    """VL accuracy lost by SAFE vs the base model on VL-only questions: at most 0.5 points."""
    min_audio_gain: float = PromoteConfig.min_audio_gain
    """Accuracy gained on audio-dependent questions: at least 5 points."""
    skip_rate_min: float = PromoteConfig.skip_rate_min
    skip_rate_max: float = PromoteConfig.skip_rate_max
    """Share of test examples that carry a clip where the gate skips audio: in [skip_rate_min, skip_rate_max]."""
    max_irrelevant_flip_rate: float = PromoteConfig.max_irrelevant_flip_rate
    """Share of VL-only questions with unrelated audio whose answer changes vs the base model: at most 1%."""
    max_forced_flip_rate: float = PromoteConfig.max_forced_flip_rate
    """Share of VL-only answers that change when the budget is forced to the largest with a wrong clip (distractor,
    silence, another example's; the worst of the three): the adapter's own robustness to a misrouted question."""

    @classmethod
    def from_config(cls, promote: Any) -> "Thresholds":
        """From any object with the same field names (e.g. `safe.config.PromoteConfig`); extra fields ignored."""
        return cls(**{f.name: getattr(promote, f.name) for f in fields(cls)})

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"Thresholds.{name} must be a finite number, got {value!r}")
        if not 0 <= self.skip_rate_min <= self.skip_rate_max <= 1:
            raise ValueError(f"need 0 <= skip_rate_min <= skip_rate_max <= 1, got "
                             f"[{self.skip_rate_min}, {self.skip_rate_max}]")


def _number(value: Any) -> float:
    """float(value), or NaN when it is not a real number (None, a string, a bool)."""
    if isinstance(value, (bool, str, bytes)) or type(value).__name__ == "bool_":
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _at_most(value: float, limit: float) -> bool:
    return not math.isnan(value) and value <= limit + FLOAT_TOL


def _at_least(value: float, limit: float) -> bool:
    return not math.isnan(value) and value >= limit - FLOAT_TOL


def evaluate_criteria(metrics: Mapping[str, Any], thresholds: Thresholds = Thresholds()) -> dict[str, dict[str, Any]]:
    """{name: {value, bound, n, threshold, gated_on, passed}} for every name in CRITERIA.

    `threshold` is a number, or [min, max] for skip_rate; `gated_on` is "bound" or "value" (see the module
    docstring). Raises KeyError naming the metric when a value is absent (a metrics file from another schema is a
    bug to surface, not a failed criterion).
    """
    missing = [k for k in CRITERIA if k not in metrics]
    if missing:
        raise KeyError(f"metrics lack {missing} needed by the success criteria; have {sorted(metrics)}")
    t = thresholds
    limits = {"retention_drop": (_at_most, t.max_retention_drop), "audio_gain": (_at_least, t.min_audio_gain),
              "irrelevant_flip_rate": (_at_most, t.max_irrelevant_flip_rate),
              "forced_flip_rate": (_at_most, t.max_forced_flip_rate)}
    criteria = {}
    for name in CRITERIA:
        bound_key, n_key = BOUND_AND_N[name]
        value = _number(metrics[name])
        bound = _number(metrics[bound_key]) if bound_key and bound_key in metrics else None
        gated = value if bound is None else bound
        if name == "skip_rate":
            threshold = [t.skip_rate_min, t.skip_rate_max]
            passed = _at_least(value, t.skip_rate_min) and _at_most(value, t.skip_rate_max)
        else:
            check, threshold = limits[name]
            passed = check(gated, threshold)
        criteria[name] = {"value": value, "bound": bound,
                          "n": int(metrics[n_key]) if isinstance(metrics.get(n_key), (int, float)) else None,
                          "threshold": threshold, "gated_on": "value" if bound is None else "bound",
                          "passed": passed}
    return criteria


PASS, FAIL, NOT_COMPUTED = "pass", "fail", "not_computed"


def criterion_status(criterion: Mapping[str, Any]) -> str:
    """"pass", "fail", or "not_computed" when its value could not be measured (NaN / missing: no rows of the kind
    it needs). Promotion still requires "pass" (`all_passed`); a report or a command shows the third state as such."""
    gated = criterion.get("bound") if criterion.get("gated_on") == "bound" else criterion.get("value")
    if math.isnan(_number(criterion.get("value"))) or math.isnan(_number(gated)):
        return NOT_COMPUTED
    return PASS if criterion.get("passed") is True else FAIL


def all_passed(criteria: Mapping[str, Mapping[str, Any]]) -> bool:
    """True when every criterion passed. An empty mapping is False: nothing was checked, so nothing is proven."""
    return bool(criteria) and all(c.get("passed") is True for c in criteria.values())


def failed_criteria(criteria: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Names of the criteria that did not pass, in order."""
    return [name for name, c in criteria.items() if c.get("passed") is not True]


def is_not_worse(candidate: Mapping[str, Any], champion: Mapping[str, Any] | None, eps: float = NOT_WORSE_EPS) -> bool:
    """May `candidate` replace the current `champion`? (Both already passed the criteria; this guards regressions.)

    Rule: no champion -> True. Otherwise the candidate must keep at least the champion's audio gain and add at most
    the champion's retention drop, each within `eps` (test-set noise should not block an equivalent model):
        candidate.audio_gain >= champion.audio_gain - eps  AND
        candidate.retention_drop <= champion.retention_drop + eps
    A NaN / missing candidate value fails. A NaN / missing champion value (an older metrics schema) imposes no
    bound on that metric.
    """
    if champion is None:
        return True
    gain, drop = _number(candidate.get("audio_gain")), _number(candidate.get("retention_drop"))
    if math.isnan(gain) or math.isnan(drop):
        return False
    champ_gain, champ_drop = _number(champion.get("audio_gain")), _number(champion.get("retention_drop"))
    gain_ok = math.isnan(champ_gain) or gain >= champ_gain - eps - FLOAT_TOL
    drop_ok = math.isnan(champ_drop) or drop <= champ_drop + eps + FLOAT_TOL
    return gain_ok and drop_ok
