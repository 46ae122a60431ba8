"""Files in real datasets' official annotation formats, with generated media, shared by the format tests and the
researcher-path integration test (tests/ is on sys.path through its conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from safe.data.media import write_wav


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, 0, 0)).save(path)
    return path


def _wav(path: Path, seconds: float = 0.2, sr: int = 16000) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    return write_wav(path, 0.3 * np.sin(2 * np.pi * 440 * t), sr)


def _json(path: Path, doc) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def _video(path: Path, seconds: float = 1.0, freq: float = 300.0, color: tuple[int, int, int] | None = None,
           sr: int = 22050) -> Path:
    """A tiny mp4 (mpeg4 video 16x16 + aac audio) written with PyAV, frame brightness rising over time."""
    av = pytest.importorskip("av")
    path.parent.mkdir(parents=True, exist_ok=True)
    fps = 10
    with av.open(str(path), "w") as c:
        vs = c.add_stream("mpeg4", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 16, 16, "yuv420p"
        aus = c.add_stream("aac", rate=sr)
        aus.layout = "mono"
        for i in range(int(seconds * fps)):
            pixels = np.full((16, 16, 3), 20 * i, np.uint8) if color is None else np.tile(np.uint8(color), (16, 16, 1))
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for pkt in vs.encode(frame):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        wave = (0.4 * np.sin(2 * np.pi * freq * np.arange(int(seconds * sr)) / sr)).astype(np.float32)
        for k in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, k : k + 1024], format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sr, k
            for pkt in aus.encode(frame):
                c.mux(pkt)
        for pkt in aus.encode():
            c.mux(pkt)
    return path


def _vqav2_files(root: Path) -> tuple[Path, Path]:
    questions = _json(root / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "data_subtype": "val2014",
        "questions": [
            {"image_id": 1, "question": "what color is the bus?", "question_id": 10},
            {"image_id": 2, "question": "how many dogs?", "question_id": 20},
            {"image_id": 42, "question": "is it raining?", "question_id": 30},  # image missing on disk
        ],
    })
    answers = lambda *a: [{"answer": x, "answer_confidence": "yes", "answer_id": i + 1} for i, x in enumerate(a)]
    annotations = _json(root / "v2_mscoco_val2014_annotations.json", {
        "data_subtype": "val2014",
        "annotations": [
            {"question_id": 10, "image_id": 1, "answers": answers(*["red"] * 9, "orange"),
             "multiple_choice_answer": "red", "answer_type": "other", "question_type": "what color is the"},
            {"question_id": 20, "image_id": 2, "answers": answers(*["2"] * 10),
             "multiple_choice_answer": "2", "answer_type": "number", "question_type": "how many"},
            {"question_id": 30, "image_id": 42, "answers": answers(*["no"] * 10),
             "multiple_choice_answer": "no", "answer_type": "yes/no", "question_type": "is it"},
        ],
    })
    _image(root / "media" / "val2014" / "COCO_val2014_000000000001.jpg")
    _image(root / "media" / "val2014" / "COCO_val2014_000000000002.jpg")
    return questions, annotations


def _avqa_doc():
    return [
        {"id": 0, "video_name": "vidA_000030", "video_id": 1, "question_text": "What is making the sound?",
         "multi_choice": ["dog", "cat", "car", "bird"], "answer": 2, "question_relation": "Both", "question_type": "Which"},
        {"id": 1, "video_name": "vidA_000030", "video_id": 1, "question_text": "What is in the video?",
         "multi_choice": ["road", "sea", "sky", "room"], "answer": 0, "question_relation": "View", "question_type": "Come From"},
        {"id": 2, "video_name": "vidB_000010", "video_id": 2, "question_text": "What happened?",
         "multi_choice": ["a", "b", "c", "d"], "answer": 1, "question_relation": "Both", "question_type": "Happening"},
        {"id": 3, "video_name": "dead_000000", "video_id": 3, "question_text": "Where?",
         "multi_choice": ["a", "b"], "answer": 1, "question_relation": "Both", "question_type": "Where"},
    ]




# ---------------------------------------------------------------- a researcher's sources, in their official formats

COLORS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (30, 60, 220), "yellow": (230, 210, 40)}
SOUNDS = {"a high beep": 1500.0, "a low hum": 150.0, "a middle tone": 500.0}
NATIVE_SR = 44100  # what Clotho, AudioCaps and AVQA audio really is


def _tone(path: Path, freq: float, seconds: float = 1.0, sr: int = NATIVE_SR) -> Path:
    t = np.arange(int(seconds * sr)) / sr
    return write_wav(path, 0.3 * np.sin(2 * np.pi * freq * t), sr)


def write_researcher_sources(root: Path, n: int = 24) -> dict[str, dict[str, Path]]:
    """VQAv2, GQA, Clotho, AudioCaps and AVQA files with generated media whose answers follow from the media
    (colours from images, caption words from 44.1 kHz tones); returns `safe ingest` arguments per format."""
    colors, sounds = list(COLORS), list(SOUNDS)
    media = root / "media"
    vq_q, vq_a = [], []
    for i in range(n):  # VQAv2 val2014: image-only rows, one split
        color = colors[i % len(colors)]
        _image_of(media / "coco" / f"COCO_val2014_{i + 1:012d}.jpg", COLORS[color])
        vq_q.append({"image_id": i + 1, "question": "what color is the picture?", "question_id": 1000 + i})
        vq_a.append({"question_id": 1000 + i, "image_id": i + 1, "multiple_choice_answer": color,
                     "answers": [{"answer": color, "answer_confidence": "yes", "answer_id": k + 1} for k in range(10)],
                     "answer_type": "other", "question_type": "what color is the"})
    questions = _json(root / "vqav2" / "v2_OpenEnded_mscoco_val2014_questions.json",
                      {"data_subtype": "val2014", "questions": vq_q})
    annotations = _json(root / "vqav2" / "v2_mscoco_val2014_annotations.json",
                        {"data_subtype": "val2014", "annotations": vq_a})
    gqa = {}
    for i in range(n):  # GQA testdev: image-only rows, one split
        color = colors[(i + 1) % len(colors)]
        _image_of(media / "gqa" / f"n{5000 + i}.jpg", COLORS[color])
        gqa[str(2000 + i)] = {"imageId": f"n{5000 + i}", "question": "which color is the image?", "answer": color,
                              "fullAnswer": f"The image is {color}.", "types": {"structural": "query"}}
    gqa_file = _json(root / "gqa" / "testdev_balanced_questions.json", gqa)
    clotho_rows = []
    for i in range(n):  # Clotho development: audio-only captioning rows at 44.1 kHz
        caption = sounds[i % len(sounds)]
        _tone(media / "clotho" / "development" / f"clip {i:03d}.wav", SOUNDS[caption] * (1 + 0.02 * (i % 5)))
        clotho_rows.append(f'"clip {i:03d}.wav",' + ",".join([caption] * 5))
    clotho = root / "clotho" / "clotho_captions_development.csv"
    clotho.parent.mkdir(parents=True, exist_ok=True)
    header = "file_name," + ",".join(f"caption_{k}" for k in range(1, 6))
    clotho.write_text(header + "\n" + "\n".join(clotho_rows) + "\n")
    caps = ["audiocap_id,youtube_id,start_time,caption"]
    for i in range(n):  # AudioCaps train: audio-only captioning rows at 44.1 kHz
        caption = sounds[(i + 1) % len(sounds)]
        _tone(media / "audiocaps" / f"yt{i:08d}_30.wav", SOUNDS[caption] * (1 - 0.02 * (i % 5)))
        caps.append(f"{9000 + i},yt{i:08d},30,{caption}")
    audiocaps = root / "audiocaps" / "train.csv"
    audiocaps.parent.mkdir(parents=True, exist_ok=True)
    audiocaps.write_text("\n".join(caps) + "\n")
    avqa = []
    for v in range(max(4, n // 4)):  # AVQA val: short videos (frame + 44.1 kHz audio extracted with PyAV)
        color, sound = colors[v % len(colors)], sounds[v % len(sounds)]
        _video(media / "avqa" / f"vid{v:04d}_000010.mp4", freq=SOUNDS[sound], color=COLORS[color], sr=NATIVE_SR)
        avqa.append({"id": 2 * v, "video_name": f"vid{v:04d}_000010", "video_id": v, "question_text":
                     "What sound do you hear?", "multi_choice": sounds, "answer": sounds.index(sound),
                     "question_relation": "Sound", "question_type": "Which"})
        avqa.append({"id": 2 * v + 1, "video_name": f"vid{v:04d}_000010", "video_id": v, "question_text":
                     "What color is the video?", "multi_choice": colors, "answer": colors.index(color),
                     "question_relation": "View", "question_type": "Come From"})
    avqa_file = _json(root / "avqa" / "val_qa.json", avqa)
    return {
        "vqav2": {"annotations": annotations, "questions": questions, "media_root": media / "coco"},
        "gqa": {"annotations": gqa_file, "media_root": media / "gqa"},
        "clotho": {"annotations": clotho, "media_root": media / "clotho"},
        "audiocaps": {"annotations": audiocaps, "media_root": media / "audiocaps"},
        "avqa": {"annotations": avqa_file, "media_root": media / "avqa"},
    }


def _image_of(path: Path, color: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)
    return path
