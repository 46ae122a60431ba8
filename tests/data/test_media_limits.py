"""Limits that protect the machine: clips cropped while decoding, whole clips scanned in bounded memory, image sizes
read from the header before the pixels."""

from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from safe.data.media import MediaError, MediaWarning, load_audio, load_image, scan_audio


@pytest.fixture(scope="module")
def ten_minutes(tmp_path_factory):
    """A 10-minute 16 kHz mono WAV (19 MB of int16; 38 MB as float32 if decoded whole)."""
    path = tmp_path_factory.mktemp("long") / "long.wav"
    with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
        block = (0.1 * np.sin(np.arange(16000 * 60) / 10)).astype(np.float32)
        for _ in range(10):
            f.write(block)
    return path


def _peak_mb(fn) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def test_a_long_clip_is_cropped_while_decoding(ten_minutes):
    wave = load_audio(ten_minutes, max_seconds=2.0)
    assert wave.shape == (32000,)
    assert _peak_mb(lambda: load_audio(ten_minutes, max_seconds=2.0)) < 5  # whole: > 38 MB


def test_scanning_a_whole_clip_keeps_memory_bounded(ten_minutes):
    info = scan_audio(ten_minutes)
    assert info.duration == pytest.approx(600.0)
    assert _peak_mb(lambda: scan_audio(ten_minutes)) < 10


def test_scan_finds_nan_late_in_a_clip(tmp_path):
    wave = np.zeros(16000 * 3, dtype=np.float32)
    wave[-5] = np.nan
    sf.write(tmp_path / "late.wav", wave, 16000, subtype="FLOAT")
    with pytest.raises(MediaError, match="late.wav: NaN/inf samples"):
        scan_audio(tmp_path / "late.wav")


def test_large_png_is_refused_before_decoding(tmp_path):
    Image.new("L", (300, 200)).save(tmp_path / "big.png")
    with pytest.raises(MediaError, match=r"big.png: image is 300x200 \(0.1 megapixels\), above the"):
        load_image(tmp_path / "big.png", max_pixels=30_000)


def test_large_jpeg_is_decoded_downscaled_with_a_note(tmp_path):
    Image.new("RGB", (400, 400), (10, 200, 30)).save(tmp_path / "big.jpg", quality=90)
    notes: list[str] = []
    image = load_image(tmp_path / "big.jpg", max_pixels=50_000, notes=notes)
    assert image.width * image.height <= 50_000 and image.mode == "RGB"
    assert len(notes) == 1 and "decoded downscaled" in notes[0] and "big.jpg" in notes[0]


def test_lossy_conversions_warn_unless_notes_are_collected(tmp_path):
    Image.new("LA", (4, 4)).save(tmp_path / "la.png")
    with pytest.warns(MediaWarning, match="alpha channel is dropped"):
        load_image(tmp_path / "la.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        notes: list[str] = []
        load_image(tmp_path / "la.png", notes=notes)
    assert notes and "la.png" in notes[0]
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(tmp_path / "rgb.png")  # nothing lost, nothing said
