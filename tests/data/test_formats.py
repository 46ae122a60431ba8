"""Real-dataset adapters on tiny fixtures written in each dataset's official annotation format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from safe.data.formats import FAMILIES, FORMATS, FormatError, get_format
from safe.data.manifest import read_manifest
from safe.data.media import load_audio, load_image
from format_fixtures import _avqa_doc, _image, _json, _video, _vqav2_files, _wav  # tests/format_fixtures.py


def _strict_then_skip(fmt: str, ann: Path, media: Path, match: str, **kwargs):
    """on_error="raise" stops at the first bad row (nothing written); "skip" goes on and returns the report."""
    out = ann.parent / "strict.jsonl"
    with pytest.raises(FormatError, match=match):
        FORMATS[fmt](ann, media, out, **kwargs)
    assert not out.exists()
    return FORMATS[fmt](ann, media, out, on_error="skip", **kwargs)


def test_registry_lists_every_dataset():
    assert set(FORMATS) == {"vqav2", "gqa", "coco-captions", "avqa", "audiocaps", "clotho", "vggsound"}
    assert {"vl", "caption", "audio", "audio_visual", "audio_caption"} <= set(FAMILIES)
    with pytest.raises(ValueError, match="unknown dataset format 'kinetics'.*vqav2"):
        get_format("kinetics")


def test_vqav2_keeps_ten_answers_and_reports_missing_image(tmp_path):
    questions, annotations = _vqav2_files(tmp_path)
    out = tmp_path / "out" / "vqav2.jsonl"
    report = FORMATS["vqav2"](annotations, tmp_path / "media", out, questions=questions)
    manifest = read_manifest(out)
    assert [r.id for r in manifest] == ["vqav2-10", "vqav2-20"]
    first = manifest.records[0]
    assert (first.split, first.family, first.source, first.needs_audio) == ("val", "vl", "vqav2", False)
    assert first.answer == "red" and len(first.answers) == 10 and first.answers[-1] == "orange"
    assert first.image == "../media/val2014/COCO_val2014_000000000001.jpg"  # relative to the manifest folder
    assert load_image(manifest.resolve(first.image)).size == (8, 8)
    assert report.kept == 2 and report.skipped == 1
    assert report.missing_media[0].name == "vqav2-30"
    assert "COCO_val2014_000000000042" in report.missing_media[0].reason
    text = report.summary()
    assert "kept 2" in text and "skipped 1" in text and "vqav2-30" in text


def test_vqav2_requires_questions_file(tmp_path):
    _, annotations = _vqav2_files(tmp_path)
    with pytest.raises(FormatError, match="questions"):
        FORMATS["vqav2"](annotations, tmp_path / "media", tmp_path / "m.jsonl")


def test_vqav2_malformed_question_names_file_and_index(tmp_path):
    questions, annotations = _vqav2_files(tmp_path)
    doc = json.loads(questions.read_text())
    del doc["questions"][1]["question"]
    questions.write_text(json.dumps(doc))
    report = _strict_then_skip("vqav2", annotations, tmp_path / "media",
                               r"v2_OpenEnded_mscoco_val2014_questions.json questions\[1\]: missing field 'question'",
                               questions=questions)
    assert report.kept == 1 and [b.name for b in report.bad_rows] == ["v2_OpenEnded_mscoco_val2014_questions.json questions[1]"]
    assert "malformed rows" in report.summary()


def test_broken_json_file_is_named(tmp_path):
    bad = tmp_path / "train_balanced_questions.json"
    bad.write_text('{"1": {"imageId": "n1", ')
    (tmp_path / "media").mkdir()
    with pytest.raises(FormatError, match="train_balanced_questions.json: not valid JSON"):
        FORMATS["gqa"](bad, tmp_path / "media", tmp_path / "m.jsonl")


def test_gqa(tmp_path):
    ann = _json(tmp_path / "testdev_balanced_questions.json", {
        "201307251": {"imageId": "n15740", "question": "Is the sky blue?", "answer": "yes",
                      "fullAnswer": "Yes, the sky is blue.", "types": {"structural": "verify", "semantic": "attr"}},
        "201640614": {"imageId": "n99999", "question": "Who is wearing the hat?", "answer": "man",
                      "fullAnswer": "The man is.", "types": {"structural": "query"}},
    })
    _image(tmp_path / "media" / "images" / "n15740.jpg")
    report = FORMATS["gqa"](ann, tmp_path / "media", tmp_path / "gqa.jsonl")
    (rec,) = read_manifest(tmp_path / "gqa.jsonl").records
    assert (rec.id, rec.split, rec.answer, rec.family) == ("gqa-201307251", "test", "yes", "vl")
    assert rec.extras["full_answer"] == "Yes, the sky is blue." and rec.extras["structural"] == "verify"
    assert [s.name for s in report.missing_media] == ["gqa-201640614"]


def test_gqa_question_without_answer_is_a_row_error(tmp_path):
    ann = _json(tmp_path / "q.json", {"7": {"imageId": "n1", "question": "what?"}})
    (tmp_path / "media").mkdir()
    with pytest.raises(FormatError, match=r"q.json \['7'\]: missing field 'answer'"):
        FORMATS["gqa"](ann, tmp_path / "media", tmp_path / "m.jsonl", split="val")


def test_split_must_be_known_or_inferable(tmp_path):
    ann = _json(tmp_path / "questions.json", {})
    (tmp_path / "media").mkdir()
    with pytest.raises(FormatError, match="cannot tell the split"):
        FORMATS["gqa"](ann, tmp_path / "media", tmp_path / "m.jsonl")
    with pytest.raises(FormatError, match="unknown split 'dev2'"):
        FORMATS["gqa"](ann, tmp_path / "media", tmp_path / "m.jsonl", split="dev2")


def test_coco_captions_become_captioning_examples(tmp_path):
    ann = _json(tmp_path / "captions_train2014.json", {
        "images": [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg"},
                   {"id": 25, "file_name": "COCO_train2014_000000000025.jpg"}],
        "annotations": [{"id": 1, "image_id": 9, "caption": "A plate of food. "},
                        {"id": 2, "image_id": 9, "caption": "Broccoli on a dish."},
                        {"id": 3, "image_id": 25, "caption": "A giraffe."}],
    })
    _image(tmp_path / "media" / "COCO_train2014_000000000009.jpg")
    report = FORMATS["coco-captions"](ann, tmp_path / "media", tmp_path / "coco.jsonl")
    (rec,) = read_manifest(tmp_path / "coco.jsonl").records
    assert (rec.id, rec.family, rec.question, rec.split) == ("coco-9", "caption", "describe the image.", "train")
    assert rec.answer == "A plate of food." and rec.answers == ("A plate of food.", "Broccoli on a dish.")
    assert report.missing_media[0].name == "coco-25"


def test_coco_captions_wrong_shape_names_file(tmp_path):
    ann = _json(tmp_path / "captions_val2014.json", {"images": []})
    (tmp_path / "media").mkdir()
    with pytest.raises(FormatError, match="captions_val2014.json: expected a JSON object with 'images' and 'annotations'"):
        FORMATS["coco-captions"](ann, tmp_path / "media", tmp_path / "m.jsonl")


def test_avqa_relations_media_and_video_extraction(tmp_path):
    ann = _json(tmp_path / "val_qa.json", _avqa_doc())
    media = tmp_path / "media"
    _image(media / "frames" / "vidA_000030.jpg")
    _wav(media / "audio" / "vidA_000030.wav")
    _video(media / "videos" / "vidB_000010.mp4")  # only the video: frame + wav extracted with PyAV
    out = tmp_path / "avqa" / "manifest.jsonl"
    report = FORMATS["avqa"](ann, media, out)
    manifest = read_manifest(out)
    by_id = {r.id: r for r in manifest}
    assert set(by_id) == {"avqa-0", "avqa-1", "avqa-2"}
    both, view, extracted = by_id["avqa-0"], by_id["avqa-1"], by_id["avqa-2"]
    assert (both.family, both.needs_audio, both.answer, both.split) == ("audio_visual", True, "car", "val")
    assert both.question == "What is making the sound? choices: dog / cat / car / bird"
    assert (view.family, view.needs_audio, view.answer) == ("vl", False, "road")
    assert view.audio == "../media/audio/vidA_000030.wav"
    assert extracted.image == "media/avqa/vidB_000010.jpg" and extracted.audio == "media/avqa/vidB_000010.wav"
    wave = load_audio(manifest.resolve(extracted.audio))
    assert 0.9 < len(wave) / 16000 < 1.2 and np.abs(wave).max() > 0.2  # the 1 s tone survived
    assert load_image(manifest.resolve(extracted.image)).size == (16, 16)
    assert report.extracted == 1
    assert [s.name for s in report.missing_media] == ["avqa-3"]
    assert "dead_000000" in report.missing_media[0].reason


def test_avqa_bad_answer_index_and_relation(tmp_path):
    doc = _avqa_doc()
    doc[1]["answer"] = 7
    doc[2]["question_relation"] = "Smell"
    ann = _json(tmp_path / "train_qa.json", doc)
    _image(tmp_path / "media" / "vidA_000030.jpg")
    report = _strict_then_skip("avqa", ann, tmp_path / "media", r"train_qa.json \[1\]: 'answer' index 7 is outside multi_choice")
    assert [b.name for b in report.bad_rows] == ["train_qa.json [1]", "train_qa.json [2]"]
    assert "unknown question_relation 'Smell'" in report.bad_rows[1].reason


def test_avqa_corrupt_video_is_skipped_and_named(tmp_path):
    ann = _json(tmp_path / "val_qa.json", _avqa_doc()[2:3])
    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "vidB_000010.mp4").write_bytes(b"not a video at all" * 10)
    report = FORMATS["avqa"](ann, tmp_path / "media", tmp_path / "m.jsonl")
    assert report.kept == 0 and report.missing_media[0].name == "avqa-2"
    assert "vidB_000010.mp4 unusable" in report.missing_media[0].reason


def test_audiocaps_groups_captions_per_clip_and_attaches_frames(tmp_path):
    csv = tmp_path / "test.csv"
    csv.write_text(
        "audiocap_id,youtube_id,start_time,caption\n"
        "103549,--0w1YA1Hm4,30,A vehicle driving as a man and woman are talking\n"
        "103548,--0w1YA1Hm4,30,\"A man speaks, a car passes\"\n"
        "97,-AheI8Epim4,0,Birds chirp\n"
        "99,deadclip000,10,Gone from the internet\n"
    )
    _wav(tmp_path / "media" / "--0w1YA1Hm4_30.wav")
    _wav(tmp_path / "media" / "Y-AheI8Epim4.wav")
    _image(tmp_path / "media" / "--0w1YA1Hm4_30.jpg")
    report = FORMATS["audiocaps"](csv, tmp_path / "media", tmp_path / "ac.jsonl")
    recs = {r.id: r for r in read_manifest(tmp_path / "ac.jsonl")}
    first = recs["audiocaps-103549"]
    assert first.answers == ("A vehicle driving as a man and woman are talking", "A man speaks, a car passes")
    assert (first.family, first.needs_audio, first.split) == ("audio_caption", True, "test")
    assert first.image is not None and recs["audiocaps-97"].image is None
    assert recs["audiocaps-97"].audio.endswith("Y-AheI8Epim4.wav")
    assert [s.name for s in report.missing_media] == ["audiocaps-99"]


def test_audiocaps_bad_rows(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("audiocap_id,youtube_id,start_time,caption\n1,abc,ten,Dog barks\n2,abd,5\n")
    (tmp_path / "media").mkdir()
    report = _strict_then_skip("audiocaps", csv, tmp_path / "media", r"train.csv row 2: field 'start_time' must be a number, got 'ten'")
    assert [b.name for b in report.bad_rows] == ["train.csv row 2", "train.csv row 3"]
    assert "too few fields" in report.bad_rows[1].reason


def test_csv_header_missing_column_names_file(tmp_path):
    csv = tmp_path / "clotho_captions_evaluation.csv"
    csv.write_text("file_name,caption_1,caption_2\nx.wav,a,b\n")
    (tmp_path / "media").mkdir()
    with pytest.raises(FormatError, match=r"clotho_captions_evaluation.csv row 1: header is missing column\(s\) caption_3"):
        FORMATS["clotho"](csv, tmp_path / "media", tmp_path / "m.jsonl")


def test_clotho_five_captions(tmp_path):
    csv = tmp_path / "clotho_captions_development.csv"
    caps = ",".join(f"caption {k}" for k in range(1, 6))
    csv.write_text(f"file_name,{','.join(f'caption_{k}' for k in range(1, 6))}\n"
                   f"\"Rain, on a roof.wav\",{caps}\nmissing.wav,{caps}\n")
    _wav(tmp_path / "media" / "development" / "Rain, on a roof.wav")
    report = FORMATS["clotho"](csv, tmp_path / "media", tmp_path / "clotho.jsonl")
    (rec,) = read_manifest(tmp_path / "clotho.jsonl").records
    assert rec.id == "clotho-Rain, on a roof" and rec.split == "train" and len(rec.answers) == 5
    assert rec.answer == "caption 1" and rec.audio == "media/development/Rain, on a roof.wav"
    assert [s.name for s in report.missing_media] == ["clotho-missing"]


def test_vggsound_headerless_csv_with_per_row_split(tmp_path):
    csv = tmp_path / "vggsound.csv"
    csv.write_text("---g-f_I2yQ,1,people marching,test\n--0PQM4-hqg,30,\"waterfall, burbling\",train\n"
                   "--dead00000,0,dog barking,train\n--badsplit00,0,dog barking,holdout\n")
    _wav(tmp_path / "media" / "---g-f_I2yQ_000001.wav")
    _video(tmp_path / "media" / "video" / "--0PQM4-hqg_000030.mp4")
    report = FORMATS["vggsound"](csv, tmp_path / "media", tmp_path / "vgg.jsonl", on_error="skip")
    recs = {r.id: r for r in read_manifest(tmp_path / "vgg.jsonl")}
    assert set(recs) == {"vggsound----g-f_I2yQ_000001", "vggsound---0PQM4-hqg_000030"}
    a, b = recs["vggsound----g-f_I2yQ_000001"], recs["vggsound---0PQM4-hqg_000030"]
    assert (a.split, a.answer, a.question, a.family) == ("test", "people marching", "what is making the sound?", "audio")
    assert b.split == "train" and b.answer == "waterfall, burbling" and b.image and b.audio.endswith(".wav")
    assert report.extracted == 1
    assert [s.name for s in report.missing_media] == ["vggsound---dead00000_000000"]
    assert [b.name for b in report.bad_rows] == ["vggsound.csv row 4"]


def test_missing_media_root_is_clear(tmp_path):
    csv = tmp_path / "vggsound.csv"
    csv.write_text("abc,1,dog,train\n")
    with pytest.raises(FormatError, match="media root .*nope is not a folder"):
        FORMATS["vggsound"](csv, tmp_path / "nope", tmp_path / "m.jsonl")
