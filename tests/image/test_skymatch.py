"""match_sky: the reference documentation's two tables, stcal.skymatch as oracle, grouping, DQ,
bad input, the statistics rounds against stsci.imagestats, and what outliers/resample see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import daskcal
from daskcal.dq import DQ
from daskcal.image._dataset import get_wcs, image_dataset
from daskcal.image._simulate import distorted_wcs
from daskcal.image._skymatch import match_sky
from daskcal.image._skystats import SkyStatSpec, run_local

METHODS = ["local", "global", "match", "global+match"]
SKYSTATS = ["mean", "median", "mode", "midpt"]
OFFSETS = [0.0, 0.3, -0.2, 0.15]


# -- the oracle: stcal.skymatch as JWST's skymatch step drives it ----------------------
def stcal_skymatch(images, skymethod="match", match_down=True, subtract=False, stepsize=None, skystat="mode",
                   dqbits="~DO_NOT_USE+NON_SCIENCE", lower=None, upper=None, nclip=5, lsigma=4.0, usigma=4.0,
                   binwidth=0.1):
    """Levels (None where skipped) and final data per image, from stcal's SkyImage/SkyGroup/skymatch."""
    from astropy.nddata.bitmask import bitfield_to_boolean_mask, interpret_bit_flags
    from stcal.skymatch import SkyGroup, SkyImage, SkyStats, skymatch

    from daskcal.dq import dq_dict

    stat = SkyStats(skystat=skystat, lower=lower, upper=upper, nclip=nclip, lsig=lsigma, usig=usigma,
                    binwidth=binwidth)
    bits = None if dqbits is None else interpret_bit_flags(dqbits, flag_name_map=dq_dict())
    groups: dict = {}
    for k, ds in enumerate(images):
        data = np.array(ds["data"].values, dtype=np.float32)
        mask = np.isfinite(data)
        if bits is not None:
            mask &= bitfield_to_boolean_mask(ds["dq"].values, bits, good_mask_value=True, dtype=bool)
        wcs = get_wcs(ds)
        im = SkyImage(image=data, mask=mask, wcs_fwd=wcs.__call__, wcs_inv=wcs.invert, skystat=stat, sky_id=k,
                      stepsize=stepsize, meta={"index": k})
        groups.setdefault(ds.attrs["group_id"], []).append(im)
    items = [g[0] if len(g) == 1 else SkyGroup(g, sky_id=n) for n, g in enumerate(groups.values())]
    skymatch(items, skymethod=skymethod, match_down=match_down, subtract=subtract)
    out = {}
    for item in items:
        for im in [item] if isinstance(item, SkyImage) else list(item):
            out[im.meta["index"]] = (float(im.sky) if im.is_sky_valid else None, im.image)
    return [out[k] for k in range(len(images))]


@pytest.fixture(scope="module")
def offset_images():
    """Four dithered exposures with stars, bad pixels and known extra sky offsets."""
    sim = daskcal.simulate_images(n=4, shape=(100, 120), seed=1, n_stars=12)
    return [ds.assign(data=ds.data + np.float32(off)) for ds, off in zip(sim.images, OFFSETS, strict=True)]


def assert_levels(got, ref, rtol=1e-6):
    assert [g is None for g in got] == [r is None for r in ref]
    for g, r in zip(got, ref, strict=True):
        if r is not None:
            assert g == pytest.approx(r, rel=rtol, abs=1e-12)


# -- the tables of the reference documentation -------------------------------------------
def _tiles(skies, centres, size=40, scale=0.1):
    """Constant images of ``size`` px at ``centres`` (px of a common tangent plane)."""
    from astropy.modeling import models

    tan = models.Pix2Sky_TAN() | models.RotateNative2Celestial(150.0, 2.0, 180.0)
    out = []
    for k, (sky, (cx, cy)) in enumerate(zip(skies, centres, strict=True)):
        ra, dec = tan(-cx * scale / 3600.0, cy * scale / 3600.0)
        wcs = distorted_wcs((size, size), float(ra), float(dec), pixel_scale=scale, distortion=0.0)
        out.append(image_dataset(np.full((size, size), sky, np.float32), wcs, name=f"tile{k}", group_id=f"g{k}"))
    return out


TABLE6 = {  # 2x3 mosaic, each image overlapping its neighbours
    "sky": [100, 120, 105, 110, 105, 115],
    "centres": [(0, 0), (30, 0), (60, 0), (0, 30), (30, 30), (60, 30)],
    "local": [100, 120, 105, 110, 105, 115],
    "global": [100] * 6,
    "match": [0, 20, 5, 10, 5, 15],
    "global+match": [100, 120, 105, 110, 105, 115],
}
TABLE7 = {  # a 2x2 mosaic and, far away, 3 overlapping images
    "sky": [100, 120, 105, 110, 95, 90, 100],
    "centres": [(0, 0), (30, 0), (0, 30), (30, 30), (300, 0), (330, 0), (360, 0)],
    "local": [100, 120, 105, 110, 95, 90, 100],
    "global": [90] * 7,
    "match": [0, 20, 5, 10, 8.75, 3.75, 13.75],
    "global+match": [86.25, 106.25, 91.25, 96.25, 95, 90, 100],
}


def test_footprints_apart_are_not_intersected_and_change_nothing(monkeypatch):
    """A field of 4x4 overlapping tiles, two touching at a corner and two far away: pairs whose footprints'
    bounding caps are apart are not intersected, the overlap regions are exactly those of intersecting every
    pair (as the reference does), and the levels are stcal's."""
    from daskcal.image import _skymatch

    centres = [(30 * i, 30 * j) for i in range(4) for j in range(4)] + [(130, 130), (2000, -1500)]
    skies = [100.0 + 3 * k for k in range(len(centres))]
    images = _tiles(skies, centres)
    calls = []
    real = _skymatch._intersection

    def counted(a, b):
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(_skymatch, "_intersection", counted)
    kept = {}
    monkeypatch.setattr(_skymatch, "_overlap_regions",
                        lambda *a, f=_skymatch._overlap_regions: kept.setdefault(len(kept), f(*a)))
    got = match_sky(images, skymethod="match", skystat="mean")
    pruned = len(calls)
    monkeypatch.setattr(_skymatch, "_apart", lambda a, b: False)
    calls.clear()
    every = match_sky(images, skymethod="match", skystat="mean")
    n = len(images)
    assert len(calls) == n * (n - 1)
    assert pruned < n * (n - 1) // 2, pruned
    # regions and areas, each image's as with every pair intersected: spherical-geometry's intersections vary
    # from call to call by ~2e-5 in area (the order it visits its graph's nodes), so the areas are compared to 1e-4
    assert kept[0].keys() == kept[1].keys()
    for key, (radec, area) in kept[0].items():
        radec_all, area_all = kept[1][key]
        assert area == pytest.approx(area_all, rel=1e-4, abs=0.0), key
        assert (radec is None) == (radec_all is None), key
    assert sum(radec is not None for radec, _ in kept[0].values()) > 40
    assert_levels(list(got.levels.values()), list(every.levels.values()))
    ref = stcal_skymatch(images, skymethod="match", skystat="mean")
    assert_levels(list(got.levels.values()), [r[0] for r in ref])


@pytest.mark.parametrize("processes", [True, False], ids=["worker processes", "in-process workers"])
def test_footprint_intersections_run_on_the_workers_of_a_client(monkeypatch, processes):
    """With a distributed client whose workers are processes, the footprints' intersections run in tasks on them
    (with workers in this process, here: their threads would take turns); the levels are the ones computed here."""
    distributed = pytest.importorskip("distributed")
    from daskcal.image import _skymatch

    images = _tiles([100.0 + 2 * k for k in range(9)], [(30 * i, 30 * j) for i in range(3) for j in range(3)])
    here = match_sky(images, skymethod="match", skystat="mean")
    monkeypatch.setattr(_skymatch, "_INTERSECTIONS_ON_WORKERS", 1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=processes, dashboard_address=None) \
            as c, distributed.Client(c) as client, distributed.get_task_stream(client) as stream:
        there = match_sky(images, skymethod="match", skystat="mean")
    batches = sum("skymatch-overlaps-" in str(t["key"]) for t in stream.data)
    assert batches >= 2 if processes else batches == 0
    assert_levels(list(there.levels.values()), list(here.levels.values()))


@pytest.fixture(scope="module")
def table_images():
    return {id(t): _tiles(t["sky"], t["centres"]) for t in (TABLE6, TABLE7)}


@pytest.mark.parametrize("skystat", ["mean", "median", "mode"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("table", [TABLE6, TABLE7], ids=["6 images", "7 images"])
def test_reference_tables(table_images, table, method, skystat):
    images = table_images[id(table)]
    result = match_sky([ds.chunk({"y": 17, "x": 23}) for ds in images], skymethod=method, skystat=skystat)
    np.testing.assert_allclose(list(result.levels.values()), table[method], rtol=0, atol=1e-9)
    for ds, level in zip(result.images, table[method], strict=True):
        assert ds.attrs["level"] == pytest.approx(level, abs=1e-9)
        assert ds.attrs["subtracted"] is False
        assert ds.attrs["skymatch"] == {"method": method, "level": ds.attrs["level"], "status": "COMPLETE"}


def test_table_images_with_subtract_end_at_zero_sky(table_images):
    images = table_images[id(TABLE6)]
    result = match_sky(images, skymethod="global+match", skystat="mean", subtract=True)
    for ds in result.images:
        assert ds.attrs["subtracted"] is True
        np.testing.assert_allclose(ds["data"].values, 0.0, atol=1e-5)


# -- against stcal.skymatch --------------------------------------------------------------
@pytest.mark.parametrize("skystat", SKYSTATS)
@pytest.mark.parametrize("method", METHODS)
def test_levels_equal_stcal(offset_images, method, skystat):
    ref = stcal_skymatch(offset_images, skymethod=method, skystat=skystat)
    result = match_sky(offset_images, skymethod=method, skystat=skystat)
    got = list(result.levels.values())
    assert_levels(got, [r[0] for r in ref])
    assert got == [r[0] for r in ref]  # in fact the same numbers: the same float32/float64 steps


@pytest.fixture(scope="module")
def grouped_stcal(offset_images):
    """The offset images in three exposure groups, and stcal's result on them for a ``(method, skystat)``
    (computed once for both ways of computing the statistics)."""
    images = [ds.assign_attrs(group_id=g) for ds, g in zip(offset_images, ["a", "b", "a", "c"], strict=True)]
    refs: dict = {}

    def ref(method, skystat):
        if (method, skystat) not in refs:
            refs[method, skystat] = stcal_skymatch(images, **_grouped_kw(method, skystat))
        return refs[method, skystat]

    return images, ref


def _grouped_kw(method, skystat) -> dict:
    return {"skymethod": method, "skystat": skystat, "subtract": True, "stepsize": 30, "match_down": False}


@pytest.mark.parametrize("image_memory", ["256 MiB", 0], ids=["whole-images", "chunk-rounds"])
@pytest.mark.parametrize("skystat", SKYSTATS)
@pytest.mark.parametrize("method", METHODS)
def test_groups_chunks_and_subtract_equal_stcal(grouped_stcal, method, skystat, image_memory):
    """Both ways of computing the statistics (an image in memory, or its chunks re-read in each round)."""
    import dask

    images, stcal_ref = grouped_stcal
    kw = _grouped_kw(method, skystat)
    ref = stcal_ref(method, skystat)
    with dask.config.set({"daskcal.skymatch.image-memory": image_memory}):
        result = match_sky([ds.chunk({"y": 37, "x": 50}) for ds in images], **kw)
    got = list(result.levels.values())
    assert got == [r[0] for r in ref]
    assert got[0] == got[2]  # one sky per exposure group
    for ds, (_, data) in zip(result.images, ref, strict=True):
        np.testing.assert_array_equal(ds["data"].values, data)
        assert ds.attrs["subtracted"] is True


@pytest.mark.parametrize("kw", [
    {"skystat": "mean", "nclip": 0},
    {"skystat": "median", "nclip": 0, "lower": 0.5},
    {"skystat": "mode", "lower": 0.7, "upper": 2.0, "binwidth": 0.3},
    {"skystat": "midpt", "nclip": 2, "lsigma": 2.0, "usigma": 3.0},
    {"skystat": "median", "dqbits": None},
    {"skystat": "mode", "dqbits": "~DO_NOT_USE+NON_SCIENCE+JUMP_DET"},
])
def test_statistics_parameters_equal_stcal(offset_images, kw):
    ref = stcal_skymatch(offset_images, skymethod="global+match", **kw)
    got = list(match_sky(offset_images, skymethod="global+match", **kw).levels.values())
    assert got == [r[0] for r in ref]


def test_injected_offsets_are_recovered(offset_images):
    """'match' with the mean: the levels differ as the injected offsets plus each exposure's own sky."""
    sim_levels = np.array([ds.attrs["level"] for ds in offset_images])  # the simulated sky of each
    truth = sim_levels + np.array(OFFSETS)
    got = np.array(list(match_sky(offset_images, skymethod="match", skystat="median").levels.values()))
    np.testing.assert_allclose(got, truth - truth.min(), atol=0.01)


# -- DQ --------------------------------------------------------------------------------
def test_masked_pixels_do_not_count(offset_images):
    """Pixels with a bad DQ bit set to a huge value change nothing; with dqbits=None they do."""
    rng = np.random.default_rng(0)
    images, flagged = [], []
    for ds in offset_images:
        hit = rng.random(ds["data"].shape) < 0.05
        data = np.where(hit, np.float32(1e5), ds["data"].values).astype(np.float32)
        dq = ds["dq"].values | np.where(hit, np.uint32(DQ.NON_SCIENCE), np.uint32(0))
        images.append(ds.assign(data=(("y", "x"), data), dq=(("y", "x"), dq)))
        flagged.append(ds.assign(dq=(("y", "x"), dq)))  # the same pixels flagged, their data untouched
    clean = match_sky(flagged, skymethod="local", skystat="mean").levels
    assert match_sky(images, skymethod="local", skystat="mean").levels == clean
    assert clean != match_sky(offset_images, skymethod="local", skystat="mean").levels
    unmasked = match_sky(images, skymethod="local", skystat="mean", nclip=0, dqbits=None).levels
    assert all(unmasked[k] > 1000 * clean[k] for k in clean)
    ref = stcal_skymatch(images, skymethod="local", skystat="mean", nclip=0, dqbits=None)
    assert list(unmasked.values()) == [r[0] for r in ref]


def _unusable(images, k):
    images = list(images)
    images[k] = images[k].assign(dq=images[k]["dq"] | np.uint32(DQ.DO_NOT_USE))
    return images


@pytest.mark.parametrize("method", METHODS)
def test_image_without_usable_pixels(offset_images, method):
    images = _unusable(offset_images, 0)
    ref = stcal_skymatch(images, skymethod=method, skystat="median")
    result = match_sky(images, skymethod=method, skystat="median")
    assert list(result.levels.values()) == [r[0] for r in ref]
    if method in ("local", "match"):
        assert result.levels[images[0].attrs["name"]] is None
        assert result.images[0].attrs["skymatch"]["status"] == "SKIPPED"
        assert result.images[0].attrs["level"] == images[0].attrs["level"]  # left as it was


def test_global_sky_skips_an_image_without_pixels_where_the_reference_fails(offset_images):
    """stcal's global stage compares None with a float (TypeError) when an image without sky
    follows one with a sky; daskcal leaves that image out of the minimum."""
    images = _unusable(offset_images, 1)
    with pytest.raises(TypeError):
        stcal_skymatch(images, skymethod="global", skystat="mean")
    local = match_sky(images, skymethod="local", skystat="mean").levels
    expect = min(v for v in local.values() if v is not None)
    assert set(match_sky(images, skymethod="global", skystat="mean").levels.values()) == {expect}


# -- the statistics rounds against stsci.imagestats ---------------------------------------
@pytest.mark.parametrize("seed", range(12))
def test_statistic_rounds_equal_skystats(seed):
    from stcal.skymatch import SkyStats

    rng = np.random.default_rng(seed)
    ny, nx = rng.integers(3, 50, 2)
    data = rng.normal(3.0, 0.5, (ny, nx)) + (rng.random((ny, nx)) < 0.05) * rng.uniform(5, 100, (ny, nx))
    if seed % 3 == 0:
        data = np.round(data, 1)  # ties and empty histogram bins
    data = data.astype(np.float32)
    good = rng.random((ny, nx)) > 0.2
    runs = np.array([(y, x0, x0 + rng.integers(0, nx)) for y in range(ny) for x0 in [rng.integers(0, nx)]])
    region = np.zeros((ny, nx), bool)
    for y, a, b in runs:
        region[y, a:b] = True
    for skystat in SKYSTATS:
        kw = {"nclip": [0, 1, 5][seed % 3], "lower": [None, 2.0][seed % 2], "upper": [None, 60.0, None, 3.0][seed % 4],
              "lsig": 3.0, "usig": 4.0, "binwidth": 0.1}
        spec = SkyStatSpec(skystat, kw["lower"], kw["upper"], kw["nclip"], kw["lsig"], kw["usig"], kw["binwidth"])
        expect = []
        for sel in (good, good & region):
            try:
                expect.append(SkyStats(skystat=skystat, **kw)(data[sel]))
            except ValueError:
                expect.append((None, 0))
        dq = (~good).astype(np.uint32)
        for chunks in [None, (7, 9), (ny // 2 + 1, nx)]:
            got = run_local(spec, data, dq, regions=(None, runs), ignore_bits=~1, chunks=chunks)
            for g, e in zip(got, expect, strict=True):
                assert g[1] == e[1]
                assert g[0] == e[0] and type(g[0]) is type(e[0]), (skystat, chunks, g, e)


def test_statistic_of_a_constant_or_single_pixel():
    from stcal.skymatch import SkyStats

    for data in (np.full((4, 5), 2.5, np.float32), np.array([[7.0]], np.float32)):
        for skystat in SKYSTATS:
            e = SkyStats(skystat=skystat)(data)
            g = run_local(SkyStatSpec(skystat), data)[0]
            if not np.isfinite(e[0]):
                assert g == (None, 0)
            else:
                assert g == e


# -- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize(("kw", "words"), [
    ({"skymethod": "best"}, "skymethod"),
    ({"skystat": "average"}, "skystat"),
    ({"dqbits": "NOT_A_FLAG"}, "dqbits"),
    ({"nclip": -1}, "nclip"),
    ({"nclip": 1.5}, "nclip"),
    ({"lsigma": 0}, "lsigma"),
    ({"usigma": float("nan")}, "usigma"),
    ({"binwidth": -0.1}, "binwidth"),
    ({"lower": 5.0, "upper": 1.0}, "lower"),
    ({"stepsize": 0}, "stepsize"),
])
def test_bad_parameters_are_refused_before_computing(offset_images, monkeypatch, kw, words):
    import dask

    monkeypatch.setattr(dask, "compute", lambda *a, **k: pytest.fail("computed before checking"))
    with pytest.raises(ValueError, match=words) as info:
        match_sky(offset_images, **kw)
    assert "\n" not in str(info.value)


def test_bad_images_are_refused(offset_images):
    with pytest.raises(ValueError, match="at least one"):
        match_sky([])
    with pytest.raises(TypeError, match="image 1 is a ndarray"):
        match_sky([offset_images[0], np.zeros((3, 3))])
    with pytest.raises(TypeError, match="subtract"):
        match_sky(offset_images, subtract="yes")
    with pytest.raises(ValueError, match="no WCS"):
        match_sky([offset_images[0].drop_attrs()])


def test_previous_run_must_agree_with_subtract(offset_images):
    first = match_sky(offset_images, skymethod="local", skystat="mean", subtract=True)
    with pytest.raises(ValueError, match="already subtracted"):
        match_sky(first.images, subtract=False)
    again = match_sky(first.images, skymethod="local", skystat="mean", subtract=True)
    for ds0, ds1 in zip(first.images, again.images, strict=True):  # the second run finds ~0 more sky
        assert ds1.attrs["level"] == pytest.approx(ds0.attrs["level"], abs=1e-6)
    unsub = match_sky(offset_images, skymethod="local", skystat="mean")
    with pytest.raises(ValueError, match="without subtracting"):
        match_sky(unsub.images, subtract=True)


# -- what outliers and resample do with the result ------------------------------------------
def test_outliers_and_resample_use_the_level(offset_images):
    from daskcal.image._outliers import _sky_level
    from daskcal.image._resample import _inputs

    plain = match_sky(offset_images, skymethod="local", skystat="mean")
    sub = match_sky(offset_images, skymethod="local", skystat="mean", subtract=True)
    for ds, ds_sub, (name, level) in zip(plain.images, sub.images, plain.levels.items(), strict=True):
        assert ds.attrs["name"] == name
        assert _sky_level(ds) == level  # drizzled as data - level, flagged with level as backg
        assert _inputs([ds])[0].level == level
        assert _sky_level(ds_sub) is None  # already subtracted: nothing more
        assert _inputs([ds_sub])[0].level == 0.0


def test_inputs_are_not_modified(offset_images):
    before = [(dict(ds.attrs), ds["data"].values.copy()) for ds in offset_images]
    match_sky(offset_images, skymethod="global+match", subtract=True)
    for ds, (attrs, data) in zip(offset_images, before, strict=True):
        assert dict(ds.attrs) == attrs
        np.testing.assert_array_equal(ds["data"].values, data)


# -- the command line -----------------------------------------------------------------------
RECIPE = Path(__file__).resolve().parents[2] / "daskcal" / "graphs" / "skymatch.toml"
CLUSTER_WARNINGS = [  # distributed's LocalCluster on a busy machine / closing its comms at shutdown
    pytest.mark.filterwarnings("ignore:Port .* is already in use:UserWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture(scope="module")
def stores(offset_images, tmp_path_factory):
    d = tmp_path_factory.mktemp("sky")
    return [str(daskcal.save(ds, d / f"{ds.attrs['name']}.zarr")) for ds in offset_images[:3]]


def _apply_marks(f):
    for mark in CLUSTER_WARNINGS:
        f = mark(f)
    return f


@_apply_marks
def test_cli_writes_levels_and_subtracted_data(offset_images, stores, tmp_path, capsys):
    import xarray as xr

    from daskcal.cli._main import main

    out = tmp_path / "out"
    rc = main(["skymatch", *stores, "-o", str(out), "--skymethod", "global+match", "--skystat", "median",
               "--subtract", "--workers", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    ref = stcal_skymatch(offset_images[:3], skymethod="global+match", skystat="median", subtract=True)
    for ds, (level, data) in zip(offset_images[:3], ref, strict=True):
        name = ds.attrs["name"]
        assert f"{level:.7g}" in printed and name in printed
        with xr.open_zarr(out / f"{name}.zarr", consolidated=False) as got:
            assert got.attrs["level"] == level and got.attrs["subtracted"] is True
            assert got.attrs["skymatch"] == {"method": "global+match", "level": level, "status": "COMPLETE"}
            np.testing.assert_array_equal(got["data"].values, data)


@_apply_marks
def test_recipe_run(offset_images, stores, tmp_path):
    import xarray as xr

    from daskcal.cli._main import main

    assert main(["run", str(RECIPE), *stores, str(tmp_path / "o"), "--workers", "1", "--no-progress"]) == 0
    ref = stcal_skymatch(offset_images[:3])  # the recipe is the defaults: match, mode
    for ds, (level, _) in zip(offset_images[:3], ref, strict=True):
        with xr.open_zarr(tmp_path / "o" / f"{ds.attrs['name']}.zarr", consolidated=False) as got:
            assert got.attrs["level"] == level and got.attrs["subtracted"] is False


def test_recipe_and_cli_defaults_are_the_library_defaults():
    import inspect
    import tomllib

    from daskcal.cli._skymatch import STEP_DEFAULTS

    sig = inspect.signature(match_sky)
    assert STEP_DEFAULTS == {k: p.default for k, p in sig.parameters.items() if k != "images"}
    with RECIPE.open("rb") as fh:
        recipe = tomllib.load(fh)["steps"]["skymatch"]
    assert recipe == {k: v for k, v in STEP_DEFAULTS.items() if v is not None}


@pytest.mark.parametrize(("extra", "message"), [
    (["--skymethod", "best"], "skymethod must be one of"),
    (["--skystat", "average"], "skystat must be one of"),
    (["--dqbits", "NOT_A_FLAG"], "dqbits 'NOT_A_FLAG' is not valid"),
])
def test_cli_bad_parameters_exit_2(stores, tmp_path, capsys, extra, message):
    from daskcal.cli._main import main

    assert main(["skymatch", *stores, "-o", str(tmp_path / "o"), "--workers", "1", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


# -- few images, no overlaps, memory ----------------------------------------------------------
def test_one_image_or_no_overlap_as_the_reference():
    sim = daskcal.simulate_images(n=2, shape=(60, 50), seed=3, n_stars=3, dither=200)  # far apart
    for images in ([sim.images[0]], sim.images):
        for method in METHODS:
            ref = stcal_skymatch(images, skymethod=method)
            assert list(match_sky(images, skymethod=method).levels.values()) == [r[0] for r in ref]


def test_no_chunk_is_held_between_rounds(offset_images):
    """Every round reads its chunks again: at most one chunk per running task is alive."""
    import weakref

    import dask
    import dask.array as da

    live, peak = [0], [0]

    def load(block):
        out = np.array(block, copy=True)
        live[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(out, lambda: live.__setitem__(0, live[0] - 1))
        return out

    images = [ds.assign(data=ds["data"].copy(data=da.from_array(ds["data"].values, chunks=(20, 24))
                                           .map_blocks(load, dtype=np.float32))) for ds in offset_images]
    with dask.config.set({"scheduler": "sync", "daskcal.skymatch.image-memory": 0}):  # the chunked rounds
        got = match_sky(images, skymethod="global+match", skystat="median").levels
    assert got == match_sky(offset_images, skymethod="global+match", skystat="median").levels
    # without re-reading (dask.graph_manipulation.bind made an identity) the sync scheduler holds
    # an image's 25 chunks through its rounds: peak 29 here; with it, a few
    assert peak[0] <= 6, peak[0]


def test_overlap_runs_equal_gwcs_polygon_fill():
    """The row runs recorded from gwcs's scan mark the pixels its fill of a full mask marks."""
    from gwcs import region

    from daskcal.image._skymatch import _Runs
    from daskcal.image._skystats import runs_mask

    shape = (30, 40)
    for vertices in ([(-3.2, 2.0), (20.4, -5.0), (45.0, 12.6), (18.0, 35.0), (-3.2, 2.0)],
                     [(5.0, 5.0), (30.0, 6.0), (29.0, 20.0), (6.0, 21.0), (5.0, 5.0)]):
        full = region.Polygon(True, vertices).scan(np.zeros(shape, bool))
        rec = _Runs(shape)
        region.Polygon(True, vertices).scan(rec)
        runs = np.array(rec.runs).reshape(-1, 3)
        assert full.any()
        np.testing.assert_array_equal(runs_mask(runs, 0, 0, shape), full)
        np.testing.assert_array_equal(runs_mask(runs, 7, 9, (11, 13)), full[7:18, 9:22])


@pytest.mark.parametrize("method", METHODS)
def test_one_compute_for_every_statistic(offset_images, monkeypatch, method):
    import dask

    calls = []
    real = dask.compute
    monkeypatch.setattr(dask, "compute", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = match_sky([ds.chunk({"y": 50, "x": 60}) for ds in offset_images], skymethod=method, subtract=True)
    assert len(calls) == 1
    assert all(isinstance(v, float) for v in result.levels.values())


def test_zarr_images_are_read_by_their_statistics_tasks(offset_images, stores, scheduler, compute_graph_keys):
    """An image read from Zarr is read by its statistics task itself, not by read tasks whose
    chunks wait on the workers (508 MB of skymatch's 1205 MB peak on 32 x 2048^2); the levels
    are those of the same images in memory."""
    keys = compute_graph_keys
    with scheduler():
        got = match_sky(daskcal.open_images(stores), skymethod="global+match", subtract=True)
    assert any(k.startswith("skymatch-stat") for k in keys)
    assert not [k for k in keys if "zarr-read" in k]
    ref = match_sky(offset_images[:3], skymethod="global+match", subtract=True)
    assert got.levels == ref.levels
    for a, b in zip(got.images, ref.images, strict=True):
        np.testing.assert_array_equal(a["data"].values, b["data"].values)
