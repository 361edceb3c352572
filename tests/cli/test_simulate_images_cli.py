"""``daskcal simulate-images``: exposures and their association, written together or not at all."""

import json

import numpy as np
import pytest

import daskcal
from daskcal.cli import main

#: Runs that start an embedded LocalCluster (its ports and unclosed sockets: dask's warnings, not ours).
cli = pytest.mark.filterwarnings(
    "ignore:Port .* is already in use:UserWarning", "ignore::ResourceWarning", "ignore:unclosed:ResourceWarning")


@pytest.mark.parametrize("fmt", ["zarr", "fits"])
def test_writes_exposures_and_an_association_open_images_reads(tmp_path, fmt, capsys):
    out = tmp_path / "sim"
    argv = ["simulate-images", str(out), "-n", "3", "--shape", "40", "48", "--seed", "4", "--cosmic-rays", "6"]
    assert main([*argv, "--format", fmt]) == 0
    expected = daskcal.simulate_images(3, (40, 48), seed=4, cosmic_rays=6).images
    names = [f"sim{k:03d}_cal.{fmt}" for k in range(3)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "asn.json"])  # no staging folder left
    asn = daskcal.read_association(out / "asn.json")
    assert [m.path.name for m in asn.science] == names
    assert asn.product_name == "sim"
    got = daskcal.open_images(out / "asn.json")
    for ds, exp in zip(got, expected, strict=True):
        for var in ("data", "dq", "var_rnoise", "var_poisson", "var_flat"):
            np.testing.assert_array_equal(ds[var].values, exp[var].values)
        assert ds.attrs["group_id"] == exp.attrs["group_id"]
    assert "association: " in capsys.readouterr().out


def test_refuses_existing_outputs_without_overwrite(tmp_path, capsys):
    out = tmp_path / "sim"
    argv = ["simulate-images", str(out), "-n", "2", "--shape", "16", "16"]
    assert main(argv) == 0
    (out / "asn.json").write_text("mine")
    assert main([*argv, "--seed", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "asn.json").read_text() == "mine"
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "asn.json").read_text())["products"][0]["name"] == "sim"


def test_a_failure_leaves_nothing(tmp_path, monkeypatch, capsys):
    from daskcal.image import _fits_write

    written = []
    real = _fits_write.write_cal_fits

    def fail_on_second(ds, path, **kw):
        if written:
            msg = "disk full (simulated)"
            raise OSError(msg)
        written.append(path)
        return real(ds, path, **kw)

    monkeypatch.setattr(_fits_write, "write_cal_fits", fail_on_second)
    out = tmp_path / "sim"
    assert main(["simulate-images", str(out), "-n", "3", "--shape", "16", "16", "--format", "fits"]) == 2
    assert written  # the first file was written, then removed with the others
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), [("-n", "0"), ("--cosmic-rays", "-1"), ("--shape", "4 4")])
def test_bad_values_are_one_line_errors(tmp_path, option, value, capsys):
    assert main(["simulate-images", str(tmp_path / "sim"), option, *value.split()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daskcal simulate-images: error:") and err.count("\n") == 1
    assert not (tmp_path / "sim").exists()


@cli
def test_outliers_and_resample_products_open_without_warnings(tmp_path, capsys):
    """The README's chain at a small size: simulate-images, outliers (with the median), resample; each product opens
    with ``xr.open_zarr(path)`` (consolidated metadata: no warning) and the median store's variable is ``data``."""
    import warnings

    import xarray as xr

    run = ["--workers", "1", "--no-progress"]
    assert main(["simulate-images", str(tmp_path), "-n", "3", "--shape", "64", "72", "--cosmic-rays", "10"]) == 0
    assert main(["outliers", str(tmp_path / "asn.json"), "-o", str(tmp_path / "flagged"), "--save-median", *run]) == 0
    flagged = sorted((tmp_path / "flagged").glob("sim*.zarr"))
    assert len(flagged) == 3
    assert main(["resample", *map(str, flagged), "-o", str(tmp_path / "mosaic.zarr"), *run]) == 0
    for path in [*flagged, tmp_path / "flagged" / "median.zarr", tmp_path / "mosaic.zarr"]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with xr.open_zarr(path) as ds:
                assert "data" in ds.data_vars and ds["data"].ndim in (2, 3)
