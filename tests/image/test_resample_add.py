"""``daskcal.resample(..., into=MOSAIC)``: exposures added to a stored mosaic give the mosaic of all inputs at once
(issue 16), on the synchronous, threaded and distributed schedulers; context past 32 inputs; an exposure added
twice or outside the grid is refused before anything runs."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import daskcal
from daskcal.image._dataset import get_wcs, wcs_to_text
from daskcal.image._simulate import distorted_wcs

TILE = (32, 32)
#: attributes that describe the last operation rather than the mosaic
VOLATILE = ("tiles_updated", "daskcal_run")


@pytest.fixture(scope="module")
def sim8():
    """Eight dithered 48x56 exposures spread over a grid of about 5x5 tiles, and that grid."""
    sim = daskcal.simulate_images(n=8, shape=(48, 56), seed=3, n_stars=6, dither=40)
    return sim.images, daskcal.output_wcs(sim.images)


@pytest.fixture(scope="module")
def at_once(sim8):
    images, wcs = sim8
    return daskcal.resample(images, output_wcs=wcs, tile_shape=TILE).compute(scheduler="sync")


def assert_same_mosaic(got, ref):
    """Data, weights, variances and err equal to float32 rounding; context, DQ and metadata exactly."""
    assert sorted(got.data_vars) == sorted(ref.data_vars)
    for name in ref.data_vars:
        a, b = ref[name].values, got[name].values
        assert a.shape == b.shape and a.dtype == b.dtype, name
        if a.dtype.kind != "f":
            np.testing.assert_array_equal(b, a, err_msg=name)
            continue
        np.testing.assert_array_equal(np.isnan(b), np.isnan(a), err_msg=name)
        ok = ~np.isnan(a)
        floor = np.median(np.abs(a[ok])) if ok.any() else 0.0  # data near 0 after the sky: rounding of its scale
        err = np.abs(b[ok].astype(np.float64) - a[ok]) / (np.abs(a[ok]) + floor)
        assert err.max(initial=0.0) < 1e-6, (name, err.max())
    for key in ref.attrs.keys() | got.attrs.keys():
        if key not in VOLATILE:
            assert got.attrs.get(key) == ref.attrs.get(key), key


def grow(images, wcs, tmp_path, steps=(4, 2, 2), tile=TILE, **kw):
    """The mosaic of ``images`` built by the public functions as ``steps`` additions, each saved and reopened."""
    first, rest = steps[0], steps[1:]
    store = tmp_path / "m0.zarr"
    daskcal.save(daskcal.resample(images[:first], output_wcs=wcs, tile_shape=tile, **kw), store)
    done = first
    for k, n in enumerate(rest, 1):
        grown = daskcal.resample(images[done:done + n], into=store)
        assert grown.attrs["tiles_updated"]  # only the tiles they reach are computed
        store = tmp_path / f"m{k}.zarr"
        daskcal.save(grown, store)
        done += n
    import xarray as xr

    return xr.open_zarr(store, consolidated=False).compute()


@pytest.mark.parametrize("scheduler", ["sync", "threads", "distributed"])
def test_four_plus_two_plus_two_equals_eight_at_once(sim8, at_once, tmp_path, scheduler):
    images, wcs = sim8
    if scheduler == "distributed":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster, \
                Client(cluster):
            got = grow(images, wcs, tmp_path)
    else:
        with dask.config.set(scheduler=scheduler):
            got = grow(images, wcs, tmp_path)
    assert got.attrs["inputs"] == at_once.attrs["inputs"]
    assert_same_mosaic(got, at_once)


@pytest.mark.parametrize("scheduler", ["sync", "threads", "distributed"])
def test_growing_zarr_exposures_reads_the_stored_sums_in_the_tiles_task(sim8, tmp_path, scheduler):
    """Exposures read from Zarr: each tile's chain reads its inputs' regions and the stored sums itself (no task of
    the stored tile of its own, which would pin the tile to the worker that read it), and 4 + 2 + 2 additions
    equal the mosaic of the 8 at once."""
    images, wcs = sim8
    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"in{i}.zarr")
        daskcal.save(image, paths[-1])
    zimages = daskcal.open_images(paths)
    ref = daskcal.resample(zimages, output_wcs=wcs, tile_shape=TILE).compute(scheduler="sync")

    store = tmp_path / "four.zarr"
    daskcal.save(daskcal.resample(zimages[:4], output_wcs=wcs, tile_shape=TILE), store)
    keys = [str(k) for k in dict(daskcal.resample(zimages[4:6], into=store).__dask_graph__())]
    assert any(k.endswith("-tile") for k in keys)
    assert not any(k.endswith("-stored") for k in keys)

    if scheduler == "distributed":
        from distributed import Client, LocalCluster

        with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
                Client(cluster):
            got = grow(zimages, wcs, tmp_path / "grown")
    else:
        with dask.config.set(scheduler=scheduler):
            got = grow(zimages, wcs, tmp_path / "grown")
    assert_same_mosaic(got, ref)


def test_other_parameters_kernel_dq_and_drizzled_err(sim8, tmp_path):
    images, wcs = sim8
    kw = dict(kernel="turbo", pixfrac=0.7, enable_var=False, compute_err="driz_err", propagate_dq=True,
              weight_type="exptime")
    with dask.config.set(scheduler="sync"):
        ref = daskcal.resample(images, output_wcs=wcs, tile_shape=TILE, **kw).compute()
        got = grow(images, wcs, tmp_path, steps=(5, 3), **kw)
    assert "dq" in got and "vwt_rnoise" not in got
    assert_same_mosaic(got, ref)


def test_only_tiles_the_new_exposures_reach_are_computed(sim8, tmp_path):
    images, wcs = sim8
    store = tmp_path / "m.zarr"
    daskcal.save(daskcal.resample(images[:6], output_wcs=wcs, tile_shape=TILE), store)
    grown = daskcal.resample(images[6:], into=store)
    ny, nx = (-(-s // t) for s, t in zip(grown["data"].shape, TILE))
    updated = {tuple(t) for t in grown.attrs["tiles_updated"]}
    assert 0 < len(updated) < ny * nx
    leaves = {k for k in dict(grown["data"].data.__dask_graph__()) if "-leaf-" in str(k)}
    assert {int(str(k).split("-")[-3]) for k in leaves} == {iy * nx + ix for iy, ix in updated}


def test_context_past_32_inputs(tmp_path):
    sim = daskcal.simulate_images(n=36, shape=(16, 20), seed=7, n_stars=2, dither=3)
    wcs = daskcal.output_wcs(sim.images)
    with dask.config.set(scheduler="sync"):
        ref = daskcal.resample(sim.images, output_wcs=wcs, tile_shape=(12, 12)).compute()
        assert ref["con"].shape[0] == 2
        got = grow(sim.images, wcs, tmp_path, steps=(30, 4, 2), tile=(12, 12))  # the context grows a plane at the second
    assert_same_mosaic(got, ref)


def test_an_exposure_added_twice_is_refused_naming_it(sim8, tmp_path):
    images, wcs = sim8
    store = tmp_path / "m.zarr"
    daskcal.save(daskcal.resample(images[:4], output_wcs=wcs, tile_shape=TILE), store)
    name = images[2].attrs["name"]
    with pytest.raises(ValueError, match=f"input 1 \\('{name}'\\) is already in the mosaic"):
        daskcal.resample([images[5], images[2]], into=store)
    with pytest.raises(ValueError, match="is given twice"):
        daskcal.resample([images[5], images[5]], into=store)


def test_an_exposure_outside_the_grid_is_refused_before_anything_runs(sim8, tmp_path):
    images, wcs = sim8
    store = tmp_path / "m.zarr"
    daskcal.save(daskcal.resample(images[:4], output_wcs=wcs, tile_shape=TILE), store)
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    far = images[5].copy()
    ra, dec = get_wcs(far)(28, 24)
    far.attrs.update(name="far_cal", group_id="far",
                     wcs_asdf=wcs_to_text(distorted_wcs((48, 56), float(ra) + 0.5, float(dec))))
    started = []

    class Count(dask.callbacks.Callback):
        def _start(self, dsk):
            started.append(len(dsk))

    with Count(), pytest.raises(ValueError, match="input 1 \\('far_cal'\\) falls outside the grid of the mosaic"):
        daskcal.resample([images[4], far], into=store)
    assert not started  # nothing was computed
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before


def test_the_mosaic_fixes_grid_and_parameters(sim8, tmp_path):
    images, wcs = sim8
    store = tmp_path / "m.zarr"
    daskcal.save(daskcal.resample(images[:4], output_wcs=wcs, tile_shape=TILE, pixfrac=0.8), store)
    with pytest.raises(ValueError, match="was made with pixfrac=0.8"):
        daskcal.resample(images[4:], into=store, pixfrac=0.5)
    with pytest.raises(ValueError, match="keeps its grid and tiles"):
        daskcal.resample(images[4:], into=store, tile_shape=(16, 16))
    grown = daskcal.resample(images[4:], into=store)  # the mosaic's own parameters
    assert grown.attrs["pixfrac"] == 0.8
    with pytest.raises(ValueError, match="does not exist"):
        daskcal.resample(images[4:], into=tmp_path / "none.zarr")


@pytest.mark.parametrize("compute_err", ["driz_err", None])
def test_stored_planes_back_to_sums_as_the_plain_formula(compute_err):
    """``TileSums.of_planes`` (ufuncs with ``where=``) gives, bit for bit, the sums of the plain masked formula:
    ``data * wht`` and ``err * psr * wht`` where ``wht != 0``, ``var * vwt * vwt / var_scale`` and ``vwt`` where
    ``vwt > 0`` and the variance is finite, 0 elsewhere; on planes with NaN fill, zero weights, an infinite variance."""
    from daskcal.image._driz import VAR_NAMES, VWT_NAMES, DrizzleSpec, TileSums

    rng = np.random.default_rng(5)
    shape = (37, 53)
    wht = rng.uniform(0.1, 3, shape).astype(np.float32)
    wht[:5] = 0
    planes = {"wht": wht, "data": np.where(wht > 0, rng.normal(5, 2, shape), np.nan).astype(np.float32),
              "err": np.where(wht > 0, rng.uniform(0.1, 1, shape), np.nan).astype(np.float32)}
    for vname, wname in zip(VAR_NAMES, VWT_NAMES):
        vwt = rng.uniform(0.1, 2, shape).astype(np.float32)
        vwt[rng.random(shape) < 0.1] = 0
        var = np.where(vwt > 0, rng.uniform(0.01, 1, shape), np.nan).astype(np.float32)
        var[7, 9] = np.inf
        planes[vname], planes[wname] = var, vwt
    spec = DrizzleSpec(kernel="square", pixfrac=1.0, psr=0.7, weight_type="ivm", good_bits=None, enable_ctx=False,
                       enable_var=True, compute_err=compute_err, propagate_dq=False, fillval=np.nan, var_weights=True)
    sums = TileSums.of_planes(planes, (10, 10 + shape[0], 20, 20 + shape[1]), 1, spec)

    w = planes["wht"].astype(np.float64)
    on = w != 0
    np.testing.assert_array_equal(sums.wht, w)
    want = np.zeros(shape)
    want[on] = planes["data"].astype(np.float64)[on] * w[on]
    np.testing.assert_array_equal(sums.swd, want)
    if compute_err == "driz_err":
        want = np.zeros(shape)
        want[on] = planes["err"].astype(np.float64)[on] * spec.psr * w[on]
        np.testing.assert_array_equal(sums.swe, want)
    else:
        assert sums.swe is None
    for k, (vname, wname) in enumerate(zip(VAR_NAMES, VWT_NAMES)):
        vwt, var = planes[wname].astype(np.float64), planes[vname].astype(np.float64)
        ok = (vwt > 0) & np.isfinite(var)
        want_w, want_s = np.zeros(shape), np.zeros(shape)
        want_w[ok] = vwt[ok]
        want_s[ok] = var[ok] * vwt[ok] * vwt[ok] / spec.var_scale
        np.testing.assert_array_equal(sums.vwt[k], want_w)
        np.testing.assert_array_equal(sums.vsum[k], want_s)
        assert not ok[7, 9] and sums.vwt[k][7, 9] == 0
