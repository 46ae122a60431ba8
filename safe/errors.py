"""The user-facing error of the `safe` commands: one line that says where, what is wrong and what to do.

`UserError` is raised for expected failures (bad media, manifest, model folder, question, params, registry); the
CLI's error boundary prints it on stderr and exits with its code. `from_exception` turns the library's own
error types (MediaError, ManifestError, ConfigError, ...) into one, so the library needs no CLI knowledge.
This module imports nothing heavy: the CLI loads it before anything else.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_OK = 0
EXIT_CRITERIA_FAILED = 1
"""The command ran, but what it checked failed (validation checks, success criteria)."""
EXIT_BAD_INPUT = 2
"""The input is wrong (a file, a row, a key, an option); nothing was written."""
EXIT_INTERNAL = 3
"""An unexpected error: a bug. `--debug` shows the traceback."""


def describe_path(path: str | os.PathLike) -> str:
    """`path` as written, and resolved when that differs: 'clip.wav (/home/me/clip.wav)'."""
    written = str(path)
    try:
        resolved = str(Path(path).expanduser().resolve())
    except (OSError, RuntimeError):
        return written
    return written if resolved == written else f"{written} ({resolved})"


class UserError(Exception):
    """An expected failure caused by the input. Renders as one line: `<file>: <where>: <what>. <fix>`."""

    def __init__(self, what: str, *, path: str | os.PathLike | None = None, where: str | None = None,
                 fix: str | None = None, exit_code: int = EXIT_BAD_INPUT) -> None:
        self.what, self.path, self.where, self.fix, self.exit_code = what, path, where, fix, exit_code
        super().__init__(self.render())

    def render(self) -> str:
        parts = [describe_path(self.path)] if self.path is not None else []
        if self.where:
            parts.append(self.where)
        text = ": ".join([*parts, self.what.rstrip(".")])
        if self.fix:
            text += f"; {self.fix.rstrip('.')}"
        return " ".join(text.split())  # one line, whatever the wrapped message held


# Library error types that are the input's fault, by module and class name: looked up in sys.modules so the
# boundary never imports a heavy module just to compare types.
_INPUT_ERRORS = {
    "safe.data.media": ("MediaError",),
    "safe.data.manifest": ("ManifestError",),
    "safe.data.formats.base": ("FormatError",),
    "safe.config": ("ConfigError",),
    "safe.tracking": ("TrackingError",),
    "safe.models.base_vl": ("CheckpointError",),
    "safe.eval.metrics": ("EvalInputError",),
    "safe.inference": ("BundleError", "QuestionError"),
}


def input_error_types() -> tuple[type, ...]:
    found = []
    for module_name, names in _INPUT_ERRORS.items():
        module = sys.modules.get(module_name)
        found += [getattr(module, n) for n in names if module is not None and hasattr(module, n)]
    return tuple(found)


def from_exception(err: BaseException) -> UserError | None:
    """A UserError for an expected library error (its message already names the file/row/key), else None."""
    if isinstance(err, UserError):
        return err
    if isinstance(err, input_error_types()):
        text = " ".join(str(err).split()) or type(err).__name__
        return UserError(text, fix=getattr(err, "fix", None))
    return None
