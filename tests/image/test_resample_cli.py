"""``daskcal resample`` and ``daskcal run resample``: end to end on a 1-worker cluster, bad input."""

from __future__ import annotations

import math
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr

import daskcal
from daskcal.cli._main import main
from daskcal.image._io import write_cal_fits

RECIPE = Path(__file__).resolve().parents[2] / "daskcal" / "graphs" / "resample.toml"

pytestmark = pytest.mark.filterwarnings(
    # distributed's LocalCluster on a busy machine / closing its comms at shutdown
    "ignore:Port .* is already in use:UserWarning",
    "ignore::ResourceWarning",
    "ignore:unclosed:ResourceWarning",
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three small exposures: two Zarr stores and one _cal.fits."""
    d = tmp_path_factory.mktemp("in")
    sim = daskcal.simulate_images(n=3, shape=(48, 64), seed=21, n_stars=4)
    paths = []
    for k, ds in enumerate(sim.images):
        if k < 2:
            paths.append(str(daskcal.save(ds, d / f"img{k}.zarr")))
        else:
            paths.append(str(write_cal_fits(ds, d / f"img{k}_cal.fits")))
    return sim, paths


def _expected(sim, **kw):
    return daskcal.resample(sim.images, **kw).compute(scheduler="sync")


def test_cli_end_to_end(inputs, tmp_path, capsys):
    sim, paths = inputs
    out = tmp_path / "mosaic.zarr"
    rc = main(["resample", *paths, "-o", str(out), "--kernel", "turbo", "--pixfrac", "0.8", "--tile-shape", "32", "40",
               "--fits", "--workers", "1", "--no-progress", "--dashboard-address", ":0"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "dashboard: http://127.0.0.1:" in printed and "input Mpix/s" in printed  # served when asked
    got = xr.open_zarr(out, consolidated=False)
    ref = _expected(sim, kernel="turbo", pixfrac=0.8, tile_shape=(32, 40))
    assert got.data.chunks[0][0] == 32
    for name in ref.data_vars:
        np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)
    assert (tmp_path / "mosaic_i2d.fits").is_file()


def test_recipe_run(inputs, tmp_path):
    sim, paths = inputs
    out = tmp_path / "r.zarr"
    assert main(["run", str(RECIPE), *paths, str(out), "--workers", "1", "--no-progress"]) == 0
    got = xr.open_zarr(out, consolidated=False)
    ref = _expected(sim)
    np.testing.assert_array_equal(got.data.values, ref.data.values)
    np.testing.assert_array_equal(got.con.values, ref.con.values)


def test_recipe_defaults_are_the_library_defaults():
    import inspect
    import tomllib

    from daskcal.cli._resample import STEP_DEFAULTS
    from daskcal.image._resample import resample

    steps = tomllib.loads(RECIPE.read_text())["steps"]["resample"]
    sig = inspect.signature(resample).parameters
    for name, value in steps.items():
        assert STEP_DEFAULTS[name] == value, name
        if name in sig:
            assert sig[name].default == value, name


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weight-type", "foo"], "invalid choice: 'foo'"),
        (["--good-bits", "JUMP_DETX"], "good_bits 'JUMP_DETX' is not valid"),
        (["--pixel-scale-ratio", "1e-4"], "output mosaic of shape"),
        (["--pixfrac", "2"], "pixfrac must be in"),
    ],
)
def test_bad_options_exit_2_write_nothing(inputs, tmp_path, capsys, extra, message):
    _, paths = inputs
    out = tmp_path / "bad.zarr"
    try:
        rc = main(["resample", *paths, "-o", str(out), "--workers", "1", *extra])
    except SystemExit as exc:  # argparse's own errors
        rc = exc.code
    assert rc == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_exit_2(inputs, tmp_path, capsys):
    _, paths = inputs
    nowcs = tmp_path / "nowcs_cal.fits"
    from astropy.io import fits

    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((8, 8), np.float32), name="SCI")]).writeto(nowcs)
    out = tmp_path / "o.zarr"
    assert main(["resample", paths[0], str(nowcs), "-o", str(out), "--workers", "1"]) == 2
    assert "no ASDF extension, so no WCS" in capsys.readouterr().err
    assert main(["resample", str(tmp_path / "missing.zarr"), "-o", str(out)]) == 2
    assert "no input at" in capsys.readouterr().err
    assert not out.exists()


def test_memory_limit_sizes_the_tiles(inputs, tmp_path, capsys):
    """--memory-limit reaches the embedded cluster's workers, and resample sizes its tiles from it."""
    _, paths = inputs
    out = tmp_path / "mosaic.zarr"
    with dask.config.set({"daskcal.resample.tiles-per-thread": 0}):  # tiles from memory only
        rc = main(["resample", *paths, "-o", str(out), "--pixel-scale-ratio", "0.05", "--no-var", "--workers", "1",
                   "--memory-limit", "1GiB", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "tiles [768, 768]" in printed  # a fifth of 1 GiB per task (1024 px with the default budget)
    got = xr.open_zarr(out, consolidated=False)
    assert min(got.data.shape) > 768 and got.data.chunks[0][0] == 768
    # by default, a mosaic this small (4 tiles of 768 px) is cut into smaller tiles, at most to 512 px,
    # so that the worker's threads have 16 tiles each
    rc = main(["resample", *paths, "-o", str(tmp_path / "split.zarr"), "--pixel-scale-ratio", "0.05", "--no-var",
               "--workers", "1", "--memory-limit", "1GiB", "--no-progress"])
    assert rc == 0
    assert "tiles [512, 512]" in capsys.readouterr().out
    split = xr.open_zarr(tmp_path / "split.zarr", consolidated=False)
    assert split.data.chunks[0][0] == 512 and math.ceil(split.data.shape[0] / 768) * math.ceil(
        split.data.shape[1] / 768) < 16
    np.testing.assert_allclose(split.data.values, got.data.values, rtol=1e-6, atol=1e-6 * np.nanmax(got.data.values))
    np.testing.assert_allclose(split.wht.values, got.wht.values, rtol=1e-6, atol=1e-6 * np.nanmax(got.wht.values))
    np.testing.assert_array_equal(split.con.values, got.con.values)


def test_memory_limit_values():
    import argparse

    from daskcal.cli._common import memory_limit

    assert memory_limit("auto") == "auto"
    assert memory_limit("1GiB") == 2**30 and memory_limit("1.5 GB") == 1_500_000_000 and memory_limit("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="--memory-limit must be 'auto', 0 or a size"):
        memory_limit("lots")
    with pytest.raises(SystemExit) as e:
        main(["resample", "a.zarr", "-o", "b.zarr", "--memory-limit", "lots"])
    assert e.value.code == 2
