"""Data checks with Great Expectations 1.x: a manifest suite and a cached-features suite.

Suites are declared as data (expectation configurations: type, kwargs, why) and run through a ValidationDefinition
and a Checkpoint whose UpdateDataDocsAction writes the HTML Data Docs where asked. Expectations look at the rows' own
values (value sets, lengths, unique ids, (source, family) pairs, answer-vocabulary coverage). Media facts GX cannot
see are derived first as per-row columns with `safe.data.media`: the error text of a missing or undecodable file,
a clip's duration and sample rate. Every failure comes back from GX with the failing rows' ids (result_format
COMPLETE, unexpected_index_column_names=["id"]).

One ephemeral GX context is created per checkpoint run. GX 1.x emits DeprecationWarnings from its own
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
from safe.environment import set_environment
from safe.io import write_text_atomic

SYNTH_FAMILIES = ("vl", "vl_distractor", "audio", "audio_order", "audio_visual", "audio_sequence", "silent_control")
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
    docs: Path | None = None  # the Data Docs index.html the checkpoint wrote, when asked to

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
            **({"data_docs": str(self.docs)} if self.docs else {}),
        }

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_text_atomic(path, json.dumps(self.to_json(), indent=2) + "\n")


# ---------------------------------------------------------------------------------------------- GX plumbing


@contextmanager
def _quiet_gx() -> Iterator[Any]:
    """Import GX with its DeprecationWarnings (and the network analytics) switched off; yields the module."""
    set_environment(offline=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        import great_expectations as gx

        yield gx


def expectation(kind: str, notes: str, **kwargs: Any) -> dict[str, Any]:
    """One expectation declared as data: GX's configuration dict (type, kwargs) plus why it is there."""
    return {"type": kind, "kwargs": kwargs, "notes": notes}


def run_checkpoint(name: str, df: pd.DataFrame, expectations: Sequence[Mapping[str, Any]],
                   docs_dir: str | os.PathLike | None = None) -> list:
    """Validate `df` against a suite of expectation configurations through a GX Checkpoint; returns the results.

    The suite, its ValidationDefinition and the Checkpoint live in a fresh ephemeral context. With `docs_dir`, the
    Checkpoint's UpdateDataDocsAction writes the HTML Data Docs (suite + this validation) into that folder.
    """
    with _quiet_gx() as gx:
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        batch_definition = (
            context.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        )
        configs = [ExpectationConfiguration(type=e["type"], kwargs=dict(e["kwargs"]), notes=e.get("notes"))
                   for e in expectations]
        suite = context.suites.add(gx.ExpectationSuite(name=name, expectations=configs))
        if len(suite.expectations) != len(configs):  # GX logs and drops an invalid configuration
            raise ValueError(f"{name} suite: {len(configs) - len(suite.expectations)} expectation(s) rejected by GX")
        validation = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_definition,
                                                                               suite=suite))
        actions = []
        if docs_dir is not None:
            context.add_data_docs_site(DOCS_SITE, {
                "class_name": "SiteBuilder", "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                                  "base_directory": str(Path(docs_dir).absolute())}})
            actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE]))
        checkpoint = context.checkpoints.add(gx.Checkpoint(name=name, validation_definitions=[validation],
                                                           actions=actions, result_format=_RESULT_FORMAT))
        result = checkpoint.run(batch_parameters={"dataframe": df})
        return [r for run in result.run_results.values() for r in run.results]


DOCS_SITE = "safe"
DOCS_INDEX = "index.html"


def _failures(results: list) -> list[CheckFailure]:
    """Turn failed GX results into CheckFailures; on `*_error` columns the unexpected values say why per row."""
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
        index = [r for r in result.get("unexpected_index_list") or [] if isinstance(r, dict)]
        rows = tuple(dict.fromkeys(str(r["id"]) for r in index))  # duplicates: once
        count = int(result.get("unexpected_count") or len(rows) or 1)
        exc = (res.exception_info or {}).get("exception_message") if isinstance(res.exception_info, dict) else None
        reasons = {}
        if column and column.endswith("_error"):
            reasons = {str(r["id"]): str(r[column]) for r in index if r.get(column) is not None}
        out.append(
            CheckFailure(
                expectation=cfg.type,
                column=column,
                count=count,
                rows=rows,
                detail=exc or _detail(cfg.type, column, kwargs, result),
                reasons=reasons,
            )
        )
    return out


def _detail(kind: str, column: str | None, kwargs: Mapping[str, Any], result: Mapping[str, Any]) -> str:
    """A short human explanation: what was expected, and the offending values or observed statistic."""
    if column in ("image_error", "audio_error"):
        return f"{column.split('_')[0]} missing or unreadable"
    if kind == "expect_column_values_to_not_be_null":
        return "needs_audio is true but audio is null" if column == "audio" else "field missing or null"
    if kind == "expect_column_values_to_match_regex":
        return "empty or blank"
    parts = []
    plain = (v.item() if isinstance(v, np.generic) else v for v in result.get("partial_unexpected_list") or [])
    bad = list(dict.fromkeys(map(repr, plain)))
    if bad:
        parts.append("got " + ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else ""))
    if "value_set" in kwargs and len(kwargs["value_set"]) <= 12:
        parts.append(f"allowed: {', '.join(map(str, kwargs['value_set']))}")
    if "value_pairs_set" in kwargs:
        parts.append("not an expected (source, family) pair; set data.families in params.yaml")
    if kwargs.get("mostly") is not None:
        parts.append(f"expected at least {kwargs['mostly']:.0%} of rows")
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

FREE_TEXT_FAMILIES = ("caption", "audio_caption")
"""Families whose answers are free text (captions): left out of the answer-vocabulary coverage check."""
MAX_TEXT_CHARS = 2000


def families_by_source(configured: Mapping[str, Sequence[str]] | None = None) -> dict[str, tuple[str, ...]]:
    """Allowed families per source: the synthetic generator's and every ingest adapter's, overridden by params."""
    from safe.data.formats import ADAPTERS

    known = {"synth": SYNTH_FAMILIES, **{a.source: tuple(a.families) for a in ADAPTERS.values()}}
    return {**known, **{k: tuple(v) for k, v in (configured or {}).items()}}


def validate_manifest(
    manifest_path: str | os.PathLike,
    expected_families: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    family_proportions: Mapping[str, float] | None = None,
    tolerance: float = 0.1,
    audio_seconds: tuple[float, float | None] = (0.05, 30.0),
    sample_rates: Sequence[int] | None = None,
    split_proportions: Mapping[str, float] | None = None,
    check_media: bool = True,
    decode_audio: bool = True,
    workers: int = 4,
    min_answer_coverage: float | None = None,
    docs_dir: str | os.PathLike | None = None,
) -> CheckReport:
    """Run the manifest suite on a JSONL manifest through a GX Checkpoint (Data Docs into `docs_dir` when given).

    Rows are read as raw JSON (not through `read_manifest`, which would refuse the very defects we want to
    report). Checks: the schema columns exist; id present and unique; question/answer non-empty and of sane length;
    split in train/val/test; family allowed (`expected_families`: a list for every source, or a mapping source ->
    families checked on the (source, family) pair; default: the synthetic families); needs_audio boolean and
    backed by an audio path; optional family/split shares within `tolerance` (absolute) of the given
    proportions; with `min_answer_coverage`, that share of val/test answers (free-text families excluded) occurs
    among training answers; with `check_media`, media files exist and decode (audio fully decoded when
    `decode_audio`, which catches truncated/NaN files), audio lasts `audio_seconds` (max None: any) at a rate in
    `sample_rates` (None: any). Unparseable JSON lines are reported by line number.
    """
    path = Path(manifest_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest file not found")
    rows, bad_lines = _read_rows(path)
    df = pd.DataFrame(rows)
    present = [c for c in df.columns if not c.startswith("_")]
    exp = manifest_expectations(df, present, expected_families, family_proportions, split_proportions, tolerance,
                                min_answer_coverage)
    if check_media:
        _add_media_columns(df, path.parent, decode_audio, workers)
        exp += media_expectations(audio_seconds, sample_rates)
    if df.empty:
        failures = [CheckFailure("expect_table_row_count_to_be_between", None, 1, detail="manifest has no rows")]
        n_exp = 1
    else:
        failures = _failures(run_checkpoint("manifest", df, exp, docs_dir))
        n_exp = len(exp)
    if bad_lines:
        failures.insert(0, CheckFailure("valid_json_line", None, len(bad_lines), tuple(bad_lines), "not a JSON object"))
        n_exp += 1
    docs = Path(docs_dir) / DOCS_INDEX if docs_dir is not None and not df.empty else None
    return CheckReport("manifest", str(path), len(df) + len(bad_lines), n_exp, tuple(failures), docs)


def manifest_expectations(df: pd.DataFrame, present: Sequence[str], families, family_proportions, split_proportions,
                          tolerance: float, min_answer_coverage: float | None) -> list[dict[str, Any]]:
    """The manifest suite's expectations on the rows' own columns (adds the share indicator columns to `df`)."""
    E = expectation
    exp = [E("expect_table_columns_to_match_set", "every manifest column is there",
             column_set=list(MANIFEST_COLUMNS), exact_match=False),
           E("expect_column_values_to_not_be_null", "every row has a string id", column="_id_field"),
           E("expect_column_values_to_be_unique", "ids name one example each", column="id")]
    for col in MANIFEST_COLUMNS[1:]:
        if col in present and col not in ("image", "audio"):
            exp.append(E("expect_column_values_to_not_be_null", f"{col} is required", column=col))
    for col in ("question", "answer"):
        if col in present:
            exp.append(E("expect_column_values_to_match_regex", f"{col} is not blank", column=col, regex=r"\S"))
            exp.append(E("expect_column_value_lengths_to_be_between", f"{col} fits a prompt", column=col,
                         min_value=1, max_value=MAX_TEXT_CHARS))
    if "split" in present:
        exp.append(E("expect_column_values_to_be_in_set", "known splits", column="split", value_set=list(SPLITS)))
    if "family" in present:
        if isinstance(families, Mapping) and "source" in present:
            pairs = [[source, fam] for source, fams in sorted(families.items()) for fam in fams]
            exp.append(E("expect_column_pair_values_to_be_in_set",
                         "each source only asks its own families (from params.yaml or the source's adapter)",
                         column_A="source", column_B="family", value_pairs_set=pairs))
        else:
            allowed = list(families) if families is not None and not isinstance(families, Mapping) else \
                list(SYNTH_FAMILIES)
            exp.append(E("expect_column_values_to_be_in_set", "known families", column="family", value_set=allowed))
    if "needs_audio" in present:
        exp.append(E("expect_column_values_to_be_in_set", "needs_audio is a boolean", column="needs_audio",
                     value_set=[True, False]))
        if "audio" not in df.columns:
            df["audio"] = None
        exp.append(E("expect_column_values_to_not_be_null", "a question that needs audio has a clip",
                     column="audio", row_condition="needs_audio==True", condition_parser="pandas"))
    exp += _proportion_expectations(df, "family", family_proportions, tolerance)
    exp += _proportion_expectations(df, "split", split_proportions, tolerance)
    if min_answer_coverage is not None and {"answer", "split", "family"} <= set(present):
        exp += _coverage_expectations(df, min_answer_coverage)
    return exp


def _coverage_expectations(df: pd.DataFrame, min_coverage: float) -> list[dict[str, Any]]:
    """Val/test answers of short-answer families should be answers the model saw in training."""
    short = ~df["family"].isin(FREE_TEXT_FAMILIES)
    train = df["answer"][short & (df["split"] == "train")].dropna().astype(str)
    held = short & df["split"].isin(("val", "test"))
    if train.empty or not held.any():
        return []
    vocabulary = sorted(set(train))
    condition = f'split!="train" and family not in {list(FREE_TEXT_FAMILIES)}'
    return [expectation("expect_column_values_to_be_in_set",
                        "val/test answers occur among training answers (answer-vocabulary coverage)",
                        column="answer", value_set=vocabulary, mostly=float(min_coverage), row_condition=condition,
                        condition_parser="pandas")]


def media_expectations(audio_seconds: tuple[float, float | None], sample_rates: Sequence[int] | None) -> list[dict]:
    """Expectations on the per-row media facts `_add_media_columns` derives (nulls: rows without that media)."""
    E = expectation
    exp = [E("expect_column_values_to_be_null", "every image exists and decodes", column="image_error"),
           E("expect_column_values_to_be_null", "every clip exists and decodes", column="audio_error"),
           E("expect_column_values_to_be_between", "clip durations in the accepted range (data settings)",
             column="audio_seconds", min_value=audio_seconds[0], max_value=audio_seconds[1]),
           E("expect_column_values_to_be_between", "every audio_span ends inside its clip (50 ms slack)",
             column="audio_span_past_end_s", max_value=SPAN_SLACK_S)]
    if sample_rates is not None:
        exp.append(E("expect_column_values_to_be_in_set", "sample rates in data.sample_rates",
                     column="audio_sample_rate", value_set=[int(r) for r in sample_rates]))
    else:
        exp.append(E("expect_column_values_to_be_between", "a sample rate the loader can resample from",
                     column="audio_sample_rate", min_value=MIN_SAMPLE_RATE, max_value=MAX_SAMPLE_RATE))
    return exp


SPAN_SLACK_S = 0.05
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384000
"""Rates accepted when data.sample_rates is null: what soxr (the loader's resampler) handles."""


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
            span = raw.get("audio_span")
            row["_span_end"] = float(span[1]) if isinstance(span, list) and len(span) == 2 and isinstance(
                span[1], (int, float)) and not isinstance(span[1], bool) else None
            row["_id_field"] = given if isinstance(given, str) and given.strip() else None
            row["id"] = row["_id_field"] or f"line {lineno}"
            for col in _TEXT_COLUMNS:  # keep regex/set checks well-defined on odd types
                if col in row and row[col] is not None and not isinstance(row[col], str):
                    row[col] = str(row[col])
            rows.append(row)
    return rows, bad


def _proportion_expectations(df: pd.DataFrame, column: str, proportions, tolerance: float) -> list:
    """One mean-of-indicator expectation per value: share of rows with `column == value` within tolerance."""
    if not proportions or column not in df.columns:
        return []
    exps = []
    for value, share in proportions.items():
        indicator = f"share_{column}_{value}"
        df[indicator] = (df[column] == value).astype(float)
        exps.append(expectation(
            "expect_column_mean_to_be_between", f"share of {column} {value} near {share:g}", column=indicator,
            min_value=max(0.0, share - tolerance), max_value=min(1.0, share + tolerance)))
    return exps


def _add_media_columns(df: pd.DataFrame, root: Path, decode_audio: bool, workers: int) -> None:
    """Per-row media facts as columns: `*_error` (None when fine or absent), audio seconds and sample rate."""
    images = list(df["image"]) if "image" in df.columns else [None] * len(df)
    audios = list(df["audio"]) if "audio" in df.columns else [None] * len(df)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # file I/O and decoders release the GIL
        image_facts = list(pool.map(lambda rel: _probe_image(root, rel), images))
        audio_facts = list(pool.map(lambda rel: _probe_audio(root, rel, decode_audio), audios))
    df["image_error"] = [_error(f[0], f[1], f[2], rel) for f, rel in zip(image_facts, images)]
    df["audio_error"] = [_error(f[0], f[1], f[4], rel) for f, rel in zip(audio_facts, audios)]
    df["audio_seconds"] = pd.array([f[2] for f in audio_facts], dtype="Float64")
    df["audio_sample_rate"] = pd.array([f[3] for f in audio_facts], dtype="Int64")
    span_end = df["_span_end"] if "_span_end" in df.columns else pd.Series([None] * len(df))
    df["audio_span_past_end_s"] = pd.array(  # how far a row's audio_span ends after its clip (null: no span)
        [None if e is None or pd.isna(e) or pd.isna(s) else e - s for e, s in zip(span_end, df["audio_seconds"])],
        dtype="Float64")


def _error(exists: bool | None, readable: bool | None, message: str, rel: Any) -> str | None:
    """What is wrong with one media entry, or None (fine, or the row has no such media)."""
    if exists is None or (exists and readable):
        return None
    return message or (f"{rel}: file not found" if not exists else f"{rel}: does not decode")


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
    splits: Sequence[str] | None = None,
    dim_checks: Sequence[str] = (),
    max_mean_shift: float = 1.0,
    docs_dir: str | os.PathLike | None = None,
) -> CheckReport:
    """Check cached feature arrays: every row finite and the last axis of size `expected_dim`; and, for the arrays
    named in `dim_checks` (given each row's split in `splits`), per dimension: no constant dimension over the
    training rows, and the val/test rows' mean within `max_mean_shift` training standard deviations of the
    training mean (a swapped encoder or broken normalisation moves it).

    `arrays` maps a name to an array whose first axis indexes examples: (N, D) pooled or (N, T, D) sequences
    (a DataFrame is taken as one (N, columns) array named "features", its index as ids). `expected_dim` is
    one size for all arrays, a size per name, or None to skip the dim check. Failing rows are named
    "<name>[i]", or "<name>:<id>" when `ids` (length N) are given; failing dimensions "<name>[d<j>]".
    Both tables go through GX Checkpoints; with `docs_dir` their Data Docs are written there.
    """
    if isinstance(arrays, pd.DataFrame):
        ids = [str(i) for i in arrays.index] if ids is None else ids
        arrays = {"features": arrays.to_numpy(dtype=np.float64)}
    frames, dims = [], []
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
                    "non_finite_values": (~np.isfinite(flat)).sum(axis=1) if not finite.all() else np.zeros(n, int),
                    "dim": np.full(n, dim, dtype=np.int64),
                    "expected_dim": np.full(n, dim if want is None else want, dtype=np.int64),
                }
            )
        )
        if name in dim_checks and splits is not None:
            dims.append(_dimension_table(name, arr, finite, splits))
    if not frames:
        raise ValueError("validate_features needs at least one array")
    df = pd.concat(frames, ignore_index=True)
    E = expectation
    exp = [E("expect_column_values_to_be_between", "every value is finite (no NaN/inf)", column="non_finite_values",
             min_value=0, max_value=0),
           E("expect_column_pair_values_to_be_equal", "the encoder's embedding size", column_A="dim",
             column_B="expected_dim")]
    failures = _failures(run_checkpoint("features", df, exp, docs_dir))
    n_exp, n_rows = len(exp), len(df)
    table = pd.concat(dims, ignore_index=True) if dims else pd.DataFrame()
    if not table.empty:
        dim_exp = [E("expect_column_values_to_be_between", "no constant dimension over the training rows",
                     column="train_std", min_value=CONSTANT_STD, strict_min=True),
                   E("expect_column_values_to_be_between",
                     "val/test mean within max_mean_shift training stds of the training mean",
                     column="heldout_mean_shift", min_value=0.0, max_value=max_mean_shift)]
        failures += _failures(run_checkpoint("feature_dimensions", table, dim_exp, docs_dir))
        n_exp += len(dim_exp)
    docs = Path(docs_dir) / DOCS_INDEX if docs_dir is not None else None
    return CheckReport("features", ", ".join(arrays), n_rows, n_exp, tuple(failures), docs)


CONSTANT_STD = 1e-8
"""A training standard deviation at or below this marks a dimension that carries no information."""


def _dimension_table(name: str, arr: np.ndarray, finite: np.ndarray, splits: Sequence[str]) -> pd.DataFrame:
    """Per dimension of `arr` (last axis): the training rows' std and the held-out rows' mean shift in those stds."""
    flat = arr.reshape(arr.shape[0], -1, arr.shape[-1]).mean(axis=1).astype(np.float64)  # (N, D)
    split = np.asarray(splits)
    if len(split) != len(flat):
        raise ValueError(f"features {name!r}: {len(flat)} rows but {len(split)} splits")
    train, held = flat[(split == "train") & finite], flat[(split != "train") & finite]
    if len(train) < 2:
        return pd.DataFrame()
    std = train.std(axis=0)
    shift = np.abs(held.mean(axis=0) - train.mean(axis=0)) / np.maximum(std, CONSTANT_STD) if len(held) else \
        np.zeros(flat.shape[1])
    return pd.DataFrame({"id": [f"{name}[d{j}]" for j in range(flat.shape[1])], "train_std": std,
                         "heldout_mean_shift": shift})
