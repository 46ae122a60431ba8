"""split_fingerprint: equal for the same test questions and media, different when any of them changes."""

from __future__ import annotations

import json

from safe.data.fingerprint import split_fingerprint
from safe.data.manifest import read_manifest


def _write(folder, rows, clip=b"RIFF-one"):
    (folder / "a.wav").write_bytes(clip)
    (folder / "i.png").write_bytes(b"PNG")
    path = folder / "manifest.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return read_manifest(path)


ROWS = [
    {"id": "t1", "split": "test", "source": "s", "family": "f", "question": "what?", "answer": "dog",
     "audio": "a.wav", "needs_audio": True},
    {"id": "t2", "split": "test", "source": "s", "family": "f", "question": "which?", "answer": "red", "image": "i.png", "needs_audio": False},
    {"id": "r1", "split": "train", "source": "s", "family": "f", "question": "how?", "answer": "two", "image": "i.png", "needs_audio": False},
]


def test_same_rows_in_any_order_and_other_splits_do_not_matter(tmp_path):
    base = split_fingerprint(_write(tmp_path, ROWS), "test")
    other = tmp_path / "other"
    other.mkdir()
    changed_train = [ROWS[1], ROWS[0], {**ROWS[2], "answer": "three"}]
    assert split_fingerprint(_write(other, changed_train), "test") == base


def test_a_changed_answer_or_clip_changes_it(tmp_path):
    base = split_fingerprint(_write(tmp_path, ROWS), "test")
    assert split_fingerprint(_write(tmp_path, [ROWS[0], {**ROWS[1], "answer": "blue"}, ROWS[2]]), "test") != base
    assert split_fingerprint(_write(tmp_path, ROWS, clip=b"RIFF-two"), "test") != base
