"""Write docs/results.md from the files a run and the seeds benchmark wrote: no number in it is typed by hand.

    python -m pipelines.results            # after `make demo` (and optionally benchmarks/bench_seeds.py)

Reads data/eval/metrics.json, data/eval/promotion.json, data/metrics/*.json (this checkout's last run) and
benchmarks/results_seeds.jsonl (every seeds benchmark run, newest per profile shown). Stamps the commit, the
machine and the date of the run it reports; `make results` runs it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

from pipelines.common import EVAL, METRICS, config
from safe.io import write_text_atomic

OUT = Path("docs/results.md")
SEEDS = Path("benchmarks/results_seeds.jsonl")
CRITERIA_LABELS = {"retention_drop": "VL retention drop", "audio_gain": "audio-dependent gain",
                   "skip_rate": "skip rate, examples with a clip",
                   "irrelevant_flip_rate": "answers changed by an irrelevant clip (deployed gate)",
                   "forced_flip_rate": "VL answers changed, budget forced on, worst wrong clip"}
STAGE_A_ROWS = (("audio_acc_safe", "validation audio-dependent accuracy, largest budget"),
                ("vl_flip_rate", "validation VL answers changed, a clip fused into every VL question"),
                ("fisher_coverage", "share of trainable tensors the Fisher penalty sees"),
                ("trainable_fraction", "trainable share of the SAFE model"))
EXTRA_ROWS = (("skip_rate_all", "skip rate, all examples"), ("audio_needed_skip_rate", "audio-dependent questions skipped"),
              ("oracle_gap", "oracle gap (oracle − deployed accuracy)"),
              ("forced_flip_rate_distractor", "VL answers changed, budget forced on, distractor clip"),
              ("forced_flip_rate_silent", "VL answers changed, budget forced on, silent clip"),
              ("forced_flip_rate_swapped", "VL answers changed, budget forced on, another example's clip"),
              ("vl_acc_base", "base VL accuracy, VL-only questions"),
              ("audio_acc_safe", "SAFE accuracy, audio-dependent questions"))


def _fmt(value: Any) -> str:
    return "n/a" if value is None or (isinstance(value, float) and value != value) else f"{value:.4f}"


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    # The run's own outputs (data/, dvc.lock, this file) are not code changes.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!data", ":!dvc.lock",
                            ":!docs/results.md"], capture_output=True, text=True)
    return (out.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def run_section(profile: str) -> list[str]:
    metrics = json.loads((EVAL / "metrics.json").read_text())
    promotion = json.loads((EVAL / "promotion.json").read_text())
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((EVAL / "metrics.json").stat().st_mtime))
    lines = [f"## Last `dvc repro` of this checkout ({profile} profile)", "",
             f"Commit {_commit()}, machine {platform.node()} ({os.cpu_count()} cores, {platform.machine()}), "
             f"evaluated {stamp}; {metrics['n_test']} test examples. Decision: **{promotion['decision']}** "
             f"(v{promotion['version']}" + (f", failed: {', '.join(promotion['failed'])}" if promotion["failed"] else "")
             + ").", "", "| criterion | value | 95% bound | n | threshold | gated on | passed |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, c in promotion["criteria"].items():
        threshold = c["threshold"]
        threshold = f"[{threshold[0]:.2f}, {threshold[1]:.2f}]" if isinstance(threshold, list) else f"{threshold:g}"
        lines.append(f"| {CRITERIA_LABELS.get(name, name)} | {_fmt(c.get('value'))} | {_fmt(c.get('bound'))} | "
                     f"{c.get('n', 'n/a')} | {threshold} | {c.get('gated_on', 'value')} | "
                     f"{'yes' if c['passed'] else 'no'} |")
    lines += ["", "| other measure | value |", "| --- | --- |"]
    lines += [f"| {label} | {_fmt(metrics.get(key))} |" for key, label in EXTRA_ROWS]
    lines += ["", "| latency per example (ms) | median | mean | p90 |", "| --- | --- | --- | --- |"]
    for label, path in (("deployed gate", "policy"), ("always audio", "always_audio"), ("base VL", "base")):
        lines.append(f"| {label} | " + " | ".join(_fmt(metrics.get(f"latency_ms_{path}{s}")) for s in ("", "_mean", "_p90"))
                     + " |")
    lines += mechanisms_lines()
    stage_files = sorted(METRICS.glob("*.json"))
    if stage_files:
        lines += ["", "Stage metrics of that run: " + ", ".join(f"`{p.as_posix()}`" for p in stage_files) + "."]
    return lines


def mechanisms_lines() -> list[str]:
    """The base VL's validation accuracy beside its blind baseline, Stage A's validation numbers and test accuracy at
    each fixed budget (when the run's files are here)."""
    lines = []
    base_vl = METRICS / "base_vl.json"
    if base_vl.is_file() and json.loads(base_vl.read_text()).get("trained_here"):
        values = json.loads(base_vl.read_text())
        lines += ["", "| base VL (validation, VL-only questions) | value |", "| --- | --- |",
                  f"| accuracy | {_fmt(values.get('val_acc'))} |",
                  f"| accuracy with every image blanked (blind baseline) | {_fmt(values.get('val_acc_blind'))} |"]
    stage_a = METRICS / "stage_a.json"
    if stage_a.is_file():
        values = json.loads(stage_a.read_text())
        lines += ["", "| Stage A (validation, best checkpoint) | value |", "| --- | --- |"]
        lines += [f"| {label} | {_fmt(values.get(key))} |" for key, label in STAGE_A_ROWS]
    details = EVAL / "details.json"
    if details.is_file():
        curve = json.loads(details.read_text()).get("accuracy_vs_budget", {})
        budgets = sorted({int(b) for rows in curve.values() for b in rows})
        if budgets:
            lines += ["", "| test accuracy at a fixed budget | " + " | ".join(str(b) for b in budgets) + " |",
                      "| --- |" + " --- |" * len(budgets)]
            for kind, label in (("audio", "audio-dependent questions"), ("vl", "VL-only questions")):
                if kind in curve:
                    lines.append(f"| {label} | " + " | ".join(_fmt(curve[kind].get(str(b))) for b in budgets) + " |")
    return lines


def seeds_section() -> list[str]:
    if not SEEDS.is_file():
        return ["## Across seeds", "", "`benchmarks/bench_seeds.py` has not been run in this checkout."]
    newest: dict[str, dict] = {}
    for line in SEEDS.read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            newest[record["profile"]] = record
    lines = ["## Across seeds (`benchmarks/bench_seeds.py`: Stage A → promote retrained per seed)"]
    for profile, record in sorted(newest.items()):
        runs = record["runs"]
        passed = sum(r["decision"] == "champion" for r in runs)
        lines += ["", f"{profile} profile, commit {record['commit']}, {record['machine']}, {record['date']}: "
                      f"**{passed} of {len(runs)} seeds promoted**.", "",
                  "| seed | retention drop (bound) | audio gain (bound) | skip rate | irrelevant flips (bound) | "
                  "forced-on flips (bound) | decision |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in runs:
            m = r["metrics"]
            lines.append(f"| {r['seed']} | {_fmt(m['retention_drop'])} ({_fmt(m.get('retention_drop_upper'))}) | "
                         f"{_fmt(m['audio_gain'])} ({_fmt(m.get('audio_gain_lower'))}) | {_fmt(m['skip_rate'])} | "
                         f"{_fmt(m['irrelevant_flip_rate'])} ({_fmt(m.get('irrelevant_flip_rate_upper'))}) | "
                         f"{_fmt(m.get('forced_flip_rate'))} ({_fmt(m.get('forced_flip_rate_upper'))}) | "
                         f"{r['decision']} |")
    return lines


def main() -> None:
    profile = config().profile
    text = "\n".join(["# SAFE results", "", "Generated by `python -m pipelines.results` from the run's files; do not "
                      "edit by hand.", "", *run_section(profile), "", *seeds_section(), ""])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(OUT, text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
