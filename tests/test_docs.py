"""The documentation site (docs/, Sphinx) builds without a warning, and no page sends users to a
private module."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import daskcal

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# ``from daskcal.image._io import x``, ``from daskcal._simulate import x``, ``import daskcal.io._ramps``
PRIVATE_IMPORT = re.compile(r"\b(from\s+daskcal(\.\w+)*\._\w+(\.\w+)*\s+import\b|import\s+daskcal(\.\w+)*\._\w+)")


def _pages() -> list[Path]:
    pages = [ROOT / "README.md", ROOT / "deploy" / "README.md"]
    pages += [p for p in sorted(DOCS.rglob("*.md")) if "_build" not in p.parts]
    return [p for p in pages if p.exists()]


@pytest.mark.skipif(importlib.util.find_spec("sphinx") is None, reason="sphinx is not installed (pip install '.[docs]')")
def test_docs_build_without_warnings(tmp_path):
    # -W: every warning is an error; --keep-going: report all of them; -E: no saved environment;
    # conf.py sets nitpicky (every cross-reference must resolve). The autosummary pages go to
    # docs/generated/ (git-ignored), as in a local build.
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-E", "-q", "-b", "html",
           "-d", str(tmp_path / "doctrees"), str(DOCS), str(tmp_path / "html")]
    env = {**os.environ, "PYTHONWARNINGS": ""}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"sphinx failed (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}", pytrace=False)
    assert (tmp_path / "html" / "index.html").exists()
    assert (tmp_path / "html" / "generated" / "daskcal.connect.html").exists()


def test_api_reference_lists_every_public_name():
    text = (DOCS / "api.md").read_text()
    listed = set(re.findall(r"^\s{3}(\w+)\s*$", text, re.M))
    missing = sorted(set(daskcal.__all__) - listed)
    assert not missing, f"docs/api.md does not list {missing}"


def test_no_page_imports_from_a_private_module():
    found = []
    for page in _pages():
        for n, line in enumerate(page.read_text().splitlines(), 1):
            if PRIVATE_IMPORT.search(line):
                found.append(f"{page.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, "pages tell users to import from a private module:\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("line", "private"),
    [
        ("from daskcal.image._io import read_association", True),
        ("from daskcal._simulate import simulate", True),
        ("import daskcal.io._ramps", True),
        ("import daskcal.io._ramps as r", True),
        ("from daskcal import read_association", False),
        ("from daskcal.io import save_products", False),
        ("import daskcal", False),
        ("the fields of `daskcal.image._align.AlignParameters` give the options", False),
    ],
)
def test_private_import_pattern(line, private):
    assert bool(PRIVATE_IMPORT.search(line)) is private


def test_performance_page_shows_every_result_file():
    # docs/performance.md includes each benchmarks/results/*.txt (one source of truth for the numbers)
    text = (DOCS / "performance.md").read_text()
    missing = [p.name for p in sorted((ROOT / "benchmarks" / "results").glob("*.txt"))
               if f"../benchmarks/results/{p.name}" not in text]
    assert not missing, f"docs/performance.md does not include {missing}"
