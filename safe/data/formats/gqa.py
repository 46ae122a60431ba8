"""GQA: balanced questions JSON keyed by question id -> VL-only manifest rows (family "vl").

{"<qid>": {"imageId": "2354786", "question": "...", "answer": "yes", "fullAnswer": "...",
           "types": {"structural": "verify", "semantic": "rel", "detailed": "..."}, ...}, ...}
Images: {imageId}.jpg anywhere under the media root. The split comes from the file name
(train_balanced_questions.json, val_..., testdev_...) unless given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from safe.data.formats.base import (
    Adapter,
    BadRow,
    Candidate,
    FormatError,
    RowError,
    load_json,
    require,
    resolve_split,
)


def parse(path: Path, questions: Path | None, split: str | None) -> Iterator[Candidate | BadRow]:
    doc = load_json(path)
    if not isinstance(doc, dict):
        raise FormatError(f"{path}: expected a JSON object keyed by question id (official GQA format)")
    split = resolve_split(split, path)
    for qid, q in doc.items():
        where = f"{path.name} [{qid!r}]"
        try:
            image_id = require(q, "imageId", str, where)
            text = require(q, "question", str, where)
            answer = require(q, "answer", str, where)
        except RowError as err:
            yield BadRow.of(err)
            continue
        types = q.get("types") if isinstance(q.get("types"), dict) else {}
        yield Candidate(
            id=f"gqa-{qid}",
            split=split,
            family="vl",
            question=text,
            answer=answer,
            needs_audio=False,
            image_names=(image_id,),
            image_required=True,
            extras={
                "question_id": qid,
                "image_id": image_id,
                "full_answer": q.get("fullAnswer"),
                "structural": types.get("structural"),
                "semantic": types.get("semantic"),
            },
        )


ADAPTER = Adapter("gqa", "gqa", ("vl",), parse)
ingest = ADAPTER.ingest
