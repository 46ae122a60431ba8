"""VGGSound: vggsound.csv WITHOUT a header, rows youtube_id,start_seconds,label,split -> sound classification.

Question "what is making the sound?", answer = label; family "audio", needs_audio True. The split column
("train"/"test") sets each row's split unless `split` overrides it. Media: {youtube_id}_{start:06d} (the
released naming), {youtube_id}_{start} or {youtube_id} as audio (.wav/.flac/...) or video (.mp4/...; wav and
a frame are extracted with PyAV) under the media root; a frame image of that name is attached when present.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from safe.data.formats.base import (
    Adapter,
    BadRow,
    Candidate,
    RowError,
    cell,
    read_csv,
    resolve_split,
    split_from_name,
)

QUESTION = "what is making the sound?"
COLUMNS = ("youtube_id", "start_seconds", "label", "split")


def parse(path: Path, questions: Path | None, split: str | None) -> Iterator[Candidate | BadRow]:
    forced = resolve_split(split, path) if split is not None else None
    for where, row in read_csv(path, COLUMNS, header=False):
        try:
            youtube_id = cell(row, "youtube_id", where)
            start = cell(row, "start_seconds", where, int)
            label = cell(row, "label", where)
            row_split = forced or split_from_name(cell(row, "split", where))
            if row_split is None:
                raise RowError(where, f"unknown split {row['split']!r} (expected train/test)")
        except RowError as err:
            yield BadRow.of(err)
            continue
        names = (f"{youtube_id}_{start:06d}", f"{youtube_id}_{start}", youtube_id)
        yield Candidate(
            id=f"vggsound-{youtube_id}_{start:06d}",
            split=row_split,
            family="audio",
            question=QUESTION,
            answer=label,
            needs_audio=True,
            image_names=names,
            audio_names=names,
            audio_required=True,
            extras={"youtube_id": youtube_id, "start_seconds": start},
        )


ADAPTER = Adapter("vggsound", "vggsound", ("audio",), parse)
ingest = ADAPTER.ingest
