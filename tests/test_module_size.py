"""No module over about 400 lines without the reason written at its top (issue #17).

A long module is allowed when its docstring says why it is one piece (a sentence naming
its length, "About 400 lines on purpose: ..."); otherwise it should be split along its
seams. bench/ is not part of the package and is not checked.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "optstate"
LIMIT = 400
MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_long_module_says_why(path):
    text = path.read_text()
    lines = len(text.splitlines())
    if lines <= LIMIT:
        return
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert re.search(r"\b\d{3,} lines\b", doc), (
        f"{path.relative_to(PACKAGE)} has {lines} lines and no reason at its top; split it "
        f"or say in its docstring why it is one piece (e.g. 'About {lines} lines on purpose: ...')")
