"""Frame + 16 kHz mono wav extraction from a video file with PyAV (FFmpeg bindings, the `av` package).

AVQA and VGGSound ship as YouTube videos; AudioCaps is often kept as video too. The adapters prefer
pre-extracted frames/wavs and call `extract_media` only when those are absent. Outputs are written
atomically, and an existing output is reused, so re-running `safe ingest` does not decode again.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from safe.data.media import MediaError, write_wav
from safe.io import atomic_write


def _open(path: Path):
    try:
        import av
    except ImportError:  # pragma: no cover - depends on the environment
        raise MediaError(f"{path}: reading video needs PyAV; install it with `pip install av`") from None
    if not path.is_file() or path.stat().st_size == 0:
        raise MediaError(f"{path}: video file missing or empty")
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise MediaError(f"{path}: not a readable video ({err})") from None


def middle_frame(path: Path, at: float | None = None) -> bytes:
    """JPEG bytes of the first frame at/after `at` seconds (default: the middle of the video)."""
    import av

    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise MediaError(f"{path}: video has no video stream")
        stream = container.streams.video[0]
        duration = _duration(container, stream)
        target = duration / 2 if at is None else at
        try:
            if target > 0 and stream.time_base is not None:
                container.seek(int(target / stream.time_base), stream=stream, backward=True)
            image = None
            for frame in container.decode(stream):
                image = frame.to_image()  # PIL RGB
                if frame.time is None or frame.time >= target:
                    break
        except av.FFmpegError as err:
            raise MediaError(f"{path}: corrupt video stream ({err})") from None
    if image is None:
        raise MediaError(f"{path}: video stream has no decodable frame")
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def audio_track(path: Path, sr: int = 16000) -> np.ndarray:
    """The whole audio track as float32 mono at `sr`. # (T,)"""
    import av

    path = Path(path)
    resampler = av.AudioResampler(format="flt", layout="mono", rate=sr)
    chunks: list[np.ndarray] = []
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f"{path}: video has no audio stream")
        try:
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))  # packed flt mono: (1, n) -> (n,)
            for out in resampler.resample(None):  # flush
                chunks.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as err:
            raise MediaError(f"{path}: corrupt audio stream ({err})") from None
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if wave.size == 0:
        raise MediaError(f"{path}: audio stream has no samples")
    if not np.isfinite(wave).all():
        raise MediaError(f"{path}: audio stream decodes to NaN/inf samples")
    return wave


def extract_media(
    video: Path, image_out: Path | None = None, audio_out: Path | None = None, sr: int = 16000
) -> tuple[Path | None, Path | None]:
    """Write the middle frame (JPEG) to `image_out` and the audio (16-bit wav at `sr`) to `audio_out`.

    Either output may be None (not wanted). Existing outputs are reused. Raises MediaError naming the video.
    """
    video = Path(video)
    if image_out is not None and not Path(image_out).is_file():
        jpeg = middle_frame(video)
        atomic_write(image_out, lambda tmp: Path(tmp).write_bytes(jpeg))
    if audio_out is not None and not Path(audio_out).is_file():
        write_wav(audio_out, audio_track(video, sr), sr)
    return image_out, audio_out


def _duration(container, stream) -> float:
    """Seconds, from the stream when it knows, else the container; 0.0 when neither does."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base is microseconds
    return 0.0
