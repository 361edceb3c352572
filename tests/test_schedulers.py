"""Every public graph on the synchronous, threaded and distributed schedulers, over chunk
grids 1x1, 2x1, 1x2 and ragged 3x3.

The oracle of each case is the same function run on one chunk with the synchronous
scheduler (those results are checked against stcal/drizzle in the modules of each step).
"""

import math

import dask
import numpy as np
import pytest

import daskcal

#: chunks along (y, x) of each grid: 1 chunk, 2 chunks, or 3 with a smaller last one
GRIDS = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2), "3x3": (3, 3)}
RAMPS_SHAPE = (1, 5, 40, 36)


def grid_chunks(shape, grid: str) -> tuple[int, int]:
    """The ``(y, x)`` chunk size that cuts ``shape`` (..., ny, nx) into the grid ``grid``."""
    out = []
    for n, k in zip(shape[-2:], GRIDS[grid], strict=True):
        size = n if k == 1 else math.ceil(n / 2) if k == 2 else n // 3 + 1
        assert math.ceil(n / size) == k and (k < 3 or n % size), (n, k, size)  # 3 chunks are ragged
        out.append(size)
    return tuple(out)


def _sync():
    return dask.config.set(scheduler="sync")


def assert_same(got, ref, rtol=0.0):
    """Every variable of ``got`` equals that of ``ref`` (exactly, or within ``rtol``); datasets or dicts."""
    assert sorted(got.keys()) == sorted(ref.keys())
    for name in ref:
        a, b = np.asarray(got[name]), np.asarray(ref[name])
        if rtol:
            np.testing.assert_allclose(a, b, rtol=rtol, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(a, b, err_msg=name)


# -- detector stage ----------------------------------------------------------------
@pytest.fixture(scope="module")
def ramps():
    return daskcal.simulate(RAMPS_SHAPE, seed=3, cr_probability=5e-3).ramps


def _chunked(ramps, grid):
    cy, cx = grid_chunks(RAMPS_SHAPE, grid)
    return ramps.chunk({"y": cy, "x": cx})


STEPS = {
    "flag_saturation": lambda r: daskcal.flag_saturation(r),
    "subtract_superbias": lambda r: daskcal.subtract_superbias(r),
    "detect_jumps": lambda r: daskcal.detect_jumps(r),
    "fit_ramps": lambda r: daskcal.fit_ramps(r).rate,
    "fit_ramps_likely": lambda r: daskcal.fit_ramps(r, algorithm="LIKELY").rate,
}


@pytest.fixture(scope="module")
def step_oracle(ramps):
    with _sync():
        return {name: step(ramps).compute() for name, step in STEPS.items()}


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("step", STEPS)
def test_detector_steps(ramps, step_oracle, scheduler, step, grid):
    with scheduler():
        got = STEPS[step](_chunked(ramps, grid)).compute()
    assert_same(got, step_oracle[step])


@pytest.fixture(scope="module")
def detector1_oracle(ramps):
    with _sync():
        result = daskcal.detector1(ramps, chunks=RAMPS_SHAPE[2:])
        return dask.compute(result.rate, result.rateints)


@pytest.fixture(scope="module")
def ramps_store(ramps, tmp_path_factory):
    path = tmp_path_factory.mktemp("ramps") / "r.zarr"
    with _sync():
        daskcal.save(ramps, path)
    return path


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("source", ["memory", "zarr"])
def test_detector1(ramps, ramps_store, detector1_oracle, scheduler, source, grid):
    chunks = grid_chunks(RAMPS_SHAPE, grid)
    with scheduler():
        r = ramps if source == "memory" else daskcal.open_ramps(ramps_store, chunks=chunks)
        result = daskcal.detector1(r, chunks=chunks)
        rate, rateints = dask.compute(result.rate, result.rateints)
    assert_same(rate, detector1_oracle[0])
    assert_same(rateints, detector1_oracle[1])


@pytest.fixture(scope="module")
def detector1_likely_oracle(ramps):
    with _sync():
        result = daskcal.detector1(ramps, chunks=RAMPS_SHAPE[2:], algorithm="LIKELY")
        return dask.compute(result.rate, result.rateints)


@pytest.mark.parametrize("grid", GRIDS)
def test_detector1_likely(ramps, detector1_likely_oracle, scheduler, grid):
    with scheduler():
        result = daskcal.detector1(ramps, chunks=grid_chunks(RAMPS_SHAPE, grid), algorithm="LIKELY")
        rate, rateints = dask.compute(result.rate, result.rateints)
    assert_same(rate, detector1_likely_oracle[0])
    assert_same(rateints, detector1_likely_oracle[1])


@pytest.mark.parametrize("grid", ["1x2", "3x3"])
def test_detector1_without_the_data_producer_mark(ramps, detector1_oracle, scheduler, grid, monkeypatch):
    """The fallback where dask cannot mark chunk tasks as data producers: plain task tuples."""
    from daskcal.detector import _fused

    monkeypatch.setattr(_fused, "_data_producer_hook", lambda: None)
    result = daskcal.detector1(ramps, chunks=grid_chunks(RAMPS_SHAPE, grid))
    layer = next(v for k, v in result.rate["data"].data.dask.layers.items() if k.startswith("detector1-"))
    assert all(isinstance(t, tuple) and callable(t[0]) for t in dict(layer).values())
    with scheduler():
        rate, rateints = dask.compute(result.rate, result.rateints)
    assert_same(rate, detector1_oracle[0])
    assert_same(rateints, detector1_oracle[1])


@pytest.mark.parametrize("grid", ["3x3"])
def test_detector1_save_products(ramps, detector1_oracle, scheduler, grid, tmp_path):
    import xarray as xr

    from daskcal.io._atomic import save_products

    result = daskcal.detector1(ramps, chunks=grid_chunks(RAMPS_SHAPE, grid))
    with scheduler():
        save_products({"rate": result.rate, "rateints": result.rateints}, tmp_path / "out")
    for name, ref in zip(("rate", "rateints"), detector1_oracle, strict=True):
        with xr.open_zarr(tmp_path / "out" / f"{name}.zarr", consolidated=False) as got:
            assert_same(got.load(), ref)


def test_chunk_grids_are_what_they_say():
    assert grid_chunks(RAMPS_SHAPE, "1x1") == (40, 36)
    assert grid_chunks(RAMPS_SHAPE, "2x1") == (20, 36)
    assert grid_chunks(RAMPS_SHAPE, "1x2") == (40, 18)
    assert grid_chunks(RAMPS_SHAPE, "3x3") == (14, 13)  # 14, 14, 12 by 13, 13, 10


@pytest.mark.parametrize("chunks", [(64, 32), (32, 64)])
def test_detector1_on_threads_with_one_chunk_along_an_axis(chunks):
    """Dask's linear fusion on the threaded scheduler failed ("Cannot fuse tasks with multiple
    outputs") on the halo edges of in-memory ramps when an axis had one chunk."""
    ramps = daskcal.simulate((1, 4, 64, 64), seed=1).ramps
    got = daskcal.detector1(ramps, chunks=chunks).rate.compute(scheduler="threads")
    ref = daskcal.detector1(ramps, chunks=(64, 64)).rate.compute(scheduler="sync")
    assert_same(got, ref)


# -- image stage -------------------------------------------------------------------
@pytest.fixture(scope="module")
def images():
    return daskcal.simulate_images(3, (64, 60), seed=4, n_stars=6, cosmic_rays=12).images


@pytest.fixture(scope="module")
def mosaic_wcs(images):
    return daskcal.output_wcs(images)


def _chunked_images(images, grid):
    cy, cx = grid_chunks(images[0]["data"].shape, grid)
    return [ds.chunk({"y": cy, "x": cx}) for ds in images]


@pytest.fixture(scope="module")
def resample_oracle(images, mosaic_wcs):
    with _sync():
        return daskcal.resample(images, output_wcs=mosaic_wcs, tile_shape=mosaic_wcs.array_shape).compute()


@pytest.mark.parametrize("grid", GRIDS)
def test_resample_and_save(images, mosaic_wcs, resample_oracle, scheduler, grid, tmp_path):
    import xarray as xr

    tiles = grid_chunks(mosaic_wcs.array_shape, grid)
    out = daskcal.resample(_chunked_images(images, grid), output_wcs=mosaic_wcs, tile_shape=tiles)
    assert tuple(len(c) for c in out["data"].data.chunks) == GRIDS[grid]
    with scheduler():
        got = out.compute()
        daskcal.save(out, tmp_path / "mosaic.zarr")
    assert_same(got, resample_oracle)
    with xr.open_zarr(tmp_path / "mosaic.zarr", consolidated=False) as saved:
        assert_same(saved.load(), resample_oracle)


@pytest.fixture(scope="module")
def outlier_oracle(images):
    with _sync():
        return {resample: _outliers(daskcal.flag_outliers(images, resample_data=resample, tile_shape=(512, 512)))
                for resample in (True, False)}


def _outliers(result):
    """The median and the flagged DQ of each input, computed; the result's scratch removed."""
    median, *dqs = dask.compute(result.median.data, *(ds["dq"].data for ds in result.images))
    result.cleanup()
    return {"median": median, **{f"dq{k}": dq for k, dq in enumerate(dqs)}}


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("resample", [True, False], ids=["resampled", "unresampled"])
def test_flag_outliers(images, mosaic_wcs, outlier_oracle, scheduler, resample, grid):
    shape = mosaic_wcs.array_shape if resample else images[0]["data"].shape
    tiles = grid_chunks(shape, grid)
    result = daskcal.flag_outliers(_chunked_images(images, grid), resample_data=resample, tile_shape=tiles)
    assert tuple(len(c) for c in result.median.data.chunks) == GRIDS[grid]
    with scheduler():
        got = _outliers(result)
    assert (got["dq0"] & int(daskcal.DQ.OUTLIER)).any()
    assert_same(got, outlier_oracle[resample])


@pytest.mark.parametrize("grid", GRIDS)
def test_write_crf_and_i2d_fits(images, mosaic_wcs, outlier_oracle, resample_oracle, scheduler, grid, tmp_path):
    from astropy.io import fits

    from daskcal.image._fits_write import to_fits, write_crf_fits

    result = daskcal.flag_outliers(_chunked_images(images, grid), tile_shape=grid_chunks(mosaic_wcs.array_shape, grid))
    tiles = grid_chunks(mosaic_wcs.array_shape, grid)
    mosaic = daskcal.resample(_chunked_images(images, grid), output_wcs=mosaic_wcs, tile_shape=tiles)
    with scheduler():
        write_crf_fits(result.images[0], tmp_path / "e0_crf.fits")
        to_fits(mosaic, tmp_path / "m_i2d.fits")
    result.cleanup()
    dq = outlier_oracle[True]["dq0"]
    bad = (dq & int(daskcal.DQ.DO_NOT_USE)) != 0
    with fits.open(tmp_path / "e0_crf.fits") as hdul:
        np.testing.assert_array_equal(hdul["DQ"].data, dq)
        np.testing.assert_array_equal(hdul["SCI"].data, np.where(bad, np.nan, images[0]["data"].values))
    with fits.open(tmp_path / "m_i2d.fits") as hdul:
        for name, ext in (("data", "SCI"), ("wht", "WHT"), ("con", "CON"), ("var_rnoise", "VAR_RNOISE")):
            np.testing.assert_array_equal(hdul[ext].data, resample_oracle[name].values, err_msg=name)


@pytest.fixture(scope="module")
def align_images():
    return daskcal.simulate_images(2, (96, 90), seed=6, n_stars=40, pixel_scale=0.1, dither=8.0,
                                   wcs_errors=[[0.0, 0.0, 0.0], [0.2, -0.1, 0.02]]).images


def _aligned(result):
    """Each exposure's catalog and its corrected WCS at a few pixels."""
    y, x = np.mgrid[0:96:19, 0:90:17].astype(float)
    out = {}
    for ds in result.images:
        name = ds.attrs["name"]
        cat = result.catalogs[name]
        out[f"{name}/x"], out[f"{name}/y"] = np.asarray(cat["x"]), np.asarray(cat["y"])
        out[f"{name}/sky"] = np.array(daskcal.get_wcs(ds)(x, y))
    return out


@pytest.fixture(scope="module")
def align_oracle(align_images):
    with _sync():
        result = daskcal.align(align_images, minobj=5, enforce_user_order=True)
    assert result.fits["exp1"]["status"] == "SUCCESS"
    return _aligned(result)


@pytest.mark.parametrize("grid", GRIDS)
def test_align_catalogs(align_images, align_oracle, scheduler, grid):
    chunked = _chunked_images(align_images, grid)
    assert tuple(len(c) for c in chunked[0]["data"].data.chunks) == GRIDS[grid]
    with scheduler():
        got = _aligned(daskcal.align(chunked, minobj=5, enforce_user_order=True))
    assert_same(got, align_oracle)


@pytest.fixture(scope="module")
def skymatch_oracle(images):
    with _sync():
        out = {}
        for skystat in ("mode", "median"):
            result = daskcal.match_sky(images, skymethod="global+match", skystat=skystat, subtract=True)
            out[skystat] = (result.levels, [ds["data"].values for ds in result.images])
        return out


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("skystat", ["mode", "median"])
def test_match_sky(images, skymatch_oracle, scheduler, skystat, grid):
    chunked = _chunked_images(images, grid)
    with scheduler():
        result = daskcal.match_sky(chunked, skymethod="global+match", skystat=skystat, subtract=True)
        data = dask.compute(*(ds["data"].data for ds in result.images))
    assert tuple(len(c) for c in result.images[0]["data"].data.chunks) == GRIDS[grid]
    levels, ref = skymatch_oracle[skystat]
    assert result.levels == levels
    for got, want in zip(data, ref, strict=True):
        np.testing.assert_array_equal(got, want)


# -- the image3 pipeline (tweakreg -> skymatch -> outliers -> resample) ------------------------------
def _image3(images, grid=None):
    chunked = images if grid is None else _chunked_images(images, grid)
    res = daskcal.image3(chunked, tweakreg={"minobj": 5, "enforce_user_order": True}, skymatch={"skystat": "median"},
                         outlier_detection={"tile_shape": (48, 48)}, resample={"tile_shape": (40, 44)})
    try:
        mosaic, crf = dask.compute(res.mosaic, res.images)
    finally:
        res.cleanup()
    out = {name: mosaic[name].values for name in ("data", "wht", "con")}
    for k, ds in enumerate(crf):
        out[f"dq{k}"], out[f"data{k}"] = ds["dq"].values, ds["data"].values
        out[f"level{k}"] = np.array(ds.attrs["level"])
        out[f"sky{k}"] = np.array(daskcal.get_wcs(ds)(10.0, 20.0))
    return out


@pytest.fixture(scope="module")
def image3_images():
    sim = daskcal.simulate_images(3, (96, 90), seed=6, n_stars=40, pixel_scale=0.1, dither=8.0, cosmic_rays=10,
                                  wcs_errors=[[0.0, 0.0, 0.0], [0.2, -0.1, 0.02], [-0.1, 0.15, -0.01]],
                                  sky_offsets=[0.0, 0.3, 0.6])
    return [im.assign_attrs(level=0.0) for im in sim.images]


@pytest.fixture(scope="module")
def image3_oracle(image3_images):
    with _sync():
        return _image3(image3_images)


@pytest.mark.parametrize("grid", GRIDS)
def test_image3(image3_images, image3_oracle, scheduler, grid):
    with scheduler():
        got = _image3(image3_images, grid)
    assert (got["dq1"] & int(daskcal.DQ.OUTLIER)).any() and got["level2"] > got["level0"]
    assert_same(got, image3_oracle)
