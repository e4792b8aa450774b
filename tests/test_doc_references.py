"""Every code reference in the README and docs/ points at something that exists.

The prose names Python objects (``optstate.io.torch_file.load_torch_file``) and files
(``optstate/numeric/kernels.py``). When code moves (issue #17 moved every module into a
layer), a stale name in the docs sends a reader nowhere; this test finds them.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# optstate.a.b.c, not a JSON schema name (optstate.inspect/1) and not a file name (.py)
DOTTED = re.compile(r"\boptstate(?:\.[A-Za-z_][A-Za-z0-9_]*)+(?![\w/])")
FILE = re.compile(r"\b(?:optstate|tests|scripts|bench|docs)/[\w/.-]*\.(?:py|c|md|toml)\b")


def _references(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        for name in sorted(set(pattern.findall(doc.read_text()))):
            found.append((doc.name, name))
    return found


def _resolve(dotted: str) -> object:
    """Import the longest importable module prefix, then follow attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize(("doc", "name"), _references(DOTTED))
def test_python_names_in_the_docs_exist(doc, name):
    if name.endswith("._ckernels") or name.endswith("._sigbus"):
        pytest.importorskip(name)  # optional C extensions
    assert _resolve(name) is not None, f"{doc} names {name}, which does not exist"


@pytest.mark.parametrize(("doc", "path"), _references(FILE))
def test_file_names_in_the_docs_exist(doc, path):
    assert (ROOT / path).exists(), f"{doc} names {path}, which does not exist"
