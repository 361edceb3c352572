"""``daskcal outliers ... --resume``: a run SIGKILLed with its workers is continued from the chunks it
recorded; the products (each exposure's and the median) are bit-identical to an uninterrupted run's;
a run with other parameters is refused naming the difference before any cluster starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from _resume_common import (  # tests/cli on sys.path
    CLUSTER_WARNINGS,
    kill_after_records,
    tree_bytes,
)

import daskcal
from daskcal.cli import main
from daskcal.cli._outliers import RESUME_AS
from daskcal.io._outputs import RUN_FILE, resume_folder

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(*CLUSTER_WARNINGS)]

RUN = ["--save-median", "--tile-shape", "64", "64", "--workers", "1", "--no-progress"]


def _folder(out: Path) -> Path:
    return resume_folder(out / "x", RESUME_AS)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Four exposures stored in chunks of 64 px and the products of an uninterrupted run."""
    root = tmp_path_factory.mktemp("outliers")
    sim = daskcal.simulate_images(n=4, shape=(192, 192), seed=5, n_stars=6, cosmic_rays=20)
    stores = [daskcal.save(ds.chunk({"y": 64, "x": 64}), root / f"e{k}.zarr") for k, ds in enumerate(sim.images)]
    out = root / "whole"
    assert main(["outliers", *map(str, stores), "-o", str(out), *RUN]) == 0
    return stores, out


def test_a_killed_outliers_run_is_resumed_bit_identical(whole, tmp_path, capsys):
    stores, reference = whole
    out = tmp_path / "out"
    kept = kill_after_records(["outliers", *map(str, stores), "-o", str(out), *RUN], _folder(out), 3, timeout=120)
    assert (_folder(out) / RUN_FILE).is_file()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == []

    capsys.readouterr()
    assert main(["outliers", *map(str, stores), "-o", str(out), "--resume", *RUN, "--maskpt", "0.5"]) == 2
    captured = capsys.readouterr()
    assert (f"error: the partial products in {_folder(out)} were made with maskpt=0.7; this run has 0.5; "
            f"run without --resume") in captured.err
    assert "dashboard" not in captured.out

    assert main(["outliers", *map(str, stores), "-o", str(out), "--resume", *RUN]) == 0
    printed = capsys.readouterr().out
    assert f"outliers: {kept} of " in printed and "chunks were written by the earlier run and verified" in printed
    assert not _folder(out).exists()
    got, want = tree_bytes(out), tree_bytes(reference)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
