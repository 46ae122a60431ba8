"""Success criteria: each failing alone, inclusive thresholds, NaN fails, and the champion comparison rule."""

from __future__ import annotations

import json

import pytest

from safe.eval.criteria import CRITERIA, Thresholds, all_passed, evaluate_criteria, failed_criteria, is_not_worse

GOOD = {"retention_drop": 0.002, "audio_gain": 0.08, "skip_rate": 0.55, "irrelevant_flip_rate": 0.0,
        "forced_flip_rate": 0.01, "vl_acc_base": 0.8, "n_test": 100}


def test_bounds_and_sample_sizes_travel_with_each_criterion():
    metrics = {**GOOD, "retention_drop_upper": 0.004, "audio_gain_lower": 0.06, "irrelevant_flip_rate_upper": 0.0098,
               "forced_flip_rate_upper": 0.019, "n_vl": 330, "n_audio": 270, "n_with_audio": 420, "n_irrelevant": 350}
    criteria = evaluate_criteria(metrics, Thresholds())
    assert {k: (c["bound"], c["n"]) for k, c in criteria.items()} == {
        "retention_drop": (0.004, 330), "audio_gain": (0.06, 270), "skip_rate": (None, 420),
        "irrelevant_flip_rate": (0.0098, 350), "forced_flip_rate": (0.019, 330)}
    assert all_passed(criteria)
    assert {k: c["gated_on"] for k, c in criteria.items()} == {
        "retention_drop": "bound", "audio_gain": "bound", "skip_rate": "value", "irrelevant_flip_rate": "bound",
        "forced_flip_rate": "bound"}


@pytest.mark.parametrize("bound_key, bound, failed", [
    ("irrelevant_flip_rate_upper", 0.0198, "irrelevant_flip_rate"),  # 0 flips of 150: cannot show a rate < 1%
    ("retention_drop_upper", 0.009, "retention_drop"),
    ("audio_gain_lower", 0.03, "audio_gain"),
    ("forced_flip_rate_upper", 0.025, "forced_flip_rate"),
    ("forced_flip_rate_upper", float("nan"), "forced_flip_rate"),  # a bound that could not be computed
])
def test_the_gate_reads_the_bound_not_the_value(bound_key, bound, failed):
    """Every value passes; the bound on the side that matters decides."""
    criteria = evaluate_criteria({**GOOD, bound_key: bound})
    assert failed_criteria(criteria) == [failed]
    assert criteria[failed]["value"] == GOOD[failed] and criteria[failed]["gated_on"] == "bound"


def test_all_pass_and_schema():
    criteria = evaluate_criteria(GOOD, Thresholds())
    assert list(criteria) == list(CRITERIA)
    assert all(set(c) == {"value", "bound", "n", "threshold", "gated_on", "passed"} for c in criteria.values())
    assert all(c["bound"] is None and c["n"] is None for c in criteria.values())  # GOOD has no bounds or sizes
    assert criteria["skip_rate"]["threshold"] == [0.40, 0.70]
    assert criteria["retention_drop"]["threshold"] == 0.005
    assert all_passed(criteria) and failed_criteria(criteria) == []
    assert all(type(c["passed"]) is bool for c in criteria.values())
    json.dumps(criteria)


@pytest.mark.parametrize("name, bad_value", [
    ("retention_drop", 0.006), ("audio_gain", 0.049), ("skip_rate", 0.39), ("skip_rate", 0.71),
    ("irrelevant_flip_rate", 0.011),
])
def test_each_criterion_fails_alone(name, bad_value):
    criteria = evaluate_criteria({**GOOD, name: bad_value})
    assert failed_criteria(criteria) == [name]
    assert not all_passed(criteria)


@pytest.mark.parametrize("name, value", [
    ("retention_drop", 0.005), ("retention_drop", 0.805 - 0.8),  # 0.0050000000000000044 after float rounding
    ("audio_gain", 0.05), ("audio_gain", 0.85 - 0.8),  # 0.04999999999999993
    ("skip_rate", 0.40), ("skip_rate", 0.70), ("irrelevant_flip_rate", 0.01),
])
def test_value_exactly_at_threshold_passes(name, value):
    assert evaluate_criteria({**GOOD, name: value})[name]["passed"] is True


@pytest.mark.parametrize("name", CRITERIA)
@pytest.mark.parametrize("bad", [float("nan"), None, "0.001"])
def test_nan_or_non_numeric_fails(name, bad):
    criteria = evaluate_criteria({**GOOD, name: bad})
    assert criteria[name]["passed"] is False
    assert failed_criteria(criteria) == [name]


def test_missing_metric_raises_naming_it():
    with pytest.raises(KeyError, match="audio_gain"):
        evaluate_criteria({k: v for k, v in GOOD.items() if k != "audio_gain"})


def test_custom_thresholds_and_validation():
    strict = Thresholds(max_retention_drop=0.001)
    assert failed_criteria(evaluate_criteria(GOOD, strict)) == ["retention_drop"]
    with pytest.raises(ValueError, match="skip_rate_min"):
        Thresholds(skip_rate_min=0.8, skip_rate_max=0.7)
    with pytest.raises(ValueError, match="max_irrelevant_flip_rate"):
        Thresholds(max_irrelevant_flip_rate=float("nan"))


def test_all_passed_is_false_for_nothing_checked():
    assert all_passed({}) is False


def test_is_not_worse_rule():
    champ = {"audio_gain": 0.08, "retention_drop": 0.002}
    assert is_not_worse(GOOD, None)
    assert is_not_worse({"audio_gain": 0.0795, "retention_drop": 0.0025}, champ)  # within eps = 0.001
    assert is_not_worse({"audio_gain": 0.079, "retention_drop": 0.003}, champ)  # exactly at eps
    assert not is_not_worse({"audio_gain": 0.07, "retention_drop": 0.002}, champ)  # lost audio gain
    assert not is_not_worse({"audio_gain": 0.09, "retention_drop": 0.004}, champ)  # more VL damage
    assert not is_not_worse({"audio_gain": float("nan"), "retention_drop": 0.0}, champ)
    assert is_not_worse({"audio_gain": 0.06, "retention_drop": 0.0}, {"audio_gain": float("nan")})  # no bound known
    assert not is_not_worse({"audio_gain": 0.0795, "retention_drop": 0.002}, champ, eps=0.0)


def test_thresholds_from_promote_config():
    from safe.config import PromoteConfig

    cfg = PromoteConfig(max_retention_drop=0.003, skip_rate_max=0.8)
    t = Thresholds.from_config(cfg)
    assert (t.max_retention_drop, t.skip_rate_min, t.skip_rate_max) == (0.003, 0.40, 0.8)
    assert Thresholds.from_config(PromoteConfig()) == Thresholds()
