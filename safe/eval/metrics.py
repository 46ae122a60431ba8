"""Answer scoring and the evaluation metrics of a prediction table (pure functions over numpy/pandas).

Scoring follows the official VQA evaluation: answers are normalised (lowercase, punctuation and articles removed,
number words mapped to digits) before comparison, and a question with several human answers (VQAv2 has 10) is
scored with the leave-one-out soft accuracy. Every other question is scored by exact match after normalisation.

The prediction table (one row per test example, built by `safe.eval.evaluation.prediction_table`) has columns
`id, family, needs_audio, has_audio, answer, answers, pred_base, pred_safe, budget`, one `pred_b<k>` column per
fixed token budget k, the robustness probes `pred_distractor, pred_silent, pred_swapped` (None where not run), and
optionally the gate's `p_audio` and `audio_budget` (for `audio_threshold_curve`).
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

LATENCY_PATHS = ("policy", "always_audio", "base")
METRIC_KEYS = (
    "vl_acc_base", "vl_acc_safe", "retention_drop", "retention_drop_upper",
    "audio_acc_base", "audio_acc_safe", "audio_gain", "audio_gain_lower",
    "skip_rate", "skip_rate_all", "audio_needed_skip_rate", "skip_rate_by_family", "oracle_gap",
    "irrelevant_flip_rate", "irrelevant_flip_rate_upper",
    "forced_flip_rate_distractor", "forced_flip_rate_silent", "forced_flip_rate_swapped",
    "forced_flip_rate_distractor_upper", "forced_flip_rate_silent_upper", "forced_flip_rate_swapped_upper",
    "forced_flip_rate", "forced_flip_rate_upper",
    "mean_audio_tokens",
    *(f"latency_ms_{path}{stat}" for path in LATENCY_PATHS for stat in ("", "_mean", "_p90")),
    "n_test", "n_vl", "n_audio", "n_with_audio", "n_irrelevant", "n_latency",
)
"""The keys of metrics.json, in order (the contract in ARCHITECTURE.md). `latency_ms_<path>` is the median.
Every value is a number except `skip_rate_by_family`, a {family: share} mapping."""

CONFIDENCE = 0.95
"""One-sided confidence of the `_upper` / `_lower` bounds: the side a promotion gate must trust."""

REQUIRED_COLUMNS = ("id", "family", "needs_audio", "answer", "pred_base", "pred_safe", "budget")
PROBES = ("distractor", "silent", "swapped")
_BUDGET_COLUMN = re.compile(r"^pred_b(\d+)$")
_SCORE_TIE_TOL = 1e-12


class EvalInputError(ValueError):
    """A prediction table (or latency record) that the metrics cannot be computed from; names what is wrong."""


# -- answer normalisation and scoring ---------------------------------------------------------------------------------

# VQA maps number words 0-10 (and "none") to digits; we extend to twenty so counting answers compare either way.
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19",
    "twenty": "20",
}
_ARTICLES = frozenset({"a", "an", "the"})
_COMMA_IN_NUMBER = re.compile(r"(?<=\d),(?=\d)")  # "1,000" -> "1000"
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("3.5" keeps its point), as VQA's periodStrip
_PUNCT = re.compile(r"[^\w\s.]|_")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


@lru_cache(maxsize=1 << 16)
def _normalize(text: str) -> str:
    text = text.lower().replace("\n", " ").replace("\t", " ")
    text = _COMMA_IN_NUMBER.sub("", text)
    # VQA restores contractions from a fixed list ("dont" -> "don't"); dropping apostrophes makes both spellings equal.
    text = text.replace("'", "").replace("\u2019", "")
    text = _PUNCT.sub(" ", _PERIOD.sub("", text))
    words = (_NUMBER_WORDS.get(w, w) for w in text.split())
    return " ".join(w for w in words if w not in _ARTICLES)


def normalize_answer(answer: Any) -> str:
    """VQA-style normalisation: lowercase, punctuation and articles removed, number words -> digits.

    >>> normalize_answer("The Two dogs.")
    '2 dogs'

    None (or NaN, a missing cell in pandas) normalises to the empty string.
    """
    if _missing(answer):
        return ""
    return _normalize(str(answer))


def exact_match(pred: Any, answer: Any) -> float:
    """1.0 when the normalised prediction equals the normalised reference, else 0.0; a missing prediction scores 0."""
    if _missing(pred) or _missing(answer):
        return 0.0
    return float(normalize_answer(pred) == normalize_answer(answer))


def vqa_soft_accuracy(pred: Any, answers: Sequence[Any]) -> float:
    """Official VQA accuracy: min(1, #humans who gave `pred` / 3), averaged over the leave-one-out subsets.

    With n human answers of which m match, dropping a matching human leaves m-1 matches (m such subsets) and
    dropping any other leaves m (n-m subsets). Example: 3 of 10 match -> (7 * 1 + 3 * 2/3) / 10 = 0.9.
    """
    refs = _answer_list(answers)
    if not refs:
        raise ValueError("vqa_soft_accuracy needs at least one human answer")
    if _missing(pred):
        return 0.0
    p = normalize_answer(pred)
    n = len(refs)
    m = sum(normalize_answer(r) == p for r in refs)
    return (m * min(1.0, (m - 1) / 3) + (n - m) * min(1.0, m / 3)) / n


def score(pred: Any, answer: Any, answers: Sequence[Any] | None = None) -> float:
    """Soft VQA accuracy when `answers` holds at least 3 human answers, else exact match against `answer`."""
    refs = _answer_list(answers)
    if refs is not None and len(refs) >= 3:
        return vqa_soft_accuracy(pred, refs)
    return exact_match(pred, answer)


def _answer_list(answers: Any) -> list | None:
    """`answers` cell -> list or None. Accepts lists, tuples and numpy arrays (pandas may hold either)."""
    if answers is None or (isinstance(answers, float) and math.isnan(answers)):
        return None
    if isinstance(answers, (str, bytes)):
        raise TypeError(f"answers must be a list of strings, got a single string {answers!r}")
    return list(answers)


# -- the prediction table ---------------------------------------------------------------------------------------------

def budget_columns(df: pd.DataFrame) -> dict[int, str]:
    """{budget: column} for the fixed-budget answer columns `pred_b<k>`, sorted by budget."""
    found = {int(m.group(1)): c for c in df.columns if (m := _BUDGET_COLUMN.match(str(c)))}
    return dict(sorted(found.items()))


def validate_predictions(df: pd.DataFrame) -> None:
    """Raise EvalInputError naming the missing columns or the first offending row (by id)."""
    if not isinstance(df, pd.DataFrame):
        raise EvalInputError(f"predictions must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise EvalInputError(f"prediction table lacks column(s) {missing}; has {list(df.columns)}")
    if len(df) == 0:
        raise EvalInputError("prediction table is empty")
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise EvalInputError(f"prediction table has duplicate id(s) {sorted(map(str, dup.unique()))[:5]}")
    for rid, flag in zip(df["id"], df["needs_audio"]):
        if not isinstance(flag, (bool, np.bool_)) and flag not in (0, 1):
            raise EvalInputError(f"row id={rid!r}: needs_audio must be a bool, got {flag!r}")
    budgets = budget_columns(df)
    for rid, b in zip(df["id"], df["budget"]):
        numeric = isinstance(b, (int, float, np.integer, np.floating)) and not isinstance(b, (bool, np.bool_))
        if not numeric or _missing(b) or float(b) != int(b) or int(b) < 0:
            raise EvalInputError(f"row id={rid!r}: budget must be a non-negative integer, got {b!r}")
        if budgets and int(b) not in budgets:
            raise EvalInputError(f"row id={rid!r}: budget {int(b)} has no column pred_b{int(b)} "
                                 f"(budgets in the table: {list(budgets)})")


def scores(df: pd.DataFrame, pred_col: str) -> np.ndarray:
    """Per-row score of column `pred_col` against `answer` / `answers`. # (N,) float64"""
    if pred_col not in df.columns:
        raise EvalInputError(f"prediction table lacks column {pred_col!r}")
    answers = df["answers"] if "answers" in df.columns else [None] * len(df)
    return np.fromiter((score(p, a, h) for p, a, h in zip(df[pred_col], df["answer"], answers)),
                       dtype=np.float64, count=len(df))


def _mean(values: Any) -> float:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()) if values.size else float("nan")


def _mask(df: pd.DataFrame, column: str) -> np.ndarray:
    return df[column].to_numpy().astype(bool)  # (N,)


def accuracy_by_family(df: pd.DataFrame, pred_col: str) -> dict[str, float]:
    """{family: mean score of `pred_col`}, families sorted by name."""
    s = pd.Series(scores(df, pred_col), index=df.index)
    return {str(f): float(v) for f, v in s.groupby(df["family"].astype(str)).mean().sort_index().items()}


def skip_rate_by_family(df: pd.DataFrame, with_audio_only: bool = False) -> dict[str, float]:
    """{family: share of rows whose deployed budget is 0}, families sorted by name.

    with_audio_only: count only the rows that carry a clip (column `has_audio`), the rows where skipping is a
    decision; a family with no such row is left out (no NaN)."""
    rows = df
    if with_audio_only:
        if "has_audio" not in df.columns:
            raise EvalInputError("prediction table lacks column 'has_audio' (needed for the per-family skip rate)")
        rows = df[df["has_audio"].to_numpy().astype(bool)]
    skipped = (rows["budget"].astype(int) == 0).astype(float)
    return {str(f): float(v) for f, v in skipped.groupby(rows["family"].astype(str)).mean().sort_index().items()}


# -- statistics -------------------------------------------------------------------------------------------------------

def paired_bootstrap_ci(a: Any, b: Any, n_boot: int = 1000, alpha: float = 0.05,
                        seed: int = 0) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap interval of mean(a - b), resampling the PAIRS (same rows for a, b).

    Returns (point, lo, hi); all NaN for empty inputs. The pairing matters: the two systems answer the same
    questions, so per-question difficulty cancels in a - b and the interval is much tighter than unpaired.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs two 1-D arrays of equal length, got shapes {a.shape} and {b.shape}")
    if not 0 < alpha < 1 or n_boot < 1:
        raise ValueError(f"need 0 < alpha < 1 and n_boot >= 1, got alpha={alpha}, n_boot={n_boot}")
    diff = a - b  # (n,)
    if not np.isfinite(diff).all():
        raise ValueError("paired bootstrap inputs contain NaN or inf")
    n = diff.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)  # (n_boot,)
    chunk = max(1, 2_000_000 // n)  # bound the (chunk, n) index matrix to ~16 MB
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        means[start:start + k] = diff[rng.integers(0, n, size=(k, n))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(diff.mean()), float(lo), float(hi)


def _flip_counts(base_preds: Any, other_preds: Any) -> tuple[int, int]:
    base, other = list(base_preds), list(other_preds)
    if len(base) != len(other):
        raise ValueError(f"flip rate needs equal lengths, got {len(base)} and {len(other)}")
    pairs = [(p, q) for p, q in zip(base, other) if not _missing(p) and not _missing(q)]
    return sum(normalize_answer(p) != normalize_answer(q) for p, q in pairs), len(pairs)


def flip_rate(base_preds: Any, other_preds: Any) -> float:
    """Share of answers that change: normalised `other` != normalised `base` ("2" and "two" are the same answer).

    Pairs where either answer is missing (None/NaN: the probe was not run for that row) are left out;
    NaN when no pair is left.
    """
    flips, n = _flip_counts(base_preds, other_preds)
    return flips / n if n else float("nan")


def flip_rate_upper(flips: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided exact (Clopper-Pearson) upper bound of a flip rate seen as `flips` of `n`; NaN when n is 0.

    0 of 150 gives about 0.020 at 95%: a sample that small cannot show a rate below 1%.
    """
    if n == 0:
        return float("nan")
    from scipy.stats import binomtest

    return float(binomtest(int(flips), int(n), alternative="less").proportion_ci(confidence, method="exact").high)


def paired_mean_bound(a: Any, b: Any, side: str, confidence: float = CONFIDENCE, n_resamples: int = 2000,
                      seed: int = 0) -> float:
    """One-sided percentile-bootstrap bound of mean(a - b) over PAIRED rows: side "upper" or "lower"; NaN when empty.

    When every difference is equal (e.g. SAFE never changes a VL answer) the bound is that difference: resampling
    cannot move it, and scipy's degenerate-distribution warning says nothing new there.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if side not in ("upper", "lower"):
        raise ValueError(f"side must be 'upper' or 'lower', got {side!r}")
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired bound needs two 1-D arrays of equal length, got shapes {a.shape} and {b.shape}")
    diff = a - b  # (n,)
    if diff.size == 0:
        return float("nan")
    if np.all(diff == diff[0]):
        return float(diff[0])
    from scipy.stats import bootstrap

    result = bootstrap((diff,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method="percentile",
                       alternative="less" if side == "upper" else "greater", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return float(interval.high if side == "upper" else interval.low)


def skip_rate(budgets: Any) -> float:
    """Share of examples whose audio budget is 0 (audio not consulted); NaN when empty."""
    return _mean(np.asarray(budgets, dtype=np.float64) == 0)


def mean_audio_tokens(budgets: Any) -> float:
    """Mean number of audio tokens spent per example; NaN when empty."""
    return _mean(budgets)


def accuracy_vs_budget(df: pd.DataFrame, mask: Any = None) -> dict[int, float]:
    """{budget: mean score of pred_b<budget>} over all rows (or the rows where boolean `mask` is True)."""
    columns = budget_columns(df)
    if not columns:
        raise EvalInputError(f"prediction table has no pred_b<k> columns; has {list(df.columns)}")
    rows = df if mask is None else df[np.asarray(mask, dtype=bool)]
    return {b: _mean(scores(rows, c)) for b, c in columns.items()}


def oracle_gap(df: pd.DataFrame) -> dict[str, float]:
    """How far the deployed gate is from a per-example oracle that knows every budget's outcome.

    The oracle takes, per example, the budget with the best score (the cheapest one on ties, so it never spends
    tokens that do not help). gap = oracle accuracy - deployed accuracy (>= 0 whenever the deployed answer is one
    of the fixed-budget answers). Also reports both mean token spends and the oracle's skip rate.
    """
    columns = budget_columns(df)
    if not columns:
        raise EvalInputError(f"prediction table has no pred_b<k> columns; has {list(df.columns)}")
    budgets = np.array(list(columns), dtype=np.int64)  # (A,) ascending
    table = np.stack([scores(df, c) for c in columns.values()], axis=1)  # (N, A)
    best = table.max(axis=1)  # (N,)
    chosen = budgets[np.argmax(table >= best[:, None] - _SCORE_TIE_TOL, axis=1)]  # (N,) first = cheapest
    deployed = scores(df, "pred_safe")
    return {
        "oracle_acc": _mean(best), "deployed_acc": _mean(deployed), "gap": _mean(best) - _mean(deployed),
        "oracle_mean_tokens": mean_audio_tokens(chosen), "deployed_mean_tokens": mean_audio_tokens(df["budget"]),
        "oracle_skip_rate": skip_rate(chosen), "n": int(len(df)),
    }


# -- metrics.json and details.json ------------------------------------------------------------------------------------

def _latency(latency: Mapping[str, Any], name: str) -> dict[str, float]:
    """{"": median, "_mean": mean, "_p90": 90th percentile} of the timings under `latency_ms_<name>` or `<name>`
    (a single number is taken as is); NaN when no finite timing is there."""
    for key in (f"latency_ms_{name}", name):
        if key in latency:
            values = np.asarray(latency[key], dtype=np.float64).ravel()
            values = values[np.isfinite(values)]
            if not values.size:
                return {"": float("nan"), "_mean": float("nan"), "_p90": float("nan")}
            return {"": float(np.median(values)), "_mean": float(values.mean()),
                    "_p90": float(np.percentile(values, 90))}
    raise EvalInputError(f"latency record lacks 'latency_ms_{name}' (or '{name}'); has {sorted(latency)}")


def compute_metrics(df: pd.DataFrame, latency: Mapping[str, Any]) -> dict[str, Any]:
    """The metrics.json of a prediction table: exactly the keys in METRIC_KEYS, fractions in [0, 1].

    Row sets:
      - VL-only rows: needs_audio False. vl_acc_* are mean scores there; retention_drop = vl_acc_base - vl_acc_safe,
        retention_drop_upper its one-sided 95% paired-bootstrap upper bound.
      - audio rows: needs_audio True. audio_gain = audio_acc_safe - audio_acc_base; audio_gain_lower its lower bound.
      - skip_rate: the deployed `budget` is 0, over the rows that CARRY a clip (has_audio): a row without one is
        forced to 0 and is no decision. skip_rate_all: over every row; audio_needed_skip_rate: over audio rows;
        skip_rate_by_family: {family: skip rate over that family's rows with a clip} (families without one left out).
      - oracle_gap: `oracle_gap(df)["gap"]` (NaN without pred_b<k> columns).
      - irrelevant_flip_rate: rows with needs_audio False AND has_audio True (a VL question that came with an
        audio clip it does not need, e.g. family `vl_distractor`): share whose normalised pred_safe differs from
        pred_base; irrelevant_flip_rate_upper its exact binomial bound. NaN when the split has no such row.
      - forced_flip_rate_<probe>: VL-only rows answered with the budget forced to the largest and a distractor,
        silent or swapped clip (columns pred_<probe>), compared with pred_base; NaN where the probe was not run.
      - n_*: the size of each row set, so every rate can be read with its sample size.
    latency: per-example milliseconds (a number or an array) under `latency_ms_policy`, `latency_ms_always_audio`,
      `latency_ms_base` (or `policy`, `always_audio`, `base`); reported as median, mean and p90. Other keys ignored.
    Any of the means is NaN when its row set is empty.
    """
    validate_predictions(df)
    df = df.reset_index(drop=True)
    if "has_audio" not in df.columns:
        raise EvalInputError("prediction table lacks column 'has_audio' (needed for irrelevant_flip_rate)")
    base, safe = scores(df, "pred_base"), scores(df, "pred_safe")  # (N,), (N,)
    audio = _mask(df, "needs_audio")
    vl = ~audio
    distracted = vl & _mask(df, "has_audio")
    budgets = df["budget"].to_numpy().astype(np.int64)
    out = {
        "vl_acc_base": _mean(base[vl]), "vl_acc_safe": _mean(safe[vl]),
        "audio_acc_base": _mean(base[audio]), "audio_acc_safe": _mean(safe[audio]),
    }
    carries = _mask(df, "has_audio")
    out["retention_drop"] = out["vl_acc_base"] - out["vl_acc_safe"]
    out["retention_drop_upper"] = paired_mean_bound(base[vl], safe[vl], "upper")
    out["audio_gain"] = out["audio_acc_safe"] - out["audio_acc_base"]
    out["audio_gain_lower"] = paired_mean_bound(safe[audio], base[audio], "lower")
    out["skip_rate"] = skip_rate(budgets[carries])
    out["skip_rate_all"] = skip_rate(budgets)
    out["audio_needed_skip_rate"] = skip_rate(budgets[audio])
    out["skip_rate_by_family"] = skip_rate_by_family(df, with_audio_only=True)
    out["oracle_gap"] = oracle_gap(df)["gap"] if budget_columns(df) else float("nan")
    flips, n_irrelevant = _flip_counts(df["pred_base"][distracted], df["pred_safe"][distracted])
    out["irrelevant_flip_rate"] = flips / n_irrelevant if n_irrelevant else float("nan")
    out["irrelevant_flip_rate_upper"] = flip_rate_upper(flips, n_irrelevant)
    for probe in PROBES:
        column = f"pred_{probe}"
        flips, n = _flip_counts(df["pred_base"][vl], df[column][vl]) if column in df.columns else (0, 0)
        out[f"forced_flip_rate_{probe}"] = flips / n if n else float("nan")
        out[f"forced_flip_rate_{probe}_upper"] = flip_rate_upper(flips, n)
    # The criterion: the worst of the three wrong clips (NaN, so not met, when a probe was not run).
    worst = lambda suffix: max((out[f"forced_flip_rate_{p}{suffix}"] for p in PROBES),  # noqa: E731
                               key=lambda x: (np.isnan(x), x))
    out["forced_flip_rate"], out["forced_flip_rate_upper"] = worst(""), worst("_upper")
    out["mean_audio_tokens"] = mean_audio_tokens(budgets)
    for name in LATENCY_PATHS:
        for stat, value in _latency(latency, name).items():
            out[f"latency_ms_{name}{stat}"] = value
    out.update(n_test=int(len(df)), n_vl=int(vl.sum()), n_audio=int(audio.sum()), n_with_audio=int(carries.sum()),
               n_irrelevant=int(n_irrelevant),
               n_latency=int(np.asarray(latency.get("latency_ms_policy", latency.get("policy", [])),
                                        dtype=np.float64).size))
    return {k: out[k] for k in METRIC_KEYS}


THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
"""The gate thresholds `audio_threshold_curve` reports."""


def audio_threshold_curve(df: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS) -> list[dict[str, float]]:
    """What the deploy-time knob trades: for each threshold on the gate's P(budget > 0), the answers the deployed
    model would give (budget `audio_budget` where `p_audio` >= threshold, else 0, read from the pred_b<k> columns)
    -> [{threshold, skip_rate (over rows with a clip), acc_all, acc_vl, acc_audio, mean_audio_tokens}]; [] when the
    table lacks `p_audio` / `audio_budget`."""
    columns = budget_columns(df)
    if not {"p_audio", "audio_budget"} <= set(df.columns) or not columns:
        return []
    df = df.reset_index(drop=True)
    p_audio = df["p_audio"].to_numpy(dtype=np.float64)  # (N,)
    audio_budget = df["audio_budget"].to_numpy().astype(np.int64)  # (N,)
    has = _mask(df, "has_audio")
    audio = _mask(df, "needs_audio")
    per_budget = {b: scores(df, c) for b, c in columns.items()}  # budget -> (N,)
    curve = []
    for t in thresholds:
        budgets = np.where(has & (p_audio >= t), audio_budget, 0)  # (N,)
        score_t = np.select([budgets == b for b in per_budget], list(per_budget.values()), default=np.nan)
        curve.append({"threshold": float(t), "skip_rate": skip_rate(budgets[has]), "acc_all": _mean(score_t),
                      "acc_vl": _mean(score_t[~audio]), "acc_audio": _mean(score_t[audio]),
                      "mean_audio_tokens": mean_audio_tokens(budgets)})
    return curve


def compute_details(df: pd.DataFrame, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """The extra analysis behind report.md (JSON-serialisable; budgets are int keys, strings after a JSON trip).

    Keys: n_test / n_vl / n_audio; per_family {family: n, needs_audio_share, acc_base, acc_safe, delta,
    skip_rate, mean_audio_tokens}; retention and audio_gain {value, ci_low, ci_high, n} (paired bootstrap,
    1 - alpha interval); robustness {distractor|silent|swapped|deployed_irrelevant: flip_rate, n, acc_base,
    acc_probe} (probes: adapter forced on with wrong audio on VL-only rows, compared with the base answer);
    accuracy_vs_budget {all|vl|audio: {budget: acc}}; base_accuracy and safe_accuracy {all|vl|audio};
    deployed {mean_audio_tokens, skip_rate}; oracle (see `oracle_gap`); audio_threshold_curve (see
    `audio_threshold_curve`); bootstrap {n_boot, alpha, seed}.
    """
    validate_predictions(df)
    df = df.reset_index(drop=True)  # positional row masks below
    base, safe = scores(df, "pred_base"), scores(df, "pred_safe")  # (N,), (N,)
    audio = _mask(df, "needs_audio")
    vl = ~audio
    subsets = {"all": np.ones(len(df), dtype=bool), "vl": vl, "audio": audio}

    families, budgets = df["family"].astype(str).to_numpy(), df["budget"].to_numpy().astype(np.int64)
    per_family = {}
    for family in sorted(set(families)):
        rows = families == family  # (N,)
        per_family[family] = {
            "n": int(rows.sum()), "needs_audio_share": _mean(audio[rows]),
            "acc_base": _mean(base[rows]), "acc_safe": _mean(safe[rows]), "delta": _mean(safe[rows] - base[rows]),
            "skip_rate": skip_rate(budgets[rows]), "mean_audio_tokens": mean_audio_tokens(budgets[rows]),
        }

    def ci(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
        point, lo, hi = paired_bootstrap_ci(a, b, n_boot=n_boot, alpha=alpha, seed=seed)
        return {"value": point, "ci_low": lo, "ci_high": hi, "n": int(a.size)}

    robustness = {}
    probe_columns = {p: f"pred_{p}" for p in PROBES}
    has_audio = _mask(df, "has_audio") if "has_audio" in df.columns else np.zeros(len(df), dtype=bool)
    for name, col in [*probe_columns.items(), ("deployed_irrelevant", "pred_safe")]:
        if col not in df.columns:
            robustness[name] = {"flip_rate": float("nan"), "n": 0, "acc_base": float("nan"), "acc_probe": float("nan")}
            continue
        rows = vl & df[col].map(lambda v: not _missing(v)).to_numpy(dtype=bool)
        if name == "deployed_irrelevant":
            rows &= has_audio
        flips, n = _flip_counts(df["pred_base"][rows], df[col][rows])
        robustness[name] = {"flip_rate": flips / n if n else float("nan"), "n": n,
                            "acc_base": _mean(base[rows]), "acc_probe": _mean(scores(df[rows], col))}

    has_budgets = bool(budget_columns(df))
    return {
        "n_test": int(len(df)), "n_vl": int(vl.sum()), "n_audio": int(audio.sum()),
        "per_family": per_family,
        "retention": ci(base[vl], safe[vl]),
        "audio_gain": ci(safe[audio], base[audio]),
        "robustness": robustness,
        "accuracy_vs_budget": {k: accuracy_vs_budget(df, m) for k, m in subsets.items()} if has_budgets else {},
        "base_accuracy": {k: _mean(base[m]) for k, m in subsets.items()},
        "safe_accuracy": {k: _mean(safe[m]) for k, m in subsets.items()},
        "deployed": {"mean_audio_tokens": mean_audio_tokens(budgets), "skip_rate": skip_rate(budgets)},
        "oracle": oracle_gap(df) if has_budgets else {},
        "audio_threshold_curve": audio_threshold_curve(df),
        "bootstrap": {"n_boot": int(n_boot), "alpha": float(alpha), "seed": int(seed)},
    }
