"""`safe validate`: a manifest that cannot be read is exit 2 with one line; bad rows are exit 1 with a report that names
each row, its file (as written and resolved) and what is wrong. The report never stops on one bad file."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from cli_contract import expect_error, run, run_subprocess, write_jsonl


def _row(i: int, **over) -> dict:
    row = {"id": f"r{i}", "split": "train", "source": "t", "family": "vl", "question": "what colour?", "answer": "red",
           "image": "red.png", "audio": None, "needs_audio": False}
    return {**row, **over}


@pytest.fixture()
def folder(tmp_path) -> Path:
    Image.new("RGB", (16, 16), (255, 0, 0)).save(tmp_path / "red.png")
    sf.write(tmp_path / "ok.wav", np.zeros(16000, dtype=np.float32), 16000)
    return tmp_path


def _report(argv, capsys, code=1) -> str:
    got, out, err = run(argv, capsys)
    assert got == code, err
    return out + err


# ---------------------------------------------------------------- the manifest itself (exit 2)


def test_missing_manifest(capsys, tmp_path):
    expect_error(["validate", tmp_path / "none.jsonl"], capsys, 2, str(tmp_path / "none.jsonl"), "manifest not found")


def test_manifest_that_is_a_folder(capsys, tmp_path):
    expect_error(["validate", tmp_path], capsys, 2, str(tmp_path), "not a file")


@pytest.mark.parametrize("content", ["", "\n\n   \n"])
def test_empty_manifest(capsys, tmp_path, content):
    path = tmp_path / "m.jsonl"
    path.write_text(content)
    expect_error(["validate", path], capsys, 2, str(path), "manifest is empty")


def test_manifest_of_non_json_lines(capsys, tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", ["id,split,question", "a,train,why"])
    expect_error(["validate", path], capsys, 2, str(path), "no line is a JSON object", "line 1", "line 2")


def test_manifest_that_is_not_utf8(capsys, tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(json.dumps(_row(0, question="caf\u00e9?"), ensure_ascii=False).encode("latin-1") + b"\n")
    expect_error(["validate", path], capsys, 2, str(path), "not UTF-8", "line 1")


# ---------------------------------------------------------------- options (exit 2, nothing run)


@pytest.mark.parametrize("options, names", [
    (["--sample-rates", "fast"], ["--sample-rates", "'fast'"]),
    (["--sample-rates", "0"], ["--sample-rates"]),
    (["--min-seconds", "5", "--max-seconds", "1"], ["--min-seconds", "--max-seconds"]),
])
def test_bad_options(folder, capsys, options, names):
    path = write_jsonl(folder / "m.jsonl", [_row(0)])
    expect_error(["validate", path, *options], capsys, 2, *names)


@pytest.mark.parametrize("options", [["--tolerance", "2"], ["--max-seconds", "-1"], ["--min-seconds", "nan"]])
def test_out_of_range_numbers_are_usage_errors(folder, capsys, options):
    path = write_jsonl(folder / "m.jsonl", [_row(0)])
    code, _, err = run(["validate", path, *options], capsys)
    assert code == 2 and options[0] in err


def test_json_report_path_that_is_a_folder(folder, capsys):
    path = write_jsonl(folder / "m.jsonl", [_row(0)])
    (folder / "report").mkdir()
    expect_error(["validate", path, "--json", folder / "report"], capsys, 2, str(folder / "report"), "--json")


# ---------------------------------------------------------------- bad rows (exit 1, a report naming each)


def test_missing_media_names_the_row_and_the_path(folder, capsys):
    path = write_jsonl(folder / "m.jsonl", [_row(0), _row(1, image="images/gone.png")])
    report = _report(["validate", path], capsys)
    assert "r1 [images/gone.png (" in report and str(folder / "images" / "gone.png") in report
    assert "file not found" in report


@pytest.mark.parametrize("make, why", [
    (lambda p, ok: p.write_bytes(ok.read_bytes()[:30]), "truncated WAV"),
    (lambda p, ok: p.write_bytes(ok.read_bytes()[:5000]), "truncated WAV"),
    (lambda p, ok: p.write_text("not audio at all\n"), "holds text, not audio"),
    (lambda p, ok: p.write_bytes(b""), "empty"),
])
def test_unreadable_audio_names_the_row_the_file_and_why(folder, capsys, make, why):
    make(folder / "a2.wav", folder / "ok.wav")
    path = write_jsonl(folder / "m.jsonl", [_row(0), _row(2, id="a2", family="audio", image=None, audio="a2.wav",
                                                           needs_audio=True)])
    report = _report(["validate", path], capsys)
    assert f"a2 [a2.wav ({folder / 'a2.wav'}): " in report and why in report


def test_decompression_bomb_is_a_row_in_the_report_not_a_crash(folder, capsys):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    path = write_jsonl(folder / "m.jsonl", [_row(0), _row(1, id="bomb", image="bomb.png")])
    report = _report(["validate", path], capsys)
    assert "bomb [bomb.png (" in report and "too large" in report


def test_one_non_utf8_line_among_good_ones_is_reported_by_line(folder, capsys):
    path = folder / "m.jsonl"
    path.write_bytes(json.dumps(_row(0)).encode() + b"\n" + b'{"id": "caf\xe9"}\n')
    report = _report(["validate", path], capsys)
    assert "line 2 (not UTF-8" in report


def test_long_clip_is_scanned_in_blocks(folder, capsys):
    """A 5-minute clip decodes block by block (bounded memory) and fails only the duration check."""
    sf.write(folder / "long.wav", np.zeros(16000 * 300, dtype=np.int16), 16000, subtype="PCM_16")
    path = write_jsonl(folder / "m.jsonl", [_row(0, id="long", family="audio", image=None, audio="long.wav",
                                                  needs_audio=True)])
    report = _report(["validate", path], capsys)
    assert "audio_seconds" in report and "long" in report and "does not decode" not in report


def test_as_a_user_runs_it(folder):
    empty = folder / "empty.jsonl"
    empty.write_text("")
    result = run_subprocess(["validate", empty], folder)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "manifest is empty" in result.stderr
