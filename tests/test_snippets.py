"""The Python blocks of README.md, deploy/README.md and docs/*.md run as written.

A page's ```python blocks run in order as one script (``python script.py`` in a subprocess, so the
main-guard rule of :func:`daskcal.connect` applies as it does for a user), sharing one namespace:
a later block may use what an earlier one defined, but nothing is defined for them. A block with an
``if __name__ == "__main__":`` guard is a script of its own and runs alone: the worker processes of
the cluster it starts run the top level of their script again, which would repeat the page's other
blocks in every worker.

The scripts run in a copy of a folder that holds what the snippets open: ``ramps.zarr``
(``daskcal simulate``), ``asn.json`` and its exposures ``sim000_cal.zarr`` ...
(``daskcal simulate-images``), ``stars.ecsv`` (a reference catalog of the simulated stars, RA/DEC
in deg) and ``cat0.ecsv`` (a source catalog of the first exposure, x/y in px).

A script fails on an error, and on anything it writes to stderr (a warning, a logged warning).
A block that cannot run here (a notebook cell, say) starts with the line ``# not run: <why>``
and is skipped; only a few may be.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [p for p in [ROOT / "README.md", ROOT / "deploy" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
         if p.exists()]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
#: first line of a block the test skips
NOT_RUN = "# not run:"
#: how many blocks may be skipped in all
MAX_NOT_RUN = 2
#: the simulated exposures behind asn.json (as the snippets' data, small enough for a quick test)
EXPOSURES, SHAPE, SEED = 4, (512, 512), 1
#: lines of stderr a failure shows
TAIL = 40


@dataclass(frozen=True)
class Block:
    page: Path
    number: int  # 1-based, among the page's Python blocks
    line: int  # of the opening fence in the page
    source: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}, Python block {self.number} (line {self.line})"

    @property
    def not_run(self) -> bool:
        return self.source.lstrip().startswith(NOT_RUN)

    @property
    def guarded(self) -> bool:
        """Whether the block has a top-level ``if __name__ == "__main__":``."""
        from daskcal.cluster import _is_main_test

        return any(isinstance(node, ast.If) and _is_main_test(node.test) for node in ast.parse(self.source).body)


def _blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [Block(page, k, text.count("\n", 0, m.start()) + 1, m.group(1))
            for k, m in enumerate(FENCE.finditer(text), 1)]


def _scripts() -> list[list[Block]]:
    """Per page: the blocks without a main guard as one script, then each guarded block alone."""
    scripts = []
    for page in PAGES:
        blocks = [b for b in _blocks(page) if not b.not_run]
        shared = [b for b in blocks if not b.guarded]
        scripts += [shared] if shared else []
        scripts += [[b] for b in blocks if b.guarded]
    return scripts


def _id(blocks: list[Block]) -> str:
    return f"{blocks[0].page.relative_to(ROOT)}:{'+'.join(str(b.number) for b in blocks)}"


SCRIPTS = _scripts()


def test_every_python_fence_is_found():
    for page in PAGES:
        text = page.read_text()
        assert len(_blocks(page)) == text.count("```python"), f"{page.name}: a ```python fence the test cannot read"
    assert SCRIPTS, "no Python blocks found"


def test_few_blocks_are_not_run():
    skipped = [b for page in PAGES for b in _blocks(page) if b.not_run]
    no_reason = [b.where for b in skipped if not b.source.lstrip().splitlines()[0][len(NOT_RUN):].strip()]
    assert not no_reason, f"'{NOT_RUN}' without a reason: {no_reason}"
    assert len(skipped) <= MAX_NOT_RUN, (f"{len(skipped)} Python blocks are marked '{NOT_RUN}' (at most "
                                         f"{MAX_NOT_RUN}): {[b.where for b in skipped]}")


def _run(argv: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    python_path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": python_path}
    return subprocess.run([sys.executable, *map(str, argv)], check=False, cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A folder with the files the snippets open."""
    from astropy.table import Table

    import daskcal

    folder = tmp_path_factory.mktemp("inputs")
    for argv in (["simulate", "ramps.zarr", "--shape", 1, 5, 256, 256, "--seed", SEED],
                 ["simulate-images", ".", "-n", EXPOSURES, "--shape", *SHAPE, "--seed", SEED]):
        done = _run(["-m", "daskcal", *argv], folder)
        assert done.returncode == 0, f"daskcal {' '.join(map(str, argv))} failed:\n{done.stderr}"
    truth = daskcal.simulate_images(EXPOSURES, SHAPE, seed=SEED).truth  # the stars of the exposures written above
    Table({"RA": truth.star_ra, "DEC": truth.star_dec}).write(folder / "stars.ecsv")
    x, y = truth.wcs[0].invert(truth.star_ra, truth.star_dec)
    inside = (x > 0) & (x < SHAPE[1] - 1) & (y > 0) & (y < SHAPE[0] - 1)
    Table({"x": x[inside], "y": y[inside]}).write(folder / "cat0.ecsv")
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("blocks", SCRIPTS, ids=_id)
def test_snippets_run_as_written(blocks, inputs, tmp_path):
    work = tmp_path / "work"
    shutil.copytree(inputs, work)
    lines, starts = [], []
    for b in blocks:
        lines.append(f"# --- {b.where}")
        starts.append(len(lines) + 1)
        lines += b.source.splitlines()
    script = work / "script.py"
    script.write_text("\n".join(lines) + "\n")
    done = _run([script.name], work)
    if done.returncode != 0 or done.stderr.strip():
        pytest.fail(_failure(blocks, starts, done), pytrace=False)


def _failure(blocks: list[Block], starts: list[int], done: subprocess.CompletedProcess) -> str:
    """The page, the block (and its line) where the script stopped or warned, its source and the tail of stderr."""
    # the last line of script.py in a traceback ('File ".../script.py", line 12') or a warning ('script.py:12: ')
    lines = [int(a or b) for a, b in re.findall(r'script\.py", line (\d+)|script\.py:(\d+): ', done.stderr)]
    why = f"exit {done.returncode}" if done.returncode else "wrote to stderr"
    k = max((i for i, s in enumerate(starts) if lines and s <= lines[-1]), default=None)
    if k is None:
        where = f"{_id(blocks)} ({why}; no line of the script named in stderr)"
        source = "\n\n".join(b.source for b in blocks)
    else:
        b = blocks[k]
        where = f"{b.where}, its line {lines[-1] - starts[k] + 1} ({why})"
        source = b.source
    tail = "\n".join(done.stderr.splitlines()[-TAIL:])
    return f"{where} failed:\n{source}\n--- stderr (last {TAIL} lines) ---\n{tail}"


def test_a_failure_names_the_page_the_block_and_the_stderr_tail():
    page = ROOT / "README.md"
    blocks = [Block(page, 1, 10, "import daskcal\n"), Block(page, 3, 40, "x = 1\ny = daskcal.nosuch\n")]
    stderr = 'Traceback (most recent call last):\n  File "/tmp/w/script.py", line 5, in <module>\nAttributeError: nosuch\n'
    msg = _failure(blocks, [2, 4], subprocess.CompletedProcess([], 1, "", stderr))
    assert msg.startswith("README.md, Python block 3 (line 40), its line 2 (exit 1) failed:\nx = 1\n"), msg
    assert msg.endswith("AttributeError: nosuch"), msg
    warned = _failure(blocks, [2, 4], subprocess.CompletedProcess([], 0, "", "/tmp/w/script.py:2: UserWarning: w\n"))
    assert warned.startswith("README.md, Python block 1 (line 10), its line 1 (wrote to stderr) failed:"), warned
