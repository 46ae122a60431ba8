"""Reading and writing the media files a manifest points at (audio clips and images).

Every loader turns a bad file into `MediaError` naming the file and what is wrong, so a single broken clip
in a dataset of thousands is easy to find. Audio always comes back as float32 mono at the requested rate.
Writers are atomic and byte-deterministic (16-bit PCM WAV without extra chunks, PNG without metadata), which the
synthetic benchmark relies on for byte-identical regeneration.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from PIL import Image, UnidentifiedImageError

from safe.data.manifest import atomic_write_bytes


class MediaError(ValueError):
    """A media file is missing, empty, truncated, corrupt or holds invalid samples; the message names it."""


@dataclass(frozen=True)
class AudioInfo:
    sr: int
    channels: int
    duration: float
    """Seconds."""


def _check_nonempty(path: Path) -> None:
    if not path.is_file():
        raise MediaError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: file is empty (0 bytes)")


def _check_wav_complete(path: Path) -> None:
    """Raise if a RIFF/WAVE file is shorter than its own header says (a truncated copy or download).

    libsndfile silently reads what is there, so truncation has to be detected from the chunk sizes.
    Streamed WAVs with an unknown size (0 or 0xFFFFFFFF) are accepted.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not a plain RIFF WAV; leave it to the decoder
        offset = 12
        while offset + 8 <= size:
            fh.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return
                missing = offset + 8 + chunk_size - size
                if missing > 0:
                    raise MediaError(
                        f"{path}: truncated WAV file (data chunk declares {chunk_size} bytes, {missing} are missing)"
                    )
                return
            offset += 8 + chunk_size + (chunk_size & 1)  # chunks are word-aligned
    raise MediaError(f"{path}: truncated WAV file (no data chunk)")


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channel count and duration from the header (no decoding where the format allows)."""
    path = Path(path)
    _check_nonempty(path)
    try:
        info = sf.info(str(path))
        return AudioInfo(sr=int(info.samplerate), channels=int(info.channels), duration=float(info.duration))
    except (sf.LibsndfileError, RuntimeError):
        pass
    try:
        import audioread

        with audioread.audio_open(str(path)) as f:
            return AudioInfo(sr=int(f.samplerate), channels=int(f.channels), duration=float(f.duration))
    except Exception as err:  # audioread raises many backend-specific types
        raise MediaError(f"{path}: not a readable audio file ({type(err).__name__}: {err})") from None


def _decode(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int]:
    """Decode to float32 `(T, C)` at the file's own rate; soundfile first, librosa/audioread as fallback."""
    if path.suffix.lower() in (".wav", ".wave"):
        _check_wav_complete(path)
    try:
        with sf.SoundFile(str(path)) as f:
            frames = -1 if max_seconds is None else int(np.ceil(max_seconds * f.samplerate))
            wave = f.read(frames=frames, dtype="float32", always_2d=True)  # (T, C)
            return wave, int(f.samplerate)
    except (sf.LibsndfileError, RuntimeError) as err:
        sf_error = err
    try:
        import librosa

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # librosa warns that it falls back to audioread
            wave, sr = librosa.load(str(path), sr=None, mono=False, duration=max_seconds, dtype=np.float32)
    except Exception as err:  # audioread raises many backend-specific types
        raise MediaError(
            f"{path}: corrupt or unsupported audio file (soundfile: {sf_error}; audioread: {type(err).__name__} {err})"
        ) from None
    wave = wave[:, None] if wave.ndim == 1 else wave.T  # librosa gives (C, T)
    return np.ascontiguousarray(wave, dtype=np.float32), int(sr)


def load_audio(path: str | os.PathLike, target_sr: int = 16000, max_seconds: float | None = None) -> np.ndarray:
    """Load an audio file as float32 mono at `target_sr`, cropped to the first `max_seconds`.

    Integer PCM (8/16/24/32-bit) is scaled to [-1, 1]; channels are averaged; other rates are resampled with
    soxr (HQ, as librosa.resample). Raises MediaError for missing, empty, truncated or corrupt files, files without
    samples, and NaN/inf samples.
    """
    path = Path(path)
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    _check_nonempty(path)
    wave, sr = _decode(path, max_seconds)  # (T, C)
    if wave.shape[0] == 0:
        raise MediaError(f"{path}: contains no audio samples")
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise MediaError(f"{path}: {bad} NaN/inf samples")
    mono = wave.mean(axis=1, dtype=np.float32) if wave.shape[1] > 1 else wave[:, 0]  # (T,)
    if sr != target_sr:
        # soxr directly: the same kernel as librosa.resample(res_type="soxr_hq"), without librosa's slow import.
        mono = soxr.resample(mono, sr, target_sr, quality="HQ")
    if max_seconds is not None:
        mono = mono[: int(round(max_seconds * target_sr))]
    return np.ascontiguousarray(mono, dtype=np.float32)


def load_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None) -> Image.Image:
    """Load an image as RGB; `size` (side or (width, height)) resizes with bicubic filtering."""
    path = Path(path)
    _check_nonempty(path)
    try:
        with Image.open(path) as img:
            img.load()  # decode now so truncation surfaces here, not later
            rgb = img.convert("RGB")
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not an image file (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"{path}: truncated or corrupt image ({err})") from None
    if rgb.width == 0 or rgb.height == 0:
        raise MediaError(f"{path}: image has zero size")
    if size is not None:
        wh = (size, size) if isinstance(size, int) else tuple(size)
        if rgb.size != wh:
            rgb = rgb.resize(wh, Image.Resampling.BICUBIC)
    return rgb


def wav_bytes(wave: np.ndarray, sr: int = 16000) -> bytes:
    """Encode `(T,)` or `(T, C)` float audio in [-1, 1] as 16-bit PCM WAV bytes (values outside are clipped)."""
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim not in (1, 2) or wave.shape[0] == 0:
        raise ValueError(f"wave must be a non-empty (T,) or (T, C) array, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError("wave contains NaN/inf samples")
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_wav(path: str | os.PathLike, wave: np.ndarray, sr: int = 16000) -> Path:
    """Atomically write 16-bit PCM WAV."""
    path = Path(path)
    atomic_write_bytes(path, wav_bytes(wave, sr))
    return path


def png_bytes(image: Image.Image) -> bytes:
    """Encode as PNG without metadata chunks (no timestamps), so equal pixels give equal bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def write_png(path: str | os.PathLike, image: Image.Image) -> Path:
    """Atomically write a PNG."""
    path = Path(path)
    atomic_write_bytes(path, png_bytes(image))
    return path
