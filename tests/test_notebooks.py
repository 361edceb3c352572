"""Every notebook in notebooks/ runs top to bottom without an error, a warning or anything on stderr.

Each notebook runs in a fresh IPython kernel of this test's own Python (a kernel spec made for the
test, so neither another Python's ``python3`` kernel nor PATH decides which), with this checkout's
daskcal first on its path, in an empty temporary working folder. Its matplotlib backend is the
inline one (``matplotlib_inline``, what Jupyter uses; it needs no display): the figures become PNG
outputs of the notebook, as for a user, where Agg would draw nothing into it.
Set ``DASKCAL_NOTEBOOK_FIGURES=DIR`` to keep the figures the notebooks drew as PNG files in DIR.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path

import nbclient
import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
KERNEL = "daskcal-test-python"
#: words that fail a notebook wherever they appear in an output (stream, result, display, error)
BAD_WORDS = ("warning", "traceback")


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {ROOT / 'notebooks'}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs(path):
    """Notebooks are committed clean: no outputs, no execution counts (small files, readable diffs)."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [k for k, cell in enumerate(nb.cells)
             if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)]
    assert not dirty, f"{path.name}: cells {dirty} have outputs; clear them before committing"


@pytest.fixture(scope="module")
def kernel_specs(tmp_path_factory):
    """A KernelSpecManager that knows one kernel: this Python, inline figures, this checkout first on sys.path."""
    import ipykernel  # noqa: F401  (the kernel runs it: the test extra installs it)
    from jupyter_client.kernelspec import KernelSpecManager

    kernels = tmp_path_factory.mktemp("kernels")
    spec_dir = kernels / KERNEL
    spec_dir.mkdir()
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "daskcal tests",
        "language": "python",
        "env": {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "PYTHONPATH": python_path},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernels)])


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_clean(path, kernel_specs, tmp_path):
    from jupyter_client.manager import AsyncKernelManager

    nb = nbformat.read(path, as_version=4)
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_specs)
    client = nbclient.NotebookClient(nb, km=km, timeout=300, allow_errors=False,
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as exc:
        pytest.fail(f"{path.name}: a cell failed:\n{exc}", pytrace=False)
    _save_figures(nb, path.stem)
    problems = [_describe(k, cell, why) for k, cell in enumerate(nb.cells) if (why := _problems(cell))]
    if problems:
        pytest.fail(f"{path.name}:\n" + "\n".join(problems), pytrace=False)
    assert not list(tmp_path.iterdir()), f"{path.name} left files in its working folder: {list(tmp_path.iterdir())}"


def _problems(cell) -> list[str]:
    """What is wrong with a cell's outputs: an error, stderr output, a warning or a traceback in any text."""
    found = []
    for out in cell.get("outputs", []):
        if out.output_type == "error":
            found.append(f"error output {out.ename}: {out.evalue}")
        if out.output_type == "stream" and out.name == "stderr":
            found.append("output on stderr")
        text = _text(out)
        found += [f"{word!r} in the output" for word in BAD_WORDS if word in text.lower()]
    return found


def _text(out) -> str:
    if out.output_type == "stream":
        return out.text
    if out.output_type == "error":
        return "\n".join([out.ename, out.evalue, *out.traceback])
    data = out.get("data", {})
    return "\n".join(str(data[kind]) for kind in ("text/plain", "text/markdown") if kind in data)


def _describe(k: int, cell, why: list[str]) -> str:
    outputs = "\n".join(_text(out) for out in cell.get("outputs", []))
    return f"--- cell {k}: {'; '.join(why)}\n[source]\n{cell.source}\n[outputs]\n{outputs}"


def _save_figures(nb, stem: str) -> None:
    """With DASKCAL_NOTEBOOK_FIGURES=DIR, write every PNG the notebook displayed to DIR/<notebook>-<cell>-<n>.png."""
    folder = os.environ.get("DASKCAL_NOTEBOOK_FIGURES")
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    for k, cell in enumerate(nb.cells):
        pngs = [out.data["image/png"] for out in cell.get("outputs", []) if "image/png" in out.get("data", {})]
        for n, png in enumerate(pngs):
            (Path(folder) / f"{stem}-{k:02d}-{n}.png").write_bytes(base64.b64decode(png))
