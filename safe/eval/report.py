"""report.md, MODEL_CARD.md and the terminal criteria table, rendered from metrics / criteria / details.

Inputs are the dicts of `compute_metrics`, `evaluate_criteria` and `compute_details`, either fresh or read back
from JSON (budget keys then are strings; both work). Rendering returns text; callers write it with
`write_text_atomic` (re-exported here from `safe.io`, the shared atomic writer).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from safe.eval.criteria import FAIL, NOT_COMPUTED, all_passed, criterion_status, failed_criteria
from safe.io import write_text_atomic

__all__ = ["criteria_table_text", "render_model_card", "render_report", "write_text_atomic"]

_BOUND = {"retention_drop": "≤", "irrelevant_flip_rate": "≤", "audio_gain": "≥", "forced_flip_rate": "≤"}
_BOUND_ASCII = {"≤": "<=", "≥": ">="}
_CRITERION_LABEL = {
    "retention_drop": "VL retention drop (base - SAFE, VL-only questions)",
    "audio_gain": "audio gain (SAFE - base, audio-dependent questions)",
    "skip_rate": "skip rate (gate chose budget 0, questions that carry a clip)",
    "irrelevant_flip_rate": "answers flipped by irrelevant audio (VL-only with a clip)",
    "forced_flip_rate": "VL-only answers flipped with the budget forced on and a wrong clip (worst of three)",
}
_PROBE_LABEL = {
    "distractor": "distractor clip (adapter forced on)",
    "silent": "silent clip (adapter forced on)",
    "swapped": "another example's clip (adapter forced on)",
    "deployed_irrelevant": "deployed gate, VL-only questions with a clip",
}


# -- formatting -------------------------------------------------------------------------------------------------------

def _nan(x: Any) -> bool:
    """None or NaN (numpy scalars included)."""
    if x is None:
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return False


def _pct(x: Any, digits: int = 1) -> str:
    """0.1234 -> '12.3%'; 'n/a' for NaN / None."""
    return "n/a" if _nan(x) else f"{100 * float(x):.{digits}f}%"


def _pp(x: Any) -> str:
    """A difference of two fractions in percentage points: 0.012 -> '+1.20 pp'."""
    return "n/a" if _nan(x) else f"{100 * float(x):+.2f} pp"


def _num(x: Any, fmt: str = ".1f") -> str:
    return "n/a" if _nan(x) else format(float(x), fmt)


def _threshold(name: str, threshold: Any, ascii_only: bool = False) -> str:
    if isinstance(threshold, (list, tuple)):
        return f"in [{_pct(threshold[0], 2)}, {_pct(threshold[1], 2)}]"
    bound = _BOUND.get(name, "")
    bound = _BOUND_ASCII.get(bound, bound) if ascii_only else bound
    return f"{bound} {_pct(threshold, 2)}".strip()


def _verdict(passed: Any) -> str:
    return "PASS" if passed is True else "FAIL"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ci(entry: Mapping[str, Any]) -> str:
    return f"{_pp(entry['value'])} [{_pp(entry['ci_low'])}, {_pp(entry['ci_high'])}]"


def _budgets(curve: Mapping[Any, Any]) -> list[tuple[int, Any]]:
    return sorted((int(b), acc) for b, acc in curve.items())


# -- sections ---------------------------------------------------------------------------------------------------------

def _overall_line(criteria: Mapping[str, Mapping[str, Any]]) -> str:
    if all_passed(criteria):
        return f"**Overall: PASS** — all {len(criteria)} success criteria are met."
    return f"**Overall: FAIL** — not met: {', '.join(failed_criteria(criteria)) or 'no criteria evaluated'}."


def criteria_markdown(criteria: Mapping[str, Mapping[str, Any]]) -> str:
    """The success-criteria table: criterion, what it measures, value, 95% bound, n, threshold, PASS/FAIL. The gate
    reads the bound where there is one (`safe.eval.criteria`)."""
    rows = [[f"`{name}`", _CRITERION_LABEL.get(name, name), _pct(c["value"], 2), _pct(c.get("bound"), 2),
             "n/a" if c.get("n") is None else str(c["n"]), _threshold(name, c["threshold"]),
             f"**{_verdict(c['passed'])}**"] for name, c in criteria.items()]
    return _table(["criterion", "measures", "value", "95% bound", "n", "threshold", "result"], rows)


def _headline(metrics: Mapping[str, Any], details: Mapping[str, Any]) -> str:
    alpha = details.get("bootstrap", {}).get("alpha", 0.05)
    level = f"{100 * (1 - alpha):.0f}%"
    ret, gain = details["retention"], details["audio_gain"]
    acc = _table(
        ["questions", "n", "base VL", "SAFE", f"difference, {level} CI (paired bootstrap)"],
        [["VL-only", str(details["n_vl"]), _pct(metrics["vl_acc_base"]), _pct(metrics["vl_acc_safe"]),
          f"retention drop (base - SAFE) {_ci(ret)}"],
         ["audio-dependent", str(details["n_audio"]), _pct(metrics["audio_acc_base"]), _pct(metrics["audio_acc_safe"]),
          f"audio gain (SAFE - base) {_ci(gain)}"]])
    cost = _table(
        ["skip rate (with a clip)", "skip rate (all)", "audio-dependent skipped", "oracle gap", "mean audio tokens"],
        [[_pct(metrics["skip_rate"]), _pct(metrics.get("skip_rate_all")), _pct(metrics.get("audio_needed_skip_rate")),
          _pp(metrics.get("oracle_gap")), _num(metrics["mean_audio_tokens"], ".2f")]])

    def ms(key: str) -> str:
        return f"{_num(metrics.get(key))} ms"

    latency = _table(
        ["path", "median", "mean", "p90"],
        [[label, ms(f"latency_ms_{path}"), ms(f"latency_ms_{path}_mean"), ms(f"latency_ms_{path}_p90")]
         for label, path in (("gate policy", "policy"), ("always audio", "always_audio"), ("base VL", "base"))])
    return (f"{acc}\n\n{cost}\n\n{latency}\n\nTest examples: {metrics['n_test']}. Latencies per example, one "
            f"example at a time from raw media ({metrics.get('n_latency', 'n/a')} examples).")


def _per_family(details: Mapping[str, Any]) -> str:
    rows = []
    for family, f in details["per_family"].items():
        share = f["needs_audio_share"]
        needs = "n/a" if _nan(share) else "yes" if share == 1 else "no" if share == 0 else f"{_pct(share)} of rows"
        rows.append([f"`{family}`", str(f["n"]), needs, _pct(f["acc_base"]), _pct(f["acc_safe"]), _pp(f["delta"]),
                     _pct(f["skip_rate"]), _num(f["mean_audio_tokens"], ".2f")])
    return _table(["family", "n", "needs audio", "base VL", "SAFE", "SAFE - base", "skip rate", "mean tokens"], rows)


def _robustness(details: Mapping[str, Any]) -> str:
    rows = [[_PROBE_LABEL.get(name, name), str(r["n"]), _pct(r["flip_rate"]), _pct(r["acc_base"]),
             _pct(r["acc_probe"])] for name, r in details["robustness"].items()]
    table = _table(["audio given to VL-only questions", "n", "answers flipped vs base", "base acc", "acc with it"],
                   rows)
    return ("VL-only questions should not change their answer when audio they do not need is present. The probes "
            "force the adapter on at the largest budget; the last row is what the deployed gate actually did.\n\n"
            + table)


def _accuracy_vs_budget(details: Mapping[str, Any]) -> str:
    curves = details.get("accuracy_vs_budget") or {}
    if not curves:
        return "_No fixed-budget answers in the prediction table._"
    subsets = [k for k in ("all", "vl", "audio") if k in curves]
    names = {"all": "all", "vl": "VL-only", "audio": "audio-dependent"}
    rows = [[str(b)] + [_pct(dict(_budgets(curves[s]))[b]) for s in subsets] for b, _ in _budgets(curves[subsets[0]])]
    base = details.get("base_accuracy", {})
    rows.append(["base VL"] + [_pct(base.get(s)) for s in subsets])
    safe = details.get("safe_accuracy", {})
    tokens = details.get("deployed", {}).get("mean_audio_tokens")
    rows.append([f"deployed gate ({_num(tokens, '.2f')} tokens avg)"] + [_pct(safe.get(s)) for s in subsets])
    return _table(["audio tokens"] + [names[s] for s in subsets], rows)


def _oracle(details: Mapping[str, Any]) -> str:
    o = details.get("oracle") or {}
    if not o:
        return "_No fixed-budget answers in the prediction table._"
    return ("Per example, the oracle picks the budget with the best score (the cheapest on ties).\n\n"
            + _table(["", "accuracy", "mean audio tokens", "skip rate"],
                     [["oracle", _pct(o["oracle_acc"]), _num(o["oracle_mean_tokens"], ".2f"),
                       _pct(o["oracle_skip_rate"])],
                      ["deployed gate", _pct(o["deployed_acc"]), _num(o["deployed_mean_tokens"], ".2f"),
                       _pct(details.get("deployed", {}).get("skip_rate"))]])
            + f"\n\nOracle gap (oracle - deployed accuracy): **{_pp(o['gap'])}**.")


def _threshold_curve(details: Mapping[str, Any]) -> str:
    curve = details.get("audio_threshold_curve") or []
    if not curve:
        return "_The prediction table has no gate probabilities._"
    return ("The gate consults audio when its P(audio) reaches a threshold (`stage_c.audio_threshold`, saved with "
            "the gate; `safe infer --audio-threshold` overrides it without retraining). What each threshold would "
            "give on this split:\n\n"
            + _table(["threshold", "skip rate (with a clip)", "accuracy", "VL-only", "audio-dependent",
                      "mean audio tokens"],
                     [[_num(r["threshold"], ".1f"), _pct(r["skip_rate"]), _pct(r["acc_all"]), _pct(r["acc_vl"]),
                       _pct(r["acc_audio"]), _num(r["mean_audio_tokens"], ".2f")] for r in curve]))


def _evaluation_sections(metrics: Mapping[str, Any], criteria: Mapping[str, Any], details: Mapping[str, Any],
                         level: int) -> list[str]:
    h = "#" * level
    return [
        f"{h} Success criteria\n\n{_overall_line(criteria)}\n\n{criteria_markdown(criteria)}",
        f"{h} Headline numbers\n\n{_headline(metrics, details)}",
        f"{h} Accuracy per family\n\n{_per_family(details)}",
        f"{h} Robustness to irrelevant audio\n\n{_robustness(details)}",
        f"{h} Accuracy vs audio budget\n\n{_accuracy_vs_budget(details)}",
        f"{h} Oracle gap\n\n{_oracle(details)}",
        f"{h} The gate's threshold\n\n{_threshold_curve(details)}",
    ]


def _params_text(trainable: Any, total: Any, fraction: Any) -> str:
    if trainable is None:
        return "n/a"
    if total is None:
        return f"{int(trainable):,}"
    return f"{int(trainable):,} of {int(total):,} ({_pct(fraction)})"


# -- documents --------------------------------------------------------------------------------------------------------

def render_report(metrics: Mapping[str, Any], criteria: Mapping[str, Mapping[str, Any]],
                  details: Mapping[str, Any]) -> str:
    """report.md: the four success criteria first, then headline numbers with CIs, per-family accuracy,
    robustness probes, accuracy vs budget and the oracle gap."""
    parts = ["# SAFE evaluation report (test split)", *_evaluation_sections(metrics, criteria, details, level=2)]
    return "\n\n".join(parts) + "\n"


def render_model_card(metrics: Mapping[str, Any], criteria: Mapping[str, Mapping[str, Any]],
                      details: Mapping[str, Any], run_info: Mapping[str, Any]) -> str:
    """MODEL_CARD.md. run_info keys used when present: profile, base_vl, audio_encoder, token_budgets,
    trainable_params, total_params, trainable_fraction, model_name, version, git_commit, training_data;
    any other key is listed under "Run information"."""
    info = dict(run_info)
    name = info.pop("model_name", "safe-audio-vl")
    trainable, total = info.pop("trainable_params", None), info.pop("total_params", None)
    fraction = info.pop("trainable_fraction", None)
    budgets = info.pop("token_budgets", None)
    details_rows = [
        ["base VL model (frozen)", str(info.pop("base_vl", "n/a"))],
        ["audio encoder (frozen)", str(info.pop("audio_encoder", "n/a"))],
        ["trainable parts", "audio projector (2-layer MLP -> k audio tokens), LoRA cross-attention fusion adapters, "
                            "budget policy distilled into a deployment gate"],
        ["trainable parameters", _params_text(trainable, total, fraction)],
        ["audio token budgets", "n/a" if budgets is None else ", ".join(str(b) for b in budgets)],
        ["profile", str(info.pop("profile", "n/a"))],
    ]
    for key in ("version", "git_commit"):
        if key in info:
            details_rows.append([key.replace("_", " "), str(info.pop(key))])
    training_data = info.pop("training_data", None) or (
        "The synthetic SAFE benchmark generated by the `prepare_data` stage (train / val / test splits from one seed): "
        "rendered shape images and generated audio clips in six families — `vl` (image question, no audio), "
        "`vl_distractor` (image question with an unrelated clip attached), `audio` (answer only in the audio), "
        "`audio_order` (which of two sounds came first), `audio_visual` (needs both) and `silent_control` "
        "(audio question with a silent clip). Real datasets "
        "(VQAv2, GQA, AudioCaps, Clotho, AVQA, ...) enter through `safe ingest` into the same manifest format.")
    parts = [
        f"# Model card: {name}",
        "SAFE adds audio to a frozen LLaVA-style vision-language model without hurting its VL answers, and "
        "learns when audio is worth consulting.",
        "## Model details\n\n" + _table(["", ""], details_rows),
        "## Intended use\n\n"
        "- Research on adding a modality to a frozen VL model: answering questions about an image and an optional "
        "audio clip, with a gate that skips audio processing when the question does not need it.\n"
        "- Not intended for decisions about people, safety-critical use, or speech transcription; answers are "
        "short VQA-style phrases.",
        f"## Training data\n\n{training_data}",
        "## Training procedure\n\n"
        "1. Stage A: the projector and fusion adapters learn audio questions while a KL term to the frozen base "
        "model and a Fisher (EWC) penalty hold VL-only answers; a retention check on validation rolls back any "
        "checkpoint that loses more than the tolerance.\n"
        "2. Stage B: a contextual-bandit policy picks a token budget per question, reward = score - "
        "alpha*latency cost - gamma*irrelevance, under a Lagrangian VL-retention constraint.\n"
        "3. Stage C: the policy is distilled into the small deployment gate run before any audio is encoded.",
        "## Evaluation (test split)",
        *_evaluation_sections(metrics, criteria, details, level=3),
        "## Limitations\n\n"
        "- Offline profiles evaluate on a small synthetic benchmark; its numbers say little about real audio-visual "
        "questions. Use the `llava` profile and real datasets before drawing conclusions.\n"
        "- The base VL model and the audio encoder in offline profiles are small; absolute accuracies are low and "
        "differences between budgets can be within noise (see the confidence intervals).\n"
        "- Robustness is probed with distractor, silent and swapped clips only; other shifts (noise, overlapping "
        "speakers, long clips) are untested.\n"
        "- Latencies are CPU medians on the machine that ran the evaluation and do not transfer to other hardware.",
        "## How to reproduce\n\n"
        "```bash\n"
        "make demo                          # venv + `dvc repro` of the whole DAG on the profile in params.yaml\n"
        "dvc repro                          # rerun only stages whose code, params or data changed\n"
        "python -m pipelines.flows run      # the same DAG as a Prefect flow, tracked in MLflow\n"
        "```\n\n"
        "Run parameters (profile, sizes, thresholds) live in `params.yaml`; metrics in `data/eval/metrics.json`.",
    ]
    if info:
        parts.append("## Run information\n\n" + _table(["key", "value"], [[f"`{k}`", str(v)] for k, v in info.items()]))
    return "\n\n".join(parts) + "\n"


def criteria_table_text(criteria: Mapping[str, Mapping[str, Any]], counts: Mapping[str, int] | None = None) -> str:
    """Plain-text criteria table for the terminal, ending with the overall verdict.

    A criterion whose value is NaN/None shows NOT COMPUTED (its own state, not FAIL); `counts` adds the number of
    examples behind each value ({criterion: n})."""
    header = ("criterion", "value", "threshold", "result")
    rows = []
    for name, c in criteria.items():
        status = criterion_status(c)
        value = _pct(c["value"], 2) + (f" (n={counts[name]})" if counts is not None and name in counts else "")
        rows.append((name, value, _threshold(name, c["threshold"], ascii_only=True),
                     "NOT COMPUTED" if status == NOT_COMPUTED else _verdict(c["passed"])))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    fmt = lambda r: "  ".join(cell.ljust(w) if i != 1 else cell.rjust(w)  # noqa: E731
                              for i, (cell, w) in enumerate(zip(r, widths))).rstrip()
    lines = [fmt(header), fmt(tuple("-" * w for w in widths)), *map(fmt, rows)]
    passed = sum(c.get("passed") is True for c in criteria.values())
    missing = [name for name, c in criteria.items() if criterion_status(c) == NOT_COMPUTED]
    failed = [name for name, c in criteria.items() if criterion_status(c) == FAIL]
    if missing and not failed:
        lines.append(f"overall: INCOMPLETE ({passed}/{len(criteria)} criteria met; not computed: {', '.join(missing)})")
    else:
        lines.append(f"overall: {'PASS' if all_passed(criteria) else 'FAIL'} ({passed}/{len(criteria)} criteria met)")
    return "\n".join(lines)