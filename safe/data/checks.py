"""Data checks with Great Expectations 1.x: a manifest suite and a cached-features suite.

Media facts GX cannot see (does the file exist, does it decode, its duration and sample rate) are derived
first as per-row columns with `safe.data.media`, then expected on like any other column, so every failure
comes back from GX with the failing rows' ids (result_format COMPLETE, unexpected_index_column_names=["id"]).

One ephemeral GX context is created per validate call. GX 1.x emits DeprecationWarnings from its own
imports and internals; they are silenced only around GX calls so ours still surface.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd

from safe.data.manifest import SPLITS
from safe.data.media import MediaError, audio_info, load_image, scan_audio
from safe.io import write_text_atomic

SYNTH_FAMILIES = ("vl", "vl_distractor", "audio", "audio_visual", "silent_control")
MANIFEST_COLUMNS = ("id", "split", "source", "family", "question", "answer", "image", "audio", "needs_audio")
_TEXT_COLUMNS = ("split", "source", "family", "question", "answer")
_RESULT_FORMAT = {"result_format": "COMPLETE", "unexpected_index_column_names": ["id"]}


@dataclass(frozen=True)
class CheckFailure:
    """One failed expectation: which, on what column, how many rows, which row ids (and why, when known)."""

    expectation: str
    column: str | None
    count: int
    rows: tuple[str, ...] = ()
    detail: str = ""
    reasons: Mapping[str, str] = field(default_factory=dict)  # row id -> what is wrong (media errors)

    def describe(self, limit: int = 5) -> str:
        where = f" on {self.column!r}" if self.column else ""
        text = f"{self.expectation}{where}: {self.count} failing"
        if self.detail:
            text += f" ({self.detail})"
        if self.rows:
            shown = [f"{r} [{self.reasons[r]}]" if r in self.reasons else r for r in self.rows[:limit]]
            text += "; rows: " + ", ".join(shown)
            if len(self.rows) > limit:
                text += f", ... and {len(self.rows) - limit} more"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "expectation": self.expectation,
            "column": self.column,
            "count": self.count,
            "rows": list(self.rows),
            "detail": self.detail,
            "reasons": dict(self.reasons),
        }


@dataclass(frozen=True)
class CheckReport:
    """Outcome of one suite. `success` is True when every expectation passed."""

    suite: str
    target: str  # the manifest path or "features"
    n_rows: int
    n_expectations: int
    failures: tuple[CheckFailure, ...] = ()

    @property
    def success(self) -> bool:
        return not self.failures

    def summary(self, limit: int = 5) -> str:
        status = "PASSED" if self.success else f"FAILED ({len(self.failures)} of {self.n_expectations} checks)"
        lines = [f"{self.suite} checks on {self.target}: {status}, {self.n_rows} rows"]
        lines += [f"  - {f.describe(limit)}" for f in self.failures]
        return "\n".join(lines)

    __str__ = summary

    def to_markdown(self, limit: int = 20) -> str:
        status = "passed" if self.success else "failed"
        lines = [
            f"## {self.suite} checks: {status}",
            "",
            f"`{self.target}`: {self.n_rows} rows, {self.n_expectations} expectations, {len(self.failures)} failed.",
        ]
        if self.failures:
            lines += ["", "| expectation | column | failing | rows |", "| --- | --- | --- | --- |"]
            for f in self.failures:
                rows = ", ".join(f"`{r}`" for r in f.rows[:limit]) + (" ..." if len(f.rows) > limit else "")
                detail = f" ({f.detail})" if f.detail else ""
                lines.append(f"| {f.expectation}{detail} | {f.column or ''} | {f.count} | {rows} |")
        return "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "target": self.target,
            "success": self.success,
            "n_rows": self.n_rows,
            "n_expectations": self.n_expectations,
            "failures": [f.to_json() for f in self.failures],
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- GX plumbing


@contextmanager
def _quiet_gx() -> Iterator[Any]:
    """Import GX with its DeprecationWarnings (and the network analytics) switched off; yields the module."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        import great_expectations as gx

        yield gx


def _run_suite(name: str, df: pd.DataFrame, expectations: list) -> list:
    """Validate `df` against `expectations` in a fresh ephemeral context; returns GX's per-expectation results."""
    with _quiet_gx() as gx:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch_definition = (
            context.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        )
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=expectations))
        batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
        return list(batch.validate(suite, result_format=_RESULT_FORMAT).results)


def _failures(results: list, reasons: Mapping[str, Mapping[str, str]] | None = None) -> list[CheckFailure]:
    """Turn failed GX results into CheckFailures; `reasons[column][row id]` adds per-row explanations."""
    out = []
    for res in results:
        if res.success:
            continue
        cfg = res.expectation_config
        kwargs = cfg.kwargs
        column = kwargs.get("column") or (
            f"{kwargs['column_A']}=={kwargs['column_B']}" if "column_A" in kwargs else None
        )
        result = res.result or {}
        index = result.get("unexpected_index_list") or []
        rows = tuple(dict.fromkeys(str(r["id"]) for r in index if isinstance(r, dict)))  # duplicates: once
        count = int(result.get("unexpected_count") or len(rows) or 1)
        exc = (res.exception_info or {}).get("exception_message") if isinstance(res.exception_info, dict) else None
        out.append(
            CheckFailure(
                expectation=cfg.type,
                column=column,
                count=count,
                rows=rows,
                detail=exc or _detail(cfg.type, column, kwargs, result),
                reasons={r: reasons[column][r] for r in rows if reasons and column in reasons and r in reasons[column]},
            )
        )
    return out


# Derived boolean columns -> what a False row means.
_MEANING = {
    "image_exists": "image file missing",
    "image_decodable": "image does not decode",
    "audio_exists": "audio file missing",
    "audio_readable": "audio does not decode",
    "audio_when_needed": "needs_audio is true but audio is null",
    "finite": "NaN/inf values",
}


def _detail(kind: str, column: str | None, kwargs: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """A short human explanation: what was expected, and the offending values or observed statistic."""
    if column in _MEANING:
        return _MEANING[column]
    if kind == "expect_column_values_to_not_be_null":
        return "field missing or null"
    if kind == "expect_column_values_to_match_regex":
        return "empty or blank"
    parts = []
    plain = (v.item() if isinstance(v, np.generic) else v for v in result.get("partial_unexpected_list") or [])
    bad = list(dict.fromkeys(map(repr, plain)))
    if bad:
        parts.append("got " + ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else ""))
    if "value_set" in kwargs:
        parts.append(f"allowed: {', '.join(map(str, kwargs['value_set']))}")
    if kind.endswith("to_be_between"):
        parts.append(f"expected {kwargs.get('min_value')}..{kwargs.get('max_value')}")
    if "observed_value" in result:
        observed = result["observed_value"]
        parts.append(f"observed {observed:.3f}" if isinstance(observed, float) else f"observed {observed}")
    mismatched = (result.get("details") or {}).get("mismatched")
    if mismatched:
        parts.append(f"mismatched: {mismatched}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- manifest suite


def validate_manifest(
    manifest_path: str | os.PathLike,
    expected_families: Sequence[str] | None = None,
    family_proportions: Mapping[str, float] | None = None,
    tolerance: float = 0.1,
    audio_seconds: tuple[float, float] = (0.05, 30.0),
    sample_rates: Sequence[int] | None = (16000,),
    split_proportions: Mapping[str, float] | None = None,
    check_media: bool = True,
    decode_audio: bool = True,
    workers: int = 4,
) -> CheckReport:
    """Run the manifest suite on a JSONL manifest.

    Rows are read as raw JSON (not through `read_manifest`, which would refuse the very defects we want to
    report). Checks: the schema columns exist; id present and unique; question/answer non-empty; split in
    train/val/test; family in `expected_families` (default: the synthetic families); needs_audio boolean and
    backed by an audio file; optional family/split shares within `tolerance` (absolute) of the given
    proportions; with `check_media`, media files exist, audio is readable (header, and fully decoded when
    `decode_audio`, which catches truncated/NaN files) with duration in `audio_seconds` and sample rate in
    `sample_rates` (None: any), and images decode. Unparseable JSON lines are reported by line number.
    """
    path = Path(manifest_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest file not found")
    families = tuple(expected_families) if expected_families is not None else SYNTH_FAMILIES
    rows, bad_lines = _read_rows(path)
    df = pd.DataFrame(rows)
    present = [c for c in df.columns if not c.startswith("_")]
    with _quiet_gx() as gx:
        E = gx.expectations
        exp: list = [E.ExpectTableColumnsToMatchSet(column_set=list(MANIFEST_COLUMNS), exact_match=False)]
        exp += [E.ExpectColumnValuesToNotBeNull(column="_id_field"), E.ExpectColumnValuesToBeUnique(column="id")]
        for col in MANIFEST_COLUMNS[1:]:
            if col in present and col not in ("image", "audio"):
                exp.append(E.ExpectColumnValuesToNotBeNull(column=col))
        for col in ("question", "answer"):
            if col in present:
                exp.append(E.ExpectColumnValuesToMatchRegex(column=col, regex=r"\S"))
        if "split" in present:
            exp.append(E.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
        if "family" in present:
            exp.append(E.ExpectColumnValuesToBeInSet(column="family", value_set=list(families)))
        if "needs_audio" in present:
            exp.append(E.ExpectColumnValuesToBeInSet(column="needs_audio", value_set=[True, False]))
            df["audio_when_needed"] = _audio_when_needed(df)
            exp.append(E.ExpectColumnValuesToBeInSet(column="audio_when_needed", value_set=[True]))
        exp += _proportion_expectations(E, df, "family", family_proportions, tolerance)
        exp += _proportion_expectations(E, df, "split", split_proportions, tolerance)
        reasons: dict[str, dict[str, str]] = {}
        if check_media:
            reasons = _add_media_columns(df, path.parent, decode_audio, workers)
            exp += [
                E.ExpectColumnValuesToBeInSet(column="image_exists", value_set=[True]),
                E.ExpectColumnValuesToBeInSet(column="image_decodable", value_set=[True]),
                E.ExpectColumnValuesToBeInSet(column="audio_exists", value_set=[True]),
                E.ExpectColumnValuesToBeInSet(column="audio_readable", value_set=[True]),
                E.ExpectColumnValuesToBeBetween(
                    column="audio_seconds", min_value=audio_seconds[0], max_value=audio_seconds[1]
                ),
            ]
            if sample_rates is not None:
                exp.append(E.ExpectColumnValuesToBeInSet(column="audio_sample_rate", value_set=list(sample_rates)))
    if df.empty:
        failures = [CheckFailure("expect_table_row_count_to_be_between", None, 1, detail="manifest has no rows")]
        n_exp = 1
    else:
        failures = _failures(_run_suite("manifest", df, exp), reasons)
        n_exp = len(exp)
    if bad_lines:
        failures.insert(0, CheckFailure("valid_json_line", None, len(bad_lines), tuple(bad_lines), "not a JSON object"))
        n_exp += 1
    return CheckReport("manifest", str(path), len(df) + len(bad_lines), n_exp, tuple(failures))


def _read_rows(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Raw rows with an `id` every row has ("line N" when missing) plus `_id_field` (the id as written).

    Lines are decoded one by one, so a line that is not UTF-8 is reported as a bad line (with the offending byte)
    instead of stopping the whole report; a UTF-8 byte-order mark on the first line is allowed."""
    rows, bad = [], []
    with path.open("rb") as fh:
        for lineno, raw_line in enumerate(fh, start=1):
            try:
                line = raw_line.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                bad.append(f"line {lineno} (not UTF-8: byte 0x{raw_line[err.start]:02x} at column {err.start + 1})")
                continue
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                raw = None
            if not isinstance(raw, dict):
                bad.append(f"line {lineno}")
                continue
            given = raw.get("id")
            row = {k: raw.get(k) for k in MANIFEST_COLUMNS if k in raw}
            row["_id_field"] = given if isinstance(given, str) and given.strip() else None
            row["id"] = row["_id_field"] or f"line {lineno}"
            for col in _TEXT_COLUMNS:  # keep regex/set checks well-defined on odd types
                if col in row and row[col] is not None and not isinstance(row[col], str):
                    row[col] = str(row[col])
            rows.append(row)
    return rows, bad


def _audio_when_needed(df: pd.DataFrame) -> list[bool]:
    audio = df["audio"] if "audio" in df.columns else pd.Series([None] * len(df))
    return [not (need is True) or isinstance(a, str) for need, a in zip(df["needs_audio"], audio)]


def _proportion_expectations(E, df: pd.DataFrame, column: str, proportions, tolerance: float) -> list:
    """One mean-of-indicator expectation per value: share of rows with `column == value` within tolerance."""
    if not proportions or column not in df.columns:
        return []
    exps = []
    for value, share in proportions.items():
        indicator = f"share_{column}_{value}"
        df[indicator] = (df[column] == value).astype(float)
        exps.append(
            E.ExpectColumnMeanToBeBetween(
                column=indicator, min_value=max(0.0, share - tolerance), max_value=min(1.0, share + tolerance)
            )
        )
    return exps


def _add_media_columns(df: pd.DataFrame, root: Path, decode_audio: bool, workers: int) -> dict[str, dict[str, str]]:
    """Per-row media facts as columns (None where the row has no such media); returns error texts by column/id."""
    ids = list(df["id"])
    images = list(df["image"]) if "image" in df.columns else [None] * len(df)
    audios = list(df["audio"]) if "audio" in df.columns else [None] * len(df)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # file I/O and decoders release the GIL
        image_facts = list(pool.map(lambda rel: _probe_image(root, rel), images))
        audio_facts = list(pool.map(lambda rel: _probe_audio(root, rel, decode_audio), audios))
    df["image_exists"] = [f[0] for f in image_facts]
    df["image_decodable"] = [f[1] for f in image_facts]
    df["audio_exists"] = [f[0] for f in audio_facts]
    df["audio_readable"] = [f[1] for f in audio_facts]
    df["audio_seconds"] = pd.array([f[2] for f in audio_facts], dtype="Float64")
    df["audio_sample_rate"] = pd.array([f[3] for f in audio_facts], dtype="Int64")
    reasons: dict[str, dict[str, str]] = {}
    for column, facts, slot in (("image_decodable", image_facts, 2), ("audio_readable", audio_facts, 4)):
        reasons[column] = {i: f[slot] for i, f in zip(ids, facts) if f[slot] and f[0]}
    for column, facts, slot in (("image_exists", image_facts, 2), ("audio_exists", audio_facts, 4)):
        reasons[column] = {i: f[slot] for i, f in zip(ids, facts) if f[slot] and f[0] is False}
    return reasons


def _resolve(root: Path, rel: Any) -> Path | None:
    if not isinstance(rel, str) or not rel:
        return None
    p = Path(rel)
    return p if p.is_absolute() else root / p


def _probe_image(root: Path, rel: Any) -> tuple[bool | None, bool | None, str]:
    """(exists, decodable, error) — None for rows without an image; decodable None when the file is absent.

    The error names the file as the manifest writes it and as resolved, and says what is wrong."""
    path = _resolve(root, rel)
    if path is None:
        return None, None, ""
    if not path.is_file():
        return False, None, f"{_as_written(rel, path)}: file not found"
    try:
        load_image(path, notes=[])  # notes (greyscale, transparency) are not failures
    except MediaError as err:
        return True, False, _short(err, path, rel)
    except Exception as err:  # a decoder bug must not stop the whole report
        return True, False, f"{_as_written(rel, path)}: image does not decode ({type(err).__name__}: {err})"
    return True, True, ""


def _probe_audio(root: Path, rel: Any, decode: bool) -> tuple[bool | None, bool | None, float | None, int | None, str]:
    """(exists, readable, seconds, sample rate, error) — Nones for rows without audio or unreadable files.

    Decoding scans the clip block by block (bounded memory, however long the file)."""
    path = _resolve(root, rel)
    if path is None:
        return None, None, None, None, ""
    if not path.is_file():
        return False, None, None, None, f"{_as_written(rel, path)}: file not found"
    try:
        info = scan_audio(path) if decode else audio_info(path)
    except MediaError as err:
        return True, False, None, None, _short(err, path, rel)
    except Exception as err:  # a decoder bug must not stop the whole report
        return True, False, None, None, f"{_as_written(rel, path)}: audio does not decode ({type(err).__name__}: {err})"
    seconds = info.duration if math.isfinite(info.duration) else None
    return True, True, seconds, info.sr, ""


def _short(err: Exception, path: Path, rel: Any = None) -> str:
    """The MediaError text with its leading path written as the manifest has it (and resolved, when different)."""
    text = str(err)
    prefix = f"{path}: "
    reason = text[len(prefix):] if text.startswith(prefix) else text
    return f"{_as_written(path if rel is None else rel, path)}: {reason}"


def _as_written(rel: Any, path: Path) -> str:
    resolved = str(path.resolve())
    return str(rel) if str(rel) == resolved else f"{rel} ({resolved})"


# ---------------------------------------------------------------------------------------------- features suite


def validate_features(
    arrays: Mapping[str, np.ndarray] | pd.DataFrame,
    expected_dim: int | Mapping[str, int] | None,
    ids: Sequence[str] | None = None,
) -> CheckReport:
    """Check cached feature arrays: every row finite and the last axis of size `expected_dim`.

    `arrays` maps a name to an array whose first axis indexes examples: (N, D) pooled or (N, T, D) sequences
    (a DataFrame is taken as one (N, columns) array named "features", its index as ids). `expected_dim` is
    one size for all arrays, a size per name, or None to skip the dim check. Failing rows are named
    "<name>[i]", or "<name>:<id>" when `ids` (length N) are given.
    """
    if isinstance(arrays, pd.DataFrame):
        ids = [str(i) for i in arrays.index] if ids is None else ids
        arrays = {"features": arrays.to_numpy(dtype=np.float64)}
    frames = []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        n = arr.shape[0] if arr.ndim else 1
        if ids is not None and len(ids) != n:
            raise ValueError(f"features {name!r}: {n} rows but {len(ids)} ids")
        flat = arr.reshape(n, -1)  # (N, everything else)
        finite = np.isfinite(flat).all(axis=1) if np.issubdtype(arr.dtype, np.inexact) else np.ones(n, bool)
        want = expected_dim.get(name) if isinstance(expected_dim, Mapping) else expected_dim
        dim = arr.shape[-1] if arr.ndim >= 2 else 1
        frames.append(
            pd.DataFrame(
                {
                    "id": [f"{name}:{i}" for i in ids] if ids is not None else [f"{name}[{i}]" for i in range(n)],
                    "array": name,
                    "finite": finite,
                    "dim": np.full(n, dim, dtype=np.int64),
                    "expected_dim": np.full(n, dim if want is None else want, dtype=np.int64),
                }
            )
        )
    if not frames:
        raise ValueError("validate_features needs at least one array")
    df = pd.concat(frames, ignore_index=True)
    with _quiet_gx() as gx:
        E = gx.expectations
        exp = [
            E.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
            E.ExpectColumnPairValuesToBeEqual(column_A="dim", column_B="expected_dim"),
        ]
    failures = _failures(_run_suite("features", df, exp))
    return CheckReport("features", ", ".join(arrays), len(df), len(exp), tuple(failures))
