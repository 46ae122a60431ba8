"""Great Expectations suites: a clean manifest passes; each planted defect fails with its row id named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from safe.data.checks import SYNTH_FAMILIES, CheckReport, validate_features, validate_manifest
from safe.data.media import write_png, write_wav


def _row(i: int, family: str, root: Path, **over) -> dict:
    """A valid manifest row with its own 32x32 PNG and (for audio families) a 0.5 s 16 kHz wav."""
    ex_id = over.pop("id", f"ex{i:02d}")
    write_png(root / "images" / f"{ex_id}.png", Image.new("RGB", (32, 32), (10 * i % 255, 0, 0)))
    audio = None
    if family != "vl":
        audio = f"audio/{ex_id}.wav"
        write_wav(root / audio, 0.2 * np.sin(np.arange(8000) / 5.0), 16000)
    row = {"id": ex_id, "split": ("train", "val", "test")[i % 3], "source": "synth", "family": family,
           "question": "how many shapes are there?", "answer": "two", "image": f"images/{ex_id}.png",
           "audio": audio, "needs_audio": family in ("audio", "audio_visual", "silent_control")}
    row.update(over)
    return row


def _write(root: Path, rows: list, extra_lines: tuple[str, ...] = ()) -> Path:
    path = root / "manifest.jsonl"
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _clean_rows(root: Path, n: int = 10) -> list[dict]:
    return [_row(i, SYNTH_FAMILIES[i % len(SYNTH_FAMILIES)], root) for i in range(n)]


def _failure(report: CheckReport, expectation: str, column: str):
    hits = [f for f in report.failures if f.expectation == expectation and f.column == column]
    assert hits, f"expected a failure of {expectation} on {column}; got:\n{report.summary()}"
    return hits[0]


def test_clean_manifest_passes(tmp_path):
    path = _write(tmp_path, _clean_rows(tmp_path))
    report = validate_manifest(path, family_proportions={f: 0.2 for f in SYNTH_FAMILIES})
    assert report.success, report.summary()
    assert report.n_rows == 10 and report.n_expectations > 15
    assert "PASSED" in report.summary() and report.to_json()["success"] is True


@pytest.fixture(scope="module")
def defect_report(tmp_path_factory) -> CheckReport:
    """One manifest with every planted defect on its own row, validated once (GX context creation is slow)."""
    root = tmp_path_factory.mktemp("defects")
    rows = _clean_rows(root, 5)
    rows.append(_row(20, "vl", root, id="no-answer"))
    del rows[-1]["answer"]
    rows.append(_row(21, "vl", root, id="empty-answer", answer="  "))
    rows.append(_row(22, "smell", root, id="odd-family"))
    rows.append(_row(23, "vl", root, id="bad-split", split="dev"))
    rows.append(_row(24, "vl", root, id="gone-image", image="images/nope.png"))
    rows.append(_row(25, "audio", root, id="garbage-audio"))
    (root / "audio" / "garbage-audio.wav").write_bytes(b"\x00garbage, not audio" * 50)
    rows.append(_row(26, "audio", root, id="phone-audio"))
    write_wav(root / "audio" / "phone-audio.wav", np.zeros(4000), 8000)  # 0.5 s at 8 kHz
    rows.append(_row(27, "audio", root, id="long-audio"))
    write_wav(root / "audio" / "long-audio.wav", np.zeros(16000 * 3), 16000)
    rows.append(_row(28, "vl", root, id="broken-image"))
    data = (root / "images" / "broken-image.png").read_bytes()
    (root / "images" / "broken-image.png").write_bytes(data[: len(data) // 2])
    rows.append(_row(29, "audio", root, id="needs-but-none", audio=None))
    rows.append(_row(30, "vl", root, id="ex00"))  # duplicate id
    rows.append(_row(31, "audio", root, id="span-past-end", audio_span=[0.2, 0.9]))  # the clip lasts 0.5 s
    rows.append(_row(32, "audio", root, id="span-inside", audio_span=[0.1, 0.5]))
    path = _write(root, rows, extra_lines=('{"id": "half a row', ))
    return validate_manifest(path, audio_seconds=(0.05, 2.0), sample_rates=(16000,))


@pytest.mark.parametrize(
    "expectation, column, row",
    [
        ("expect_column_values_to_not_be_null", "answer", "no-answer"),
        ("expect_column_values_to_match_regex", "answer", "empty-answer"),
        ("expect_column_values_to_be_in_set", "family", "odd-family"),
        ("expect_column_values_to_be_in_set", "split", "bad-split"),
        ("expect_column_values_to_be_null", "image_error", "gone-image"),
        ("expect_column_values_to_be_null", "audio_error", "garbage-audio"),
        ("expect_column_values_to_be_in_set", "audio_sample_rate", "phone-audio"),
        ("expect_column_values_to_be_between", "audio_seconds", "long-audio"),
        ("expect_column_values_to_be_null", "image_error", "broken-image"),
        ("expect_column_values_to_not_be_null", "audio", "needs-but-none"),
        ("expect_column_values_to_be_unique", "id", "ex00"),
        ("expect_column_values_to_be_between", "audio_span_past_end_s", "span-past-end"),
    ],
)
def test_each_planted_defect_is_caught_with_its_row(defect_report, expectation, column, row):
    failure = _failure(defect_report, expectation, column)
    assert row in failure.rows
    assert row in defect_report.summary() and row in defect_report.to_markdown()
    assert not defect_report.success


def test_defects_do_not_flag_clean_rows(defect_report):
    flagged = {r for f in defect_report.failures for r in f.rows}
    assert not flagged & {"ex01", "ex02", "ex03", "ex04", "span-inside"}
    assert _failure(defect_report, "expect_column_values_to_be_null", "audio_error").rows == ("garbage-audio",)


def test_media_failures_say_why_and_json_round_trips(defect_report, tmp_path):
    unreadable = _failure(defect_report, "expect_column_values_to_be_null", "audio_error")
    assert "not a readable audio file" in unreadable.reasons["garbage-audio"]
    broken = _failure(defect_report, "expect_column_values_to_be_null", "image_error")
    gone = broken.reasons["gone-image"]  # the path as the manifest writes it, then as resolved
    assert gone.startswith("images/nope.png (") and gone.endswith("images/nope.png): file not found")
    assert "corrupt" in broken.reasons["broken-image"] or "truncated" in broken.reasons["broken-image"]
    assert _failure(defect_report, "valid_json_line", None).rows == ("line 19",)
    saved = json.loads(defect_report.write_json(tmp_path / "report.json").read_text())
    assert saved["success"] is False and saved == json.loads(json.dumps(defect_report.to_json()))


def test_family_imbalance_is_reported(tmp_path):
    rows = [_row(i, "vl" if i < 9 else "audio", tmp_path) for i in range(10)]
    report = validate_manifest(_write(tmp_path, rows), family_proportions={"vl": 0.5, "audio": 0.5}, tolerance=0.1,
                               check_media=False)
    vl = _failure(report, "expect_column_mean_to_be_between", "share_family_vl")
    assert "observed 0.900" in vl.detail
    _failure(report, "expect_column_mean_to_be_between", "share_family_audio")
    ok = validate_manifest(_write(tmp_path, rows), family_proportions={"vl": 0.85, "audio": 0.15}, check_media=False)
    assert ok.success, ok.summary()


def test_missing_column_is_a_schema_failure(tmp_path):
    rows = _clean_rows(tmp_path, 3)
    for r in rows:
        del r["question"]
    report = validate_manifest(_write(tmp_path, rows), check_media=False)
    failure = _failure(report, "expect_table_columns_to_match_set", None)
    assert "question" in failure.detail


def test_features_clean_nan_and_wrong_dim():
    rng = np.random.default_rng(0)
    good = rng.normal(size=(6, 8)).astype(np.float32)  # (N, D)
    assert validate_features({"audio": good, "seq": rng.normal(size=(6, 3, 8))}, expected_dim=8).success

    bad = good.copy()
    bad[3, 5] = np.nan
    report = validate_features({"audio": bad}, expected_dim=8, ids=[f"ex{i}" for i in range(6)])
    assert _failure(report, "expect_column_values_to_be_between", "non_finite_values").rows == ("audio:ex3",)

    report = validate_features({"audio": good, "clap": rng.normal(size=(4, 7))}, expected_dim={"audio": 8, "clap": 8})
    dim = _failure(report, "expect_column_pair_values_to_be_equal", "dim==expected_dim")
    assert dim.count == 4 and dim.rows[0] == "clap[0]" and all(r.startswith("clap") for r in dim.rows)


def test_features_from_dataframe():
    frame = pd.DataFrame({"a": [1.0, np.inf], "b": [0.0, 1.0]}, index=["x", "y"])
    report = validate_features(frame, expected_dim=2)
    assert _failure(report, "expect_column_values_to_be_between", "non_finite_values").rows == ("features:y",)


def test_sample_rates_and_durations_are_settings(tmp_path):
    rows = _clean_rows(tmp_path, 5)
    write_wav(tmp_path / "audio" / "ex01.wav", np.zeros(44100 * 2), 44100)  # a 2 s clip at 44.1 kHz
    path = _write(tmp_path, rows)
    assert validate_manifest(path).success  # default: any rate the loader resamples
    pinned = validate_manifest(path, sample_rates=(16000,), audio_seconds=(0.05, 1.0))
    assert _failure(pinned, "expect_column_values_to_be_in_set", "audio_sample_rate").rows == ("ex01",)
    assert _failure(pinned, "expect_column_values_to_be_between", "audio_seconds").rows == ("ex01",)


def test_families_are_checked_per_source_from_the_adapters(tmp_path):
    from safe.data.checks import families_by_source

    rows = [_row(i, "vl", tmp_path, source="vqav2") for i in range(3)]
    rows.append(_row(3, "audio_caption", tmp_path, id="caption-in-vqa", source="vqav2", needs_audio=True))
    rows.append(_row(4, "vl", tmp_path, id="unknown-source", source="mydata"))
    path = _write(tmp_path, rows)
    report = validate_manifest(path, expected_families=families_by_source(), check_media=False)
    failure = _failure(report, "expect_column_pair_values_to_be_in_set", "source==family")
    assert set(failure.rows) == {"caption-in-vqa", "unknown-source"} and "data.families" in failure.detail
    ok = validate_manifest(path, expected_families=families_by_source({"vqav2": ["vl", "audio_caption"],
                                                                       "mydata": ["vl"]}), check_media=False)
    assert ok.success, ok.summary()


def test_answer_vocabulary_coverage(tmp_path):
    rows = [_row(i, "vl", tmp_path, split="train", answer=("red", "blue")[i % 2]) for i in range(6)]
    rows += [_row(10 + i, "vl", tmp_path, split="test", answer=a) for i, a in enumerate(["red", "green", "pink"])]
    rows.append(_row(20, "caption", tmp_path, split="val", answer="a long free caption"))
    path = _write(tmp_path, rows)
    report = validate_manifest(path, expected_families=["vl", "caption"], min_answer_coverage=0.5, check_media=False)
    failure = _failure(report, "expect_column_values_to_be_in_set", "answer")
    assert set(failure.rows) == {"ex11", "ex12"} and "ex20" not in failure.rows  # captions are left out
    assert validate_manifest(path, expected_families=["vl", "caption"], min_answer_coverage=0.3,
                             check_media=False).success


def test_checkpoint_writes_data_docs(tmp_path):
    path = _write(tmp_path, _clean_rows(tmp_path, 5))
    report = validate_manifest(path, docs_dir=tmp_path / "docs")
    assert report.docs == tmp_path / "docs" / "index.html" and "Data Docs" in report.docs.read_text()
    pages = [p.read_text() for p in (tmp_path / "docs" / "validations").rglob("*.html")]
    assert len(pages) == 1 and "values must be unique" in pages[0]


def test_feature_dimensions_constant_and_shifted():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 6))
    splits = ["train"] * 30 + ["test"] * 10
    assert validate_features({"pooled": feats}, 6, splits=splits, dim_checks=("pooled",)).success
    feats[:, 2] = 0.5  # a dead dimension
    feats[30:, 4] += 3.0  # held-out rows far from the training distribution on d4
    report = validate_features({"pooled": feats}, 6, splits=splits, dim_checks=("pooled",))
    assert _failure(report, "expect_column_values_to_be_between", "train_std").rows == ("pooled[d2]",)
    assert "pooled[d4]" in _failure(report, "expect_column_values_to_be_between", "heldout_mean_shift").rows
