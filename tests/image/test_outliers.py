"""flag_outliers: against truth, against a reference run of stcal's utilities, tiling, errors, CLI."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

import daskcal
from daskcal.dq import DQ
from daskcal.image._dataset import get_wcs
from daskcal.image._outliers import OutlierParameters, flag_outliers
from daskcal.image._simulate import simulate_images

OUTLIER = np.uint32(DQ.OUTLIER)


# -- the oracle: the same steps with stcal 1.20's utilities and drizzle ----------------
def reference_outliers(images, out_wcs, snr=(5.0, 4.0), scale=(1.2, 0.7), backg=0.0, maskpt=0.7,
                       kernel="square", pixfrac=1.0, good_bits="~DO_NOT_USE"):
    """JWST imaging outlier detection with resample_data=True, from stcal's pieces.

    Single drizzle per exposure group onto ``out_wcs``, weights below ``maskpt`` x
    the group's clipped mean weight masked, stcal's MedianComputer, ``gwcs_blot``,
    ``flag_resampled_crs``. Returns the median and the new DQ arrays.

    As stcal's ``Resample.add_model`` (what JWST's single drizzle runs), an exposure
    whose sky ``level`` was not ``subtracted`` is drizzled as ``data - level`` with
    intensity scale 1 (``_get_intensity_scale`` is 1 for imaging WCSs); as JWST's
    ``flag_resampled_model_crs``, that ``level`` replaces ``backg`` when flagging it.
    """
    from drizzle.resample import Drizzle
    from stcal.outlier_detection.median import MedianComputer
    from stcal.outlier_detection.utils import compute_weight_threshold, flag_resampled_crs, gwcs_blot
    from stcal.resample.utils import build_driz_weight, calc_pixmap

    from daskcal.dq import dq_dict

    out_wcs = copy.deepcopy(out_wcs)
    out_shape = tuple(out_wcs.array_shape)
    groups = list(dict.fromkeys(ds.attrs["group_id"] for ds in images))
    mc = MedianComputer((len(groups), *out_shape), in_memory=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for gi, g in enumerate(groups):
            driz = Drizzle(kernel=kernel, fillval="NaN", out_shape=out_shape, disable_ctx=True)
            for ds in images:
                if ds.attrs["group_id"] != g:
                    continue
                model = {"data": ds["data"].values, "dq": ds["dq"].values, "var_rnoise": ds["var_rnoise"].values}
                weight = build_driz_weight(model, weight_type="ivm", good_bits=good_bits, flag_name_map=dq_dict())
                pixmap = calc_pixmap(copy.deepcopy(get_wcs(ds)), out_wcs, ds["data"].shape)
                data = model["data"]
                if _unsubtracted_level(ds) is not None:
                    data = data - _unsubtracted_level(ds)
                driz.add_image(data, exptime=ds.attrs["exposure_time"], pixmap=pixmap, weight_map=weight,
                               pixfrac=pixfrac, iscale=1.0, in_units="cps")
            thr = compute_weight_threshold(driz.out_wht, maskpt)
            data = driz.out_img.copy()
            data[driz.out_wht < thr] = np.nan
            mc.append(data, gi)
        median = mc.evaluate()
        dqs = []
        for ds in images:
            blot = gwcs_blot(median, out_wcs, ds["data"].shape, copy.deepcopy(get_wcs(ds)))
            level = _unsubtracted_level(ds)
            bg = backg if level is None else level
            mask = flag_resampled_crs(ds["data"].values, ds["err"].values, blot, snr[0], snr[1], scale[0], scale[1], bg)
            dq = ds["dq"].values.copy()
            dq[mask] |= np.uint32(DQ.OUTLIER | DQ.DO_NOT_USE)
            dqs.append(dq)
    return median, dqs


def _unsubtracted_level(ds):
    level = ds.attrs.get("level")
    return None if level is None or ds.attrs.get("subtracted", False) else level


# -- simulated data with cosmic rays of many amplitudes, away from stars ---------------
def _with_cosmic_rays(n=6, shape=(160, 160), seed=3, ncr=60):
    sim = simulate_images(n, shape, seed=seed, distortion=2.0)
    rng = np.random.default_rng(seed + 100)
    yy, xx = np.indices(shape)
    images, truth = [], []
    for ds in sim.images:
        sx, sy = get_wcs(ds).invert(sim.truth.star_ra, sim.truth.star_dec, with_bounding_box=False)
        near_star = np.zeros(shape, bool)
        for x, y, f in zip(sx, sy, sim.truth.star_flux):
            r = 4 + 2 * np.log10(f)
            near_star |= (xx - x) ** 2 + (yy - y) ** 2 < r**2
        cand = np.flatnonzero(~near_star & (ds["dq"].values == 0))
        cy, cx = np.unravel_index(rng.choice(cand, ncr, replace=False), shape)
        nsigma = 10 ** rng.uniform(np.log10(3.0), np.log10(500.0), ncr)
        new = ds.copy(deep=True)
        new["data"].values[cy, cx] += (nsigma * ds["err"].values[cy, cx]).astype(np.float32)
        images.append(new)
        truth.append({"y": cy, "x": cx, "nsigma": nsigma, "near_star": near_star, "star_x": sx, "star_y": sy})
    return images, truth


@pytest.fixture(scope="module")
def cr_images():
    return _with_cosmic_rays()


@pytest.fixture(scope="module")
def cr_result(cr_images):
    images, _ = cr_images
    res = flag_outliers(images, tile_shape=(96, 96))
    with dask.config.set(scheduler="threads"):
        dqs = dask.compute(*[im["dq"].data for im in res.images])
        median = res.median.values
    res.cleanup()
    return dqs, median


def test_against_truth(cr_images, cr_result):
    images, truth = cr_images
    dqs, _ = cr_result
    found, n_false, n_clean, cores = [], 0, 0, 0
    for ds, t, dq in zip(images, truth, dqs):
        flagged = (dq & OUTLIER) > 0
        bright = t["nsigma"] > 10
        found.append(flagged[t["y"][bright], t["x"][bright]])
        near_cr = np.zeros(dq.shape, bool)
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                near_cr[np.clip(t["y"] + dy, 0, dq.shape[0] - 1), np.clip(t["x"] + dx, 0, dq.shape[1] - 1)] = True
        clean = ~near_cr & ~t["near_star"] & (ds["dq"].values == 0)
        n_false += int(flagged[clean].sum())
        n_clean += int(clean.sum())
        sx, sy = np.round(t["star_x"]).astype(int), np.round(t["star_y"]).astype(int)
        inside = (sx >= 0) & (sx < dq.shape[1]) & (sy >= 0) & (sy < dq.shape[0])
        cores += int(flagged[sy[inside], sx[inside]].sum())
    rate = np.concatenate(found).mean()
    assert rate >= 0.95, f"{rate:.3f} of >10 sigma cosmic rays flagged"
    assert n_false / n_clean <= 1e-4, f"{n_false} of {n_clean} clean pixels flagged"
    assert cores == 0


def test_flags_are_outlier_and_do_not_use(cr_images, cr_result):
    images, _ = cr_images
    dqs, _ = cr_result
    for ds, dq in zip(images, dqs):
        new = dq & ~ds["dq"].values
        assert np.all((new & ~np.uint32(DQ.OUTLIER | DQ.DO_NOT_USE)) == 0)  # only these bits are added
        assert np.all((dq & ds["dq"].values) == ds["dq"].values)  # existing bits kept


@pytest.mark.parametrize(
    ("kernel", "pixfrac", "block_rows", "subtracted"),
    [("square", 1.0, 37, False), ("turbo", 0.7, 64, False), ("square", 1.0, 512, True)],
)
def test_matches_stcal_reference(kernel, pixfrac, block_rows, subtracted):
    """Sky levels not yet subtracted are drizzled off and used as backg; subtracted ones use the backg parameter."""
    from daskcal.image._grid import output_wcs

    sim = simulate_images(4, (150, 140), seed=11, cosmic_rays=30)
    images = [ds.copy() for ds in sim.images]
    images[3].attrs["group_id"] = images[2].attrs["group_id"]  # a group of two exposures
    backg = 0.0
    if subtracted:
        backg = 0.01
        for ds in images:
            ds["data"] = ds["data"] - np.float32(ds.attrs["level"])
            ds.attrs["subtracted"] = True
    out = output_wcs(images)
    ref_median, ref_dqs = reference_outliers(images, out, kernel=kernel, pixfrac=pixfrac, backg=backg)
    if block_rows < 100:  # lazy inputs in odd chunks that the row blocks cut across
        images = [ds.chunk({"y": 23, "x": 31}) for ds in images]
    res = flag_outliers(images, kernel=kernel, pixfrac=pixfrac, output_wcs=out, tile_shape=(50, 64), block_rows=block_rows,
                        backg=backg)
    median = res.median.values
    dqs = [im["dq"].values for im in res.images]
    res.cleanup()
    np.testing.assert_array_equal(np.isnan(median), np.isnan(ref_median))
    # sky-subtracted medians are near 0: float32 rounding of the brightest pixels sets the scale
    atol = 1e-6 * np.nanmax(np.abs(ref_median))
    np.testing.assert_allclose(median, ref_median, rtol=1e-5, atol=atol, equal_nan=True)
    agree = np.mean([np.mean(a == b) for a, b in zip(dqs, ref_dqs)])
    assert agree >= 0.999, agree


def test_tiles_and_budget_do_not_change_the_result(tmp_path):
    sim = simulate_images(3, (90, 100), seed=5, cosmic_rays=20)
    a = flag_outliers(sim.images, tile_shape=(1024, 1024))
    b = flag_outliers(sim.images, tile_shape=(17, 23), buffer_size=2 * 17 * 23 * 4, tempdir=tmp_path)
    c = flag_outliers(sim.images, tile_shape=(40, 31), in_memory=True)
    ma, mb, mc = a.median.values, b.median.values, c.median.values
    np.testing.assert_array_equal(ma, mb)
    np.testing.assert_array_equal(ma, mc)
    for x, y in zip(a.images, b.images):
        np.testing.assert_array_equal(x["dq"].values, y["dq"].values)
    # the stack is sparse: no chunk is written that no group touches
    store = Path(b.tempdir.name) / "single.zarr"
    written = [p for p in store.rglob("*") if p.is_file() and p.name != "zarr.json"]
    ntiles = int(np.ceil(ma.shape[0] / 17) * np.ceil(ma.shape[1] / 23))
    assert 0 < len(written) < 3 * ntiles
    for r in (a, b, c):
        r.cleanup()
    assert not store.exists()


def test_lazy_and_inputs_unchanged():
    sim = simulate_images(3, (64, 64), seed=7, cosmic_rays=10)
    before = [ds.copy(deep=True) for ds in sim.images]
    res = flag_outliers(sim.images)
    assert isinstance(res.median.data, da.Array)
    assert res.median.name == "data"  # the variable of image and mosaic stores; 'median' is a Dataset method
    assert all(isinstance(im["dq"].data, da.Array) for im in res.images)
    dq = res.images[0]["dq"].values
    assert (dq & OUTLIER).any()
    for ds, b in zip(sim.images, before):
        assert ds.identical(b)
    np.testing.assert_array_equal(res.images[0]["data"].values, sim.images[0]["data"].values)
    res.cleanup()


def test_without_resampling_matches_reference():
    from stcal.outlier_detection.utils import compute_weight_threshold, flag_crs
    from stcal.resample.utils import build_driz_weight

    from daskcal.dq import dq_dict

    sim = simulate_images(4, (70, 60), seed=9, cosmic_rays=15, dither=0.0, rotation=0.0)
    res = flag_outliers(sim.images, resample_data=False, tile_shape=(32, 32))
    assert res.median.name == "data"  # as on the resample_data=True path
    frames = []
    for ds in sim.images:
        model = {"data": ds["data"].values, "dq": ds["dq"].values, "var_rnoise": ds["var_rnoise"].values}
        w = build_driz_weight(model, weight_type="ivm", good_bits="~DO_NOT_USE", flag_name_map=dq_dict())
        f = ds["data"].values.copy()
        f[w < compute_weight_threshold(w, 0.7)] = np.nan
        frames.append(f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref_median = np.nanmedian(np.stack(frames), axis=0)
    np.testing.assert_array_equal(res.median.values, ref_median)
    for ds, im in zip(sim.images, res.images):
        mask = flag_crs(ds["data"].values, ds["err"].values, ref_median, 5.0)
        expected = ds["dq"].values | np.where(mask, np.uint32(DQ.OUTLIER | DQ.DO_NOT_USE), np.uint32(0))
        np.testing.assert_array_equal(im["dq"].values, expected)


# -- bad input --------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return simulate_images(2, (40, 40), seed=1).images


def test_fewer_than_two_groups(small):
    one_group = [ds.copy() for ds in small]
    for ds in one_group:
        ds.attrs["group_id"] = "same"
    with pytest.raises(ValueError, match="at least 2 exposure groups"):
        flag_outliers(one_group)
    with pytest.raises(ValueError, match="at least 2 images"):
        flag_outliers(small[:1], resample_data=False)


def test_image_without_wcs(small):
    bad = small[1].copy()
    bad.attrs = {k: v for k, v in bad.attrs.items() if k != "wcs_asdf"}
    with pytest.raises(ValueError, match="has no WCS"):
        flag_outliers([small[0], bad])
    assert "wcs_asdf" in small[1].attrs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"snr": "5.0"}, "snr must be two numbers"),
        ({"snr": "5.0 four"}, "snr must be two numbers"),
        ({"scale": "1.2 0.7 0.1"}, "scale must be two numbers"),
        ({"scale": "nan 0.7"}, "scale must be two numbers"),
        ({"maskpt": 1.5}, "maskpt"),
        ({"pixfrac": 0.0}, "pixfrac"),
        ({"kernel": "boxcar"}, "kernel"),
        ({"weight_type": "ivm-smed"}, "weight_type"),
        ({"fillval": "zero"}, "fillval"),
        ({"good_bits": "~NOT_A_FLAG"}, "good_bits"),
        ({"buffer_size": -5}, "buffer_size"),
        ({"tile_shape": (0, 10)}, "tile_shape"),
    ],
)
def test_malformed_parameters(small, kwargs, match):
    before = [ds.copy(deep=True) for ds in small]
    with pytest.raises(ValueError, match=match):
        flag_outliers(small, **kwargs)
    for ds, b in zip(small, before):
        assert ds.identical(b)


def test_parameters_accept_pairs():
    p = OutlierParameters(snr=(6, 5), scale="1.0, 0.5")
    assert p.snr == (6.0, 5.0) and p.scale == (1.0, 0.5)
    assert np.isnan(p.fill_value) and OutlierParameters(fillval="0").fill_value == 0.0


def test_not_datasets():
    with pytest.raises(TypeError, match="xarray.Dataset"):
        flag_outliers([np.zeros((3, 3)), np.zeros((3, 3))])


# -- command line on a 2-process local cluster -----------------------------------
def test_cli(tmp_path):
    import xarray as xr

    from daskcal.cli._main import main
    from daskcal.io._atomic import save_dataset

    sim = simulate_images(3, (64, 72), seed=4, cosmic_rays=10)
    paths = []
    for ds in sim.images:
        p = tmp_path / f"{ds.attrs['name']}.zarr"
        save_dataset(ds, p)
        paths.append(str(p))
    recipe = Path(__file__).parents[2] / "daskcal" / "graphs" / "outliers.toml"
    out = tmp_path / "out"
    rc = main(["outliers", *paths, "-o", str(out), "--save-median", "--recipe", str(recipe), "--tile-shape", "40", "40",
               "--workers", "1", "--no-progress", "--tempdir", str(tmp_path)])
    assert rc == 0
    expected = flag_outliers(sim.images, tile_shape=(40, 40))
    for ds, exp in zip(sim.images, expected.images):
        with xr.open_zarr(out / f"{ds.attrs['name']}.zarr", consolidated=False) as got:
            np.testing.assert_array_equal(got["dq"].values, exp["dq"].values)
            np.testing.assert_array_equal(got["data"].values, ds["data"].values)
    with xr.open_zarr(out / "median.zarr", consolidated=False) as med:
        assert list(med.data_vars) == ["data"]  # as a mosaic's; a variable 'median' is hidden by Dataset.median
        np.testing.assert_array_equal(med["data"].values, expected.median.values)
        assert get_wcs(med) is not None  # the WCS in the store's attributes, as a mosaic's
    expected.cleanup()
    assert not any(p.name.startswith("daskcal-outliers-") for p in tmp_path.iterdir())
    assert main(["outliers", paths[0], "-o", str(tmp_path / "x"), "--snr", "5", "--no-progress"]) == 2


def test_input_rows_that_miss_the_output_grid_blot_to_zero_as_in_one_block():
    """A user output grid that misses some row blocks of an input: those blocks blot to 0, as the off-grid
    pixels of a block that lands partly on the grid do, so the flags equal those of one block per input (was
    an AttributeError on their missing pixel map, shown by xarray as "no attribute 'values'")."""
    sim = daskcal.simulate_images(3, (100, 120), seed=1, dither=40.0)
    grid = daskcal.output_wcs(sim.images[:1])
    flags = []
    for rows in (16, 512):
        res = daskcal.flag_outliers(sim.images, output_wcs=grid, block_rows=rows)
        try:
            flags.append([np.asarray(im["dq"].data.compute()) for im in res.images])
        finally:
            res.cleanup()
    ny, nx = grid.array_shape
    w = daskcal.get_wcs(sim.images[2])
    yy, xx = np.mgrid[:100, :120]
    gx, gy = grid.invert(*w(xx, yy))
    assert (~((gx > -1) & (gx < nx) & (gy > -1) & (gy < ny))).all(axis=1)[:16].all()  # a whole block misses
    for a, b in zip(*flags):
        np.testing.assert_array_equal(a, b)
    assert (flags[0][0] & DQ.OUTLIER).any()


def test_blocks_map_pixels_with_the_program_compiled_once(scheduler, monkeypatch):
    """The blocks' pixel-map tasks take the program compiled when the graph is built, not the two WCS texts:
    no task parses a WCS. Where the compiler does not know a model (made to refuse here), they map with gwcs
    from the texts, with the input's bounding box, and the flags are the same."""
    from daskcal.image import _dataset, _outliers

    sim = simulate_images(3, (64, 70), seed=9, cosmic_rays=15)
    real = _dataset.wcs_from_text
    in_tasks: list = []

    def parse(text):
        in_tasks.append(text)
        return real(text)

    def run():
        res = flag_outliers(sim.images, tile_shape=(40, 31), block_rows=20)
        in_tasks.clear()
        monkeypatch.setattr(_dataset, "wcs_from_text", parse)
        with scheduler():
            median, dqs = dask.compute(res.median, [im["dq"] for im in res.images])
        monkeypatch.setattr(_dataset, "wcs_from_text", real)
        res.cleanup()
        return median.values, [d.values for d in dqs], len(in_tasks)

    median, dqs, parsed = run()
    assert parsed == 0
    assert any((d & OUTLIER).any() for d in dqs)
    monkeypatch.setattr(_outliers, "pixmap_source", lambda wcs_in, wcs_out, text_in, text_out: (text_in, text_out))
    median_g, dqs_g, parsed_g = run()
    assert parsed_g > 0
    np.testing.assert_allclose(median, median_g, rtol=1e-6, atol=1e-6 * np.nanmax(np.abs(median_g)))
    for a, b in zip(dqs, dqs_g):
        np.testing.assert_array_equal(a, b)
