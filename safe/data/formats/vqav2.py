"""VQAv2: official questions JSON + annotations JSON -> VL-only manifest rows (family "vl").

questions: {"data_subtype": "val2014", "questions": [{"image_id", "question", "question_id"}, ...]}
annotations: {"annotations": [{"question_id", "image_id", "answers": [{"answer", ...} x10],
              "multiple_choice_answer", "answer_type", "question_type"}, ...]}
Images: COCO_{data_subtype}_{image_id:012d}.jpg anywhere under the media root (COCO 2017's {image_id:012d}.jpg
is accepted too). The 10 human answers are kept in `answers` for VQA soft accuracy.
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
    split_from_name,
)


def parse(annotations: Path, questions: Path | None, split: str | None) -> Iterator[Candidate | BadRow]:
    assert questions is not None  # Adapter.ingest checks needs_questions
    q_doc = load_json(questions)
    a_doc = load_json(annotations)
    q_list = _top_list(q_doc, "questions", questions)
    a_list = _top_list(a_doc, "annotations", annotations)
    subtype = q_doc.get("data_subtype") or a_doc.get("data_subtype")
    if not isinstance(subtype, str):
        raise FormatError(f"{questions}: missing 'data_subtype' (e.g. 'val2014'), needed for image file names")
    if split is None:
        split = split_from_name(subtype)
    split = resolve_split(split, questions)

    by_qid: dict[int, tuple[int, dict]] = {}
    for i, ann in enumerate(a_list):
        where = f"{annotations.name} annotations[{i}]"
        try:
            qid = require(ann, "question_id", int, where)
        except RowError as err:
            yield BadRow.of(err)
            continue
        by_qid[qid] = (i, ann)

    for i, q in enumerate(q_list):
        where = f"{questions.name} questions[{i}]"
        try:
            qid = require(q, "question_id", int, where)
            image_id = require(q, "image_id", int, where)
            text = require(q, "question", str, where)
            if qid not in by_qid:
                raise RowError(where, f"question_id {qid} has no entry in {annotations.name}")
            j, ann = by_qid[qid]
            a_where = f"{annotations.name} annotations[{j}]"
            answer = require(ann, "multiple_choice_answer", str, a_where)
            raw = require(ann, "answers", list, a_where)
            answers = tuple(require(a, "answer", str, f"{a_where}.answers[{k}]") for k, a in enumerate(raw))
        except RowError as err:
            yield BadRow.of(err)
            continue
        yield Candidate(
            id=f"vqav2-{qid}",
            split=split,
            family="vl",
            question=text,
            answer=answer,
            answers=answers,
            needs_audio=False,
            image_names=(f"COCO_{subtype}_{image_id:012d}", f"{image_id:012d}"),
            image_required=True,
            extras={
                "question_id": qid,
                "image_id": image_id,
                "answer_type": ann.get("answer_type"),
                "question_type": ann.get("question_type"),
            },
        )


def _top_list(doc: object, key: str, path: Path) -> list:
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise FormatError(f"{path}: expected a JSON object with a {key!r} list (official VQAv2 format)")
    return doc[key]


ADAPTER = Adapter("vqav2", "vqav2", ("vl",), parse, needs_questions=True)
ingest = ADAPTER.ingest
