"""No measured numbers in comments, docstrings or params comments: a comment says why in a line and points to the
docs/EXPERIMENTS.md entry that holds the evidence (numbers in code comments went stale and contradicted each other).

Heuristic, per sentence of a comment block or docstring (and of the YAML comments of params.yaml, profiles/ and
dvc.yaml): a number that reads as a result (a decimal like 0.58, a percentage like 82%, a count like "10 of 18")
next to a word of measuring (measured, demo, reached, fell, seeds, accuracy, ...). `ALLOWED` lists the legitimate
constants the heuristic would take for results.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?%|(?<![\w.\-])\d+\.\d+(?![\w.])|\b\d+ of \d+\b")
MEASURING = re.compile(r"\b(measured|demo|reached|fell|rose|stalled|climbing|seeds?|runs?|accuracy|fit|scored?|"
                       r"stayed|told|took)\b", re.I)
CONFIDENCE = re.compile(r"^95\s?%$")  # the confidence level of the reported bounds, a setting

# (file or "*", fragment of the flagged sentence): constants, not results
ALLOWED: set[tuple[str, str]] = {
    ("*", "YAML 1.2"),  # YAML versions
    ("safe/eval/criteria.py", "0.805 - 0.8"),  # float rounding, an arithmetic example
    ("safe/eval/criteria.py", "at most 0.5 points"),  # the spec's threshold, described
}
# Results still written in files another change owned when this check arrived; each has its docs/EXPERIMENTS.md
# entry (named here) and goes from this list when its line becomes a pointer.
PENDING: set[tuple[str, str]] = set()


def _python_blocks(path: Path):
    """(line, text) of each comment block (consecutive whole-line comments joined; a comment after code stands
    alone) and each docstring of `path`."""
    source = path.read_text()
    block: list[tuple[int, str]] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT:
            continue
        whole_line = token.line.strip().startswith("#")
        if block and (token.start[0] != block[-1][0] + 1 or not whole_line):
            yield block[0][0], " ".join(text for _, text in block)
            block = []
        block.append((token.start[0], token.string.lstrip("#").strip()))
        if not whole_line:
            yield block[0][0], block[0][1]
            block = []
    if block:
        yield block[0][0], " ".join(text for _, text in block)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            yield node.lineno, " ".join(node.value.value.split())


def _yaml_blocks(path: Path):
    """(line, text) of each YAML comment block (a `#` outside quotes starts a comment)."""
    block: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = re.search(r"(^|\s)#(.*)$", line)
        if match and line.count('"', 0, match.start()) % 2 == 0:
            whole_line = line.lstrip().startswith("#")
            if block and (number != block[-1][0] + 1 or not whole_line):
                yield block[0][0], " ".join(text for _, text in block)
                block = []
            block.append((number, match.group(2).strip()))
            if not whole_line:
                yield number, block[0][1]
                block = []
    if block:
        yield block[0][0], " ".join(text for _, text in block)


def measured_numbers(root: Path, allowed=frozenset()) -> list[str]:
    """`file:line: sentence` for every comment/docstring sentence that reads as a measured result."""
    files = [*sorted((root / "safe").rglob("*.py")), *sorted((root / "pipelines").rglob("*.py"))]
    yaml_files = [p for p in (root / "params.yaml", root / "dvc.yaml", *sorted((root / "profiles").glob("*.yaml")))
                  if p.is_file()]
    found = []
    for path, blocks in [(p, _python_blocks(p)) for p in files] + [(p, _yaml_blocks(p)) for p in yaml_files]:
        rel = path.relative_to(root).as_posix()
        for line, text in blocks:
            for sentence in re.split(r"(?<=[.;:!?])\s+(?=[A-Z(`\"])", text):
                numbers = [n for n in NUMBER.findall(sentence) if not CONFIDENCE.match(n)]
                if not numbers or not MEASURING.search(sentence):
                    continue
                if any(file in (rel, "*") and fragment in sentence for file, fragment in allowed):
                    continue
                found.append(f"{rel}:{line}: {sentence}")
    return found


def test_no_measured_numbers_in_comments():
    found = measured_numbers(ROOT, ALLOWED | PENDING)
    assert found == [], "move these to a docs/EXPERIMENTS.md entry and point to it:\n" + "\n".join(found)


def test_a_planted_measurement_is_caught(tmp_path):
    (tmp_path / "safe").mkdir()
    (tmp_path / "safe" / "m.py").write_text(
        '"""Scores answers."""\n\n'
        "X = 3  # 3, not 1: validation accuracy rose from 0.896 to 0.911 on the demo\n"
        "Y = 2  # two heads; a comment with a version like 1.2 and no measuring word passes\n"
        'def f():\n    """Kept: 5 of 6 seeds passed. Why: see docs/EXPERIMENTS.md#seeded-stages."""\n')
    (tmp_path / "params.yaml").write_text("a:\n  b: 1  # reached 82% when measured\n")
    found = measured_numbers(tmp_path)
    assert [f.split(":")[0:2] for f in found] == [["safe/m.py", "3"], ["safe/m.py", "6"], ["params.yaml", "2"]], found
    assert measured_numbers(tmp_path, {("safe/m.py", "0.896"), ("safe/m.py", "5 of 6"),
                                       ("params.yaml", "82%")}) == []


def test_every_experiments_pointer_resolves():
    """Each `docs/EXPERIMENTS.md#anchor` in the code, params, profiles and docs names an entry that exists."""
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', (ROOT / "docs" / "EXPERIMENTS.md").read_text()))
    anchors |= {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-")
                for h in re.findall(r"^#+ (.+)$", (ROOT / "docs" / "EXPERIMENTS.md").read_text(), flags=re.M)}
    sources = [*(ROOT / "safe").rglob("*.py"), *(ROOT / "pipelines").rglob("*.py"), ROOT / "params.yaml",
               *(ROOT / "profiles").glob("*.yaml"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    missing = [f"{p.relative_to(ROOT)}: #{a}" for p in sources
               for a in re.findall(r"EXPERIMENTS\.md#([\w-]+)", p.read_text()) if a not in anchors]
    assert missing == []
