"""PNG plots of the evaluation and of training progress. Each `plot_x(data, path) -> Path` writes atomically.

Figures are built on matplotlib's object API with the Agg canvas (no pyplot global state, no display needed),
so plotting is safe inside DVC stages, Prefect tasks and tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from safe.eval.metrics import skip_rate, skip_rate_by_family
from safe.io import atomic_write

_SUBSETS = {"all": "all questions", "vl": "VL-only questions", "audio": "audio-dependent questions"}
_COLORS = {"all": "tab:blue", "vl": "tab:green", "audio": "tab:orange"}


def _new_figure(nrows: int = 1, height: float = 4.0) -> tuple[Figure, Any]:
    fig = Figure(figsize=(7.0, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=nrows > 1, squeeze=False)[:, 0]
    return fig, axes


def _decorate(ax: Any, title: str, ylabel: str, xlabel: str | None = None) -> None:
    ax.set_title(title, fontsize=10 if len(title) > 60 else None)
    ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _save(fig: Figure, path: str | Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110), suffix=".png")


def _rows(data: Sequence[Mapping[str, Any]], keys: Sequence[str], what: str) -> list[Mapping[str, Any]]:
    rows = list(data)
    if not rows:
        raise ValueError(f"{what}: no data points to plot")
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise ValueError(f"{what}: entry {i} lacks key(s) {missing}; has {sorted(row)}")
    return rows


def _budget_curve(curve: Mapping[Any, Any]) -> tuple[np.ndarray, np.ndarray]:
    """{budget: acc} (int or, after a JSON round trip, str keys) -> sorted (budgets, accs)."""
    pairs = sorted((int(b), float(a)) for b, a in curve.items())
    return np.array([b for b, _ in pairs]), np.array([a for _, a in pairs])


def plot_accuracy_vs_budget(data: Mapping[str, Any], path: str | Path, base_accuracy: float | None = None) -> Path:
    """Accuracy at each fixed audio-token budget, with the base VL model as a dashed reference.

    data: `compute_details(...)` output (curves for all / VL-only / audio-dependent questions, the base model's
    accuracies, and the deployed gate's operating point), or a plain {budget: accuracy} mapping with
    `base_accuracy` given separately.
    """
    if "accuracy_vs_budget" in data:
        curves = {k: v for k, v in data["accuracy_vs_budget"].items() if v}
        bases = data.get("base_accuracy", {})
        deployed = (data.get("deployed", {}).get("mean_audio_tokens"), data.get("safe_accuracy", {}).get("all"))
    else:
        curves, bases, deployed = {"all": data}, {"all": base_accuracy}, (None, None)
    if not curves:
        raise ValueError("accuracy vs budget: no budget curve to plot")
    fig, (ax,) = _new_figure()
    for name, curve in curves.items():
        budgets, accs = _budget_curve(curve)
        color = _COLORS.get(name, None)
        ax.plot(budgets, accs, marker="o", color=color, label=f"SAFE, {_SUBSETS.get(name, name)}")
        base = bases.get(name)
        if base is not None and np.isfinite(base):
            ax.axhline(base, linestyle="--", linewidth=1, color=color, label=f"base VL, {_SUBSETS.get(name, name)}")
        ax.set_xticks(budgets)
    tokens, acc = deployed
    if tokens is not None and acc is not None and np.isfinite(tokens) and np.isfinite(acc):
        ax.scatter([tokens], [acc], marker="*", s=180, color="black", zorder=3,
                   label=f"deployed gate ({tokens:.1f} tokens avg)")
    _decorate(ax, "Accuracy vs audio token budget (test split)", "accuracy", "audio tokens (fixed budget)")
    ax.set_ylim(-0.02, 1.02)
    return _save(fig, path)


def plot_skip_rate_per_family(data: pd.DataFrame | Mapping[str, float], path: str | Path) -> Path:
    """Bar chart: share of examples per family where the deployed gate skipped audio (budget 0).

    data: the prediction table (columns family, budget, and needs_audio to colour the bars), or {family: rate}.
    The dotted line is the overall skip rate (the table only).
    """
    overall, needs = None, {}
    if isinstance(data, pd.DataFrame):
        rates = skip_rate_by_family(data)
        overall = skip_rate(data["budget"].astype(int))
        if "needs_audio" in data.columns:
            needs = data.groupby(data["family"].astype(str))["needs_audio"].mean().astype(float).to_dict()
    else:
        rates = {str(k): float(v) for k, v in data.items()}
    if not rates:
        raise ValueError("skip rate per family: no families to plot")
    fig, (ax,) = _new_figure()
    families = list(rates)
    colors = ["tab:orange" if needs.get(f, 0.0) >= 0.5 else "tab:green" for f in families] if needs else "tab:blue"
    bars = ax.bar(families, [rates[f] for f in families], color=colors)
    ax.bar_label(bars, labels=[f"{rates[f]:.0%}" for f in families], fontsize=8)
    handles = []
    if overall is not None:
        handles.append(ax.axhline(overall, linestyle=":", color="black", label=f"all families ({overall:.0%})"))
    if needs:
        handles += [Patch(color="tab:green", label="VL-only family"),
                    Patch(color="tab:orange", label="audio-dependent family")]
    if handles:
        ax.legend(handles=handles, fontsize=8, loc="upper center", ncols=len(handles))
    ax.set_title("Audio skipped by the deployed gate, per family (test split)")
    ax.set_xlabel("family")
    ax.set_ylabel("skip rate (budget 0)")
    ax.set_ylim(0, 1.25)  # headroom for the bar labels and the legend
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, path)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average; the first points average what exists so far. # (n,)"""
    if window <= 1:
        return values
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def plot_stage_b_rewards(history: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Stage B reward terms per step (raw and moving average) and the Lagrange multiplier of the retention constraint.

    history: dicts with keys step, reward, score, latency_cost, irrelevance, lagrange (extra keys are ignored).
    """
    terms = ("reward", "score", "latency_cost", "irrelevance")
    rows = _rows(history, ("step", *terms, "lagrange"), "stage B history")
    steps = np.array([float(r["step"]) for r in rows])
    window = max(1, len(rows) // 50)
    fig, (top, bottom) = _new_figure(2, height=3.2)
    for term in terms:
        values = np.array([float(r[term]) for r in rows])
        line, = top.plot(steps, _smooth(values, window), label=term if window == 1 else f"{term} (avg {window})")
        if window > 1:
            top.plot(steps, values, color=line.get_color(), alpha=0.2, linewidth=0.8)
    _decorate(top, "Stage B reward terms (reward = score - alpha*latency - gamma*irrelevance)",
              "mean per training batch")
    bottom.plot(steps, [float(r["lagrange"]) for r in rows], color="tab:red", label="Lagrange multiplier")
    _decorate(bottom, "Retention constraint multiplier", "lambda", "step")
    return _save(fig, path)


def plot_stage_a_retention(evals: Sequence[Mapping[str, Any]], path: str | Path, tolerance: float = 0.005) -> Path:
    """Stage A validation checks: VL accuracy of SAFE (and of the base model when logged) and the retention drop
    against its tolerance; rollbacks (entries with rollback=1) are marked.

    evals: dicts with keys step, retention_drop and vl_acc (or vl_acc_safe, as Stage A's history logs it);
    optional vl_acc_base, rollback.
    """
    rows = _rows(evals, ("step", "retention_drop"), "stage A evaluations")
    for i, r in enumerate(rows):
        if "vl_acc" not in r and "vl_acc_safe" not in r:
            raise ValueError(f"stage A evaluations: entry {i} lacks 'vl_acc' (or 'vl_acc_safe'); has {sorted(r)}")
    steps = np.array([float(r["step"]) for r in rows])
    acc = [float(r.get("vl_acc", r.get("vl_acc_safe"))) for r in rows]
    drop = np.array([float(r["retention_drop"]) for r in rows])
    fig, (top, bottom) = _new_figure(2, height=3.2)
    top.plot(steps, acc, marker="o", label="SAFE (adapter on)")
    if all("vl_acc_base" in r for r in rows):
        top.plot(steps, [float(r["vl_acc_base"]) for r in rows], linestyle="--", color="gray", label="base VL")
    _decorate(top, "Stage A: VL accuracy on validation VL-only questions", "accuracy")
    bottom.plot(steps, drop, marker="o", color="tab:purple", label="retention drop (base - SAFE)")
    bottom.axhline(tolerance, linestyle="--", color="tab:red", label=f"tolerance ({tolerance:g})")
    rolled = np.array([bool(r.get("rollback")) for r in rows])
    if rolled.any():
        bottom.scatter(steps[rolled], drop[rolled], marker="x", s=70, color="tab:red", zorder=3,
                       label="rollback to best checkpoint")
    _decorate(bottom, "Retention drop vs tolerance", "accuracy drop", "step")
    return _save(fig, path)
