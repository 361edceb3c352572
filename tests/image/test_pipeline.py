"""daskcal.image3: the steps chained as calwebb_image3 chains them, against the steps run by hand."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import daskcal
from daskcal.dq import DQ
from daskcal.image._pipeline import image3, nan_outliers


@pytest.fixture(scope="module")
def sim():
    return daskcal.simulate_images(4, (96, 112), seed=2, n_stars=8, cosmic_rays=40)


def test_outliers_and_resample_equal_the_steps_by_hand(sim):
    res = image3(sim.images, tweakreg=False, skymatch=False, resample={"pixfrac": 0.8})
    try:
        by_hand = daskcal.flag_outliers(sim.images)
        try:
            mosaic_hand = daskcal.resample(by_hand.images, pixfrac=0.8)
            (m, ims), (mh, imsh) = dask.compute((res.mosaic, res.images), (mosaic_hand, by_hand.images))
        finally:
            by_hand.cleanup()
    finally:
        res.cleanup()
    np.testing.assert_array_equal(m["wht"].values, mh["wht"].values)
    np.testing.assert_allclose(m["data"].values, mh["data"].values, rtol=0, atol=0, equal_nan=True)
    flagged_total = 0
    for a, b, before in zip(ims, imsh, sim.images):
        np.testing.assert_array_equal(a["dq"].values, b["dq"].values)
        new = ((a["dq"].values & DQ.OUTLIER) != 0) & ((before["dq"].values & DQ.OUTLIER) == 0)
        flagged_total += int(new.sum())
        for var in ("data", "err", "var_rnoise", "var_poisson", "var_flat"):
            if var in a:
                assert np.isnan(a[var].values[new]).all()
                np.testing.assert_array_equal(a[var].values[~new], b[var].values[~new])
        assert a.attrs["cal_step"] == {"tweakreg": "SKIPPED", "skymatch": "SKIPPED", "outlier_detection": "COMPLETE"}
    assert flagged_total > 0
    assert res.mosaic.attrs["cal_step"]["resample"] == "COMPLETE"
    assert res.product_name == "image3"


def test_nan_outliers_keeps_earlier_flags():
    import xarray as xr

    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = xr.Dataset({"data": (("y", "x"), data), "dq": (("y", "x"), np.array([[16, 0, 0], [0, 0, 0]], np.uint32))})
    after = before.assign(dq=(("y", "x"), np.array([[16, 17, 0], [0, 0, 2]], np.uint32)))
    out = nan_outliers(before, after)
    want = data.copy()
    want[0, 1] = np.nan
    np.testing.assert_array_equal(out["data"].values, want)
    np.testing.assert_array_equal(before["data"].values, data)  # input untouched


def test_every_step_skipped_but_resample(sim):
    res = image3(sim.images, tweakreg=False, skymatch=False, outlier_detection={"skip": True})
    m = res.mosaic.compute()
    ref = daskcal.resample(sim.images).compute()
    np.testing.assert_array_equal(m["data"].values, ref["data"].values)
    assert res.outliers is None and res.alignment is None and res.sky is None


@pytest.mark.parametrize(("kw", "err", "match"), [
    ({"resample": "fast"}, TypeError, "resample= must be a mapping"),
    ({"skymatch": {"skip": "yes"}}, ValueError, "skymatch.skip"),
    ({"resample": {"pixfrac": 2.0}, "tweakreg": False, "skymatch": False, "outlier_detection": False},
     ValueError, "pixfrac"),
])
def test_bad_parameters(sim, kw, err, match):
    with pytest.raises(err, match=match):
        image3(sim.images, **kw)
