"""Combine several manifests (e.g. one per `safe ingest` source) into one training manifest.

- Ids must be unique across the inputs: a clash names both files and stops before anything is written.
- Media paths are rewritten relative to the output's folder, so they still resolve; a missing file is named.
- A source whose rows all carry one split (VQAv2 val, an AudioCaps test CSV) is re-split train/val/test by a hash
  of each row's id: deterministic, independent of row order and of the other sources. Sources that come with
  several splits keep theirs, so validation and test stay the datasets' own held-out rows.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from safe.data.manifest import SPLITS, ManifestRecord, read_manifest, relative_media_path, write_manifest

ORIGINAL_SPLIT = "source_split"
"""The extras key that keeps a re-split row's split as the source gave it."""


class MergeError(ValueError):
    """The inputs cannot be merged; the message names the file, row id or option and what to do."""


@dataclass(frozen=True)
class SplitRatios:
    """Shares of val and test for sources that arrive with a single split (the rest is train)."""

    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        for name, share in (("val", self.val), ("test", self.test)):
            if not 0.0 <= share < 1.0:
                raise MergeError(f"{name} ratio must be in [0, 1), got {share}")
        if self.val + self.test >= 1.0:
            raise MergeError(f"val + test ratios must leave rows for train, got {self.val} + {self.test}")

    def split_of(self, example_id: str) -> str:
        """train / val / test from a hash of the id: the same id always lands in the same split."""
        digest = hashlib.sha256(example_id.encode("utf-8")).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
        if u < self.test:
            return "test"
        return "val" if u < self.test + self.val else "train"


@dataclass
class MergeReport:
    """What `merge_manifests` wrote: rows per source and split, and which sources were re-split."""

    out: Path
    counts: dict[str, collections.Counter] = field(default_factory=dict)  # source -> Counter(split)
    resplit: dict[str, str] = field(default_factory=dict)  # source -> the one split it arrived with

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def summary(self) -> str:
        lines = [f"merge: wrote {self.total} examples from {len(self.counts)} source(s) -> {self.out}",
                 f"  {'source':<16}{'train':>8}{'val':>8}{'test':>8}  note"]
        for source, counts in sorted(self.counts.items()):
            note = f"re-split by id hash (arrived as {self.resplit[source]} only)" if source in self.resplit else ""
            lines.append(f"  {source:<16}" + "".join(f"{counts.get(s, 0):>8}" for s in SPLITS) + f"  {note}".rstrip())
        return "\n".join(lines)

    __str__ = summary


def merge_manifests(inputs: Sequence[str | os.PathLike], out: str | os.PathLike,
                    ratios: SplitRatios = SplitRatios()) -> MergeReport:
    """Read every input manifest, check ids and media, assign splits, and write one manifest at `out`."""
    if not inputs:
        raise MergeError("give at least one input manifest")
    out = Path(out).absolute()
    manifests = [read_manifest(p) for p in inputs]  # ManifestError names the file and line
    first_seen: dict[str, Path] = {}
    for manifest in manifests:
        for record in manifest.records:
            if record.id in first_seen:
                raise MergeError(f"id {record.id!r} is in both {first_seen[record.id]} and {manifest.path}; ids must "
                                 f"be unique across the inputs (re-ingest one of them or rename its ids)")
            first_seen[record.id] = manifest.path
    splits_by_source: dict[str, set[str]] = collections.defaultdict(set)
    for manifest in manifests:
        for record in manifest.records:
            splits_by_source[record.source].add(record.split)
    single = {source: next(iter(s)) for source, s in splits_by_source.items() if len(s) == 1}
    report = MergeReport(out=out, resplit=dict(single))
    merged: list[ManifestRecord] = []
    for manifest in manifests:
        for record in manifest.records:
            media = {name: _moved(manifest, record, name, out.parent) for name in ("image", "audio")}
            extras = dict(record.extras)
            split = record.split
            if record.source in single:
                extras[ORIGINAL_SPLIT] = record.split
                split = ratios.split_of(record.id)
            merged.append(dataclasses.replace(record, split=split, extras=extras, **media))
            report.counts.setdefault(record.source, collections.Counter())[split] += 1
    write_manifest(merged, out)
    return report


def _moved(manifest, record: ManifestRecord, name: str, out_dir: Path) -> str | None:
    """The record's media path `name`, relative to `out_dir`; MergeError when the file is not there."""
    path = manifest.resolve(getattr(record, name))
    if path is None:
        return None
    if not path.is_file():
        raise MergeError(f"{manifest.path}: row {record.id!r}: {name} file not found: {path}")
    return relative_media_path(path, out_dir)
