"""``daskcal image3`` end to end on an association of files written by stdatamodels (JWST's own writer)."""

from __future__ import annotations

import json
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import daskcal
from daskcal.image._dataset import get_wcs

datamodels = pytest.importorskip("stdatamodels.jwst.datamodels")

ERRORS = [[0.0, 0.0, 0.0], [-0.15, 0.25, -0.02], [0.3, 0.05, 0.05]]
OFFSETS = [0.0, 0.4, 0.9]
TWEAK = ["--steps.tweakreg.searchrad=1.0", "--steps.tweakreg.tolerance=0.2", "--steps.tweakreg.separation=0.5",
         "--steps.tweakreg.enforce_user_order"]
RECIPE = Path(__file__).resolve().parents[2] / "daskcal" / "graphs" / "image3.toml"


def _write_jwst(ds, path, k):
    """An exposure as the jwst pipeline writes a _cal.fits (ImageModel), with its pointing metadata."""
    w = get_wcs(ds)
    ny, nx = ds["data"].shape
    ra, dec = (float(v) for v in w(nx / 2.0, ny / 2.0))
    model = datamodels.ImageModel(**{v: np.asarray(ds[v].values) for v in
                                     ("data", "err", "dq", "var_poisson", "var_rnoise", "var_flat")})
    model.meta.wcs = w
    model.meta.wcsinfo = {"ra_ref": ra, "dec_ref": dec, "v2_ref": 120.67, "v3_ref": -527.39, "roll_ref": 30.0,
                          "v3yangle": -0.55, "vparity": -1}
    model.meta.exposure.exposure_time = ds.attrs["exposure_time"]
    model.meta.exposure.start_time = 60000.0 + k
    model.meta.exposure.end_time = 60000.0 + k + 0.001
    model.meta.observation = {"program_number": "01234", "observation_number": "001", "visit_number": "001",
                              "visit_group": "01", "sequence_id": "1", "activity_id": "01",
                              "exposure_number": f"{k + 1:05d}"}
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = "NRCA1"
    model.meta.instrument.filter = "F200W"
    model.save(path)
    model.close()


@pytest.fixture(scope="module")
def asn(tmp_path_factory):
    sim = daskcal.simulate_images(3, (200, 200), seed=5, n_stars=70, dither=15.0, cosmic_rays=30,
                                  wcs_errors=ERRORS, sky_offsets=OFFSETS)
    d = tmp_path_factory.mktemp("asn")
    members = []
    for k, ds in enumerate(sim.images):
        name = f"jw01234001001_01101_{k + 1:05d}_nrca1_cal.fits"
        _write_jwst(ds, d / name, k)
        members.append({"expname": name, "exptype": "science"})
    path = d / "asn.json"
    path.write_text(json.dumps({"asn_type": "image3", "products": [{"name": "field1", "members": members}]}))
    return sim, path


def _run(*argv):
    from daskcal.cli._main import main

    return main([*map(str, argv), "--workers", "1", "--no-progress"])


def test_image3_association_to_jwst_products(asn, tmp_path, capsys):
    from astropy.io import fits
    from astropy.wcs import WCS

    _, path = asn
    out = tmp_path / "out"
    assert _run("image3", path, out, "--fits", *TWEAK) == 0
    stems = [f"jw01234001001_01101_{k:05d}_nrca1" for k in (1, 2, 3)]
    want = {"field1_i2d.zarr", "field1_i2d.fits", *(f"{s}_crf.zarr" for s in stems), *(f"{s}_crf.fits" for s in stems)}
    assert {p.name for p in out.iterdir()} == want
    printed = capsys.readouterr().out
    assert "image3: 3 exposures" in printed and "tweakreg: group" in printed
    assert "image3: steps tweakreg " in printed and "computing and writing the products" in printed

    # the same as the Python pipeline on the same files
    res = daskcal.image3(path, tweakreg={"searchrad": 1.0, "tolerance": 0.2, "separation": 0.5,
                                         "enforce_user_order": True})
    try:
        ref = res.mosaic.compute(scheduler="sync")
        crf_ref = [im.compute(scheduler="sync") for im in res.images]
    finally:
        res.cleanup()
    with xr.open_zarr(out / "field1_i2d.zarr", consolidated=False) as got:
        for name in ("data", "wht", "con"):
            np.testing.assert_array_equal(got[name].values, ref[name].values, err_msg=name)
        assert got.attrs["cal_step"] == {"tweakreg": "COMPLETE", "skymatch": "COMPLETE",
                                         "outlier_detection": "COMPLETE", "resample": "COMPLETE"}
    for stem, exp in zip(stems, crf_ref):
        (back,) = daskcal.open_images(out / f"{stem}_crf.zarr")
        np.testing.assert_array_equal(back["dq"].values, exp["dq"].values)
        np.testing.assert_array_equal(back["data"].values, exp["data"].values)
        assert back.attrs["level"] == exp.attrs["level"]

    # JWST users' tools open the FITS products
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with datamodels.ImageModel(str(out / "field1_i2d.fits")) as m:
            assert m.meta.cal_step.tweakreg == "COMPLETE" and m.meta.cal_step.resample == "COMPLETE"
            assert m.data.shape == ref["data"].shape
        with datamodels.ImageModel(str(out / f"{stems[1]}_crf.fits")) as m:
            assert m.meta.cal_step.outlier_detection == "COMPLETE"
            flagged = (m.dq & daskcal.DQ.OUTLIER) != 0
            assert flagged.any() and np.isnan(m.data[flagged]).all()
    with fits.open(out / "field1_i2d.fits") as hdul:
        header = hdul["SCI"].header
        assert header["BUNIT"] and header["PIXAR_SR"] > 0 and header["S_REGION"].startswith("POLYGON ICRS")
        assert hdul[0].header["S_TWKREG"] == "COMPLETE" and hdul[0].header["S_SKYMAT"] == "COMPLETE"
        fw = WCS(header)
    # the FITS WCS: pixel -> sky -> pixel through astropy, and against the gwcs, within 0.01 px
    ny, nx = ref["data"].shape
    y, x = np.mgrid[0:ny:9, 0:nx:11].astype(float)
    ra, dec = fw.pixel_to_world_values(x.ravel(), y.ravel())
    x2, y2 = fw.world_to_pixel_values(ra, dec)
    assert np.abs(x2 - x.ravel()).max() < 0.01 and np.abs(y2 - y.ravel()).max() < 0.01
    gx, gy = get_wcs(ref).invert(ra, dec)
    assert np.abs(gx - x.ravel()).max() < 0.01 and np.abs(gy - y.ravel()).max() < 0.01


def test_recipe_skip_and_step_parameters(asn, tmp_path):
    _, path = asn
    recipe = tomllib.loads(RECIPE.read_text())
    assert set(recipe["steps"]) == {"tweakreg", "skymatch", "outlier_detection", "resample"}
    text = RECIPE.read_text().replace("[steps.tweakreg]\nskip = false", "[steps.tweakreg]\nskip = true")
    assert text != RECIPE.read_text()
    mine = tmp_path / "mine.toml"
    mine.write_text(text)
    out = tmp_path / "out"
    assert _run("image3", "--recipe", mine, path, out, "--steps.resample.pixfrac=0.8",
                "--steps.skymatch.skip") == 0
    with xr.open_zarr(out / "field1_i2d.zarr", consolidated=False) as got:
        assert got.attrs["cal_step"]["tweakreg"] == "SKIPPED" and got.attrs["cal_step"]["skymatch"] == "SKIPPED"
        assert got.attrs["pixfrac"] == 0.8
    out2 = tmp_path / "out2"
    assert _run("run", mine, path, out2) == 0
    with xr.open_zarr(out2 / "field1_i2d.zarr", consolidated=False) as got:
        assert got.attrs["cal_step"]["tweakreg"] == "SKIPPED" and got.attrs["cal_step"]["skymatch"] == "COMPLETE"


@pytest.mark.parametrize(("args", "match"), [
    (["--steps.skymatch.skymethod=best"], "skymethod"),
    (["--steps.resample.kernel=boxcar"], "kernel"),
    (["--product-name", "x", "--steps.outlier_detection.maskpt=2"], "maskpt"),
])
def test_bad_step_parameters_are_one_line_and_nothing_is_written(asn, tmp_path, capsys, args, match):
    _, path = asn
    out = tmp_path / "out"
    assert _run("image3", path, out, *args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and match in err
    assert not out.exists() or not any(p.name.endswith((".zarr", ".fits")) for p in out.iterdir())


def test_unknown_step_option_is_refused(asn, tmp_path):
    _, path = asn
    with pytest.raises(SystemExit) as exc:
        _run("image3", path, tmp_path / "out", "--steps.resample.pixfrak=0.8")
    assert exc.value.code == 2


def test_missing_member_is_one_line(tmp_path, capsys):
    asn = tmp_path / "asn.json"
    asn.write_text(json.dumps({"products": [{"name": "p", "members": [{"expname": "gone_cal.fits",
                                                                        "exptype": "science"}]}]}))
    assert _run("image3", asn, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "gone_cal.fits" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
