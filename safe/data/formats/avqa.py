"""AVQA (Yang et al., ACM MM 2022): multiple-choice audio-visual QA on VGGSound videos.

train_qa.json / val_qa.json: a JSON list of
{"id": 183, "video_name": "-HG3Omg_89c_000030", "video_id": 341, "question_text": "...",
 "multi_choice": ["...", "...", "...", "..."], "answer": 1, "question_relation": "Both", "question_type": "..."}
`answer` indexes `multi_choice`. `question_relation` says which modality answers it:
"Both" -> audio_visual (needs audio), "Sound"/"Audio" -> audio (needs audio), "View"/"Visual" -> vl (the clip's
own audio is attached but not needed). The choices are appended to the question so a generative model can pick.
Media: a frame ({video_name}.jpg/.png) and a wav ({video_name}.wav/...) anywhere under the media root, or
the video itself ({video_name}.mp4/...), from which a middle frame and 16 kHz wav are extracted with PyAV.
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

# question_relation (lower-cased) -> (family, needs_audio)
RELATIONS = {
    "both": ("audio_visual", True),
    "sound": ("audio", True),
    "audio": ("audio", True),
    "hear": ("audio", True),
    "view": ("vl", False),
    "visual": ("vl", False),
    "vision": ("vl", False),
}


def format_question(text: str, choices: list[str]) -> str:
    return f"{text.strip()} choices: {' / '.join(c.strip() for c in choices)}"


def parse(path: Path, questions: Path | None, split: str | None) -> Iterator[Candidate | BadRow]:
    doc = load_json(path)
    if not isinstance(doc, list):
        raise FormatError(f"{path}: expected a JSON list of question objects (official AVQA format)")
    split = resolve_split(split, path)
    for i, q in enumerate(doc):
        where = f"{path.name} [{i}]"
        try:
            video = require(q, "video_name", str, where)
            text = require(q, "question_text", str, where)
            choices = require(q, "multi_choice", list, where)
            index = require(q, "answer", int, where)
            relation = require(q, "question_relation", str, where)
            if not choices or not all(isinstance(c, str) and c.strip() for c in choices):
                raise RowError(where, "'multi_choice' must be a non-empty list of non-empty strings")
            if not 0 <= index < len(choices):
                raise RowError(where, f"'answer' index {index} is outside multi_choice (0..{len(choices) - 1})")
            if relation.strip().lower() not in RELATIONS:
                known = ", ".join(sorted(RELATIONS))
                raise RowError(where, f"unknown question_relation {relation!r} (known: {known})")
        except RowError as err:
            yield BadRow.of(err)
            continue
        family, needs_audio = RELATIONS[relation.strip().lower()]
        native_id = q.get("id", i)
        yield Candidate(
            id=f"avqa-{native_id}",
            split=split,
            family=family,
            question=format_question(text, choices),
            answer=choices[index].strip(),
            needs_audio=needs_audio,
            image_names=(video,),
            audio_names=(video,),
            image_required=True,
            audio_required=True,
            extras={
                "video_name": video,
                "video_id": q.get("video_id"),
                "question_text": text,
                "choices": list(choices),
                "answer_index": index,
                "question_relation": relation,
                "question_type": q.get("question_type"),
            },
        )


ADAPTER = Adapter("avqa", "avqa", ("audio_visual", "audio", "vl"), parse)
ingest = ADAPTER.ingest
