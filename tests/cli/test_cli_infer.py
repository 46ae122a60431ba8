"""`safe infer`: every bad image, clip, question or model folder is one line naming it, exit 2, before the model loads.

Most cases run in-process (`safe.cli.main`); a few run `python -m safe.cli` as a user does.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from cli_contract import QUESTION, expect_error, files_under, run, run_subprocess


def _huge_png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height (no pixel data): what a decompression bomb looks like to a reader."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)))
    return path


def _infer(bundle, *extra) -> list:
    return ["infer", "--model", bundle, *extra]


# ---------------------------------------------------------------- the answer itself


def test_infer_answers_with_a_bundle_folder(bundle, media, capsys):
    code, out, err = run(_infer(bundle, "--image", media["image"], "--audio", media["audio"], "--question", QUESTION,
                                "--json"), capsys)
    assert code == 0, err
    answer = json.loads(out.strip().splitlines()[-1])
    assert set(answer) == {"answer", "budget", "gate", "latency_ms", "base_answer"}
    assert answer["budget"] in (0, 4, 8, 12)


def test_audio_threshold_moves_the_decision_the_printed_probability_explains(bundle, media, capsys):
    """The printed P(audio) and the budget agree at any threshold: 0 always consults the clip, 1 skips it unless
    the gate is certain."""
    answers = {}
    for threshold in ("0", "1"):
        code, out, err = run(_infer(bundle, "--image", media["image"], "--audio", media["audio"], "--question",
                                    QUESTION, "--json", "--audio-threshold", threshold), capsys)
        assert code == 0, err
        answers[threshold] = json.loads(out.strip().splitlines()[-1])
    assert answers["0"]["budget"] > 0
    assert (answers["1"]["budget"] > 0) == (answers["1"]["gate"] >= 1.0)
    assert answers["0"]["gate"] == answers["1"]["gate"]  # the knob moves the decision, not the gate


@pytest.mark.parametrize("threshold", ["1.5", "-0.1"])
def test_audio_threshold_outside_0_1_is_refused(bundle, media, capsys, threshold):
    expect_error(_infer(bundle, "--image", media["image"], "--question", QUESTION, "--audio-threshold", threshold),
                 capsys, 2, "--audio-threshold", threshold)


def test_greyscale_and_transparent_images_answer_with_a_note(bundle, tmp_path, capsys):
    Image.new("L", (32, 32), 90).save(tmp_path / "grey.png")
    code, _, err = run(_infer(bundle, "--image", tmp_path / "grey.png", "--question", QUESTION), capsys)
    assert code == 0 and "note:" in err and "greyscale" in err and "grey.png" in err
    Image.new("RGBA", (32, 32), (0, 0, 255, 0)).save(tmp_path / "clear.png")
    code, _, err = run(_infer(bundle, "--image", tmp_path / "clear.png", "--question", QUESTION), capsys)
    assert code == 0 and "alpha channel is dropped" in err


# ---------------------------------------------------------------- questions


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_empty_question_is_refused(bundle, media, capsys, question):
    expect_error(_infer(bundle, "--image", media["image"], "--question", question), capsys, 2, "--question", "empty")


def test_question_longer_than_the_context_is_refused_before_loading(bundle, media, capsys):
    long_question = " ".join(["red"] * 5000)
    line = expect_error(_infer(bundle, "--image", media["image"], "--question", long_question), capsys, 2,
                        "--question", "5000 words", "at most 512 tokens")
    assert "shorten" in line


def test_missing_question_option_is_a_usage_error(bundle, media, capsys):
    code, _, err = run(_infer(bundle, "--image", media["image"]), capsys)
    assert code == 2 and "--question" in err


# ---------------------------------------------------------------- images


def test_missing_image_names_the_file_as_written_and_resolved(bundle, capsys, tmp_path):
    line = expect_error(_infer(bundle, "--image", "nope.png", "--question", QUESTION), capsys, 2,
                        "nope.png", str(Path.cwd() / "nope.png"), "--image", "file not found")
    assert "pass an existing image file" in line


def test_image_that_is_a_folder(bundle, capsys, tmp_path):
    expect_error(_infer(bundle, "--image", tmp_path, "--question", QUESTION), capsys, 2, str(tmp_path), "not a file")


@pytest.mark.parametrize("content, why", [
    (b"", "empty"),
    (b"just some text, not pixels\n", "not an image file"),
    (None, "truncated or corrupt image"),
])
def test_unreadable_images(bundle, media, capsys, tmp_path, content, why):
    path = tmp_path / "bad.png"
    path.write_bytes(content if content is not None else media["image"].read_bytes()[:60])
    expect_error(_infer(bundle, "--image", path, "--question", QUESTION), capsys, 2, str(path), why)


def test_huge_image_is_refused_from_its_header(bundle, capsys, tmp_path):
    path = _huge_png_header(tmp_path / "huge.png", 8000, 8000)
    expect_error(_infer(bundle, "--image", path, "--question", QUESTION), capsys, 2, str(path), "8000x8000",
                 "megapixel limit")


def test_decompression_bomb_is_refused(bundle, capsys, tmp_path):
    path = _huge_png_header(tmp_path / "bomb.png", 40000, 40000)
    expect_error(_infer(bundle, "--image", path, "--question", QUESTION), capsys, 2, str(path))


# ---------------------------------------------------------------- audio


def _wav(path: Path, seconds: float = 1.0, sr: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(path, np.zeros(int(seconds * sr), dtype=np.float32), sr, subtype=subtype)
    return path


def test_missing_audio(bundle, capsys):
    expect_error(_infer(bundle, "--audio", "gone.wav", "--question", QUESTION), capsys, 2, "gone.wav", "--audio",
                 "file not found")


@pytest.mark.parametrize("make, why", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_text("hello, I am a text file\n"), "holds text, not audio"),
    (lambda p: p.write_bytes(_wav(p).read_bytes()[:30]), "truncated WAV"),
    (lambda p: p.write_bytes(_wav(p).read_bytes()[:2000]), "truncated WAV"),
    (lambda p: p.write_bytes(b"\x00\x01garbage" * 300), "corrupt or unsupported audio"),
])
def test_unreadable_audio(bundle, capsys, tmp_path, make, why):
    path = tmp_path / "clip.wav"
    make(path)
    expect_error(_infer(bundle, "--audio", path, "--question", QUESTION), capsys, 2, str(path), "--audio", why)


def test_audio_with_nan_samples(bundle, capsys, tmp_path):
    path = tmp_path / "nan.wav"
    wave = np.zeros(1600, dtype=np.float32)
    wave[10] = np.nan
    sf.write(path, wave, 16000, subtype="FLOAT")
    expect_error(_infer(bundle, "--audio", path, "--question", QUESTION), capsys, 2, str(path), "NaN/inf")


# ---------------------------------------------------------------- model folders


def test_model_folder_not_found(capsys, media):
    expect_error(["infer", "--model", "no/such/model", "--image", media["image"], "--question", QUESTION], capsys, 2,
                 "no/such/model", "model folder not found", "champion")


def test_model_that_is_a_file(capsys, media, tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"x")
    expect_error(["infer", "--model", path, "--question", QUESTION], capsys, 2, str(path), "not a folder")


def _break_json(path: Path) -> None:
    path.write_text(path.read_text()[:-7])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _garbage(path: Path) -> None:
    path.write_bytes(b"\xff" * 64)


@pytest.mark.parametrize("rel, damage, why", [
    ("safe_config.json", Path.unlink, "missing"),
    ("safe_config.json", _break_json, "invalid JSON"),
    ("safe_config.json", lambda p: p.write_text("[1, 2]"), "expected a JSON object"),
    ("safe_config.json", lambda p: p.write_text(json.dumps({"architecture": {}, "base_vl": "base_vl"})),
     "'audio_encoder'"),
    ("safe_trainable.safetensors", Path.unlink, "missing"),
    ("safe_trainable.safetensors", _truncate, "truncated"),
    ("safe_trainable.safetensors", _garbage, "not a safetensors file"),
    ("fusion_lora/adapter_config.json", _break_json, "invalid JSON"),
    ("fusion_lora/adapter_model.safetensors", Path.unlink, "missing"),
    ("gate/config.json", _break_json, "invalid JSON"),
    ("gate/model.safetensors", _truncate, "truncated"),
    ("base_vl/config.json", _break_json, "invalid JSON"),
    ("base_vl/model.safetensors", _truncate, "truncated"),
    ("base_vl/tokenizer.json", _break_json, "invalid JSON"),
])
def test_damaged_bundle_names_the_file(broken_bundle, media, capsys, rel, damage, why):
    damage(broken_bundle / rel)
    expect_error(_infer(broken_bundle, "--image", media["image"], "--question", QUESTION), capsys, 2,
                 str(broken_bundle / rel), why)


def test_stage_a_folder_instead_of_the_bundle(broken_bundle, media, capsys):
    import shutil

    shutil.rmtree(broken_bundle / "gate")
    expect_error(_infer(broken_bundle, "--image", media["image"], "--question", QUESTION), capsys, 2,
                 str(broken_bundle / "gate"), "deployment gate")


def test_weights_that_do_not_fit_the_architecture(broken_bundle, media, capsys):
    config = json.loads((broken_bundle / "safe_config.json").read_text())
    config["architecture"]["projector_hidden"] = 7  # the saved weights were trained with another width
    (broken_bundle / "safe_config.json").write_text(json.dumps(config))
    expect_error(_infer(broken_bundle, "--image", media["image"], "--question", QUESTION), capsys, 2,
                 str(broken_bundle), "could not load the model")


# ---------------------------------------------------------------- registry (champion) and the process itself


def test_champion_outside_a_project_creates_nothing(media, capsys):
    before = files_under(Path.cwd())
    expect_error(["infer", "--model", "champion", "--image", media["image"], "--question", QUESTION], capsys, 2,
                 str(Path.cwd() / "mlruns" / "mlflow.db"), "no model registry found", "SAFE_PROJECT_DIR")
    assert files_under(Path.cwd()) == before


def test_tracking_uri_to_a_missing_store(media, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}")
    expect_error(["infer", "--question", QUESTION], capsys, 2, "MLFLOW_TRACKING_URI", str(tmp_path / "elsewhere"))
    assert not (tmp_path / "elsewhere").exists()


def test_as_a_user_runs_it_exit_codes_and_no_traceback(bundle, media, tmp_path):
    bad = run_subprocess(["infer", "--model", bundle, "--image", "missing.png", "--question", QUESTION], tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: missing.png (") and len(bad.stderr.strip().splitlines()) == 1
    champion = run_subprocess(["infer", "--question", QUESTION], tmp_path)
    assert champion.returncode == 2 and "no model registry found" in champion.stderr
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlflow.db").exists()
    debug = run_subprocess(["infer", "--model", bundle, "--image", "missing.png", "--question", QUESTION, "--debug"],
                           tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr
