import dataclasses
import json
import shutil

import pytest

from safe.data.manifest import (
    ManifestError,
    ManifestRecord,
    read_manifest,
    relative_media_path,
    write_manifest,
)


def _record(i: int = 0, **over) -> ManifestRecord:
    fields = dict(
        id=f"ex-{i}",
        split="train",
        source="synth",
        family="vl",
        question="how many shapes are there?",
        answer="two",
        image=f"images/ex-{i}.png",
        audio=None,
        needs_audio=False,
    )
    fields.update(over)
    return ManifestRecord(**fields)


def _good_row(i: int = 0) -> dict:
    return _record(i).to_json()


def _write_rows(path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def test_round_trip_keeps_every_field(tmp_path):
    records = [
        _record(0),
        _record(1, split="test", family="audio", audio="audio/ex-1.wav", needs_audio=True, extras={"n_beeps": 3}),
        _record(2, split="val", source="vqav2", answers=["two", "2", "two"], extras={"qid": 7, "nested": {"a": [1]}}),
    ]
    path = write_manifest(records, tmp_path / "m" / "manifest.jsonl")
    manifest = read_manifest(path)
    assert list(manifest.records) == records
    assert manifest.skipped == ()
    assert manifest.records[2].answers == ("two", "2", "two")
    assert [r.id for r in manifest.by_split("test")] == ["ex-1"]
    assert manifest.root == path.parent.absolute()


def test_written_manifest_is_byte_stable(tmp_path):
    a = write_manifest([_record(0, extras={"b": 1, "a": 2})], tmp_path / "a.jsonl")
    b = write_manifest([_record(0, extras={"a": 2, "b": 1})], tmp_path / "b.jsonl")
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl"]  # no temp files left


def test_media_paths_resolve_after_moving_the_folder(tmp_path):
    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "images" / "ex-0.png").write_bytes(b"x")
    rel = relative_media_path(src / "images" / "ex-0.png", src)
    write_manifest([_record(0, image=rel)], src / "manifest.jsonl")
    moved = tmp_path / "elsewhere" / "moved"
    shutil.move(str(src), str(moved))
    manifest = read_manifest(moved / "manifest.jsonl")
    path = manifest.resolve(manifest.records[0].image)
    assert path == (moved / "images" / "ex-0.png").resolve() and path.read_bytes() == b"x"
    assert manifest.resolve(None) is None


def test_relative_media_path_is_posix_and_may_go_up(tmp_path):
    assert relative_media_path(tmp_path / "a" / "b" / "c.wav", tmp_path / "a") == "b/c.wav"
    assert relative_media_path(tmp_path / "media" / "x.png", tmp_path / "data") == "../media/x.png"


def test_unknown_keys_are_kept_in_extras(tmp_path):
    row = {**_good_row(0), "question_id": 42, "extras": {"template": "count"}}
    path = tmp_path / "manifest.jsonl"
    _write_rows(path, [row])
    rec = read_manifest(path).records[0]
    assert rec.extras == {"template": "count", "question_id": 42}


BAD_ROWS = {
    "invalid JSON": ('{"id": "x", ', "invalid JSON"),
    "not an object": ("[1, 2]", "expected a JSON object, got array"),
    "missing answer": ({k: v for k, v in _record(5).to_json().items() if k != "answer"}, "missing field 'answer'"),
    "missing needs_audio": (
        {k: v for k, v in _record(5).to_json().items() if k != "needs_audio"},
        "missing field 'needs_audio'",
    ),
    "question not a string": ({**_record(5).to_json(), "question": 3}, "field 'question' must be a string"),
    "needs_audio not bool": ({**_record(5).to_json(), "needs_audio": "yes"}, "'needs_audio' must be true/false"),
    "image not a string": ({**_record(5).to_json(), "image": 12}, "'image' must be a string path or null"),
    "answers not a list": ({**_record(5).to_json(), "answers": "two"}, "'answers' must be a list of strings"),
    "extras not an object": ({**_record(5).to_json(), "extras": [1]}, "'extras' must be an object"),
    "unknown split": ({**_record(5).to_json(), "split": "dev"}, "field 'split' is 'dev'"),
    "empty answer": ({**_record(5).to_json(), "answer": "  "}, "field 'answer' is empty"),
    "needs audio without audio": ({**_record(5).to_json(), "needs_audio": True}, "'audio' is null"),
    "no media": ({**_record(5).to_json(), "image": None}, "neither 'image' nor 'audio'"),
    "span backwards": ({**_record(5, audio="a.wav").to_json(), "audio_span": [1.2, 0.4]}, "needs 0 <= start < end"),
    "span not two numbers": ({**_record(5, audio="a.wav").to_json(), "audio_span": [0.1]},
                             "'audio_span' must be [start, end] in seconds"),
    "span without audio": ({**_record(5).to_json(), "audio_span": [0.1, 0.2]}, "'audio_span' is set but 'audio'"),
    "duplicate id": (_record(0).to_json(), "duplicate id 'ex-0' (first seen on line 1)"),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_raises_naming_file_and_line(tmp_path, case):
    bad, expected = BAD_ROWS[case]
    path = tmp_path / "manifest.jsonl"
    _write_rows(path, [_good_row(0), _good_row(1), "", bad, _good_row(9)])  # blank line 3, bad row on line 4
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    assert str(info.value).startswith("manifest.jsonl line 4: ")
    assert expected in str(info.value)


def test_skip_policy_reports_every_dropped_row(tmp_path):
    path = tmp_path / "manifest.jsonl"
    rows = [_good_row(0), "{broken", _good_row(1), {"id": "x"}, _good_row(1), _good_row(2)]
    _write_rows(path, rows)
    manifest = read_manifest(path, on_error="skip")
    assert [r.id for r in manifest.records] == ["ex-0", "ex-1", "ex-2"]
    assert [s.line for s in manifest.skipped] == [2, 4, 5]
    assert "invalid JSON" in manifest.skipped[0].reason
    assert manifest.skipped[1].reason == "missing field 'split'"
    assert "duplicate id 'ex-1'" in manifest.skipped[2].reason


def test_missing_file_and_bad_policy(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl")
    (tmp_path / "m.jsonl").write_text("")
    with pytest.raises(ValueError, match="on_error"):
        read_manifest(tmp_path / "m.jsonl", on_error="ignore")
    with pytest.raises(ValueError, match="unknown split"):
        read_manifest(tmp_path / "m.jsonl").by_split("dev")


def test_record_construction_is_validated():
    with pytest.raises(ManifestError, match="record 'ex-0': field 'split'"):
        _record(0, split="training")
    with pytest.raises(dataclasses.FrozenInstanceError):
        _record(0).answer = "three"


def test_write_refuses_duplicate_ids_and_leaves_old_file(tmp_path):
    path = write_manifest([_record(0)], tmp_path / "manifest.jsonl")
    before = path.read_bytes()
    with pytest.raises(ManifestError, match="duplicate id 'ex-1'"):
        write_manifest([_record(1), _record(1)], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.jsonl"]
