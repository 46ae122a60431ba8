"""report.md, MODEL_CARD.md, the terminal table and the PNG plots, rendered from a real (small) evaluation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from safe.eval.criteria import evaluate_criteria
from safe.eval.metrics import compute_details, compute_metrics
from safe.eval.plots import (plot_accuracy_vs_budget, plot_skip_rate_per_family, plot_stage_a_retention,
                             plot_stage_b_rewards)
from safe.eval.report import criteria_table_text, render_model_card, render_report, write_text_atomic

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAMILIES = {"vl": False, "vl_distractor": False, "audio": True, "audio_visual": True, "silent_control": True}


@pytest.fixture(scope="module")
def evaluation():
    """A 100-row prediction table drawn from a seeded RNG, and its metrics / details / criteria."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(100):
        family = list(FAMILIES)[i % 5]
        needs = FAMILIES[family]
        answer = str(rng.integers(0, 4))
        guess = lambda p: answer if rng.random() < p else "x"  # noqa: E731
        by_budget = {b: guess(0.8 if (b and needs) or not needs else 0.3) for b in (0, 4, 8, 12)}
        budget = int(rng.choice([4, 8, 12])) if needs else 0
        rows.append({"id": f"q{i}", "family": family, "needs_audio": needs, "has_audio": family != "vl",
                     "answer": answer, "answers": None, "pred_base": by_budget[0], "pred_safe": by_budget[budget],
                     "budget": budget, **{f"pred_b{b}": p for b, p in by_budget.items()},
                     "pred_distractor": None if needs else by_budget[0], "pred_silent": None if needs else "x",
                     "pred_swapped": None})
    table = pd.DataFrame(rows)
    metrics = compute_metrics(table, {"policy": [3.0, 4.0], "always_audio": [9.0], "base": [2.0]})
    details = compute_details(table, n_boot=100)
    return table, metrics, details, evaluate_criteria(metrics)


def test_report_starts_with_the_criteria_table(evaluation):
    _, metrics, details, criteria = evaluation
    text = render_report(metrics, criteria, details)
    first_section = text.split("## ")[1]
    assert first_section.startswith("Success criteria")
    assert "| criterion | measures | value | 95% bound | n | threshold | result |" in first_section
    flips = next(line for line in first_section.splitlines() if "`irrelevant_flip_rate`" in line)
    assert f"| {metrics['n_irrelevant']} |" in flips  # the sample size behind the rate is on its line
    for name, c in criteria.items():
        line = next(line for line in first_section.splitlines() if f"`{name}`" in line)
        assert ("**PASS**" if c["passed"] else "**FAIL**") in line
    assert "in [40.00%, 70.00%]" in text and "≤ 0.50%" in text
    for heading in ("Headline numbers", "Accuracy per family", "Robustness", "Accuracy vs audio budget", "Oracle gap"):
        assert f"## {heading}" in text
    assert "`silent_control`" in text and "CI (paired bootstrap)" in text


def test_report_verdict_follows_criteria(evaluation):
    _, metrics, details, _ = evaluation
    passing = evaluate_criteria({**metrics, "retention_drop": 0.0, "audio_gain": 0.1, "skip_rate": 0.5,
                                 "irrelevant_flip_rate": 0.0, "forced_flip_rate": 0.0, "retention_drop_upper": 0.0,
                                 "audio_gain_lower": 0.06, "irrelevant_flip_rate_upper": 0.009,
                                 "forced_flip_rate_upper": 0.01})
    assert "**Overall: PASS**" in render_report(metrics, passing, details)
    failing = evaluate_criteria({**metrics, "retention_drop": 0.0, "audio_gain": 0.1, "skip_rate": 0.9,
                                 "irrelevant_flip_rate": float("nan"), "forced_flip_rate": 0.0,
                                 "retention_drop_upper": 0.0, "audio_gain_lower": 0.06, "forced_flip_rate_upper": 0.01})
    text = render_report(metrics, failing, details)
    assert "**Overall: FAIL** — not met: skip_rate, irrelevant_flip_rate." in text
    assert "| n/a |" in text  # NaN shown as n/a, not 'nan%'


def test_report_renders_details_read_back_from_json(evaluation):
    _, metrics, details, criteria = evaluation
    fresh = render_report(metrics, criteria, details)
    assert render_report(metrics, criteria, json.loads(json.dumps(details))) == fresh  # str budget keys


def test_model_card_sections_and_run_info(evaluation):
    _, metrics, details, criteria = evaluation
    info = {"profile": "tiny", "base_vl": "small LLaVA trained here", "audio_encoder": "whisper-random:64x2",
            "token_budgets": [0, 4, 8, 12], "trainable_params": 12345, "total_params": 1234500,
            "trainable_fraction": 0.01, "seed": 7}
    card = render_model_card(metrics, criteria, details, info)
    for heading in ("# Model card: safe-audio-vl", "## Model details", "## Intended use", "## Training data",
                    "## Evaluation (test split)", "### Success criteria", "## Limitations", "## How to reproduce"):
        assert heading in card
    assert "12,345 of 1,234,500 (1.0%)" in card and "whisper-random:64x2" in card and "0, 4, 8, 12" in card
    assert "| `seed` | 7 |" in card  # unknown keys are kept, not dropped


def test_criteria_table_text(evaluation):
    *_, criteria = evaluation
    lines = criteria_table_text(criteria).splitlines()
    assert lines[0].split() == ["criterion", "value", "threshold", "result"]
    assert len(lines) == 2 + len(criteria) + 1
    assert lines[-1].startswith("overall: ")
    retention = next(line for line in lines if line.startswith("retention_drop"))
    assert "<= 0.50%" in retention and retention.endswith("PASS" if criteria["retention_drop"]["passed"] else "FAIL")


def test_write_text_atomic(tmp_path):
    path = write_text_atomic(tmp_path / "sub" / "report.md", "hello\n")
    assert path.read_text() == "hello\n" and [p.name for p in path.parent.iterdir()] == ["report.md"]


def _is_png(path):
    return path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 2000


def test_evaluation_plots(tmp_path, evaluation):
    table, _, details, _ = evaluation
    paths = [plot_accuracy_vs_budget(details, tmp_path / "acc.png"),
             plot_accuracy_vs_budget(json.loads(json.dumps(details)), tmp_path / "acc_json.png"),
             plot_accuracy_vs_budget({0: 0.5, 4: 0.6}, tmp_path / "acc_plain.png", base_accuracy=0.5),
             plot_skip_rate_per_family(table, tmp_path / "skip.png"),
             plot_skip_rate_per_family({"vl": 1.0, "audio": 0.1}, tmp_path / "skip_plain.png")]
    assert all(_is_png(p) for p in paths)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)  # no temp files left


def test_training_plots(tmp_path):
    history = [{"step": s, "reward": 0.5 + s / 200, "score": 0.6, "latency_cost": 0.1, "irrelevance": 0.02,
                "lagrange": s / 100, "entropy": 1.0} for s in range(1, 121)]
    evals = [{"step": s, "vl_acc_safe": 0.8 - d, "vl_acc_base": 0.8, "retention_drop": d, "rollback": float(d > 0.005)}
             for s, d in [(0, 0.0), (50, 0.002), (100, 0.008), (150, 0.001)]]
    b = plot_stage_b_rewards(history, tmp_path / "stage_b.png")
    a = plot_stage_a_retention(evals, tmp_path / "stage_a.png", tolerance=0.005)
    a2 = plot_stage_a_retention([{"step": 1, "vl_acc": 0.7, "retention_drop": 0.0}], tmp_path / "stage_a2.png")
    assert _is_png(a) and _is_png(b) and _is_png(a2)


def test_plots_reject_bad_input_clearly(tmp_path):
    with pytest.raises(ValueError, match="entry 1 lacks key"):
        plot_stage_b_rewards([{"step": 1, "reward": 0, "score": 0, "latency_cost": 0, "irrelevance": 0, "lagrange": 0},
                              {"step": 2}], tmp_path / "b.png")
    with pytest.raises(ValueError, match="vl_acc"):
        plot_stage_a_retention([{"step": 1, "retention_drop": 0.0}], tmp_path / "a.png")
    with pytest.raises(ValueError, match="no data"):
        plot_stage_b_rewards([], tmp_path / "b.png")
    assert not any(tmp_path.iterdir())
