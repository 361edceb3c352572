"""``daskcal resample --add``: exposures added to a mosaic on disk give the mosaic of all of them at once; only the
tiles they reach are rewritten (the others keep their files); an addition killed (SIGKILL) leaves the old mosaic
byte for byte and is continued by ``--resume``; an exposure already in the mosaic is refused, naming it, before
anything is written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _resume_common import (  # tests/cli on sys.path
    CLUSTER_WARNINGS,
    kill_after_records,
    tree_bytes,
)

import daskcal
from daskcal.cli import main
from daskcal.io._outputs import resume_folder

pytestmark = pytest.mark.filterwarnings(*CLUSTER_WARNINGS, "ignore:unclosed:ResourceWarning")

RUN = ["--workers", "1", "--no-progress"]
TILE = ["--tile-shape", "32", "32"]


@pytest.fixture(scope="module")
def exposures(tmp_path_factory):
    """Eight dithered exposures as Zarr stores, their grid (an ASDF file) and the mosaic of all at once."""
    import asdf

    root = tmp_path_factory.mktemp("add")
    sim = daskcal.simulate_images(n=8, shape=(48, 56), seed=3, n_stars=6, dither=40)
    paths = [str(daskcal.save(ds, root / f"e{k}.zarr")) for k, ds in enumerate(sim.images)]
    grid = root / "grid.asdf"
    asdf.AsdfFile({"wcs": daskcal.output_wcs(sim.images)}).write_to(grid)
    whole = root / "whole.zarr"
    assert main(["resample", *paths, "-o", str(whole), "--output-wcs", str(grid), *TILE, *RUN]) == 0
    return paths, grid, whole


def assert_same_mosaic(got, ref):
    """As tests/image/test_resample_add.py: float planes to float32 rounding, the others and metadata exactly."""
    assert sorted(got.data_vars) == sorted(ref.data_vars)
    for name in ref.data_vars:
        a, b = ref[name].values, got[name].values
        if a.dtype.kind != "f":
            np.testing.assert_array_equal(b, a, err_msg=name)
            continue
        np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg=name)
        ok = ~np.isnan(a)
        err = np.abs(b[ok].astype(np.float64) - a[ok]) / (np.abs(a[ok]) + np.median(np.abs(a[ok])))
        assert err.max(initial=0.0) < 1e-6, (name, err.max())
    for key in ref.attrs.keys() | got.attrs.keys():
        if key not in ("tiles_updated", "daskcal_run"):
            assert got.attrs.get(key) == ref.attrs.get(key), key


def _inodes(store: Path) -> dict:
    return {p.relative_to(store).as_posix(): p.stat().st_ino for p in store.rglob("*") if p.is_file()}


def _updated_chunks(store: Path, tiles) -> set:
    return {f"{name}/c/{'0/' if name == 'con' else ''}{iy}/{ix}" for name in ("data", "wht", "con")
            for iy, ix in tiles}


@pytest.fixture(scope="module")
def mosaic4(exposures, tmp_path_factory):
    """The mosaic of the first four exposures on the grid (copied by the tests that add to it)."""
    paths, grid, _ = exposures
    out = tmp_path_factory.mktemp("add4") / "m.zarr"
    assert main(["resample", *paths[:4], "-o", str(out), "--output-wcs", str(grid), *TILE, *RUN]) == 0
    return out


def test_add_twice_equals_all_at_once_and_keeps_other_tiles(exposures, mosaic4, tmp_path, capsys):
    paths, _, whole = exposures
    out = tmp_path / "m.zarr"
    shutil.copytree(mosaic4, out)
    (out / "notes.txt").write_text("a user's file")  # not daskcal's: an addition keeps it
    before = _inodes(out)
    del before["notes.txt"]
    assert main(["resample", "--add", *paths[4:6], "-o", str(out), *RUN]) == 0
    assert (out / "notes.txt").read_text() == "a user's file"
    (out / "notes.txt").unlink()  # (zarr warns of a file that is not part of the hierarchy: an error in tests)
    printed = capsys.readouterr().out
    assert "tiles rewritten" in printed
    after = _inodes(out)
    updated = json.loads((out / "zarr.json").read_text())["attributes"]["tiles_updated"]
    rewritten = {k for k in before if k in after and before[k] != after[k]}
    assert rewritten and rewritten <= {k for k in before if "/c/" not in k} | {
        k for k in before if any(k.endswith(f"/{iy}/{ix}") for iy, ix in updated)}
    kept = [k for k in before if "/c/" in k and not any(k.endswith(f"/{iy}/{ix}") for iy, ix in updated)]
    assert kept and all(after[k] == before[k] for k in kept)  # the same files: not read, not rewritten
    assert main(["resample", "--add", *paths[6:], "-o", str(out), *RUN]) == 0
    assert not resume_folder(out).exists()
    got = xr.open_zarr(out, consolidated=False).compute()
    ref = xr.open_zarr(whole, consolidated=False).compute()
    assert_same_mosaic(got, ref)


def test_added_twice_is_refused_and_nothing_is_written(exposures, mosaic4, tmp_path, capsys):
    paths, _, _ = exposures
    out = tmp_path / "m.zarr"
    shutil.copytree(mosaic4, out)
    before = tree_bytes(out)
    capsys.readouterr()
    assert main(["resample", "--add", paths[5], paths[3], "-o", str(out), *RUN]) == 2
    err = capsys.readouterr().err
    assert "input 1 ('sim003_cal') is already in the mosaic" in err
    assert tree_bytes(out) == before
    assert not resume_folder(out).exists()


def test_a_killed_addition_leaves_the_mosaic_and_is_resumed(exposures, tmp_path):
    paths, grid, _ = exposures
    out = tmp_path / "m.zarr"
    assert main(["resample", *paths[:6], "-o", str(out), "--output-wcs", str(grid), *TILE, *RUN]) == 0
    reference = tmp_path / "ref.zarr"
    shutil.copytree(out, reference)  # the same mosaic of 6, grown without interruption below
    assert main(["resample", "--add", *paths[6:], "-o", str(reference), *RUN]) == 0
    before = tree_bytes(out)
    kill_after_records(["resample", "--add", *paths[6:], "-o", str(out), *RUN], resume_folder(out), 2)
    assert tree_bytes(out) == before  # the old mosaic, byte for byte
    assert main(["resample", "--add", *paths[6:], "-o", str(out), "--resume", *RUN]) == 0
    got, ref = tree_bytes(out), tree_bytes(reference)
    volatile = {"zarr.json"}  # the run record names the mosaic it added to
    assert {k for k in got if k not in volatile} == {k for k in ref if k not in volatile}
    for k in got:
        if k not in volatile:
            assert got[k] == ref[k], k
    a = xr.open_zarr(out, consolidated=False)
    b = xr.open_zarr(reference, consolidated=False)
    np.testing.assert_array_equal(a["con"].values, b["con"].values)
    assert os.path.isdir(out) and not resume_folder(out).exists()


@pytest.mark.slow  # 34 exposures written as stores and three commands: ~110 s on 2 busy cores
def test_add_past_32_inputs_grows_the_context_of_every_tile(tmp_path):
    import asdf

    sim = daskcal.simulate_images(n=34, shape=(16, 20), seed=7, n_stars=2, dither=12)
    paths = [str(daskcal.save(ds, tmp_path / f"e{k:02d}.zarr")) for k, ds in enumerate(sim.images)]
    grid = tmp_path / "grid.asdf"
    asdf.AsdfFile({"wcs": daskcal.output_wcs(sim.images)}).write_to(grid)
    tile = ["--tile-shape", "12", "12"]
    whole, out = tmp_path / "whole.zarr", tmp_path / "m.zarr"
    assert main(["resample", *paths, "-o", str(whole), "--output-wcs", str(grid), *tile, *RUN]) == 0
    assert main(["resample", *paths[:32], "-o", str(out), "--output-wcs", str(grid), *tile, *RUN]) == 0
    assert main(["resample", "--add", *paths[32:], "-o", str(out), *RUN]) == 0
    got = xr.open_zarr(out, consolidated=False).compute()
    ref = xr.open_zarr(whole, consolidated=False).compute()
    updated = got.attrs["tiles_updated"]
    written = json.loads((out / "data" / "zarr.json").read_text())["attributes"]["daskcal:written"]
    assert got["con"].shape[0] == 2 and len(updated) < len(written)  # tiles not reached got their second plane
    assert_same_mosaic(got, ref)
