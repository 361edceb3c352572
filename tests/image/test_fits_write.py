"""_cal/_crf/_i2d FITS products: stdatamodels opens them as ImageModel without a warning, values and
metadata round-trip, the SCI header's FITS WCS matches the gwcs, NaNs of _crf, atomic writing, CLI."""

from __future__ import annotations

import json
import logging
import warnings

import astropy.wcs
import numpy as np
import pytest
from astropy.io import fits

import daskcal
from daskcal import DQ
from daskcal.image import _fits_write as fw
from daskcal.image._dataset import get_wcs
from daskcal.image._simulate import distorted_wcs

stdatamodels = pytest.importorskip("stdatamodels")
from stdatamodels.jwst.datamodels import ImageModel

VARS = ("data", "err", "var_rnoise", "var_poisson", "var_flat")


@pytest.fixture(scope="module")
def sim():
    return daskcal.simulate_images(n=3, shape=(48, 56), seed=5, n_stars=5, cosmic_rays=6)


@pytest.fixture(scope="module")
def flagged(sim):
    res = daskcal.flag_outliers(sim.images, tile_shape=(64, 64))
    images = [im.compute() for im in res.images]
    res.cleanup()
    return images


@pytest.fixture(scope="module")
def mosaic(sim):
    m = daskcal.resample(sim.images, tile_shape=(32, 32)).compute()
    return m.assign_attrs(cal_step={"tweakreg": "COMPLETE", "skymatch": "COMPLETE", "outlier_detection": "SKIPPED"},
                          asn_table="jw01_image3_asn.json", asn_pool="jw01_pool.csv")


def _open_model(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stdatamodels' validation warnings included
        return ImageModel(path)


def _sky_px(wcs_a, wcs_b, x, y, scale_deg):
    ra1, dec1 = wcs_a(x, y)
    ra2, dec2 = wcs_b(x, y)
    return fw._sky_separation_px(ra1, dec1, ra2, dec2, scale_deg)


# ---------------------------------------------------------------- module layout

def test_writers_still_importable_from_io():
    from daskcal.image import _io

    for name in ("write_cal_fits", "write_crf_fits", "to_fits", "read_fits_wcs", "_asdf_hdu", "I2D_EXTENSIONS", "FITS_EXPORT_CONFIG",
                 "DEFAULT_FITS_EXPORT"):
        assert getattr(_io, name) is getattr(fw, name), name
    for name in ("write_cal_fits", "write_crf_fits", "read_fits_wcs"):
        assert getattr(daskcal, name) is getattr(fw, name), name


def _schema_keywords(schema, path=(), out=None):
    """``meta`` path -> (HDU, keyword) of every fits_keyword in a resolved stdatamodels schema."""
    out = {} if out is None else out
    if isinstance(schema, dict):
        if "fits_keyword" in schema:
            out[path] = (schema.get("fits_hdu", "PRIMARY"), schema["fits_keyword"])
        for key, value in schema.items():
            if key == "properties":
                for name, sub in value.items():
                    _schema_keywords(sub, (*path, name), out)
            elif key in ("allOf", "anyOf", "oneOf"):
                for sub in value:
                    _schema_keywords(sub, path, out)
    return out


def test_keyword_table_is_the_imagemodel_schema():
    known = _schema_keywords(ImageModel().schema)
    for path, where in fw.META_KEYWORDS.items():
        assert known.get(("meta", *path)) == where, path
    for path, (_, keyword) in fw.EXTRA_KEYWORDS.items():
        assert ("meta", *path) not in known
        assert keyword not in {kw for _, kw in known.values()}, keyword


# ---------------------------------------------------------------- _crf

def test_crf_nans_exactly_the_unusable_pixels(sim, flagged, tmp_path):
    ds = flagged[0].copy(deep=True)
    ds["err"][3, 4] = np.nan  # a NaN in one array only makes the pixel unusable everywhere (jwst's rule)
    before = {v: ds[v].values.copy() for v in ds.data_vars}
    path = fw.write_crf_fits(ds, tmp_path / "e0_crf.fits")
    for v in ds.data_vars:  # the input is not modified
        np.testing.assert_array_equal(ds[v].values, before[v], err_msg=v)

    dq_in = before["dq"]
    outliers = (dq_in & DQ.OUTLIER) != 0
    crs = sim.truth.cosmic_rays[sim.truth.cosmic_rays["image"] == 0]
    assert outliers[crs["y"], crs["x"]].sum() >= 3  # the step found injected cosmic rays...
    bad = ((dq_in & DQ.DO_NOT_USE) != 0) | np.isnan(before["err"])
    assert bad[outliers].all() and (bad & ~outliers).sum() > 1  # ...and the simulation has other DO_NOT_USE pixels
    with fits.open(path) as hdul:
        for v, ext in (("data", "SCI"), ("err", "ERR"), ("var_rnoise", "VAR_RNOISE"), ("var_poisson", "VAR_POISSON"),
                       ("var_flat", "VAR_FLAT")):
            got = hdul[ext].data
            np.testing.assert_array_equal(np.isnan(got), bad, err_msg=ext)
            np.testing.assert_array_equal(got[~bad], before[v][~bad], err_msg=ext)
        np.testing.assert_array_equal(hdul["DQ"].data, dq_in | np.where(bad, DQ.DO_NOT_USE, 0).astype(np.uint32))
        assert hdul[0].header["S_OUTLIR"] == "COMPLETE"

    m = _open_model(path)
    assert m.meta.model_type == "ImageModel" and m.meta.cal_step.outlier_detection == "COMPLETE"
    assert m.meta.filename == "e0_crf.fits"
    assert m.meta.exposure.exposure_time == pytest.approx(ds.attrs["exposure_time"])
    assert m.meta.exposure.measurement_time == pytest.approx(ds.attrs["measurement_time"])
    assert m.meta.background.level == pytest.approx(ds.attrs["level"]) and m.meta.background.subtracted is False
    assert m.meta.bunit_data == ds.attrs["bunit_data"]
    np.testing.assert_array_equal(np.isnan(m.data), bad)
    x, y = np.meshgrid(np.arange(0, 56, 5.5), np.arange(0, 48, 5.5))
    np.testing.assert_allclose(np.array(m.meta.wcs(x, y)), np.array(get_wcs(ds)(x, y)), rtol=0, atol=1e-12)
    m.close()


def test_crf_computes_a_lazy_input_once(sim, tmp_path):
    import dask

    calls = []

    def counted(block):
        calls.append(1)
        return block

    ds = sim.images[1].chunk({"y": 24, "x": 28})
    shared = ds["data"].data.map_blocks(counted, meta=np.empty((0, 0), np.float32))  # upstream of two arrays
    ds["data"] = ds["data"].copy(data=shared)
    ds["err"] = ds["err"] + 0 * shared
    with dask.config.set(scheduler="sync"):
        fw.write_crf_fits(ds, tmp_path / "e1_crf.fits")
    assert len(calls) == 4  # once per chunk: every array computed in one pass


def test_crf_reopens_as_an_image_dataset(flagged, tmp_path):
    path = fw.write_crf_fits(flagged[2], tmp_path / "e2_crf.fits")
    (back,) = daskcal.open_images(path, chunks=(16, 16))
    bad = (flagged[2]["dq"].values & DQ.DO_NOT_USE) != 0
    np.testing.assert_array_equal(np.isnan(back["data"].values), bad)
    np.testing.assert_array_equal(back["dq"].values, flagged[2]["dq"].values)
    x, y = np.array([0.0, 20.5, 55.0]), np.array([0.0, 30.25, 47.0])
    np.testing.assert_allclose(np.array(daskcal.get_wcs(back)(x, y)), np.array(get_wcs(flagged[2])(x, y)), atol=1e-12)
    assert back.attrs["group_id"] == flagged[2].attrs["group_id"]


# ---------------------------------------------------------------- _i2d

def test_i2d_opens_as_imagemodel_with_its_metadata(mosaic, tmp_path):
    path = fw.to_fits(mosaic, tmp_path / "m_i2d.fits")
    m = _open_model(path)
    for v, ext in (("data", "data"), ("wht", "wht"), ("con", "con"), ("err", "err"), ("var_rnoise", "var_rnoise"),
                   ("var_poisson", "var_poisson"), ("var_flat", "var_flat")):
        np.testing.assert_array_equal(getattr(m, ext), mosaic[v].values, err_msg=v)
    a = mosaic.attrs
    assert m.meta.cal_step.resample == "COMPLETE" and m.meta.cal_step.tweakreg == "COMPLETE"
    assert m.meta.cal_step.skymatch == "COMPLETE" and m.meta.cal_step.outlier_detection == "SKIPPED"
    assert m.meta.resample.pixfrac == a["pixfrac"] and m.meta.resample.weight_type == "ivm"
    assert m.meta.resample.pointings == 3 and m.meta.resample.pixel_scale_ratio == a["pixel_scale_ratio"]
    assert m.meta.asn.table_name == "jw01_image3_asn.json" and m.meta.asn.pool_name == "jw01_pool.csv"
    assert m.meta.photometry.pixelarea_steradians == pytest.approx(a["pixelarea_steradians"], rel=1e-12)
    assert m.meta.photometry.pixelarea_arcsecsq == pytest.approx(a["pixelarea_arcsecsq"], rel=1e-12)
    assert m.meta.wcsinfo.s_region == a["s_region"]
    assert m.meta.exposure.exposure_time == pytest.approx(a["exposure_time"])
    x, y = np.meshgrid(np.arange(0, mosaic.sizes["x"], 7.0), np.arange(0, mosaic.sizes["y"], 7.0))
    np.testing.assert_allclose(np.array(m.meta.wcs(x, y)), np.array(get_wcs(mosaic)(x, y)), rtol=0, atol=1e-12)
    m.close()
    with fits.open(path) as hdul:
        p, s = hdul[0].header, hdul["SCI"].header
        assert (p["DATAMODL"], p["S_RESAMP"], p["S_TWKREG"], p["S_SKYMAT"], p["S_OUTLIR"]) == (
            "ImageModel", "COMPLETE", "COMPLETE", "COMPLETE", "SKIPPED")
        assert (p["PIXFRAC"], p["KERNEL"], p["RESWHT"], p["NDRIZ"], p["ASNTABLE"]) == (
            a["pixfrac"], a["kernel"], "ivm", 3, "jw01_image3_asn.json")
        assert s["BUNIT"] == "MJy/sr" and s["S_REGION"] == a["s_region"]
        assert s["PIXAR_SR"] == pytest.approx(a["pixelarea_steradians"], rel=1e-12)


def test_i2d_s_region_from_the_wcs_when_the_mosaic_has_none(mosaic, tmp_path):
    m = mosaic.copy()
    m.attrs = {k: v for k, v in mosaic.attrs.items() if k not in ("s_region", "pixelarea_steradians")}
    path = fw.to_fits(m, tmp_path / "n_i2d.fits")
    ny, nx = mosaic["data"].shape
    ra, dec = get_wcs(mosaic)([-0.5, nx - 0.5, nx - 0.5, -0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5])
    with fits.open(path) as hdul:
        s = hdul["SCI"].header
        words = s["S_REGION"].split()
        assert words[:2] == ["POLYGON", "ICRS"]
        np.testing.assert_allclose(np.array(words[2:], float).reshape(4, 2), np.c_[ra, dec], rtol=0, atol=1e-9)
        # the area of a pixel at the mosaic's centre
        assert s["PIXAR_A2"] == pytest.approx(mosaic.attrs["pixelarea_arcsecsq"], rel=1e-6)
    _open_model(path).close()


def test_i2d_with_dq_reopens_and_gives_back_its_gwcs(sim, tmp_path):
    mosaic = daskcal.resample(sim.images, tile_shape=(32, 32), propagate_dq=True)
    path = fw.to_fits(mosaic, tmp_path / "q_i2d.fits")
    x, y = np.array([0.0, 11.5, 40.0]), np.array([0.0, 22.25, 33.0])
    want = np.array(get_wcs(mosaic)(x, y))
    np.testing.assert_allclose(np.array(fw.read_fits_wcs(path)(x, y)), want, rtol=0, atol=1e-12)
    (back,) = daskcal.open_images(path)
    np.testing.assert_allclose(np.array(daskcal.get_wcs(back)(x, y)), want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(back["data"].values, mosaic["data"].values)
    np.testing.assert_array_equal(back["dq"].values, mosaic["dq"].values)


# ---------------------------------------------------------------- FITS WCS of the SCI header

@pytest.mark.parametrize("distortion", [0.0, 2.0, 8.0])
def test_sci_header_wcs_agrees_with_the_gwcs(distortion, tmp_path):
    shape = (300, 260)
    wcs = distorted_wcs(shape, 150.1, 2.2, rotation=35.0, distortion=distortion)
    ds = daskcal.image_dataset(np.zeros(shape, np.float32), wcs)
    path = fw.write_cal_fits(ds, tmp_path / "w_cal.fits")
    hdr = fits.getheader(path, "SCI")
    w = astropy.wcs.WCS(hdr)
    if distortion:
        assert hdr["CTYPE1"] == "RA---TAN-SIP" and hdr["A_ORDER"] == 3  # the simulation's cubic distortion
        assert hdr["SIPIVERR"] <= fw.MAX_SIP_ERROR
    else:
        assert hdr["CTYPE1"] == "RA---TAN" and "A_ORDER" not in hdr
    stated = hdr["WCSMXERR"]
    assert 0 <= stated <= fw.MAX_SIP_ERROR
    # every pixel centre and corner of the image: FITS WCS (astropy, SIP) vs gwcs
    x, y = np.meshgrid(np.arange(-0.5, shape[1], 0.5), np.arange(-0.5, shape[0], 0.5))
    scale = 0.03 / 3600.0
    ra_f, dec_f = w.all_pix2world(x, y, 0)
    ra_g, dec_g = wcs(x, y, with_bounding_box=False)
    err = fw._sky_separation_px(ra_f, dec_f, ra_g, dec_g, scale)
    assert err.max() <= stated * 1.5 + 1e-6
    # astropy's own round trip pixel -> sky -> pixel, and the gwcs's sky -> FITS pixel
    px, py = w.all_world2pix(ra_f, dec_f, 0)
    assert max(np.abs(px - x).max(), np.abs(py - y).max()) < 0.01
    gx, gy = w.all_world2pix(ra_g, dec_g, 0)
    assert max(np.abs(gx - x).max(), np.abs(gy - y).max()) < fw.MAX_SIP_ERROR
    if distortion:
        # the inverse SIP polynomials (AP, BP) alone, as a viewer that does not iterate uses them
        u, v = w.wcs_world2pix(ra_g, dec_g, 0)
        fx, fy = w.sip_foc2pix(np.c_[u.ravel(), v.ravel()] - w.wcs.crpix + 1, 1).T - 1  # 1-based out
        assert max(np.abs(fx - x.ravel()).max(), np.abs(fy - y.ravel()).max()) <= hdr["SIPIVERR"] * 1.5


def test_wcs_fit_short_of_the_limit_is_logged(caplog):
    wcs = distorted_wcs((200, 200), 150.1, 2.2, distortion=2.0)
    with caplog.at_level(logging.WARNING, logger="daskcal.image._fits_write"):
        hdr = fw.fits_wcs_header(wcs, (200, 200), max_pix_error=1e-12)
    assert "differs from the gwcs by up to" in caplog.text
    assert hdr["CTYPE1"] == "RA---TAN-SIP" and hdr["WCSMXERR"] < 0.01


def test_wcsinfo_attribute_kept_and_stale_fits_wcs_keys_replaced(sim, tmp_path):
    info = {"ra_ref": 150.1, "dec_ref": 2.2, "v2_ref": 86.1, "v3_ref": -493.2, "roll_ref": 12.5, "v3yangle": -0.6,
            "vparity": -1, "crpix1": 999.0, "a_4_0": 1.0, "ctype1": "RA---TAN-SIP", "siaf_xref_sci": None}
    stale = "POLYGON ICRS  1 1 2 1 2 2 1 2"  # from before a WCS correction: the exposure's outline is written
    ds = sim.images[0].assign_attrs(wcsinfo=dict(info, s_region=stale), s_region=stale,
                                    cal_step={"tweakreg": "COMPLETE"})
    path = fw.write_cal_fits(ds, tmp_path / "i_cal.fits")
    m = _open_model(path)
    assert (m.meta.wcsinfo.v2_ref, m.meta.wcsinfo.v3_ref, m.meta.wcsinfo.vparity) == (86.1, -493.2, -1)
    assert m.meta.wcsinfo.roll_ref == 12.5 and m.meta.cal_step.tweakreg == "COMPLETE"
    assert m.meta.wcsinfo.crpix1 != 999.0 and m.meta.wcsinfo.instance.get("a_4_0") is None
    m.close()
    hdr = fits.getheader(path, "SCI")
    assert (hdr["V2_REF"], hdr["V3I_YANG"], hdr["VPARITY"]) == (86.1, -0.6, -1) and "A_4_0" not in hdr
    assert hdr["S_REGION"] == fw._s_region(get_wcs(ds), ds["data"].shape) != stale
    assert ds.attrs["wcsinfo"]["crpix1"] == 999.0  # the input's attributes are not modified


def test_bad_cal_step_is_refused(sim, tmp_path):
    ds = sim.images[0].assign_attrs(cal_step={"tweakreg": "DONE"})
    with pytest.raises(ValueError, match=r"'cal_step' must map step names to one of .*'tweakreg': 'DONE'"):
        fw.write_cal_fits(ds, tmp_path / "x_cal.fits")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- atomic writing

def test_writing_is_atomic(sim, tmp_path, monkeypatch):
    path = fw.write_crf_fits(sim.images[0], tmp_path / "a_crf.fits")
    with pytest.raises(FileExistsError):
        fw.write_crf_fits(sim.images[1], path)
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul["DQ"].data, sim.images[0]["dq"].values)

    def broken(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fits.HDUList, "writeto", broken)
    with pytest.raises(OSError, match="No space left"):
        fw.write_crf_fits(sim.images[1], path, overwrite=True)
    with pytest.raises(OSError, match="No space left"):
        fw.to_fits(daskcal.resample(sim.images[:1]), tmp_path / "b_i2d.fits")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_crf.fits"]  # no partial file, no staging folder
    with fits.open(path) as hdul:  # the old file is intact
        np.testing.assert_array_equal(hdul["DQ"].data, sim.images[0]["dq"].values)


# ---------------------------------------------------------------- CLI

@pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning", "ignore::ResourceWarning")
def test_cli_resample_fits_has_the_i2d_header(sim, tmp_path):
    from daskcal.cli._main import main

    paths = [fw.write_cal_fits(ds, tmp_path / f"c{k}_cal.fits") for k, ds in enumerate(sim.images)]
    asn = {"asn_type": "image3", "products": [{"name": "m", "members": [
        {"expname": p.name, "exptype": "science"} for p in paths]}]}
    (tmp_path / "jw9_asn.json").write_text(json.dumps(asn))
    out = tmp_path / "m.zarr"
    assert main(["resample", str(tmp_path / "jw9_asn.json"), "-o", str(out), "--kernel", "turbo", "--pixfrac", "0.8",
                 "--fits", "--workers", "1", "--no-progress"]) == 0
    m = _open_model(tmp_path / "m_i2d.fits")
    assert m.meta.cal_step.resample == "COMPLETE" and m.meta.resample.pixfrac == 0.8
    assert m.meta.asn.table_name == "jw9_asn.json" and m.meta.resample.pointings == 3
    assert m.meta.wcsinfo.ctype1 == "RA---TAN"
    m.close()
    with fits.open(tmp_path / "m_i2d.fits") as hdul:
        assert hdul[0].header["KERNEL"] == "turbo" and hdul[0].header["ASNTABLE"] == "jw9_asn.json"
