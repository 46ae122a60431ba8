"""AudioCaps: {train,val,test}.csv with header audiocap_id,youtube_id,start_time,caption -> audio captioning.

One example per clip (youtube_id, start_time): val/test list 5 captions per clip, all kept in `answers`; the
answer is the first. Family "audio_caption", needs_audio True. Audio: any of {youtube_id}_{start_time},
Y{youtube_id}, {youtube_id}, {audiocap_id} (.wav/.flac/...) under the media root, else a video of that name
(wav + frame extracted with PyAV). A frame image of the same name is attached when it exists.
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
COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def parse(path: Path, questions: Path | None, split: str | None) -> Iterator[Candidate | BadRow]:
    split = resolve_split(split, path)
    clips: dict[tuple[str, int], list[tuple[str, str]]] = {}  # (youtube_id, start) -> [(audiocap_id, caption)]
    for where, row in read_csv(path, COLUMNS):
        try:
            cap_id = cell(row, "audiocap_id", where)
            youtube_id = cell(row, "youtube_id", where)
            start = cell(row, "start_time", where, int)
            caption = cell(row, "caption", where)
        except RowError as err:
            yield BadRow.of(err)
            continue
        clips.setdefault((youtube_id, start), []).append((cap_id, caption))
    for (youtube_id, start), caps in clips.items():
        names = (f"{youtube_id}_{start}", f"{youtube_id}_{start:06d}", f"Y{youtube_id}", youtube_id, caps[0][0])
        yield Candidate(
            id=f"audiocaps-{caps[0][0]}",
            split=split,
            family="audio_caption",
            question=QUESTION,
            answer=caps[0][1],
            answers=tuple(c for _, c in caps),
            needs_audio=True,
            image_names=names,
            audio_names=names,
            audio_required=True,
            extras={"youtube_id": youtube_id, "start_time": start, "audiocap_ids": [i for i, _ in caps]},
        )


ADAPTER = Adapter("audiocaps", "audiocaps", ("audio_caption",), parse)
ingest = ADAPTER.ingest
