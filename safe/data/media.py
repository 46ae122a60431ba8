"""Reading and writing the media files a manifest points at (audio clips and images).

Every loader turns a bad file into `MediaError` naming the file and what is wrong, so a single broken clip
in a dataset of thousands is easy to find. Audio always comes back as float32 mono at the requested rate.
Writers are atomic and byte-deterministic (16-bit PCM WAV without extra chunks, PNG without metadata), which the
synthetic benchmark relies on for byte-identical regeneration.

Limits that protect the machine: a clip is cropped while it is decoded (only the frames needed are read), an image's
size is read from its header before its pixels, and an image over `MAX_IMAGE_PIXELS` is refused (JPEGs are decoded
downscaled instead). Conversions that lose something (transparency, colour) are reported as `MediaWarning`.
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


MAX_IMAGE_PIXELS = 36_000_000
"""Images above this many pixels (6000 x 6000) are refused before their pixels are decoded (JPEG: downscaled)."""
AUDIO_BLOCK_FRAMES = 1 << 18
"""Frames per block when a whole clip is scanned (validation): memory stays bounded for hour-long files."""


class MediaError(ValueError):
    """A media file is missing, empty, truncated, corrupt or holds invalid samples; the message names it."""


class MediaWarning(UserWarning):
    """A media file was usable but changed on the way in (transparency dropped, greyscale, downscaled)."""


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
        if head[:4] == b"RIFF" and len(head) < 12:
            raise MediaError(f"{path}: truncated WAV file (only {size} bytes, the header alone needs 44)")
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not a plain RIFF WAV; leave it to the decoder
        offset = 12
        while offset + 8 <= size:
            fh.seek(offset)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"fmt " and offset + 8 + chunk_size > size:
                raise MediaError(f"{path}: truncated WAV file (the header is cut off after {size} bytes)")
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
    if path.suffix.lower() in (".wav", ".wave"):
        _check_wav_complete(path)
    try:
        info = sf.info(str(path))
        return AudioInfo(sr=int(info.samplerate), channels=int(info.channels), duration=float(info.duration))
    except (sf.LibsndfileError, RuntimeError) as err:
        sf_error = err
    try:
        import audioread

        with audioread.audio_open(str(path)) as f:
            return AudioInfo(sr=int(f.samplerate), channels=int(f.channels), duration=float(f.duration))
    except Exception as err:  # audioread raises many backend-specific types
        raise MediaError(f"{path}: {_unreadable_audio(path, sf_error, err)}") from None


def _unreadable_audio(path: Path, sf_error: BaseException, other: BaseException,
                      lead: str = "not a readable audio file") -> str:
    """Why neither soundfile nor audioread could read a file, in words (their own messages are often empty)."""
    with path.open("rb") as fh:
        head = fh.read(512)
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "holds text, not audio (is it the right file?)"
    detail = str(sf_error).split("': ", 1)[-1].strip() or type(sf_error).__name__
    extra = f"; audioread: {type(other).__name__}" + (f" {other}" if str(other) else "")
    return f"{lead} (soundfile: {detail}{extra}); expected WAV, FLAC, OGG or MP3"


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
        raise MediaError(f"{path}: {_unreadable_audio(path, sf_error, err, 'corrupt or unsupported audio file')}") \
            from None
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


def scan_audio(path: str | os.PathLike) -> AudioInfo:
    """Decode a whole clip block by block (memory bounded by AUDIO_BLOCK_FRAMES) to prove every sample is readable
    and finite; returns its header facts. Raises MediaError like `load_audio`."""
    path = Path(path)
    info = audio_info(path)  # also refuses a truncated WAV
    try:
        frames = 0
        with sf.SoundFile(str(path)) as f:
            for block in f.blocks(blocksize=AUDIO_BLOCK_FRAMES, dtype="float32", always_2d=True):
                if not np.isfinite(block).all():
                    raise MediaError(f"{path}: NaN/inf samples after {frames / info.sr:.2f} s")
                frames += len(block)
    except (sf.LibsndfileError, RuntimeError):
        load_audio(path, target_sr=info.sr)  # a format only audioread reads: decoded in one go
        return info
    if frames == 0:
        raise MediaError(f"{path}: contains no audio samples")
    return info


def load_image(path: str | os.PathLike, size: int | tuple[int, int] | None = None,
               max_pixels: int = MAX_IMAGE_PIXELS, notes: list[str] | None = None) -> Image.Image:
    """Load an image as RGB; `size` (side or (width, height)) resizes with bicubic filtering.

    The pixel count is read from the header first: a JPEG above `max_pixels` is decoded downscaled (a power of two,
    JPEG's cheap draft mode), any other format is refused with MediaError. What the conversion to RGB loses
    (transparency, colour) and any downscaling are appended to `notes` when given, else warned as MediaWarning.
    """
    path = Path(path)
    _check_nonempty(path)
    found: list[str] = []
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width == 0 or height == 0:
                raise MediaError(f"{path}: image has zero size")
            if width * height > max_pixels:
                found += _shrink_or_refuse(img, path, max_pixels)
            img.load()  # decode now so truncation surfaces here, not later
            found += _conversion_notes(img, path)
            rgb = img.convert("RGB")
    except MediaError:
        raise
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not an image file (unrecognised format); expected PNG, JPEG, BMP, GIF or WebP") \
            from None
    except Image.DecompressionBombError as err:  # Image.open refuses above twice PIL's own limit
        raise MediaError(f"{path}: image too large to decode safely ({err}); downscale it first") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise MediaError(f"{path}: truncated or corrupt image ({err})") from None
    if notes is not None:
        notes += found
    for note in () if notes is not None else found:
        warnings.warn(note, MediaWarning, stacklevel=2)
    if size is not None:
        wh = (size, size) if isinstance(size, int) else tuple(size)
        if rgb.size != wh:
            rgb = rgb.resize(wh, Image.Resampling.BICUBIC)
    return rgb


def _shrink_or_refuse(img: Image.Image, path: Path, max_pixels: int) -> list[str]:
    width, height = img.size
    megapixels = f"{width}x{height} ({width * height / 1e6:.1f} megapixels)"
    if img.format == "JPEG":
        scale = 1
        while (width // (2 * scale)) * (height // (2 * scale)) > max_pixels // 4 and scale < 8:
            scale *= 2
        img.draft("RGB", (width // (2 * scale), height // (2 * scale)))
        if img.size[0] * img.size[1] <= max_pixels:
            return [f"{path}: {megapixels} is above the {max_pixels / 1e6:.0f}-megapixel limit; decoded "
                    f"downscaled to {img.size[0]}x{img.size[1]}"]
    raise MediaError(f"{path}: image is {megapixels}, above the {max_pixels / 1e6:.0f}-megapixel limit; "
                     f"downscale it first (the model sees it at a few hundred pixels a side)")


def _conversion_notes(img: Image.Image, path: Path) -> list[str]:
    """What converting to RGB loses that a question may be about."""
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        return [f"{path}: {img.mode} image with transparency; the alpha channel is dropped (transparent pixels "
                f"show their stored colour)"]
    if img.mode in ("1", "L", "I", "I;16", "F"):
        return [f"{path}: greyscale image ({img.mode}); questions about colour cannot be answered from it"]
    if img.mode == "CMYK":
        return [f"{path}: CMYK image converted to RGB without a colour profile; colours may shift"]
    return []


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
