"""Shared machinery of the real-dataset adapters: parse annotations -> locate media -> write a manifest.

Each adapter module only knows its dataset's annotation format. It yields `Candidate` examples (or `BadRow`
for a malformed annotation row) and hands them to `run_ingest`, which

- finds each example's media under `media_root` by file name, whatever the sub-folder layout (`MediaIndex`),
- falls back to a video file and extracts a frame and a 16 kHz wav from it with PyAV when the pre-extracted
  media is absent (`safe.data.formats.video`),
- skips examples whose media is missing or unextractable, counting them and naming them in the report (dead
  YouTube ids are common in AudioCaps/VGGSound/AVQA), and
- writes the manifest atomically with media paths relative to the manifest's folder.

Malformed annotation files always raise `FormatError` naming the file; a malformed row raises with its row
(CSV line) or index (JSON list position / key) under on_error="raise", or is skipped and reported under "skip".
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from safe.data.formats.video import extract_media
from safe.data.manifest import SPLITS, ManifestError, ManifestRecord, relative_media_path, write_manifest
from safe.data.media import MediaError

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
ON_ERROR = ("raise", "skip")

# Words in annotation file names (or dataset split columns) -> our split names.
SPLIT_ALIASES = {
    "train": "train",
    "development": "train",  # Clotho
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testdev": "test",  # GQA test-dev
    "evaluation": "test",  # Clotho
}
_SPLIT_IN_NAME = re.compile(r"(?<![a-z])(testdev|test|train|validation|valid|val|development|evaluation)")


class FormatError(ValueError):
    """An annotation file (or one of its rows) is malformed; the message names the file and row/index."""


class RowError(FormatError):
    """One malformed row: `where` ("train.csv row 7", "questions.json questions[3]") and `reason`."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class Candidate:
    """One example parsed from annotations, before its media is located.

    `image_names` / `audio_names` are file stems (no extension) to look for, most specific first; a video
    with one of `audio_names` (else `image_names`) is the fallback source for both. `image_required=False`
    attaches a frame only when one exists.
    """

    id: str
    split: str
    family: str
    question: str
    answer: str
    needs_audio: bool
    answers: tuple[str, ...] | None = None
    image_names: tuple[str, ...] = ()
    audio_names: tuple[str, ...] = ()
    image_required: bool = False
    audio_required: bool = False
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BadRow:
    """A malformed annotation row: `where` is e.g. "train.csv row 7" or "questions.json questions[3]"."""

    where: str
    reason: str

    @classmethod
    def of(cls, err: RowError) -> "BadRow":
        return cls(err.where, err.reason)


@dataclass(frozen=True)
class Skipped:
    """An example left out of the manifest: its id (or row) and why."""

    name: str
    reason: str


@dataclass
class IngestReport:
    """What one `ingest` call did. `str(report)` is the readable summary printed by `safe ingest`."""

    format: str
    annotations: Path
    manifest: Path
    kept: int = 0
    extracted: int = 0  # examples whose frame/wav came from a video via PyAV
    missing_media: list[Skipped] = field(default_factory=list)
    bad_rows: list[Skipped] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.missing_media) + len(self.bad_rows)

    def summary(self, limit: int = 5) -> str:
        lines = [f"{self.format}: kept {self.kept} examples -> {self.manifest}"]
        if self.extracted:
            lines.append(f"  extracted frame/audio from video for {self.extracted}")
        for title, items in (("missing media", self.missing_media), ("malformed rows", self.bad_rows)):
            if not items:
                continue
            lines.append(f"  skipped {len(items)} ({title}):")
            lines += [f"    {s.name}: {s.reason}" for s in items[:limit]]
            if len(items) > limit:
                lines.append(f"    ... and {len(items) - limit} more")
        if not self.skipped:
            lines.append("  skipped 0")
        return "\n".join(lines)

    __str__ = summary


class MediaIndex:
    """All files under a media root, found by file stem + extension whatever the sub-folder layout.

    Walking once (sorted, so the choice between same-named files is deterministic) is much cheaper than
    probing several candidate paths per example on a dataset of 100k files.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FormatError(f"media root {self.root} is not a folder")
        self._files: dict[str, dict[str, Path]] = {}  # stem -> {".ext": path}
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                stem, ext = os.path.splitext(name)
                self._files.setdefault(stem, {}).setdefault(ext.lower(), Path(dirpath) / name)

    def find(self, stems: Iterable[str], exts: Sequence[str]) -> Path | None:
        for stem in stems:
            by_ext = self._files.get(stem)
            if by_ext:
                for ext in exts:
                    if ext in by_ext:
                        return by_ext[ext]
        return None


def split_from_name(name: str) -> str | None:
    """Our split name for a split word or a file name containing one ("val2014", "train_qa.json"), else None."""
    low = name.lower()
    if low in SPLIT_ALIASES:
        return SPLIT_ALIASES[low]
    m = _SPLIT_IN_NAME.search(low)
    return SPLIT_ALIASES[m.group(1)] if m else None


def resolve_split(explicit: str | None, path: Path) -> str:
    """`explicit` (validated) or the split named in the annotation file's name."""
    if explicit is not None:
        split = SPLIT_ALIASES.get(explicit.lower())
        if split is None:
            raise FormatError(f"unknown split {explicit!r}; use one of {', '.join(SPLITS)}")
        return split
    split = split_from_name(path.name)
    if split is None:
        raise FormatError(f"{path}: cannot tell the split from the file name; pass split= (--split)")
    return split


def load_json(path: Path) -> Any:
    """Parse a JSON annotation file; a missing or broken file raises FormatError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: annotation file not found")
    try:
        with path.open("r", encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise FormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def read_csv(path: Path, columns: Sequence[str], header: bool = True) -> Iterator[tuple[str, dict[str, str | None]]]:
    """Yield ("<file> row <line>", row dict) for each non-blank CSV row.

    With `header=True` the file's header must contain `columns` (extra columns are kept); with `header=False`
    rows are mapped positionally onto `columns`. Cells a short row lacks are None, so `cell` reports them
    as a row error (skippable) rather than the whole file failing.
    """
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: annotation file not found")
    with path.open("r", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        names = list(columns)
        try:
            if header:
                first = next(reader, None)
                if first is None:
                    raise FormatError(f"{path}: empty CSV file (expected header {','.join(columns)})")
                names = [c.strip().lstrip("\ufeff") for c in first]
                missing = [c for c in columns if c not in names]
                if missing:
                    raise FormatError(
                        f"{path} row 1: header is missing column(s) {', '.join(missing)} (found {','.join(names)})"
                    )
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue
                padded = row + [None] * (len(names) - len(row))
                yield f"{path.name} row {reader.line_num}", dict(zip(names, padded))
        except csv.Error as err:
            raise FormatError(f"{path} row {reader.line_num}: unreadable CSV ({err})") from None
        except UnicodeDecodeError as err:
            raise FormatError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def cell(row: Mapping[str, str | None], name: str, where: str, kind: type = str) -> Any:
    """A non-empty CSV cell converted to `kind` (str/int/float); RowError naming `where` otherwise."""
    value = row.get(name)
    if value is None:
        raise RowError(where, f"missing field {name!r} (row has too few fields)")
    value = value.strip()
    if not value:
        raise RowError(where, f"empty field {name!r}")
    if kind is str:
        return value
    try:
        number = float(value)
    except ValueError:
        raise RowError(where, f"field {name!r} must be a number, got {value!r}") from None
    if kind is int:
        if number != int(number):
            raise RowError(where, f"field {name!r} must be a whole number, got {value!r}")
        return int(number)
    return number


def require(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """`obj[key]` checked for presence and type; raises RowError naming `where` otherwise."""
    if not isinstance(obj, dict):
        raise RowError(where, f"expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise RowError(where, f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise RowError(where, f"field {key!r} must be {names}, got {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


@dataclass(frozen=True)
class Adapter:
    """One dataset format: its `safe ingest` name, manifest `source`, the families it emits and its parser.

    `parse(annotations, questions, split)` yields Candidate/BadRow; `questions` is the second annotation file
    of formats that split questions from answers (`needs_questions`), else None.
    """

    format: str
    source: str
    families: tuple[str, ...]
    parse: Callable[[Path, Path | None, str | None], Iterable[Candidate | BadRow]]
    needs_questions: bool = False

    def ingest(
        self,
        annotations: Path,
        media_root: Path,
        out: Path,
        questions: Path | None = None,
        split: str | None = None,
        on_error: str = "raise",
    ) -> IngestReport:
        """Read the annotations, locate media under `media_root`, write the manifest `out`; see run_ingest."""
        if self.needs_questions and questions is None:
            raise FormatError(f"{self.format} needs the questions file as well as the annotations (--questions)")
        items = self.parse(Path(annotations), Path(questions) if questions else None, split)
        return run_ingest(self.format, self.source, items, annotations, media_root, out, on_error)


def run_ingest(
    format_name: str,
    source: str,
    items: Iterable[Candidate | BadRow],
    annotations: Path,
    media_root: Path,
    out: Path,
    on_error: str = "raise",
) -> IngestReport:
    """Locate media for each candidate, extract from video where needed, and write the manifest at `out`."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    out = Path(out).absolute()
    manifest_dir = out.parent
    extract_dir = manifest_dir / "media" / source
    index = MediaIndex(media_root)
    report = IngestReport(format=format_name, annotations=Path(annotations), manifest=out)
    records: list[ManifestRecord] = []
    seen: set[str] = set()

    def bad(where: str, reason: str) -> None:
        if on_error == "raise":
            raise FormatError(f"{where}: {reason}")
        report.bad_rows.append(Skipped(where, reason))

    for item in items:
        if isinstance(item, BadRow):
            bad(item.where, item.reason)
            continue
        if item.id in seen:
            bad(f"{Path(annotations).name} {item.id}", "duplicate example id")
            continue
        image = index.find(item.image_names, IMAGE_EXTS)
        audio = index.find(item.audio_names, AUDIO_EXTS)
        if (item.image_required and image is None) or (item.audio_required and audio is None):
            # Pre-extracted media absent: fall back to the video (an optional frame comes along for free).
            video = index.find(item.audio_names or item.image_names, VIDEO_EXTS)
            if video is not None:
                stem = video.stem
                try:
                    got_image, got_audio = extract_media(
                        video,
                        image_out=extract_dir / f"{stem}.jpg" if image is None and item.image_names else None,
                        audio_out=extract_dir / f"{stem}.wav" if audio is None and item.audio_names else None,
                    )
                except MediaError as err:
                    report.missing_media.append(Skipped(item.id, f"video {video.name} unusable: {err}"))
                    continue
                image = image or got_image
                audio = audio or got_audio
                report.extracted += 1
        if (item.image_required and image is None) or (item.audio_required and audio is None):
            report.missing_media.append(Skipped(item.id, _missing_reason(item, image, audio)))
            continue
        try:
            record = ManifestRecord(
                id=item.id,
                split=item.split,
                source=source,
                family=item.family,
                question=item.question,
                answer=item.answer,
                answers=item.answers,
                image=relative_media_path(image, manifest_dir) if image else None,
                audio=relative_media_path(audio, manifest_dir) if audio else None,
                needs_audio=item.needs_audio,
                extras=dict(item.extras),
            )
        except ManifestError as err:
            bad(f"{Path(annotations).name} {item.id}", err.reason)
            continue
        seen.add(item.id)
        records.append(record)
    write_manifest(records, out)
    report.kept = len(records)
    return report


def _missing_reason(item: Candidate, image: Path | None, audio: Path | None) -> str:
    wanted = []
    if item.image_required and image is None:
        wanted.append(f"image {_names(item.image_names, IMAGE_EXTS)}")
    if item.audio_required and audio is None:
        wanted.append(f"audio {_names(item.audio_names, AUDIO_EXTS)}")
    return "missing " + " and ".join(wanted) + " (no video either)"


def _names(stems: Sequence[str], exts: Sequence[str]) -> str:
    shown = ", ".join(stems[:3]) + (", ..." if len(stems) > 3 else "")
    return f"{shown} ({'/'.join(e.lstrip('.') for e in exts[:3])})"
