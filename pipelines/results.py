"""Write docs/results.md from the files a run and the seeds benchmark wrote: no number in it is typed by hand.

    python -m pipelines.results            # after `make demo` (and optionally benchmarks/bench_seeds.py)

    python -m pipelines.results --archive  # also keep this run's files in docs/runs/<profile>/ (commit them)

Reads data/eval/metrics.json, data/eval/promotion.json, data/metrics/*.json (this checkout's last run),
docs/runs/<profile>/ (the archived last run of each other profile, for the side-by-side table) and
benchmarks/results_seeds.jsonl (every seeds benchmark run, newest per profile shown). Stamps the commit, the
machine and the date of the run it reports; `make results` runs it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from pipelines.common import EVAL, METRICS, config
from safe.io import write_text_atomic
from safe.provenance import machine, short_commit

OUT = Path("docs/results.md")
RUNS = Path("docs/runs")
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


def _at_budgets(curve: dict[str, float] | None, missing: str) -> str:
    """"a / b / c": audio-dependent accuracy at budgets 4, 8 and 12 from a budget -> accuracy curve; `missing`
    when the run did not record one."""
    return " / ".join(_fmt(curve.get(str(b))) for b in (4, 8, 12)) if curve else missing


def _commit() -> str:
    commit = short_commit()
    # The run's own outputs (data/, dvc.lock, this file) are not code changes.
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!data", ":!dvc.lock",
                            ":!docs/results.md", ":!docs/runs"], capture_output=True, text=True)
    changed = sorted(line[3:] for line in dirty.stdout.splitlines() if line.strip())
    if not changed:
        return commit
    # A few edited files are named (switching profiles edits params.yaml); more are summarised.
    note = f"uncommitted: {', '.join(changed)}" if len(changed) <= 3 else "with uncommitted changes"
    return f"{commit} ({note})"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def this_run() -> dict:
    """This checkout's last run, as the files `--archive` keeps (metrics, promotion, stage metrics, budget curve)."""
    details = _read_json(EVAL / "details.json")
    return {"metrics": _read_json(EVAL / "metrics.json"), "promotion": _read_json(EVAL / "promotion.json"),
            "base_vl": _read_json(METRICS / "base_vl.json"), "stage_a": _read_json(METRICS / "stage_a.json"),
            "accuracy_vs_budget": details.get("accuracy_vs_budget", {}),
            "run": {"commit": _commit(), "machine": machine(),
                    "evaluated": time.strftime("%Y-%m-%d %H:%M UTC",
                                               time.gmtime((EVAL / "metrics.json").stat().st_mtime))}}


def archive(profile: str, run: dict) -> Path:
    """Keep `run`'s files in docs/runs/<profile>/ (one json per part, each written atomically)."""
    folder = RUNS / profile
    folder.mkdir(parents=True, exist_ok=True)
    for part, value in run.items():
        write_text_atomic(folder / f"{part}.json", json.dumps(value, indent=2, sort_keys=True) + "\n")
    return folder


def archived_runs() -> dict[str, dict]:
    """profile -> the run archived in docs/runs/<profile>/."""
    if not RUNS.is_dir():
        return {}
    return {d.name: {p.stem: _read_json(p) for p in sorted(d.glob("*.json"))}
            for d in sorted(RUNS.iterdir()) if (d / "metrics.json").is_file()}


def side_by_side(runs: dict[str, dict]) -> list[str]:
    """One column per profile: the decision, the base VL and its blind baseline, each criterion with its bound."""
    if len(runs) < 2:
        return []
    names = sorted(runs)

    def row(label, cell) -> str:
        return f"| {label} | " + " | ".join(cell(runs[n]) for n in names) + " |"

    def bounded(key, bound):
        return lambda r: f"{_fmt(r['metrics'].get(key))} ({_fmt(r['metrics'].get(bound))})"

    lines = ["## Profiles side by side (each profile's last archived run; value and 95% bound)", "",
             "| measure | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names),
             row("decision", lambda r: f"**{r['promotion'].get('decision', 'n/a')}**"),
             row("run", lambda r: f"{r['run'].get('commit', '?')}, {r['run'].get('evaluated', '?')}"),
             row("test examples", lambda r: str(r["metrics"].get("n_test", "n/a"))),
             row("base VL validation accuracy (blind baseline)",
                 lambda r: f"{_fmt(r['base_vl'].get('val_acc'))} ({_fmt(r['base_vl'].get('val_acc_blind'))})"
                 if r.get("base_vl", {}).get("trained_here") else "checkpoint"),
             row(CRITERIA_LABELS["retention_drop"], bounded("retention_drop", "retention_drop_upper")),
             row(CRITERIA_LABELS["audio_gain"], bounded("audio_gain", "audio_gain_lower")),
             row(CRITERIA_LABELS["skip_rate"], lambda r: _fmt(r["metrics"].get("skip_rate"))),
             row(CRITERIA_LABELS["irrelevant_flip_rate"], bounded("irrelevant_flip_rate", "irrelevant_flip_rate_upper")),
             row(CRITERIA_LABELS["forced_flip_rate"], bounded("forced_flip_rate", "forced_flip_rate_upper")),
             row("test audio-dependent accuracy at budgets 4 / 8 / 12",
                 lambda r: _at_budgets(r.get("accuracy_vs_budget", {}).get("audio"), "n/a"))]
    return lines


def run_section(profile: str, run: dict) -> list[str]:
    """This checkout's last run (`this_run()`): the criteria with their bounds, other measures, latency, mechanisms."""
    metrics, promotion, stamp = run["metrics"], run["promotion"], run["run"]
    lines = [f"## Last `dvc repro` of this checkout ({profile} profile)", "",
             f"Commit {stamp['commit']}, machine {stamp['machine']}, "
             f"evaluated {stamp['evaluated']}; {metrics['n_test']} test examples. Decision: **{promotion['decision']}** "
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
    lines += mechanisms_lines(run)
    stage_files = sorted(METRICS.glob("*.json"))
    if stage_files:
        lines += ["", "Stage metrics of that run: " + ", ".join(f"`{p.as_posix()}`" for p in stage_files) + "."]
    return lines


def mechanisms_lines(run: dict) -> list[str]:
    """The base VL's validation accuracy beside its blind baseline, Stage A's validation numbers and test accuracy at
    each fixed budget (when the run wrote them)."""
    lines = []
    base_vl, stage_a, curve = run["base_vl"], run["stage_a"], run["accuracy_vs_budget"]
    if base_vl.get("trained_here"):
        lines += ["", "| base VL (validation, VL-only questions) | value |", "| --- | --- |",
                  f"| accuracy | {_fmt(base_vl.get('val_acc'))} |",
                  f"| accuracy with every image blanked (blind baseline) | {_fmt(base_vl.get('val_acc_blind'))} |"]
    if stage_a:
        lines += ["", "| Stage A (validation, best checkpoint) | value |", "| --- | --- |"]
        lines += [f"| {label} | {_fmt(stage_a.get(key))} |" for key, label in STAGE_A_ROWS]
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
                  "forced-on flips (bound) | audio-dependent at budgets 4 / 8 / 12 | decision |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in runs:
            m = r["metrics"]
            budgets = _at_budgets(r.get("audio_acc_by_budget"), "—")  # recorded since bench_seeds reads details.json
            lines.append(f"| {r['seed']} | {_fmt(m['retention_drop'])} ({_fmt(m.get('retention_drop_upper'))}) | "
                         f"{_fmt(m['audio_gain'])} ({_fmt(m.get('audio_gain_lower'))}) | {_fmt(m['skip_rate'])} | "
                         f"{_fmt(m['irrelevant_flip_rate'])} ({_fmt(m.get('irrelevant_flip_rate_upper'))}) | "
                         f"{_fmt(m.get('forced_flip_rate'))} ({_fmt(m.get('forced_flip_rate_upper'))}) | "
                         f"{budgets} | {r['decision']} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", action="store_true",
                        help="also keep this run's files in docs/runs/<profile>/ for the side-by-side table")
    args = parser.parse_args(argv)
    profile, run = config().profile, this_run()
    if args.archive:
        print(f"archived this run in {archive(profile, run)}")
    text = "\n".join(["# SAFE results", "", "Generated by `python -m pipelines.results` from the run's files; do not "
                      "edit by hand.", "", *run_section(profile, run), "", *side_by_side(archived_runs()), "",
                      *seeds_section(), ""])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(OUT, text)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
