"""What a stage's code is: the project files its entry module imports, for dvc.yaml deps and checkpoint keys.

`python -m pipelines.code_deps` prints, per dvc.yaml stage, the files its deps miss (exit 1 when any).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import yaml

PROJECT_PACKAGES = ("safe", "pipelines")


def _module_file(name: str, root: Path) -> Path | None:
    """`safe.data.synth` -> safe/data/synth.py (or the package's __init__.py); None outside the project."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str, lazy: bool) -> set[str]:
    """The project modules `path` (module name `module`) imports: at module level, and with `lazy` also inside
    functions (a library's lazy import serves one code path, e.g. loading a registered model, not every caller)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree) if lazy else _module_level(tree.body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join([*parent, node.module] if node.module else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from safe.data import synth`
    return {name for name in found if name.split(".")[0] in PROJECT_PACKAGES}


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run on import: the body, and the bodies of module-level if/try blocks (not functions)."""
    out: list[ast.stmt] = []
    for node in body:
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            out.extend(_module_level(node.body + node.orelse + getattr(node, "finalbody", [])
                                     + [s for h in getattr(node, "handlers", []) for s in h.body]))
    return out


def import_closure(module: str, root: Path = Path(".")) -> list[Path]:
    """The project's .py files that running `python -m <module>` imports (packages' __init__.py included), sorted:
    what a stage's code is, for DVC deps and for resumable-checkpoint keys. Imports inside functions count for the
    pipelines/ package (the stage's own wiring) and not for the library's lazy imports."""
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            prefix = ".".join(parts[:i])
            path = _module_file(prefix, root)
            if path is not None and prefix not in seen:
                seen[prefix] = path
                todo.extend(_imported_modules(path, prefix, lazy=prefix.startswith("pipelines")))
    return sorted(set(seen.values()))


def stage_module(stage: str, dvc_yaml: Path = Path("dvc.yaml")) -> str:
    """The module a dvc.yaml stage runs (`cmd: python -m pipelines.<stage>`)."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    if stage not in stages:
        raise KeyError(f"dvc.yaml has no stage {stage!r}")
    words = str(stages[stage]["cmd"]).split()
    if "-m" not in words:
        raise ValueError(f"dvc.yaml stage {stage!r}: cmd {stages[stage]['cmd']!r} does not run a module (-m)")
    return words[words.index("-m") + 1]


NOT_OUTPUT_CODE = {"safe/tracking.py", "safe/provenance.py", "pipelines/code_deps.py"}
"""Imported by every stage to record runs in MLflow (with their commit and machine) or to key checkpoints; they change
no stage output, so they are no DVC deps (promote, whose output is the registration, lists tracking and provenance)."""


def _is_inert(path: Path) -> bool:
    """A package __init__.py that imports nothing (a docstring at most): it cannot change what a stage computes."""
    return path.name == "__init__.py" and not any(
        isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(ast.parse(path.read_text())))


def missing_code_deps(dvc_yaml: Path = Path("dvc.yaml"), root: Path = Path(".")) -> dict[str, list[str]]:
    """{stage: project files its entry module imports that none of its dvc.yaml deps (file or folder) covers}."""
    stages = (yaml.safe_load(dvc_yaml.read_text()) or {}).get("stages") or {}
    missing: dict[str, list[str]] = {}
    for stage, spec in stages.items():
        deps = [Path(d) for d in spec.get("deps", [])]
        needed = [p.relative_to(root) if p.is_absolute() else p
                  for p in import_closure(stage_module(stage, dvc_yaml), root)
                  if not _is_inert(p)]
        gaps = [str(p) for p in needed
                if p.as_posix() not in NOT_OUTPUT_CODE and not any(p == d or d in p.parents for d in deps)]
        if gaps:
            missing[stage] = gaps
    return missing


def main() -> int:
    missing = missing_code_deps()
    for stage, files in missing.items():
        print(f"dvc.yaml stage {stage!r} imports code its deps miss: {', '.join(files)}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
