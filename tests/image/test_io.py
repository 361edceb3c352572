"""open_images (Zarr, _cal.fits, association JSON), write_cal_fits and to_fits: round trips and bad input."""

from __future__ import annotations

import json

import dask.array as da
import numpy as np
import pytest
from astropy.io import fits

import daskcal
from daskcal.image._dataset import get_wcs
from daskcal.image._io import read_fits_wcs, to_fits, write_cal_fits

VARS = ("data", "err", "dq", "var_rnoise", "var_poisson", "var_flat")


@pytest.fixture(scope="module")
def sim2():
    return daskcal.simulate_images(n=2, shape=(40, 50), seed=11, n_stars=3)


def _same_wcs(a, b):
    x, y = np.array([0.0, 13.5, 49.0]), np.array([0.0, 20.25, 39.0])
    np.testing.assert_allclose(np.array(a(x, y)), np.array(b(x, y)), rtol=0, atol=1e-10)


def test_zarr_roundtrip(sim2, tmp_path):
    daskcal.save(sim2.images[0], tmp_path / "a.zarr")
    (back,) = daskcal.open_images(tmp_path / "a.zarr")
    assert isinstance(back.data.data, da.Array)
    for v in VARS:
        np.testing.assert_array_equal(back[v].values, sim2.images[0][v].values)
    _same_wcs(get_wcs(back), get_wcs(sim2.images[0]))


def test_cal_fits_roundtrip_lazy(sim2, tmp_path):
    ds = sim2.images[1]
    write_cal_fits(ds, tmp_path / "b_cal.fits")
    with fits.open(tmp_path / "b_cal.fits") as hdul:
        assert [h.name for h in hdul[1:]] == ["SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "ASDF"]
    (back,) = daskcal.open_images([str(tmp_path / "b_cal.fits")], chunks=(16, 32))
    assert back.data.data.chunks == ((16, 16, 8), (32, 18))
    for v in VARS:
        assert back[v].dtype == ds[v].dtype, v
        np.testing.assert_array_equal(back[v].values, ds[v].values, err_msg=v)
    for k in ("exposure_time", "measurement_time", "start_time", "end_time", "duration", "level", "group_id"):
        assert back.attrs[k] == pytest.approx(ds.attrs[k]) if not isinstance(ds.attrs[k], str) else back.attrs[k] == ds.attrs[k]
    assert back.attrs["subtracted"] is False and back.attrs["name"] == "b"  # the exposure: no "_cal"
    _same_wcs(get_wcs(back), get_wcs(ds))


def test_association(sim2, tmp_path):
    write_cal_fits(sim2.images[0], tmp_path / "x_cal.fits")
    daskcal.save(sim2.images[1], tmp_path / "y.zarr")
    asn = {"asn_type": "image3", "products": [{"name": "mosaic", "members": [
        {"expname": "x_cal.fits", "exptype": "science"}, {"expname": "y.zarr", "exptype": "science"}]}]}
    (tmp_path / "asn.json").write_text(json.dumps(asn))
    images = daskcal.open_images(tmp_path / "asn.json")
    assert [im.attrs["name"] for im in images] == ["x", sim2.images[1].attrs["name"]]


def test_mosaic_to_fits(sim2, tmp_path):
    mosaic = daskcal.resample(sim2.images, tile_shape=(32, 32))
    to_fits(mosaic, tmp_path / "m_i2d.fits")
    with fits.open(tmp_path / "m_i2d.fits") as hdul:
        names = [h.name for h in hdul[1:]]
        assert names == ["SCI", "ERR", "CON", "WHT", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT", "ASDF"]
        np.testing.assert_array_equal(hdul["SCI"].data, mosaic.data.values)
        np.testing.assert_array_equal(hdul["CON"].data, mosaic.con.values)
        assert hdul[0].header["EFFEXPTM"] == pytest.approx(200.0)
    _same_wcs(read_fits_wcs(tmp_path / "m_i2d.fits"), get_wcs(mosaic))


def test_to_fits_too_large(sim2, tmp_path):
    mosaic = daskcal.resample(sim2.images, tile_shape=(32, 32))
    with pytest.raises(ValueError, match="more than the FITS export limit of 1000 bytes"):
        to_fits(mosaic, tmp_path / "m.fits", max_memory=1000)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs(sim2, tmp_path):
    path = tmp_path / "nowcs_cal.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((4, 5), np.float32), name="SCI")]).writeto(path)
    with pytest.raises(ValueError, match="no ASDF extension, so no WCS"):
        daskcal.open_images(path)
    nosci = tmp_path / "nosci_cal.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((4, 5), np.float32), name="ERR")]).writeto(nosci)
    with pytest.raises(ValueError, match="no 2-D SCI extension"):
        daskcal.open_images(nosci)
    write_cal_fits(sim2.images[0], tmp_path / "ok_cal.fits")
    with fits.open(tmp_path / "ok_cal.fits") as hdul:
        hdul["ERR"].data = np.zeros((3, 3), np.float32)
        hdul.writeto(tmp_path / "badshape_cal.fits")
    with pytest.raises(ValueError, match="extension ERR has shape"):
        daskcal.open_images(tmp_path / "badshape_cal.fits")
    with pytest.raises(FileNotFoundError, match="no input at"):
        daskcal.open_images(tmp_path / "missing.zarr")
    bad = sim2.images[0].copy()
    bad.attrs = {k: v for k, v in bad.attrs.items() if k != "wcs_asdf"}
    bad.to_zarr(tmp_path / "nowcs.zarr", zarr_format=3, consolidated=False)
    with pytest.raises(ValueError, match="has no WCS"):
        daskcal.open_images(tmp_path / "nowcs.zarr")
    (tmp_path / "bad.json").write_text(json.dumps({"products": []}))
    with pytest.raises(ValueError, match="association .* is not valid"):
        daskcal.open_images(tmp_path / "bad.json")


def test_association_members_outside_its_folder_are_refused(sim2, tmp_path):
    import json

    asn_dir = tmp_path / "asn"
    (asn_dir / "sub").mkdir(parents=True)
    inside = write_cal_fits(sim2.images[0], asn_dir / "in_cal.fits")
    outside = write_cal_fits(sim2.images[1], tmp_path / "out_cal.fits")
    for expname in (str(outside), "../out_cal.fits", "sub/../../out_cal.fits"):
        asn = asn_dir / "asn.json"
        asn.write_text(json.dumps({"products": [{"members": [{"expname": "in_cal.fits"}, {"expname": expname}]}]}))
        with pytest.raises(ValueError, match=r"outside its folder .*allow-outside-asn") as err:
            daskcal.open_images(asn)
        assert str(asn) in str(err.value) and expname in str(err.value)
        images = daskcal.open_images(asn, allow_outside_asn=True)
        assert [im.attrs["name"] for im in images] == ["in", "out"]
    # members inside the folder (also through a '..' that comes back) need no flag
    asn.write_text(json.dumps({"products": [{"members": [{"expname": "sub/../in_cal.fits"}]}]}))
    assert len(daskcal.open_images(asn)) == 1 and inside.exists()


def test_image_dataset_refuses_nan_wcs_and_empty_data(sim2):
    import copy

    from daskcal import get_wcs, image_dataset

    wcs = copy.deepcopy(get_wcs(sim2.images[0]))
    fwd = wcs.forward_transform
    for name in [n for n in fwd.param_names if n.startswith(("lon", "lat"))]:
        setattr(fwd, name, np.nan)
    data = sim2.images[0]["data"].values
    with pytest.raises(ValueError, match="wcs: the WCS gives non-finite sky coordinates"):
        image_dataset(data, wcs)
    with pytest.raises(ValueError, match=r"data has shape \(0, 0\); expected an image with at least one pixel"):
        image_dataset(np.zeros((0, 0), np.float32), get_wcs(sim2.images[0]))
