"""Clotho: clotho_captions_{development,validation,evaluation}.csv -> audio captioning (family "audio_caption").

Header: file_name,caption_1,...,caption_5. answer = caption_1, answers = the five captions. Audio: the named
file anywhere under the media root (other audio extensions of the same stem are accepted). The split comes
from the file name (development -> train, validation -> val, evaluation -> test) unless given.
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
)

QUESTION = "describe the sound."
CAPTIONS = tuple(f"caption_{k}" for k in range(1, 6))


def parse(path: Path, questions: Path | None, split: str | None) -> Iterator[Candidate | BadRow]:
    split = resolve_split(split, path)
    for where, row in read_csv(path, ("file_name", *CAPTIONS)):
        try:
            file_name = cell(row, "file_name", where)
            captions = tuple(cell(row, c, where) for c in CAPTIONS)
        except RowError as err:
            yield BadRow.of(err)
            continue
        stem = Path(file_name).stem
        yield Candidate(
            id=f"clotho-{stem}",
            split=split,
            family="audio_caption",
            question=QUESTION,
            answer=captions[0],
            answers=captions,
            needs_audio=True,
            audio_names=(stem,),
            audio_required=True,
            extras={"file_name": file_name},
        )


ADAPTER = Adapter("clotho", "clotho", ("audio_caption",), parse)
ingest = ADAPTER.ingest
