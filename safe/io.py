"""Atomic file writes: write to a temp file in the target folder, then rename over the target.

A process killed mid-write leaves the old file (or nothing), never a partial output for DVC to cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[str], Any], suffix: str = ".tmp") -> Path:
    """Call `write(tmp_path)` then atomically move tmp_path to `path`. `suffix` matters for writers that
    append an extension themselves (np.save adds .npy unless the name already ends with it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh, empty temp folder beside `path`; when the block succeeds it replaces `path`, when it raises
    (SystemExit included) it is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)


def write_text_atomic(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: Path(p).write_text(text))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Strict JSON (NaN and infinities become null, which every JSON reader accepts), written atomically."""
    return write_text_atomic(path, json.dumps(_finite(data), indent=2, sort_keys=True, default=_jsonable,
                                              allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, float) or (hasattr(value, "item") and hasattr(value, "dtype") and value.ndim == 0):
        number = value.item() if hasattr(value, "item") else value
        if isinstance(number, float) and not math.isfinite(number):
            return None
        return number
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (content keys for caches)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


FULL_HASH_LIMIT = 256 << 20
"""Files up to this size are hashed whole by `content_fingerprint`; larger ones (multi-GB checkpoint shards) by
their size and their first and last 16 MiB, which any retraining or re-download changes."""


def _large_file_digest(path: Path) -> str:
    size, chunk = path.stat().st_size, 16 << 20
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(chunk))
        fh.seek(max(size - chunk, 0))
        digest.update(fh.read())
    return digest.hexdigest()


def content_fingerprint(source: str | Path) -> str:
    """Hex SHA-256 that changes when the content of a file or folder changes (names and bytes of every file);
    a string that is not a local path (a hub id) is its own fingerprint. Keys resumable work to its inputs."""
    path = Path(source)
    if not path.exists():
        return hashlib.sha256(f"name:{source}".encode()).hexdigest()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        big = file.stat().st_size > FULL_HASH_LIMIT
        digest.update(f"{file.relative_to(path) if file != path else file.name}\0".encode())
        digest.update((_large_file_digest(file) if big else file_sha256(file)).encode())
    return digest.hexdigest()
