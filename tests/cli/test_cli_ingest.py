"""`safe ingest` and `safe synth`: missing or malformed inputs are one line naming the file (and row), exit 2, and no
manifest is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from cli_contract import expect_error, files_under, run


@pytest.fixture()
def gqa(tmp_path) -> Path:
    ann = tmp_path / "val_balanced_questions.json"
    ann.write_text(json.dumps({"1": {"imageId": "img1", "question": "Is it red?", "answer": "yes"}}))
    (tmp_path / "media").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "media" / "img1.jpg")
    return ann


def _ingest(fmt, ann, media, out, *extra) -> list:
    return ["ingest", fmt, "--annotations", ann, "--media-root", media, "--out", out, *extra]


def _refused(argv, capsys, folder: Path, *names) -> str:
    before = files_under(folder)
    line = expect_error(argv, capsys, 2, *names)
    assert files_under(folder) == before, "a refused ingest wrote something"
    return line


def test_annotations_not_found(tmp_path, capsys, gqa):
    _refused(_ingest("gqa", tmp_path / "none.json", tmp_path / "media", tmp_path / "o.jsonl"), capsys, tmp_path,
             str(tmp_path / "none.json"), "--annotations", "file not found")


def test_media_root_not_found(tmp_path, capsys, gqa):
    _refused(_ingest("gqa", gqa, tmp_path / "nomedia", tmp_path / "o.jsonl"), capsys, tmp_path,
             str(tmp_path / "nomedia"), "--media-root", "folder not found")


def test_out_is_a_folder(tmp_path, capsys, gqa):
    _refused(_ingest("gqa", gqa, tmp_path / "media", tmp_path / "media"), capsys, tmp_path,
             str(tmp_path / "media"), "--out", "is a folder")


def test_vqav2_needs_questions(tmp_path, capsys, gqa):
    _refused(_ingest("vqav2", gqa, tmp_path / "media", tmp_path / "o.jsonl"), capsys, tmp_path, "--questions")


def test_questions_file_not_found(tmp_path, capsys, gqa):
    _refused(_ingest("vqav2", gqa, tmp_path / "media", tmp_path / "o.jsonl", "--questions", tmp_path / "q.json"),
             capsys, tmp_path, str(tmp_path / "q.json"), "--questions")


def test_malformed_annotations(tmp_path, capsys, gqa):
    gqa.write_text("[1, 2")
    _refused(_ingest("gqa", gqa, tmp_path / "media", tmp_path / "o.jsonl"), capsys, tmp_path,
             "val_balanced_questions.json", "not valid JSON")


def test_malformed_row_names_it(tmp_path, capsys, gqa):
    gqa.write_text(json.dumps({"1": {"imageId": "img1", "question": "Is it red?", "answer": "yes"},
                               "2": {"imageId": "img1", "answer": "no"}}))
    _refused(_ingest("gqa", gqa, tmp_path / "media", tmp_path / "o.jsonl"), capsys, tmp_path,
             "val_balanced_questions.json", "2")


def test_nothing_kept_is_exit_1_and_no_manifest(tmp_path, capsys, gqa):
    (tmp_path / "media" / "img1.jpg").unlink()
    code, out, err = run(_ingest("gqa", gqa, tmp_path / "media", tmp_path / "o.jsonl"), capsys)
    assert code == 1 and "no examples kept" in err and str(gqa) in err
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("options, name", [(["--size", "0"], "--size"), (["--image-size", "-3"], "--image-size"),
                                           (["--clip-seconds", "0"], "--clip-seconds")])
def test_synth_refuses_bad_sizes(tmp_path, capsys, options, name):
    code, _, err = run(["synth", "--out", tmp_path / "bench", *options], capsys)
    assert code == 2 and name in err and not (tmp_path / "bench").exists()
