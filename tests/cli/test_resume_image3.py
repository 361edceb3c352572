"""``daskcal image3 ... --resume``: a run SIGKILLed with its workers is continued (alignment and sky
matching run again; the chunks and tiles it recorded are kept); every product is bit-identical to an
uninterrupted run's; a run with other parameters is refused naming the difference."""

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
from daskcal.cli._image3 import RESUME_AS
from daskcal.io._outputs import RUN_FILE, resume_folder

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings(*CLUSTER_WARNINGS)]

TWEAK = ["--steps.tweakreg.searchrad=1.0", "--steps.tweakreg.tolerance=0.2", "--steps.tweakreg.separation=0.5",
         "--steps.tweakreg.enforce_user_order"]
RUN = [*TWEAK, "--steps.resample.tile_shape=[64, 64]", "--product-name", "field", "--workers", "1", "--no-progress"]


def _folder(out: Path) -> Path:
    return resume_folder(out / "x", RESUME_AS)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    root = tmp_path_factory.mktemp("image3")
    sim = daskcal.simulate_images(3, (200, 200), seed=5, n_stars=70, dither=15.0, cosmic_rays=30,
                                  wcs_errors=[[0.0, 0.0, 0.0], [-0.15, 0.25, -0.02], [0.3, 0.05, 0.05]],
                                  sky_offsets=[0.0, 0.4, 0.9])
    stores = [daskcal.save(ds.chunk({"y": 64, "x": 64}), root / f"e{k}.zarr") for k, ds in enumerate(sim.images)]
    out = root / "whole"
    assert main(["image3", *map(str, stores), str(out), *RUN]) == 0
    return stores, out


def test_a_killed_image3_run_is_resumed_bit_identical(whole, tmp_path, capsys):
    stores, reference = whole
    out = tmp_path / "out"
    kept = kill_after_records(["image3", *map(str, stores), str(out), *RUN], _folder(out), 3, timeout=180)
    assert (_folder(out) / RUN_FILE).is_file()
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == []

    capsys.readouterr()
    assert main(["image3", *map(str, stores), str(out), "--resume", *RUN, "--steps.resample.pixfrac=0.5"]) == 2
    captured = capsys.readouterr()
    assert (f"error: the partial products in {_folder(out)} were made with resample.pixfrac=1.0; this run has 0.5; "
            f"run without --resume") in captured.err
    assert "dashboard" not in captured.out

    assert main(["image3", *map(str, stores), str(out), "--resume", *RUN]) == 0
    printed = capsys.readouterr().out
    assert f"image3: {kept} of " in printed and "chunks and tiles were written by the earlier run" in printed
    assert not _folder(out).exists()
    got, want = tree_bytes(out), tree_bytes(reference)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
