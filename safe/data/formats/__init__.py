"""Adapters that turn real datasets' official annotation files into SAFE manifests.

`FORMATS` maps the `safe ingest FORMAT` name to the adapter's `ingest(annotations, media_root, out,
questions=None, split=None, on_error="raise") -> IngestReport`. `FAMILIES` lists every family the adapters
emit (what `safe validate` accepts besides the synthetic families).
"""

from __future__ import annotations

from typing import Callable

from safe.data.formats import audiocaps, avqa, clotho, coco_captions, gqa, vggsound, vqav2
from safe.data.formats.base import Adapter, FormatError, IngestReport, RowError

ADAPTERS: dict[str, Adapter] = {
    m.ADAPTER.format: m.ADAPTER for m in (vqav2, gqa, coco_captions, avqa, audiocaps, clotho, vggsound)
}
FORMATS: dict[str, Callable[..., IngestReport]] = {name: a.ingest for name, a in ADAPTERS.items()}
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(f for a in ADAPTERS.values() for f in a.families))


def get_format(name: str) -> Callable[..., IngestReport]:
    """The ingest function registered under `name`; ValueError listing the known names otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ValueError(f"unknown dataset format {name!r}; known: {', '.join(FORMATS)}") from None


__all__ = ["ADAPTERS", "FAMILIES", "FORMATS", "Adapter", "FormatError", "IngestReport", "RowError", "get_format"]
