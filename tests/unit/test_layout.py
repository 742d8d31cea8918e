"""The README's layout map matches the tree: every package is described, nothing described is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layout_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Layout"):]
    return section[section.index("```") + 3:].split("```", 1)[0]


def test_every_package_is_in_the_readme_map():
    described = set(re.findall(r"^  (\w+)/", _layout_block(), flags=re.M))
    packages = {path.parent.name for path in (ROOT / "edgepack").glob("*/__init__.py")}
    assert packages - described == set(), "packages missing from README's Layout"
    assert described - packages == set(), "README's Layout names packages that do not exist"


def test_top_level_modules_are_in_the_readme_map():
    block = _layout_block()
    modules = {path.name for path in (ROOT / "edgepack").glob("*.py") if path.name != "__init__.py"}
    assert {name for name in modules if name not in block} == set(), "top-level modules missing from README's Layout"
