"""The manifest: one JSON object per line describing one question-answer example.

Every data source (the synthetic benchmark, real dataset adapters) writes this one format, and every later
stage reads it. Media paths are stored relative to the manifest's folder so the folder can be moved or
cached by DVC; `Manifest.resolve` turns them back into absolute paths.

Bad rows never pass silently: `read_manifest(..., on_error="raise")` raises `ManifestError` naming the
file and line, and `on_error="skip"` drops the row but lists it in `Manifest.skipped`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Iterator, Mapping

from safe.io import atomic_write

SPLITS = ("train", "val", "test")

# Field name -> (allowed Python types, required). `bool` is checked separately because it subclasses int.
_REQUIRED_STR = ("id", "split", "source", "family", "question", "answer")
_OPTIONAL_PATH = ("image", "audio")
KNOWN_FIELDS = (*_REQUIRED_STR, "answers", *_OPTIONAL_PATH, "needs_audio", "audio_span", "extras")


class ManifestError(ValueError):
    """A manifest row (or the file) is malformed; the message starts with `<file> line <n>:`.

    `reason` is the message without the location prefix (what `Manifest.skipped` reports).
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason if reason is not None else message


@dataclass(frozen=True)
class ManifestRecord:
    """One example. `image`/`audio` are paths relative to the manifest folder (posix), or None.

    Unknown keys found in a JSON row are kept in `extras` (merged with an explicit `extras` object), so
    adapters can carry dataset-specific attributes without changing the schema. `audio_span` (start, end) in seconds
    is where in the clip the answer is heard, when the source knows it (a timestamped event): Stage A's grounding
    loss points the fusion attention there.
    """

    id: str
    split: str
    source: str
    family: str
    question: str
    answer: str
    image: str | None = None
    audio: str | None = None
    needs_audio: bool = False
    answers: tuple[str, ...] | None = None
    audio_span: tuple[float, float] | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Accept a list for convenience but store a tuple so the frozen record is really immutable/hashable-ish.
        if self.answers is not None and not isinstance(self.answers, tuple):
            object.__setattr__(self, "answers", tuple(self.answers))
        if isinstance(self.audio_span, list):
            object.__setattr__(self, "audio_span", tuple(self.audio_span))
        problem = _validate(self)
        if problem:
            raise ManifestError(f"record {self.id!r}: {problem}", reason=problem)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict with a stable key order (so written manifests are byte-reproducible)."""
        out: dict[str, Any] = {
            "id": self.id,
            "split": self.split,
            "source": self.source,
            "family": self.family,
            "question": self.question,
            "answer": self.answer,
        }
        if self.answers is not None:
            out["answers"] = list(self.answers)
        out["image"] = self.image
        out["audio"] = self.audio
        out["needs_audio"] = self.needs_audio
        if self.audio_span is not None:
            out["audio_span"] = list(self.audio_span)
        if self.extras:
            out["extras"] = dict(self.extras)
        return out

    @classmethod
    def from_json(cls, row: Any, where: str = "row") -> "ManifestRecord":
        """Build a record from a parsed JSON object; `where` (e.g. "manifest.jsonl line 17") prefixes errors."""
        if not isinstance(row, dict):
            raise _located(where, f"expected a JSON object, got {_jtype(row)}")
        for name in (*_REQUIRED_STR, "needs_audio"):
            if name not in row:
                raise _located(where, f"missing field {name!r}")
        for name in _REQUIRED_STR:
            if not isinstance(row[name], str):
                raise _located(where, f"field {name!r} must be a string, got {_jtype(row[name])}")
        if not isinstance(row["needs_audio"], bool):
            raise _located(where, f"field 'needs_audio' must be true/false, got {_jtype(row['needs_audio'])}")
        for name in _OPTIONAL_PATH:
            value = row.get(name)
            if value is not None and not isinstance(value, str):
                raise _located(where, f"field {name!r} must be a string path or null, got {_jtype(value)}")
        answers = row.get("answers")
        if answers is not None and (not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)):
            raise _located(where, "field 'answers' must be a list of strings")
        extras = row.get("extras", {})
        if extras is None:
            extras = {}
        if not isinstance(extras, dict):
            raise _located(where, f"field 'extras' must be an object, got {_jtype(extras)}")
        unknown = {k: v for k, v in row.items() if k not in KNOWN_FIELDS}
        try:
            return cls(
                id=row["id"],
                split=row["split"],
                source=row["source"],
                family=row["family"],
                question=row["question"],
                answer=row["answer"],
                image=row.get("image"),
                audio=row.get("audio"),
                needs_audio=row["needs_audio"],
                answers=tuple(answers) if answers is not None else None,
                audio_span=row.get("audio_span"),
                extras={**extras, **unknown},
            )
        except ManifestError as err:
            # Re-label the dataclass check with the file/line location.
            raise _located(where, err.reason) from None


def _located(where: str, reason: str) -> ManifestError:
    return ManifestError(f"{where}: {reason}", reason=reason)


def _jtype(value: Any) -> str:
    """JSON-flavoured type name for error messages."""
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _validate(rec: ManifestRecord) -> str | None:
    """Semantic checks shared by construction and reading; returns a problem description or None."""
    for name in _REQUIRED_STR:
        value = getattr(rec, name)
        if not isinstance(value, str):
            return f"field {name!r} must be a string, got {_jtype(value)}"
    if not rec.id.strip():
        return "field 'id' is empty"
    if rec.split not in SPLITS:
        return f"field 'split' is {rec.split!r}, expected one of {', '.join(SPLITS)}"
    if not rec.question.strip():
        return "field 'question' is empty"
    if not rec.answer.strip():
        return "field 'answer' is empty"
    if not isinstance(rec.needs_audio, bool):
        return f"field 'needs_audio' must be true/false, got {_jtype(rec.needs_audio)}"
    for name in _OPTIONAL_PATH:
        value = getattr(rec, name)
        if value is not None and (not isinstance(value, str) or not value):
            return f"field {name!r} must be a non-empty path or null"
    if rec.needs_audio and rec.audio is None:
        return "needs_audio is true but 'audio' is null"
    if rec.image is None and rec.audio is None:
        return "example has neither 'image' nor 'audio'"
    if not isinstance(rec.extras, Mapping):
        return f"field 'extras' must be an object, got {_jtype(rec.extras)}"
    return _span_problem(rec)


def _span_problem(rec: ManifestRecord) -> str | None:
    span = rec.audio_span
    if span is None:
        return None
    if not isinstance(span, tuple) or len(span) != 2 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in span):
        return f"field 'audio_span' must be [start, end] in seconds (two finite numbers) or null, got {span!r}"
    if not 0 <= span[0] < span[1]:
        return f"field 'audio_span' {list(span)} needs 0 <= start < end (seconds into the clip)"
    if rec.audio is None:
        return "field 'audio_span' is set but 'audio' is null"
    return None


@dataclass(frozen=True)
class SkippedRow:
    """A row dropped under on_error="skip": its 1-based line number and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class Manifest:
    """Records read from one manifest file, with the folder their media paths are relative to."""

    path: Path
    records: tuple[ManifestRecord, ...]
    skipped: tuple[SkippedRow, ...] = ()

    @property
    def root(self) -> Path:
        """The folder holding the manifest; media paths are relative to it."""
        return self.path.parent

    def resolve(self, rel: str | None) -> Path | None:
        """Absolute path of a media entry (`record.image` / `record.audio`); None stays None."""
        if rel is None:
            return None
        p = Path(rel)
        return p if p.is_absolute() else (self.root / p).resolve()

    def by_split(self, split: str) -> list[ManifestRecord]:
        """Records of one split, in file order."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}, expected one of {', '.join(SPLITS)}")
        return [r for r in self.records if r.split == split]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[ManifestRecord]:
        return iter(self.records)


def read_manifest(path: str | os.PathLike, on_error: str = "raise") -> Manifest:
    """Read and validate a JSONL manifest.

    on_error="raise": the first bad row raises `ManifestError("<name> line <n>: <what>")`.
    on_error="skip": bad rows (broken JSON, missing/mistyped fields, duplicate ids) are dropped and reported
    in `Manifest.skipped`. Blank lines are ignored. A missing file always raises.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    path = Path(path).absolute()
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    records: list[ManifestRecord] = []
    skipped: list[SkippedRow] = []
    seen: dict[str, int] = {}
    with path.open("rb") as fh:
        for lineno, raw_line in enumerate(fh, start=1):
            where = f"{path.name} line {lineno}"
            try:
                line = raw_line.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                line = None
                problem = _located(where, f"not UTF-8 text (byte 0x{raw_line[err.start]:02x} at column "
                                          f"{err.start + 1}); save the manifest as UTF-8")
                if on_error == "raise":
                    raise problem from None
                skipped.append(SkippedRow(lineno, problem.reason))
                continue
            if not line.strip():
                continue
            try:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise _located(where, f"invalid JSON ({err.msg} at column {err.colno})") from None
                rec = ManifestRecord.from_json(row, where)
                if rec.id in seen:
                    raise _located(where, f"duplicate id {rec.id!r} (first seen on line {seen[rec.id]})")
            except ManifestError as err:
                if on_error == "raise":
                    raise
                skipped.append(SkippedRow(lineno, err.reason))
                continue
            seen[rec.id] = lineno
            records.append(rec)
    return Manifest(path=path, records=tuple(records), skipped=tuple(skipped))


def write_manifest(records: Iterable[ManifestRecord], path: str | os.PathLike) -> Path:
    """Write records as JSONL atomically (temp file in the same folder, then os.replace).

    Duplicate ids raise before anything is written. Output is byte-stable: fixed key order, sorted extras keys.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    seen: set[str] = set()
    for i, rec in enumerate(records):
        if rec.id in seen:
            raise ManifestError(f"{path.name}: record {i}: duplicate id {rec.id!r}")
        seen.add(rec.id)
        row = rec.to_json()
        if "extras" in row:
            row["extras"] = dict(sorted(row["extras"].items()))
        lines.append(json.dumps(row, ensure_ascii=False, separators=(", ", ": ")))
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes via a temp file in the same folder and os.replace (no half-written files)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def relative_media_path(abs_path: str | os.PathLike, manifest_dir: str | os.PathLike) -> str:
    """Path of a media file relative to the manifest folder, posix-style (may use `..`)."""
    rel = os.path.relpath(os.path.abspath(abs_path), os.path.abspath(manifest_dir))
    return PurePosixPath(*Path(rel).parts).as_posix()
