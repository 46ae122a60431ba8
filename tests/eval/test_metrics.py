"""Metrics on hand-computed cases: normalisation, VQA soft accuracy, bootstrap, flip rate, oracle gap, metrics.json."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from safe.eval.metrics import (METRIC_KEYS, EvalInputError, accuracy_by_family, accuracy_vs_budget, audio_threshold_curve,
                               compute_details,
                               compute_metrics, exact_match, flip_rate, flip_rate_upper, mean_audio_tokens,
                               normalize_answer, oracle_gap, paired_bootstrap_ci, paired_mean_bound, score, skip_rate,
                               skip_rate_by_family, vqa_soft_accuracy)

VQA_RED = ["red"] * 3 + ["pink"] * 7  # 3 of 10 humans said "red"


def row(id, family, needs, has, answer, base, safe, budget, by_budget, answers=None, **probes):
    r = {"id": id, "family": family, "needs_audio": needs, "has_audio": has, "answer": answer, "answers": answers,
         "pred_base": base, "pred_safe": safe, "budget": budget}
    r.update({f"pred_b{b}": p for b, p in zip((0, 4, 8, 12), by_budget)})
    r.update({f"pred_{k}": probes.get(k) for k in ("distractor", "silent", "swapped")})
    return r


@pytest.fixture()
def six_rows() -> pd.DataFrame:
    """VL rows a-c, audio rows d-f. By hand:
    VL base scores 0.9, 1, 1; SAFE 0.9, 0, 1  -> drop 1/3.   audio base 0, 1, 0; SAFE 1, 1, 1 -> gain 2/3.
    budgets 0, 4, 0, 8, 0, 12 -> skip 1/2, mean tokens 4.    VL rows with a clip: b (flips), c ('2' == 'two').
    """
    return pd.DataFrame([
        row("a", "vl", False, False, "red", "red", "red", 0, ["red"] * 4, answers=VQA_RED,
            distractor="red", silent="red", swapped="blue"),
        row("b", "vl_distractor", False, True, "blue", "blue", "green", 4, ["blue", "green", "green", "green"],
            distractor="green", silent="blue", swapped="blue"),
        row("c", "vl_distractor", False, True, "two", "2", "two", 0, ["2", "2", "3", "3"],
            distractor="2", silent="2", swapped="2"),
        row("d", "audio", True, True, "dog", "cat", "dog", 8, ["cat", "cat", "dog", "dog"]),
        row("e", "audio_visual", True, True, "3", "3", "3", 0, ["3", "3", "3", "4"]),
        row("f", "silent_control", True, True, "none", "no", "0", 12, ["no", "no", "no", "none"]),
    ])


LATENCY = {"latency_ms_policy": [10.0, 30.0, 20.0], "latency_ms_always_audio": 50.0, "latency_ms_base": [5.0, 7.0],
           "n_latency": 3}


# -- normalisation and scoring ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, expected", [
    ("The Two dogs.", "2 dogs"), ("  YES!  ", "yes"), ("an apple", "apple"), ("1,000", "1000"), ("3.5", "3.5"),
    ("Don't", "dont"), ("t-shirt", "t shirt"), ("twelve", "12"), ("none", "0"), (None, ""), (float("nan"), ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_normalises_and_missing_prediction_scores_zero():
    assert exact_match("Two.", "2") == 1.0
    assert exact_match("three", "2") == 0.0
    assert exact_match(None, "2") == 0.0


@pytest.mark.parametrize("matching, expected", [
    (0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0),  # (n-m)*min(1,m/3) + m*min(1,(m-1)/3), / 10
])
def test_vqa_soft_accuracy_leave_one_out_by_hand(matching, expected):
    answers = ["yes"] * matching + ["no"] * (10 - matching)
    assert vqa_soft_accuracy("Yes", answers) == pytest.approx(expected)


def test_vqa_soft_accuracy_needs_answers():
    with pytest.raises(ValueError, match="at least one"):
        vqa_soft_accuracy("yes", [])


def test_score_uses_soft_accuracy_only_with_three_or_more_answers():
    assert score("red", "pink", VQA_RED) == pytest.approx(0.9)
    assert score("red", "red", ["red", "pink"]) == 1.0  # 2 answers: exact match against `answer`
    assert score("red", "red", None) == 1.0
    assert score("red", "red", np.array(VQA_RED, dtype=object)) == pytest.approx(0.9)
    with pytest.raises(TypeError, match="single string"):
        score("red", "red", "red")


# -- statistics -------------------------------------------------------------------------------------------------------

def test_paired_bootstrap_contains_point_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    widths = []
    for n in (50, 2000):
        a, b = rng.random(n) < 0.6, rng.random(n) < 0.5
        point, lo, hi = paired_bootstrap_ci(a, b, n_boot=500, seed=0)
        assert point == pytest.approx(a.mean() - b.mean())
        assert lo <= point <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 3  # ~ 1/sqrt(40) of the width


def test_paired_bootstrap_is_paired_and_seeded():
    a = np.array([0.2, 0.9, 0.4, 0.7, 0.1])
    assert paired_bootstrap_ci(a + 0.1, a) == pytest.approx((0.1, 0.1, 0.1))  # a constant difference: no spread
    assert paired_bootstrap_ci(a, a[::-1], seed=3) == paired_bootstrap_ci(a, a[::-1], seed=3)
    assert all(math.isnan(x) for x in paired_bootstrap_ci([], []))
    with pytest.raises(ValueError, match="equal length"):
        paired_bootstrap_ci([1, 0], [1])


def test_flip_rate_normalises_and_skips_missing():
    assert flip_rate(["yes", "2", "cat", "x", None], ["yes", "two", "dog", None, "y"]) == pytest.approx(1 / 3)
    assert math.isnan(flip_rate([None], ["a"]))


def test_skip_rate_and_mean_tokens():
    assert skip_rate([0, 4, 0, 12]) == 0.5
    assert mean_audio_tokens([0, 4, 0, 12]) == 4.0
    assert math.isnan(skip_rate([]))


def test_oracle_gap_three_rows_by_hand():
    df = pd.DataFrame([
        row("1", "vl", False, False, "x", "x", "x", 4, ["x", "x", "y", "x"]),  # oracle 0 (cheapest tie), deployed 1
        row("2", "audio", True, True, "a", "b", "b", 0, ["b", "b", "a", "a"]),  # oracle 8 scores 1, deployed 0
        row("3", "audio", True, True, "q", "z", "z", 12, ["z", "z", "z", "z"]),  # nothing right: oracle takes 0
    ])
    gap = oracle_gap(df)
    assert gap["oracle_acc"] == pytest.approx(2 / 3)
    assert gap["deployed_acc"] == pytest.approx(1 / 3)
    assert gap["gap"] == pytest.approx(1 / 3)
    assert gap["oracle_mean_tokens"] == pytest.approx(8 / 3)
    assert gap["deployed_mean_tokens"] == pytest.approx(16 / 3)
    assert gap["oracle_skip_rate"] == pytest.approx(2 / 3)


# -- table-level metrics ----------------------------------------------------------------------------------------------

def test_compute_metrics_six_rows_by_hand(six_rows):
    m = compute_metrics(six_rows, LATENCY)
    assert tuple(m) == METRIC_KEYS
    expected = {
        "vl_acc_base": 2.9 / 3, "vl_acc_safe": 1.9 / 3, "retention_drop": 1 / 3,
        "audio_acc_base": 1 / 3, "audio_acc_safe": 1.0, "audio_gain": 2 / 3,
        # row a carries no clip, so it is no skip decision: c and e of the five rows with a clip were skipped
        "skip_rate": 2 / 5, "skip_rate_all": 0.5, "audio_needed_skip_rate": 1 / 3,
        # per family over the rows with a clip: family vl (row a, no clip) is no decision and is left out
        "skip_rate_by_family": {"audio": 0.0, "audio_visual": 1.0, "silent_control": 0.0, "vl_distractor": 0.5},
        "irrelevant_flip_rate": 0.5, "mean_audio_tokens": 4.0,
        "irrelevant_flip_rate_upper": 0.95 ** 0.5,  # Clopper-Pearson, 1 of 2: 1 - p^2 = 0.05
        "forced_flip_rate_distractor": 1 / 3, "forced_flip_rate_silent": 0.0, "forced_flip_rate_swapped": 1 / 3,
        "oracle_gap": oracle_gap(six_rows)["gap"],
        "latency_ms_policy": 20.0, "latency_ms_policy_mean": 20.0, "latency_ms_policy_p90": 28.0,
        "latency_ms_always_audio": 50.0, "latency_ms_always_audio_p90": 50.0,
        "latency_ms_base": 6.0, "latency_ms_base_mean": 6.0, "latency_ms_base_p90": 6.8,
    }
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    assert (m["n_test"], m["n_vl"], m["n_audio"], m["n_with_audio"], m["n_irrelevant"], m["n_latency"]) == \
        (6, 3, 3, 5, 2, 3) and isinstance(m["n_test"], int)
    assert m["retention_drop"] < m["retention_drop_upper"] <= 1.0
    assert -1.0 <= m["audio_gain_lower"] < m["audio_gain"]
    json.dumps(m)  # plain Python numbers


def test_flip_rate_upper_is_the_exact_binomial_bound():
    assert flip_rate_upper(0, 150) == pytest.approx(1 - 0.05 ** (1 / 150))  # ~0.0198: 150 rows cannot show <= 1%
    assert flip_rate_upper(0, 300) < 0.01 < flip_rate_upper(1, 300)
    assert math.isnan(flip_rate_upper(0, 0))


def test_paired_mean_bound_sides_and_degenerate_samples():
    rng = np.random.default_rng(0)
    a, b = rng.random(400), rng.random(400)
    point = float((a - b).mean())
    assert paired_mean_bound(a, b, "lower") < point < paired_mean_bound(a, b, "upper")
    assert paired_mean_bound(np.ones(50), np.ones(50), "upper") == 0.0  # SAFE never changed an answer
    assert math.isnan(paired_mean_bound([], [], "upper"))
    with pytest.raises(ValueError, match="side"):
        paired_mean_bound(a, b, "both")


def test_compute_metrics_is_order_and_index_invariant(six_rows):
    shuffled = six_rows.sample(frac=1, random_state=0)  # non-default index
    a, b = compute_metrics(shuffled, LATENCY), compute_metrics(six_rows, LATENCY)
    assert a.pop("skip_rate_by_family") == pytest.approx(b.pop("skip_rate_by_family"))
    assert a == pytest.approx(b)


def test_irrelevant_flip_rate_nan_without_vl_rows_carrying_audio(six_rows):
    df = six_rows.assign(has_audio=six_rows["needs_audio"])
    assert math.isnan(compute_metrics(df, LATENCY)["irrelevant_flip_rate"])


@pytest.mark.parametrize("mutate, message", [
    (lambda df: df.drop(columns=["pred_safe"]), "lacks column"),
    (lambda df: df.drop(columns=["has_audio"]), "has_audio"),
    (lambda df: df.assign(id=["a", "a", "c", "d", "e", "f"]), "duplicate id"),
    (lambda df: df.assign(budget=[0, 4, 0, 8, 0, 5]), "row id='f': budget 5 has no column"),
    (lambda df: df.assign(budget=[0, 4, 0, 8, 0, -4]), "row id='f': budget must be"),
    (lambda df: df.assign(needs_audio=[False, False, "no", True, True, True]), "row id='c': needs_audio"),
    (lambda df: df.iloc[:0], "empty"),
])
def test_bad_tables_raise_clear_errors(six_rows, mutate, message):
    with pytest.raises(EvalInputError, match=message):
        compute_metrics(mutate(six_rows), LATENCY)


def test_missing_latency_names_the_key(six_rows):
    with pytest.raises(EvalInputError, match="latency_ms_base"):
        compute_metrics(six_rows, {"policy": 1.0, "always_audio": 2.0})


def test_family_and_budget_breakdowns(six_rows):
    assert accuracy_by_family(six_rows, "pred_safe") == pytest.approx(
        {"audio": 1.0, "audio_visual": 1.0, "silent_control": 1.0, "vl": 0.9, "vl_distractor": 0.5})
    assert skip_rate_by_family(six_rows)["vl_distractor"] == 0.5
    assert skip_rate_by_family(six_rows)["vl"] == 1.0  # every row: row a has no clip and is forced to 0
    with_clip = skip_rate_by_family(six_rows, with_audio_only=True)
    assert "vl" not in with_clip and with_clip["audio_visual"] == 1.0
    # a row with a clip counts in its family: the gate skipped it or not
    mixed = six_rows.assign(has_audio=[True, True, True, True, True, True], budget=[4, 4, 0, 8, 0, 12])
    assert skip_rate_by_family(mixed, with_audio_only=True)["vl"] == 0.0
    with pytest.raises(EvalInputError, match="has_audio"):
        skip_rate_by_family(six_rows.drop(columns=["has_audio"]), with_audio_only=True)
    # b0: a .9, b 1, c 1, d 0, e 1, f 0 ; b12: .9, 0, 0, 1, 0, 1
    acc = accuracy_vs_budget(six_rows)
    assert list(acc) == [0, 4, 8, 12]
    assert acc[0] == pytest.approx(3.9 / 6) and acc[12] == pytest.approx(2.9 / 6)


def test_compute_details(six_rows):
    d = compute_details(six_rows, n_boot=200, seed=0)
    assert d["n_test"] == 6 and d["n_vl"] == 3 and d["n_audio"] == 3
    ret = d["retention"]
    assert ret["value"] == pytest.approx(1 / 3) and ret["ci_low"] <= ret["value"] <= ret["ci_high"]
    assert d["audio_gain"]["value"] == pytest.approx(2 / 3)
    fam = d["per_family"]["vl_distractor"]
    assert (fam["n"], fam["acc_base"], fam["acc_safe"], fam["skip_rate"]) == (2, 1.0, 0.5, 0.5)
    rob = d["robustness"]
    assert rob["distractor"]["flip_rate"] == pytest.approx(1 / 3) and rob["distractor"]["n"] == 3
    assert rob["silent"]["flip_rate"] == 0.0
    assert rob["swapped"]["flip_rate"] == pytest.approx(1 / 3)
    assert rob["deployed_irrelevant"] == pytest.approx({"flip_rate": 0.5, "n": 2, "acc_base": 1.0, "acc_probe": 0.5})
    assert d["accuracy_vs_budget"]["audio"][8] == pytest.approx(2 / 3)
    assert d["oracle"]["oracle_acc"] >= d["oracle"]["deployed_acc"]
    json.loads(json.dumps(d))  # serialisable for details.json


def test_audio_threshold_curve_by_hand(six_rows):
    """Rows with a clip: b, c (VL) and d, e, f (audio). P(audio) 0.2 / 0.6 / 0.9 / 0.4 / 0.7, audio budget 4 / 4 / 8 /
    12 / 12. Threshold 0.5 consults c, d, f: skip 2 of 5; answers a red(b0) b blue(b0) c 2(b4) d dog(b8) e 3(b0)
    f none(b12) -> VL 0.9 + 1 + 1 of 3, audio 3 of 3; at 0.1 every clip is consulted and b gets green (b4)."""
    df = six_rows.assign(p_audio=[0.0, 0.2, 0.6, 0.9, 0.4, 0.7], audio_budget=[0, 4, 4, 8, 12, 12])
    curve = dict(zip((0.1, 0.5, 0.95), audio_threshold_curve(df, thresholds=(0.1, 0.5, 0.95))))
    assert curve[0.5]["skip_rate"] == pytest.approx(2 / 5)
    assert curve[0.5]["acc_vl"] == pytest.approx(2.9 / 3) and curve[0.5]["acc_audio"] == pytest.approx(1.0)
    assert curve[0.1]["acc_vl"] == pytest.approx(1.9 / 3)
    assert curve[0.5]["mean_audio_tokens"] == pytest.approx((4 + 8 + 12) / 6)
    assert curve[0.1]["skip_rate"] == 0.0 and curve[0.95]["skip_rate"] == 1.0
    assert audio_threshold_curve(six_rows) == []  # no gate probabilities: no curve
    assert compute_details(df)["audio_threshold_curve"][4]["threshold"] == 0.5
