"""Imports flow one way: a module imports only from its own layer or the layers below it (docs/ARCHITECTURE.md,
"Import layers"). Every import counts, inside functions too: a lazy import is still a dependency.

Also: only safe/tracking.py imports mlflow, and the library (safe/) never imports pipelines/.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("safe", "safe.io", "safe.errors", "safe.environment", "safe.provenance", "safe.config",
                    "safe.distributed")),
    ("scoring", ("safe.eval.metrics",)),  # answer scoring, pure functions: training scores answers with it too
    ("models", ("safe.models",)),
    ("data", ("safe.data",)),
    ("rl", ("safe.rl",)),
    ("inference", ("safe.inference",)),
    ("training", ("safe.training",)),
    ("eval", ("safe.eval",)),
    ("tracking", ("safe.tracking", "safe.pyfunc_model")),
    ("entry points", ("safe.cli", "pipelines")),
]
ONLY_IMPORTER = {"mlflow": "safe.tracking"}  # a third-party package only this module may import


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module: str) -> set[str]:
    """Every name `path` imports, absolute: `from a import b` gives a.b (the longest name, so the finest layer)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            base = ".".join([*parent, node.module] if node.module else parent)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def layer_of(module: str, layers=LAYERS) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    return None if best is None else best[1]


def violations(root: Path, packages=("safe", "pipelines"), layers=LAYERS, only_importer=ONLY_IMPORTER) -> list[str]:
    """One line per import that runs against the layers, imports pipelines from the library, or imports a
    package reserved to one module."""
    out = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            own = layer_of(module, layers)
            assert own is not None, f"{module} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md"
            for target in sorted(imports_of(path, module)):
                top = target.split(".")[0]
                where = f"{path.relative_to(root)}: imports {target}"
                if top in only_importer and module != only_importer[top]:
                    out.append(f"{where} (only {only_importer[top]} may)")
                if top not in packages:
                    continue
                if module.startswith("safe") and top == "pipelines":
                    out.append(f"{where} (the library never imports pipelines/)")
                    continue
                theirs = layer_of(target, layers)
                if theirs is not None and theirs > own:
                    out.append(f"{where} ({layers[own][0]} -> {layers[theirs][0]}: a layer above)")
    return out


def test_imports_flow_one_way():
    assert violations(ROOT) == []


def test_a_planted_back_import_is_caught(tmp_path):
    """The checker on a copy of the layout with one back-import per rule planted."""
    for rel, text in {
        "safe/__init__.py": "",
        "safe/config.py": "from safe.eval.report import write_report\n",  # foundation -> eval
        "safe/models/__init__.py": "",
        "safe/models/net.py": "def f():\n    from safe.training import loop  # lazy, still counted\n",
        "safe/training/__init__.py": "",
        "safe/training/loop.py": "import mlflow\nfrom pipelines import common\n",
        "safe/eval/__init__.py": "",
        "safe/eval/report.py": "from ..models.net import f  # relative, downward: fine\n",
        "pipelines/__init__.py": "",
        "pipelines/common.py": "from safe.training.loop import x\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = violations(tmp_path)
    assert found == [
        "safe/config.py: imports safe.eval.report.write_report (foundation -> eval: a layer above)",
        "safe/models/net.py: imports safe.training.loop (models -> training: a layer above)",
        "safe/training/loop.py: imports mlflow (only safe.tracking may)",
        "safe/training/loop.py: imports pipelines.common (the library never imports pipelines/)",
    ], found


def test_every_layer_is_written_down_in_the_architecture_doc():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    for name, prefixes in LAYERS:
        assert name in text, f"layer {name!r} is not described in docs/ARCHITECTURE.md"
