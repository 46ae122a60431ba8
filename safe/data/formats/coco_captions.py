"""COCO Captions: captions_{split}2014.json -> one captioning example per image (family "caption").

{"images": [{"id", "file_name", ...}], "annotations": [{"id", "image_id", "caption"}, ...]}
Question "describe the image."; answer = the image's first caption (in annotation order), `answers` = all
of them (for caption metrics). Images: the listed file_name anywhere under the media root.
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

QUESTION = "describe the image."


def parse(path: Path, questions: Path | None, split: str | None) -> Iterator[Candidate | BadRow]:
    doc = load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(
        doc.get("annotations"), list
    ):
        raise FormatError(f"{path}: expected a JSON object with 'images' and 'annotations' lists (COCO format)")
    split = resolve_split(split, path)

    captions: dict[int, list[str]] = {}
    for i, ann in enumerate(doc["annotations"]):
        where = f"{path.name} annotations[{i}]"
        try:
            image_id = require(ann, "image_id", int, where)
            caption = require(ann, "caption", str, where).strip()
            if not caption:
                raise RowError(where, "empty caption")
        except RowError as err:
            yield BadRow.of(err)
            continue
        captions.setdefault(image_id, []).append(caption)

    for i, img in enumerate(doc["images"]):
        where = f"{path.name} images[{i}]"
        try:
            image_id = require(img, "id", int, where)
            file_name = require(img, "file_name", str, where)
            if image_id not in captions:
                raise RowError(where, f"image id {image_id} has no caption in 'annotations'")
        except RowError as err:
            yield BadRow.of(err)
            continue
        caps = captions[image_id]
        yield Candidate(
            id=f"coco-{image_id}",
            split=split,
            family="caption",
            question=QUESTION,
            answer=caps[0],
            answers=tuple(caps),
            needs_audio=False,
            image_names=(Path(file_name).stem, f"{image_id:012d}"),
            image_required=True,
            extras={"image_id": image_id},
        )


ADAPTER = Adapter("coco-captions", "coco", ("caption",), parse)
ingest = ADAPTER.ingest
