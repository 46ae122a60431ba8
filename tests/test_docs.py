"""The README is a user document: short, no commit ids, and it links the docs that hold the rest."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_short_and_names_no_commit():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 220, "history goes to docs/EXPERIMENTS.md, scale-out to docs/SCALING.md"
    commits = re.findall(r"(?<![\w/.-])[0-9a-f]{7,40}(?![\w/.-])", text)
    assert [c for c in commits if re.search(r"\d", c) and re.search(r"[a-f]", c)] == []


def test_readme_links_resolve():
    text = (ROOT / "README.md").read_text()
    links = {link.split("#")[0] for link in re.findall(r"\]\(([^)]+)\)", text) if not link.startswith("http")}
    assert {"docs/ARCHITECTURE.md", "docs/EXPERIMENTS.md", "docs/SCALING.md", "docs/results.md"} <= links
    assert [link for link in links if not (ROOT / link).exists()] == []
