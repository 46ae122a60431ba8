"""pipelines/results.py writes docs/results.md from a run's files, never from numbers typed into it."""

from __future__ import annotations

import json

import pandas as pd

from pipelines import results
from safe.eval.criteria import evaluate_criteria
from safe.eval.metrics import compute_metrics
from safe.tracking import PromotionResult


def _table() -> pd.DataFrame:
    rows = []
    for i in range(40):
        needs, has = i % 2 == 0, i % 4 != 1
        rows.append({"id": f"q{i}", "family": "audio" if needs else "vl", "needs_audio": needs, "has_audio": has,
                     "answer": "a", "pred_base": "b" if needs else "a", "pred_safe": "a", "budget": 4 if needs else 0,
                     "pred_b0": "b" if needs else "a", "pred_b4": "a"})
    return pd.DataFrame(rows)


def test_results_md_reports_the_run_and_the_newest_seeds_record(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("profile: tiny\n")
    metrics = compute_metrics(_table(), {"policy": [2.0, 4.0], "always_audio": [9.0], "base": [1.0]})
    criteria = evaluate_criteria(metrics)
    promotion = PromotionResult("rejected", "safe-audio-vl", "3", criteria, ("skip_rate",)).to_json()
    (tmp_path / "data/eval").mkdir(parents=True)
    (tmp_path / "data/eval/metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "data/eval/promotion.json").write_text(json.dumps(promotion))
    (tmp_path / "data/metrics").mkdir(parents=True)
    (tmp_path / "data/metrics/base_vl.json").write_text(json.dumps({"trained_here": 1, "val_acc": 0.9273,
                                                                    "val_acc_blind": 0.3273}))
    (tmp_path / "benchmarks").mkdir()
    seed_run = {"seed": 0, "decision": "champion", "metrics": metrics}
    records = [{"profile": "tiny", "commit": "old", "machine": "m", "date": "d1", "runs": [seed_run]},
               {"profile": "tiny", "commit": "new", "machine": "m", "date": "d2",
                "runs": [seed_run, {**seed_run, "seed": 1, "decision": "rejected",
                                    "audio_acc_by_budget": {"0": 0.1, "4": 0.7, "8": 0.75, "12": 0.8}}]}]
    (tmp_path / "benchmarks/results_seeds.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    results.main([])

    text = (tmp_path / "docs/results.md").read_text()
    assert "Decision: **rejected** (v3, failed: skip_rate)" in text
    assert (f"| audio-dependent gain | {metrics['audio_gain']:.4f} | {metrics['audio_gain_lower']:.4f} | "
            f"{metrics['n_audio']} | 0.05 | bound | yes |") in text
    assert "| VL answers changed, budget forced on, worst wrong clip | n/a | n/a |" in text  # no probe columns
    assert "commit new" in text and "**1 of 2 seeds promoted**" in text and "commit old" not in text
    assert "| 0.7000 / 0.7500 / 0.8000 | rejected |" in text and "| — | champion |" in text  # budgets when recorded
    assert f"| deployed gate | {metrics['latency_ms_policy']:.4f} |" in text
    assert "| accuracy | 0.9273 |" in text and "| accuracy with every image blanked (blind baseline) | 0.3273 |" in text


def test_archive_puts_profiles_side_by_side(tmp_path, monkeypatch):
    """`--archive` keeps this run's files in docs/runs/<profile>/; with two profiles archived, results.md has one
    column per profile, each read from its own files (decision, base VL beside its blind baseline, bounds)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("profile: tiny\n")
    metrics = compute_metrics(_table(), {"policy": [2.0], "always_audio": [9.0], "base": [1.0]})
    promotion = PromotionResult("champion", "safe-audio-vl", "1", evaluate_criteria(metrics), ()).to_json()
    (tmp_path / "data/eval").mkdir(parents=True)
    (tmp_path / "data/metrics").mkdir(parents=True)
    (tmp_path / "data/eval/metrics.json").write_text(json.dumps(metrics))
    (tmp_path / "data/eval/promotion.json").write_text(json.dumps(promotion))
    (tmp_path / "data/eval/details.json").write_text(json.dumps({"accuracy_vs_budget": {"audio": {"4": 0.25, "8": 0.5,
                                                                                                  "12": 0.75}}}))
    (tmp_path / "data/metrics/base_vl.json").write_text(json.dumps({"trained_here": 1, "val_acc": 0.9,
                                                                    "val_acc_blind": 0.3}))
    results.main(["--archive"])
    assert json.loads((tmp_path / "docs/runs/tiny/base_vl.json").read_text())["val_acc_blind"] == 0.3
    assert "Profiles side by side" not in (tmp_path / "docs/results.md").read_text()  # one profile: nothing to compare

    other = {**results.this_run(), "promotion": {**promotion, "decision": "rejected"},
             "base_vl": {"trained_here": 1, "val_acc": 0.45, "val_acc_blind": 0.31}, "accuracy_vs_budget": {}}
    results.archive("smol", other)
    results.main([])
    text = (tmp_path / "docs/results.md").read_text()
    assert "| measure | smol | tiny |" in text
    assert "| decision | **rejected** | **champion** |" in text
    assert "| base VL validation accuracy (blind baseline) | 0.4500 (0.3100) | 0.9000 (0.3000) |" in text
    assert "| test audio-dependent accuracy at budgets 4 / 8 / 12 | n/a | 0.2500 / 0.5000 / 0.7500 |" in text
    gain = f"{metrics['audio_gain']:.4f} ({metrics['audio_gain_lower']:.4f})"
    assert f"| audio-dependent gain | {gain} | {gain} |" in text


def test_run_stamp_names_a_few_edited_files(tmp_path, monkeypatch):
    """Switching profiles edits params.yaml: the stamp names it instead of a vague "uncommitted changes"; the run's
    own outputs (data/, dvc.lock, results.md, docs/runs/) never count."""
    import subprocess

    monkeypatch.chdir(tmp_path)
    git = lambda *args: subprocess.run(["git", *args], check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    (tmp_path / "params.yaml").write_text("profile: demo\n")
    (tmp_path / "dvc.lock").write_text("a\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    clean = results._commit()
    (tmp_path / "dvc.lock").write_text("b\n")
    assert results._commit() == clean
    (tmp_path / "params.yaml").write_text("profile: smol\n")
    assert results._commit() == f"{clean} (uncommitted: params.yaml)"
