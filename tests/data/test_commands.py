"""`safe ingest`, `safe synth`, `safe validate` exit codes and messages, called in-process through safe.cli.main."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from safe.cli import main
from safe.data.manifest import read_manifest
from safe.data.media import write_wav


def test_synth_then_validate_passes(tmp_path, capsys):
    out = tmp_path / "bench"
    assert main(["synth", "--out", str(out), "--size", "20", "--seed", "3", "--no-speech"]) == 0
    manifest = read_manifest(out / "manifest.jsonl")
    assert len(manifest) == 20 and {r.split for r in manifest} == {"train", "val", "test"}
    assert "wrote 20 examples" in capsys.readouterr().out
    report_json = tmp_path / "report.json"
    rc = main(["validate", str(out / "manifest.jsonl"), "--json", str(report_json),
               "--family-proportions", "vl=0.3,vl_distractor=0.25,audio=0.25,audio_visual=0.1,silent_control=0.1",
               "--tolerance", "0.15"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "PASSED" in captured.out and json.loads(report_json.read_text())["success"] is True


def test_validate_reports_bad_rows_with_exit_1(tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    write_wav(tmp_path / "slow.wav", np.zeros(8000), 8000)
    rows = [
        {"id": "ok", "split": "train", "source": "s", "family": "vl", "question": "q?", "answer": "a",
         "image": "a.png", "audio": None, "needs_audio": False},
        {"id": "eight-khz", "split": "train", "source": "s", "family": "audio", "question": "q?", "answer": "a",
         "image": None, "audio": "slow.wav", "needs_audio": True},
        {"id": "blank", "split": "test", "source": "s", "family": "vl", "question": "q?", "answer": "",
         "image": "a.png", "audio": None, "needs_audio": False},
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["validate", str(path), "--sample-rates", "16000"]) == 1
    err = capsys.readouterr().err
    assert "FAILED" in err and "eight-khz" in err and "blank" in err and "Traceback" not in err
    assert main(["validate", str(path)]) == 1  # default: any rate passes; the blank answer still fails
    assert "eight-khz" not in capsys.readouterr().err


def test_validate_missing_manifest_is_a_message(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope.jsonl")]) == 2  # bad input
    assert "manifest not found" in capsys.readouterr().err


def test_validate_rejects_malformed_proportions(tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["validate", str(tmp_path / "m.jsonl"), "--family-proportions", "vl=lots"])
    assert exit_info.value.code == 2


def _gqa(tmp_path):
    ann = tmp_path / "val_balanced_questions.json"
    ann.write_text(json.dumps({
        "1": {"imageId": "img1", "question": "Is it red?", "answer": "yes"},
        "2": {"imageId": "img2", "question": "Is it blue?", "answer": "no"},
    }))
    (tmp_path / "media").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "media" / "img1.jpg")
    return ann


def test_ingest_writes_manifest_and_reports_skips(tmp_path, capsys):
    ann = _gqa(tmp_path)
    out = tmp_path / "gqa" / "manifest.jsonl"
    assert main(["ingest", "gqa", "--annotations", str(ann), "--media-root", str(tmp_path / "media"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept 1" in printed and "gqa-2" in printed and "img2" in printed
    assert [r.id for r in read_manifest(out)] == ["gqa-1"]
    assert main(["validate", str(out)]) == 0  # what ingest writes passes the checks


def test_ingest_errors_are_messages_not_tracebacks(tmp_path, capsys):
    ann = _gqa(tmp_path)
    media = str(tmp_path / "media")
    assert main(["ingest", "vqav2", "--annotations", str(ann), "--media-root", media, "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "needs --questions" in capsys.readouterr().err
    ann.write_text("[1, 2")
    assert main(["ingest", "gqa", "--annotations", str(ann), "--media-root", media, "--out", str(tmp_path / "o.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "val_balanced_questions.json: not valid JSON" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["ingest", "kinetics", "--annotations", str(ann), "--media-root", media, "--out", "o.jsonl"])
    assert exit_info.value.code == 2
