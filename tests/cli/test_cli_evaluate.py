"""`safe evaluate`: checks thresholds, manifest, split, media and output path before the model loads; writes strict
JSON (null plus a reason, never NaN) with n beside every number; exit 1 only when a computed criterion fails."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from cli_contract import expect_error, files_under, run, write_jsonl

LOOSE = """profile: tiny
promote:
  max_retention_drop: 1.0
  min_audio_gain: -1.0
  skip_rate_min: 0.0
  skip_rate_max: 1.0
  max_irrelevant_flip_rate: 1.0
  max_forced_flip_rate: 1.0
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evaldata")
    Image.new("RGB", (32, 32), (255, 0, 0)).save(root / "red.png")
    Image.new("RGB", (32, 32), (0, 0, 255)).save(root / "blue.png")
    tone = 0.3 * np.sin(np.linspace(0, 880 * np.pi, 16000)).astype(np.float32)
    sf.write(root / "beep.wav", tone, 16000)
    return root


def _rows(split: str = "test", with_distractor: bool = True) -> list[dict]:
    base = {"split": split, "source": "t", "answer": "red", "needs_audio": False, "audio": None}
    rows = [
        {**base, "id": "v1", "family": "vl", "question": "what color is the circle ?", "image": "red.png"},
        {**base, "id": "v2", "family": "vl", "question": "what color is the circle ?", "image": "blue.png",
         "answer": "blue"},
        {**base, "id": "a1", "family": "audio", "question": "how many beeps do you hear ?", "image": None,
         "audio": "beep.wav", "needs_audio": True, "answer": "one"},
    ]
    if with_distractor:
        rows.append({**base, "id": "d1", "family": "vl_distractor", "question": "what color is the circle ?",
                     "image": "red.png", "audio": "beep.wav"})
    return rows


def _manifest(data: Path, tmp_path: Path, rows: list) -> Path:
    for name in ("red.png", "blue.png", "beep.wav"):
        shutil.copy(data / name, tmp_path / name)
    return write_jsonl(tmp_path / "m.jsonl", rows)


def _evaluate(model, manifest, out, *extra) -> list:
    return ["evaluate", "--model", model, "--manifest", manifest, "--out", out, "--latency-examples", "1", *extra]


def _strict(path: Path) -> dict:
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}: not strict JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------- what a scripted run gets


def test_strict_json_n_and_not_computed(bundle, data, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(LOOSE)
    manifest = _manifest(data, tmp_path, _rows("val", with_distractor=False))
    out = tmp_path / "metrics.json"
    code, stdout, err = run(_evaluate(bundle, manifest, out, "--params", params), capsys)
    assert code == 0, err  # every computed criterion passes; the flip rate could not be computed
    assert "evaluating split 'val'" in err  # no test split: the only split there is, said so
    doc = _strict(out)
    assert doc["irrelevant_flip_rate"] is None
    assert "carries an audio clip" in doc["not_computed"]["irrelevant_flip_rate"]
    assert doc["criteria"]["irrelevant_flip_rate"]["status"] == "not_computed"
    assert doc["n"]["retention_drop"] == 2 and doc["n"]["audio_gain"] == 1 and doc["n"]["skip_rate"] == 3
    assert doc["split"] == "val" and doc["thresholds_from"] == str(params.resolve())
    assert "NOT COMPUTED" in stdout and "(n=2)" in stdout and "INCOMPLETE" in stdout


def test_failed_criteria_exit_1_with_thresholds_from_params(bundle, data, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(LOOSE.replace("min_audio_gain: -1.0", "min_audio_gain: 0.99"))
    manifest = _manifest(data, tmp_path, _rows())
    out = tmp_path / "metrics.json"
    code, stdout, err = run(_evaluate(bundle, manifest, out, "--params", params), capsys)
    assert code == 1, err
    doc = _strict(out)
    assert doc["criteria"]["audio_gain"] == {**doc["criteria"]["audio_gain"], "status": "fail", "threshold": 0.99}
    assert doc["criteria"]["irrelevant_flip_rate"]["status"] in ("pass", "fail")
    assert doc["n"]["irrelevant_flip_rate"] == 1
    assert "overall: FAIL" in stdout


# ---------------------------------------------------------------- refused before the model loads; nothing written


def _refused(argv, capsys, tmp_path, *names):
    before = files_under(tmp_path)
    line = expect_error(argv, capsys, 2, *names)
    assert files_under(tmp_path) == before, "a refused evaluation wrote something"
    return line


def test_manifest_not_found(bundle, tmp_path, capsys):
    _refused(_evaluate(bundle, tmp_path / "none.jsonl", tmp_path / "o.json"), capsys, tmp_path,
             str(tmp_path / "none.jsonl"), "not found")


def test_empty_question_is_refused_with_its_line(bundle, data, tmp_path, capsys):
    rows = _rows()
    rows[1]["question"] = "  "
    manifest = _manifest(data, tmp_path, rows)
    _refused(_evaluate(bundle, manifest, tmp_path / "o.json"), capsys, tmp_path, "m.jsonl line 2",
             "'question' is empty")


def test_broken_json_line(bundle, data, tmp_path, capsys):
    manifest = _manifest(data, tmp_path, [*_rows(), '{"id": "half'])
    _refused(_evaluate(bundle, manifest, tmp_path / "o.json"), capsys, tmp_path, "m.jsonl line 5", "invalid JSON")


def test_non_utf8_manifest(bundle, data, tmp_path, capsys):
    manifest = _manifest(data, tmp_path, _rows())
    manifest.write_bytes(manifest.read_bytes() + b'{"id": "caf\xe9"}\n')
    _refused(_evaluate(bundle, manifest, tmp_path / "o.json"), capsys, tmp_path, "m.jsonl line 5", "not UTF-8")


def test_asked_split_is_empty_and_the_others_are_listed(bundle, data, tmp_path, capsys):
    manifest = _manifest(data, tmp_path, _rows("val"))
    _refused(_evaluate(bundle, manifest, tmp_path / "o.json", "--split", "test"), capsys, tmp_path, str(manifest),
             "split 'test' has no examples", "val (4)")


def test_no_test_split_and_several_others(bundle, data, tmp_path, capsys):
    rows = _rows("val")
    rows[0]["split"] = "train"
    manifest = _manifest(data, tmp_path, rows)
    _refused(_evaluate(bundle, manifest, tmp_path / "o.json"), capsys, tmp_path, "no 'test' examples",
             "train (1)", "val (3)", "--split")


def test_missing_media_names_manifest_row_and_file(bundle, data, tmp_path, capsys):
    rows = _rows()
    rows[2]["audio"] = "clips/gone.wav"
    manifest = _manifest(data, tmp_path, rows)
    _refused(_evaluate(bundle, manifest, tmp_path / "o.json"), capsys, tmp_path, str(manifest), "row 'a1'",
             "clips/gone.wav", str(tmp_path / "clips" / "gone.wav"), "file not found")


def test_corrupt_image_names_manifest_row_and_file(bundle, data, tmp_path, capsys):
    manifest = _manifest(data, tmp_path, _rows())
    (tmp_path / "blue.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _refused(_evaluate(bundle, manifest, tmp_path / "o.json"), capsys, tmp_path, "row 'v2'", "blue.png",
             "corrupt image")


def test_out_is_a_folder(bundle, data, tmp_path, capsys):
    manifest = _manifest(data, tmp_path, _rows())
    (tmp_path / "out").mkdir()
    _refused(_evaluate(bundle, manifest, tmp_path / "out"), capsys, tmp_path, str(tmp_path / "out"), "--out")


def test_params_file_not_found(bundle, data, tmp_path, capsys):
    manifest = _manifest(data, tmp_path, _rows())
    _refused(_evaluate(bundle, manifest, tmp_path / "o.json", "--params", tmp_path / "p.yaml"), capsys, tmp_path,
             str(tmp_path / "p.yaml"), "--params")


def test_bad_model_folder_after_the_inputs_pass(data, tmp_path, capsys):
    manifest = _manifest(data, tmp_path, _rows())
    _refused(_evaluate(tmp_path / "nomodel", manifest, tmp_path / "o.json"), capsys, tmp_path,
             str(tmp_path / "nomodel"), "model folder not found")


def test_champion_without_a_registry(data, tmp_path, capsys):
    manifest = _manifest(data, tmp_path, _rows())
    _refused(_evaluate("champion", manifest, tmp_path / "o.json"), capsys, tmp_path, "no model registry found")


def test_latency_examples_must_be_positive(bundle, tmp_path, capsys):
    code, _, err = run(["evaluate", "--model", bundle, "--manifest", "m.jsonl", "--out", "o.json",
                        "--latency-examples", "0"], capsys)
    assert code == 2 and "--latency-examples" in err
