"""Sphinx configuration for daskcal's documentation.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (``tests/test_docs.py`` does the
same with ``-W --keep-going``, so a warning fails the test suite).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The checkout's package, also when it is not installed (an installed one is the same code).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))  # daskcal_params: parameter tables

import daskcal  # noqa: E402

project = "daskcal"
author = "the daskcal developers"
copyright = "the daskcal developers"
release = daskcal.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "daskcal_params",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# Every cross-reference must resolve (with -W, one that does not fails the build). Docstrings
# may still name private helpers for the curious reader; those are not documented here, so
# references into private modules, and to the few private helpers docstrings name bare, are
# not checked.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"daskcal(\.\w+)*\._\w+.*"),
    (r"py:.*", r"AlignParameters|detector1_steps|saturation_graph|max_output_bytes|v2v3_wcs"),
]

# Markdown: headings get anchors so pages can link to sections (``page.md#section``).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

# API reference: autosummary writes one page per public name into generated/ (not in git);
# classes use _templates/autosummary/class.rst, which documents their own members only (the
# default template also lists what DQ inherits from int).
autosummary_generate = True
autosummary_imported_members = True
autodoc_default_options = {"members": True, "undoc-members": False}
autodoc_typehints = "none"  # the numpydoc Parameters sections say the types
autodoc_member_order = "bysource"

# numpydoc: no automatic member tables (autosummary already lists them; numpydoc's own
# tables reference every attribute and warn on those without docstrings).
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_title = f"daskcal {release}"
html_static_path: list[str] = []
