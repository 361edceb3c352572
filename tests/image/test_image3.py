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
    assert set(res.seconds) == {"outlier_detection", "resample"} and all(v >= 0 for v in res.seconds.values())


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


@pytest.mark.parametrize(("kw", "match"), [
    ({"skymatch": {"skymethod": "best"}}, "skymatch: .*skymethod"),
    ({"skymatch": {"skystat": "average"}}, "skymatch: .*skystat"),
    ({"outlier_detection": {"maskpt": 3.0}}, "outlier_detection: maskpt"),
    ({"resample": {"kernel": "boxcar"}}, "resample: unknown kernel"),
    ({"resample": {"pixel_scal": 0.05}}, "unknown resample parameters \\['pixel_scal'\\]"),
    ({"tweakreg": {"searchrad": -1.0}}, "tweakreg: .*searchrad"),
])
def test_bad_parameters_of_any_step_before_anything_computes(sim, monkeypatch, kw, match):
    """Alignment computes catalogs first: a later step's bad parameter must stop the run before that."""
    import daskcal.image._align as align_module

    def no_compute(*a, **k):
        raise AssertionError("a step ran before every parameter was checked")

    monkeypatch.setattr(align_module, "_compute_catalogs", no_compute)
    with pytest.raises(ValueError, match=match):
        image3(sim.images, **kw)


# -- the whole pipeline against injected truth ---------------------------------------------------

#: WCS errors (east, north arcsec; deg) per exposure (exposure 0 is the alignment reference) and sky offsets
ERRORS = [[0.0, 0.0, 0.0], [-0.15, 0.25, -0.02], [0.3, 0.05, 0.05], [0.1, -0.2, 0.03]]
OFFSETS = [0.0, 0.4, 0.9, 0.25]
#: matching for a dense 0.03"/px field (tests/image/test_align.py)
DENSE = {"searchrad": 1.0, "tolerance": 0.2, "separation": 0.5, "enforce_user_order": True}


@pytest.fixture(scope="module")
def misaligned():
    sim = daskcal.simulate_images(4, (256, 256), seed=5, n_stars=100, dither=20.0, cosmic_rays=60,
                                  wcs_errors=ERRORS, sky_offsets=OFFSETS)
    # as _cal files before skymatch: no sky level recorded
    return sim, [im.assign_attrs(level=0.0, subtracted=False) for im in sim.images]


def _star_errors_mas(ds, true_wcs, truth):
    ny, nx = ds["data"].shape
    x, y = true_wcs.invert(truth.star_ra, truth.star_dec)
    inside = (x > 0) & (x < nx - 1) & (y > 0) & (y < ny - 1)
    ra, dec = daskcal.get_wcs(ds)(x[inside], y[inside])
    return np.hypot((ra - truth.star_ra[inside]) * np.cos(np.radians(dec)), dec - truth.star_dec[inside]) * 3.6e6


def test_image3_recovers_injected_wcs_errors_and_sky_offsets(misaligned):
    from daskcal.image._dataset import wcs_to_text

    sim, images = misaligned
    res = image3(images, tweakreg=DENSE, skymatch={"skymethod": "match"})
    try:
        mosaic, crf = dask.compute(res.mosaic, res.images)
        # alignment: every star within 5 mas of its true position (it was > 50 mas off before)
        for k, ds in enumerate(crf):
            before = _star_errors_mas(images[k], sim.truth.wcs[k], sim.truth)
            after = _star_errors_mas(ds, sim.truth.wcs[k], sim.truth)
            assert len(after) > 40 and after.max() < 5.0, (k, after.max())
            if k:
                assert before.min() > 50.0
        # sky: the levels are the true skies (offsets included) relative to the lowest, within the sky noise
        levels = np.array([ds.attrs["level"] for ds in crf])
        true_sky = sim.truth.sky_level - sim.truth.sky_level.min()
        np.testing.assert_allclose(levels - levels.min(), true_sky, atol=0.01)
        assert not any(ds.attrs["subtracted"] for ds in crf)
        # the mosaic equals the one drizzled from the true WCSs and true relative skies, with the same flags
        truth_images = [im.assign_attrs(wcs_asdf=wcs_to_text(w), level=float(true_sky[k])).assign(dq=c["dq"])
                        for k, (im, w, c) in enumerate(zip(images, sim.truth.wcs, crf))]
        ref = daskcal.resample(truth_images, output_wcs=daskcal.get_wcs(mosaic)).compute()
        both = (mosaic["wht"].values > 0) & (ref["wht"].values > 0)
        diff = mosaic["data"].values[both] - ref["data"].values[both]
        assert np.median(np.abs(diff)) < 0.005, np.median(np.abs(diff))
        # outliers: the injected cosmic rays are flagged and NaN in the _crf exposures
        cr = sim.truth.cosmic_rays
        for k, ds in enumerate(crf):
            mine = cr[(cr["image"] == k) & (cr["amplitude"] > 50)]
            flagged = (ds["dq"].values[mine["y"], mine["x"]] & DQ.OUTLIER) != 0
            assert flagged.mean() >= 0.85, (k, flagged.mean())  # a few sit on stars or where one exposure alone covers
            assert np.isnan(ds["data"].values[mine["y"][flagged], mine["x"][flagged]]).all()
        assert mosaic.attrs["cal_step"] == {"tweakreg": "COMPLETE", "skymatch": "COMPLETE",
                                            "outlier_detection": "COMPLETE", "resample": "COMPLETE"}
    finally:
        res.cleanup()


def test_chunked_equals_unchunked(misaligned):
    _, images = misaligned
    chunked = [im.chunk({"y": 100, "x": 90}) for im in images]
    results = [image3(ims, tweakreg=DENSE, skymatch={"skymethod": "match"}) for ims in (images, chunked)]
    try:
        (m1, c1), (m2, c2) = dask.compute(*[(r.mosaic, r.images) for r in results])
    finally:
        for r in results:
            r.cleanup()
    for name in ("data", "wht", "con"):
        np.testing.assert_array_equal(m1[name].values, m2[name].values, err_msg=name)
    for a, b in zip(c1, c2):
        np.testing.assert_array_equal(a["dq"].values, b["dq"].values)
        assert a.attrs["wcs_asdf"] == b.attrs["wcs_asdf"] and a.attrs["level"] == b.attrs["level"]


def test_resample_does_not_compute_the_outlier_flags_to_check_them(sim, monkeypatch):
    """resample's up-front usability check on flag_outliers results would run outlier detection twice."""
    import daskcal.image._resample as resample_module

    calls = []
    real = resample_module.warn_unusable_inputs
    monkeypatch.setattr(resample_module, "warn_unusable_inputs", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = image3(sim.images, tweakreg=False, skymatch=False)
    res.cleanup()
    assert calls == []
    image3(sim.images, tweakreg=False, skymatch=False, outlier_detection=False)
    assert calls == [1]  # without outlier detection, the inputs are checked as before


@pytest.mark.parametrize("chunks", [(40, 30), (64, 64), (25, 64)])
def test_nan_outliers_of_zarr_inputs_reads_them_in_its_own_tasks(tmp_path, chunks):
    """Variables as read from Zarr are read by the tasks that NaN them (no read tasks held until the flags are
    known), with the same values as the in-memory path."""
    import dask.array as da

    sim = daskcal.simulate_images(1, (64, 64), seed=2)
    daskcal.save(sim.images[0], tmp_path / "in.zarr")
    before = daskcal.open_images([tmp_path / "in.zarr"], chunks=chunks)[0]
    rng = np.random.default_rng(0)
    marks = rng.random((64, 64)) < 0.05
    flags = np.where(marks, np.uint32(DQ.OUTLIER), np.uint32(0))
    after = before.assign(dq=before["dq"] | da.from_array(flags, chunks=(64, 64)))  # the flags: one chunk
    out = nan_outliers(before, after)
    want = nan_outliers(before.compute(), after.compute())
    for name in ("data", "err", "var_poisson", "var_rnoise", "var_flat"):
        layers = out[name].data.dask.layers
        assert not any(n.startswith(f"zarr-read-{name}") for n in layers), name
        np.testing.assert_array_equal(out[name].values, want[name].values, err_msg=name)
    assert np.isnan(out["data"].values[marks & ((before["dq"].values & DQ.OUTLIER) == 0)]).all()


def test_the_mosaic_equals_the_resample_of_the_crf_products(sim):
    """image3 drizzles the flagged exposures (as read) rather than its NaN'd crf products: the same mosaic,
    since the NaN'd pixels are flagged and weigh 0."""
    from daskcal.image._resample import resample

    res = image3(sim.images, tweakreg=False, skymatch=False)
    try:
        layers = [str(n) for n in res.mosaic["data"].data.dask.layers]  # keys of materialised layers, as text
        assert not any(im[v].data.name in n for im in res.images for v in ("data", "var_rnoise") for n in layers)
        got = res.mosaic.compute()
        want = resample(res.images, check_inputs=False).compute()
        assert any(np.isnan(im["data"].values).any() for im in res.images)  # the crf products are NaN'd
        for v in want.data_vars:
            np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)
    finally:
        res.cleanup()


@pytest.fixture(scope="module")
def sim_stores(sim, tmp_path_factory):
    root = tmp_path_factory.mktemp("sim-stores")
    paths = []
    for k, im in enumerate(sim.images):
        daskcal.save(im, root / f"in{k}.zarr")
        paths.append(root / f"in{k}.zarr")
    return paths


@pytest.fixture(scope="module")
def flagged_oracle(sim):
    """Outlier flags and mosaic of the in-memory exposures, computed on the synchronous scheduler."""
    res = daskcal.flag_outliers(sim.images)
    try:
        with dask.config.set(scheduler="sync"):
            return dask.compute([im["dq"] for im in res.images], daskcal.resample(res.images, check_inputs=False))
    finally:
        res.cleanup()


@pytest.mark.parametrize("grid", [(96, 112), (48, 112), (96, 56), (35, 41)], ids=["1x1", "2x1", "1x2", "ragged"])
def test_flagged_zarr_exposures_are_read_by_resample_in_its_own_tasks(sim_stores, flagged_oracle, scheduler, grid):
    """Exposures read from Zarr: their outlier flags reach resample as small packed masks, each leaf reading the
    DQ it covers and applying them, and the flagged DQ chunks are left to the tasks that write the crf products
    (whole-exposure DQ arrays held until the last tile, 32 x 2048^2, were ~210 MB per worker). Same flags and
    mosaic as the in-memory exposures."""
    from dask.core import flatten

    from daskcal.image._outliers import flagged_dq

    images = daskcal.open_images(sim_stores, chunks=grid)
    res = daskcal.flag_outliers(images)
    try:
        assert all(flagged_dq(im["dq"].data) is not None for im in res.images)
        mosaic = daskcal.resample(res.images, check_inputs=False)
        graph = dict(mosaic.__dask_graph__().cull(set(flatten(mosaic.__dask_keys__()))))
        assert [k for k in graph if "outlier-flag-" in str(k)]
        assert not [k for k in graph if "outlier-dq-" in str(k)]  # no flagged DQ chunk is computed for the mosaic
        with scheduler():
            dqs, got = dask.compute([im["dq"] for im in res.images], mosaic)
    finally:
        res.cleanup()
    want_dqs, want = flagged_oracle
    assert sum(int(((d & DQ.OUTLIER) != 0).sum()) for d in dqs) > 0
    for d, w in zip(dqs, want_dqs, strict=True):
        np.testing.assert_array_equal(d.values, w.values)
    for v in want.data_vars:
        np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)
