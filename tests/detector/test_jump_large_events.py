"""detect_jumps with large events (snowballs): stcal 1.20's ``flag_large_events`` as the oracle.

stcal's ``detect_jumps_data`` (whole detector, one process, set up as the JWST jump step
does) gives the expected flags; ours must equal them bit for bit on chunk grids 1x1, 2x1,
1x2, ragged, and grids whose edges cut through injected snowballs, on the synchronous,
threaded and distributed schedulers. The snowballs injected by ``simulate(snowballs=N)``
(saturated core, halo fading below the per-pixel threshold) are the truth.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
from _reference import DNU, JUMP, SAT, calibrated_ramps, stcal_jumps  # tests/detector on sys.path
from scipy import ndimage

from daskcal._simulate import simulate
from daskcal.detector._jump import JumpParameters, detect_jumps
from daskcal.detector._pipeline import detector1, detector1_steps, extended_emission_events

SHAPE = (3, 6, 60, 70)
#: (y, x) chunks of a 60 x 70 detector: grids 1x1, 2x1, 1x2 and ragged 4x4
GRIDS = {"1x1": (60, 70), "2x1": (30, 70), "1x2": (60, 35), "ragged": (17, 23)}
ON = {"expand_large_events": True}


def _ours(ramps, chunks=None, **kw):
    src = ramps.chunk({"y": chunks[0], "x": chunks[1]}) if chunks else ramps
    out = detect_jumps(src, **kw)
    return out["groupdq"].values, out["pixeldq"].values


def _assert_parity(ramps, expect, chunks, **kw):
    gdq, pdq = _ours(ramps, chunks, **kw)
    ndiff = int((gdq != expect[0]).sum())
    assert ndiff == 0, f"{ndiff} group DQ values differ from stcal (chunks {chunks}, {kw})"
    np.testing.assert_array_equal(pdq, expect[1])
    return gdq


@pytest.fixture(scope="module")
def snowy():
    """Three integrations with 3 injected snowballs each; stcal's flags with and without snowballs."""
    r, truth = calibrated_ramps(SHAPE, seed=21, snowballs=3, cr_probability=5e-4)
    return r, truth, stcal_jumps(r, **ON), stcal_jumps(r)


def test_snowballs_change_the_flags(snowy):
    # the oracle is not trivial: snowball flagging adds thousands of flags here
    _, _, expect, plain = snowy
    assert int((expect[0] != plain[0]).sum()) > 2000
    assert ((expect[0] & JUMP) != 0).sum() > 3 * ((plain[0] & JUMP) != 0).sum()


#: (scheduler, grid): every grid on the synchronous scheduler, the ragged one on all three
SCHEDULED = [("sync", "1x1"), ("sync", "2x1"), ("sync", "1x2"), ("sync", "ragged"), ("threads", "ragged"),
             ("distributed", "ragged")]


@pytest.mark.parametrize(("scheduler", "grid"), SCHEDULED, indirect=["scheduler"])
def test_parity_snowballs(snowy, scheduler, grid):
    r, _, expect, _ = snowy
    with scheduler():
        _assert_parity(r, expect, GRIDS[grid], **ON)


def _core_centres(truth):
    """(y, x) centres (rounded) of the injected cores, from the truth."""
    core = truth["snowball_core"].values.any(axis=(0, 1))
    labels, n = ndimage.label(core)
    return [tuple(round(c) for c in ndimage.center_of_mass(core, labels, k)) for k in range(1, n + 1)]


def test_parity_chunk_edges_through_snowballs(snowy):
    # chunk edges through a snowball's centre: its jump region, core and flagged ellipse
    # are cut in four; the flags must still be the whole detector's
    r, truth, expect, _ = snowy
    centres = [(y, x) for y, x in _core_centres(truth) if 5 < y < SHAPE[2] - 5 and 5 < x < SHAPE[3] - 5]
    assert len(centres) >= 3
    for y, x in centres[:3]:
        _assert_parity(r, expect, (y, x), **ON)


@pytest.mark.parametrize(
    "kw",
    [
        # cores required away from the edges (x compared with the rows, as stcal); 2 groups of the next
        # integration flagged (its group 1)
        {"edge_size": 5, "snowball_time_masked_next_int": 25.0},
        {"edge_size": 5, "sat_required_snowball": False},
        {"edge_size": 0, "mask_snowball_core_next_int": False, "min_jump_area": 40.0, "min_sat_area": 6.0},
        {"edge_size": 5, "expand_factor": 3.0, "max_extended_radius": 6},  # ellipses clipped to 12 px
        {"edge_size": 3, "min_sat_radius_extend": 0.5, "sat_expand": 0, "flag_4_neighbors": False},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_parity_parameters(snowy, kw):
    r = snowy[0]
    expect = stcal_jumps(r, **ON, **kw)
    assert (expect[0] != snowy[2][0]).any()
    _assert_parity(r, expect, GRIDS["ragged"], **ON, **kw)


def test_parity_with_sigma_clipping_and_flagged_groups():
    # snowballs after the sigma-clipping method (6 integrations >= minimum_sigclip_groups),
    # with DO_NOT_USE and earlier SATURATED groups in the input
    r, _ = calibrated_ramps((6, 5, 40, 44), seed=5, snowballs=2, cr_probability=1e-3)
    gdq = r["groupdq"].values.copy()
    rng = np.random.default_rng(2)
    gdq[rng.random(gdq.shape) < 0.02] |= 1
    r = r.assign(groupdq=(r["groupdq"].dims, gdq))
    kw = {**ON, "edge_size": 4, "minimum_sigclip_groups": 6}
    expect = stcal_jumps(r, **kw)
    assert (expect[0] != stcal_jumps(r, minimum_sigclip_groups=6)[0]).sum() > 500
    _assert_parity(r, expect, (13, 9), **kw)


def test_truth_recall(snowy):
    # the injected halo fades below what one pixel shows: jump detection alone misses its
    # rim, snowball flagging covers every injected footprint (core saturated, halo jumps)
    r, truth, _, _ = snowy
    footprint = truth["snowball"].values
    halo = footprint & ~truth["snowball_core"].values
    events = [(i, g) for i in range(SHAPE[0]) for g in range(SHAPE[1]) if footprint[i, g].any()]
    assert len(events) == 6  # two snowballs of the 9 hit the same (integration, group)

    def recall(**kw):
        flagged = (_ours(r, GRIDS["ragged"], **kw)[0] & (JUMP | SAT)) != 0
        whole = sum(bool(flagged[i, g][footprint[i, g]].all()) for i, g in events)
        return flagged[halo].mean(), whole

    halo_without, whole_without = recall()
    halo_with, whole_with = recall(**ON)
    assert halo_without < 0.85 and whole_without == 0, (halo_without, whole_without)
    assert halo_with == 1.0 and whole_with == len(events), (halo_with, whole_with)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("expand_large_events", 1),
        ("min_jump_area", -1.0),
        ("min_sat_area", float("nan")),
        ("expand_factor", 0.0),
        ("sat_expand", 1.5),
        ("edge_size", -2),
        ("max_extended_radius", 0),
        ("snowball_time_masked_next_int", "4000"),
        ("sat_required_snowball", "yes"),
        ("mask_snowball_core_next_int", None),
    ],
)
def test_bad_parameters(name, value):
    with pytest.raises(ValueError, match=name) as err:
        JumpParameters(**{name: value})
    assert "\n" not in str(err.value) and repr(value) in str(err.value)
    r, _ = calibrated_ramps((1, 4, 8, 8), seed=1)
    with pytest.raises(ValueError, match=name):
        detect_jumps(r, **{name: value})


def test_defaults_are_jwst_ones():
    p = JumpParameters()
    assert (p.expand_large_events, p.min_jump_area, p.min_sat_area, p.expand_factor, p.use_ellipses,
            p.sat_required_snowball, p.min_sat_radius_extend, p.sat_expand, p.edge_size,
            p.mask_snowball_core_next_int, p.snowball_time_masked_next_int, p.max_extended_radius) == (
        False, 5.0, 1.0, 2.0, False, True, 2.5, 2, 25, True, 4000.0, 200)


def test_use_ellipses_warns_and_changes_nothing(snowy, caplog):
    r, _, expect, _ = snowy
    with caplog.at_level(logging.WARNING, logger="daskcal.detector._jump"):
        _assert_parity(r, expect, GRIDS["2x1"], **ON, use_ellipses=True)
    assert "use_ellipses is deprecated" in caplog.text


def test_detector1_with_snowballs_equals_its_steps(caplog):
    sim = simulate((2, 5, 30, 34), seed=3, snowballs=2, cr_probability=5e-4)
    with caplog.at_level(logging.INFO, logger="daskcal.detector._pipeline"):
        fused = detector1(sim.ramps, chunks=(11, 13), expand_large_events=True, edge_size=3)
    assert "snowballs" in caplog.text and "separate graphs" in caplog.text
    steps = detector1_steps(sim.ramps, chunks=(11, 13), expand_large_events=True, edge_size=3)
    plain = detector1(sim.ramps, chunks=(11, 13))
    for name in ("rate", "rateints"):
        a, b = getattr(fused, name).compute(), getattr(steps, name).compute()
        for v in b.data_vars:
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=f"{name}.{v}")
    assert (fused.rate["dq"].values != plain.rate["dq"].compute().values).any()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="daskcal.detector._pipeline"):
        detector1(sim.ramps, chunks=(11, 13), find_showers=True)  # graph only
    assert "separate graphs" in caplog.text


def test_command_line_and_recipe_options():
    from pathlib import Path

    import daskcal
    from daskcal.cli._main import build_parser
    from daskcal.cli._run import load_recipe

    args = build_parser().parse_args(["detector1", "in.zarr", "out", "--expand-large-events", "true", "--edge-size",
                                      "5", "--sat-expand", "3", "--snowball-time-masked-next-int", "100",
                                      "--max-extended-radius", "50", "--sat-required-snowball", "false"])
    assert (args.expand_large_events, args.edge_size, args.sat_expand, args.snowball_time_masked_next_int,
            args.max_extended_radius, args.sat_required_snowball) == (True, 5, 3, 100.0, 50, False)
    sim = build_parser().parse_args(["simulate", "ramps.zarr", "--snowballs", "4", "--showers", "2"])
    assert (sim.snowballs, sim.showers) == (4, 2)
    recipe = load_recipe(Path(daskcal.__file__).parent / "graphs" / "detector1.toml")
    jump = recipe["steps"]["jump"]
    assert jump["expand_large_events"] is False and jump["min_jump_area"] == 5.0 and jump["edge_size"] == 25


def test_simulated_snowballs_leave_the_rest_alone():
    plain, snowy = simulate((2, 4, 30, 30), seed=9), simulate((2, 4, 30, 30), seed=9, snowballs=2)
    touched = snowy.truth["snowball"].values.any(axis=1)[:, None] & np.ones((1, 4, 1, 1), bool)
    later = np.cumsum(snowy.truth["snowball"].values, axis=1) > 0  # a footprint changes its groups on
    same = plain.ramps["data"].values == snowy.ramps["data"].values
    assert same[~touched].all() and not same[later].all()
    assert snowy.truth["snowball_core"].values.sum() > 20
    for bad in ({"snowballs": -1}, {"snowballs": 1.5}, {"snowball_radius": (4.0, 2.0)}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            simulate((1, 3, 8, 8), **bad)


# ---------------------------------------------------------------- showers (MIRI)
SHOWERS = {"find_showers": True}
SHOWER_SHAPE = (2, 7, 48, 52)


def _stcal(ramps, **kw):
    # stcal's shower search warns on all-NaN pixels (it silences most of its own warnings)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return stcal_jumps(ramps, **kw)


@pytest.fixture(scope="module")
def showery():
    """Two integrations of 7 groups with 3 injected showers each (30 DN disks); stcal's flags
    with and without showers (the snowballs' grids, ragged on this smaller detector)."""
    r, truth = calibrated_ramps(SHOWER_SHAPE, seed=31, showers=3, cr_probability=5e-4)
    return r, truth, _stcal(r, **SHOWERS), _stcal(r)


def test_event_planes_are_gathered_by_tasks_even_where_dask_would_shuffle(showery, client):
    """With a distributed client dask may rechunk by a P2P shuffle (staged on the workers' disks, two
    warnings per run); the whole planes of the event searches are gathered by tasks, and flags stay stcal's."""
    import dask

    r, _, expect, _ = showery
    with dask.config.set({"array.rechunk.method": "p2p", "scheduler": client}), client.as_current():
        out = detect_jumps(r.chunk({"y": 17, "x": 23}), **SHOWERS, **ON)
        keys = [str(k) for k in out["groupdq"].data.__dask_graph__()]
        assert [k for k in keys if "rechunk-split" in k or "rechunk-merge" in k]  # gathered, by tasks
        assert not [k for k in keys if "p2p" in k or "transfer" in k]
        gdq = out["groupdq"].values
    assert int((gdq != _stcal(r, **SHOWERS, **ON)[0]).sum()) == 0


def test_showers_change_the_flags(showery):
    _, _, expect, plain = showery
    assert int((expect[0] != plain[0]).sum()) > 1000


@pytest.mark.parametrize(("scheduler", "grid"), SCHEDULED, indirect=["scheduler"])
def test_parity_showers(showery, scheduler, grid):
    r, _, expect, _ = showery
    with scheduler():
        _assert_parity(r, expect, GRIDS[grid], **SHOWERS)


def test_parity_chunk_edges_through_showers(showery):
    r, truth, expect, _ = showery
    labels, n = ndimage.label(truth["shower"].values.any(axis=(0, 1)))
    centres = [tuple(round(c) for c in ndimage.center_of_mass(labels > 0, labels, k)) for k in range(1, n + 1)]
    centres = [(y, x) for y, x in centres if 5 < y < SHOWER_SHAPE[2] - 5 and 5 < x < SHOWER_SHAPE[3] - 5]
    assert centres
    for y, x in centres[:1]:
        _assert_parity(r, expect, (y, x), **SHOWERS)


@pytest.mark.parametrize(
    "kw",
    [
        {"extend_snr_threshold": 1.1, "extend_min_area": 40, "time_masked_after_shower": 35.0},  # 3 more groups
        {"extend_inner_radius": 2.0, "extend_outer_radius": 1.5, "extend_ellipse_expand_ratio": 1.6,
         "max_extended_radius": 5},
        {"max_shower_amplitude": 0.3},  # most flags reverted
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_parity_shower_parameters(showery, kw):
    r = showery[0]
    expect = _stcal(r, **SHOWERS, **kw)
    assert (expect[0] != showery[2][0]).any()
    _assert_parity(r, expect, GRIDS["ragged"], **SHOWERS, **kw)


def test_parity_showers_sigma_clipped_with_reference_pixels():
    # minimum_sigclip_groups integrations: sigma-clipped statistics across integrations (and sigma
    # clipping for the jumps); reference pixels (MIRI's 4 + 4 columns) and DO_NOT_USE groups
    r, _ = calibrated_ramps((10, 5, 40, 44), seed=33, showers=2, shower_dn=60.0, cr_probability=5e-4)
    pdq = r["pixeldq"].values.copy()
    pdq[:, :4] |= np.uint32(2**31)  # REFERENCE_PIXEL
    pdq[:, -4:] |= np.uint32(2**31)
    gdq = r["groupdq"].values.copy()
    gdq[np.random.default_rng(3).random(gdq.shape) < 0.02] |= 1
    gdq[:, 0] |= 1  # the first group of every integration: the search starts after it
    r = r.assign(pixeldq=(("y", "x"), pdq), groupdq=(r["groupdq"].dims, gdq))
    kw = {**SHOWERS, "minimum_sigclip_groups": 10}
    expect = _stcal(r, **kw)
    assert (expect[0] != _stcal(r, minimum_sigclip_groups=10)[0]).sum() > 300
    _assert_parity(r, expect, (13, 9), **kw)


def test_too_few_differences_for_showers():
    # 1 x (4 - 1) = 3 differences < 10: stcal searches nothing, and neither do we
    r, _ = calibrated_ramps((1, 4, 30, 30), seed=34, showers=2, shower_dn=80.0)
    gdq, _ = _ours(r, (11, 13), **SHOWERS)
    np.testing.assert_array_equal(gdq, _stcal(r)[0])
    np.testing.assert_array_equal(gdq, _stcal(r, **SHOWERS)[0])


def test_shower_truth_recall(showery):
    # the injected disks are 30 DN: single pixels rarely jump, the smoothed ratio finds them
    r, truth, _, _ = showery
    disk = truth["shower"].values

    def recall(**kw):
        return (((_ours(r, GRIDS["ragged"], **kw)[0] & JUMP) != 0) & disk).sum() / disk.sum()

    without, with_showers = recall(), recall(**SHOWERS)
    # measured 0.15 and 0.77: four of the six disks are flagged at 79-100 %, two only in part
    # (49 % and 18 %: the smoothed ratio picks up only part of them); without the
    # max_shower_amplitude restoration it would be 0.79
    assert without < 0.25 and with_showers > 0.7 and with_showers > 4 * without, (without, with_showers)


@pytest.mark.parametrize(
    ("name", "value"),
    [("find_showers", "true"), ("extend_snr_threshold", -1.0), ("extend_min_area", 9.5),
     ("extend_outer_radius", 0.0), ("extend_ellipse_expand_ratio", float("inf")),
     ("time_masked_after_shower", -15.0), ("max_shower_amplitude", None)],
)
def test_bad_shower_parameters(name, value):
    with pytest.raises(ValueError, match=name) as err:
        JumpParameters(**{name: value})
    assert "\n" not in str(err.value)


def test_parity_snowballs_and_showers_on_chunks_smaller_than_the_halo():
    # 10 x 3 chunks: narrower than the shower smoothing's halo (4 px), which dask's overlap then
    # takes from several neighbours
    r, _ = calibrated_ramps((2, 6, 30, 32), seed=31, showers=2, snowballs=2, cr_probability=5e-4)
    kw = {**ON, **SHOWERS, "edge_size": 5}
    expect = _stcal(r, **kw)
    assert int((expect[0] != _stcal(r, **ON, edge_size=5)[0]).sum()) > 200  # showers flagged too
    _assert_parity(r, expect, (10, 3), **kw)


def test_disks_drawn_by_tiles_equal_the_whole():
    # what every chunk draws of an ellipse (skipping those that cannot reach it) tiles the whole
    from daskcal.detector._jump_large import Disk

    rng = np.random.default_rng(0)
    shape = (37, 41)
    for _ in range(200):
        d = Disk(int(rng.integers(-3, 40)), int(rng.integers(-3, 44)), int(rng.integers(-2, 15)),
                 int(rng.integers(-2, 15)), float(rng.uniform(-180, 180)))
        whole = np.zeros(shape, bool)
        whole[d.pixels(shape)] = True
        tiled = np.zeros(shape, bool)
        for y0, y1 in ((0, 5), (5, 6), (6, 30), (30, 37)):
            for x0, x1 in ((0, 17), (17, 40), (40, 41)):
                region = (slice(y0, y1), slice(x0, x1))
                tiled[region][d.mask(shape, region)] = True
        np.testing.assert_array_equal(tiled, whole, err_msg=str(d))


def _skimage_regions(mask, min_area):
    """Every region's ellipse as scikit-image measures it, region by region (the plain way)."""
    from skimage.measure import label, regionprops

    out = []
    for r in regionprops(label(mask)):
        if r.area_filled >= min_area:
            cy, cx = r.centroid
            out.append((cx, cy, r.axis_minor_length - 1, r.axis_major_length - 1, np.degrees(r.orientation)))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_regions_skip_only_ellipses_that_cannot_count(seed):
    """``regions`` measures every region the same as ``regionprops`` and leaves unmeasured only
    those whose ellipse provably fails the caller's test: cores too thin to extend, jump regions
    whose ellipse holds no core centre. Checked on random blobs of every size, holes included."""
    from daskcal.detector._jump_large import _extendable, _may_contain, regions

    rng = np.random.default_rng(seed)
    mask = ndimage.binary_dilation(rng.random((160, 150)) < 0.003, iterations=int(rng.integers(1, 4)))
    mask |= rng.random(mask.shape) < 0.02
    mask[40:52, 60:75] = True
    mask[44:48, 65:69] = False  # a hole: area 164, filled 180
    for min_area in (1.0, 5.0, 170.0):
        full = regions(mask, min_area)
        expect = _skimage_regions(mask, min_area)
        assert [(r.x, r.y, r.a0, r.a1, r.angle) for r in full] == expect
        for radius in (0.5, 2.5, 6.0):
            cores = regions(mask, min_area, shape_needed=_extendable(radius))
            for r, e in zip(cores, expect, strict=True):
                assert (r.x, r.y) == e[:2]
                if np.isnan(r.a0):
                    assert min(e[2], e[3]) <= radius
                else:
                    assert (r.a0, r.a1, r.angle) == e[2:]
        px, py = rng.uniform(0, 150, 40), rng.uniform(0, 160, 40)
        jumps = regions(mask, min_area, shape_needed=_may_contain(px, py))
        measured = 0
        for r, e in zip(jumps, expect, strict=True):
            if np.isnan(r.a0):
                whole = type(r)(*e)
                assert not whole.contains_any(px, py)
                assert not r.contains_any(px, py)
            else:
                measured += 1
                assert (r.x, r.y, r.a0, r.a1, r.angle) == e
        assert len(expect) > 0
        assert measured < len(expect) or min_area > 100  # the filter does skip regions


# ---------------------------------------------------------------- EXTNCRS: the count of large events
def _jwst_extncrs(gdq, n_events, group_time):
    """jwst 3.0's JumpStep.process: 1e6 * stcal's number_extended_events / (group time * (planes not
    DO_NOT_USE in every pixel of its output group DQ - nints) * pixels)."""
    nints, ngroups, ny, nx = gdq.shape
    flagged = sum(bool(np.all(gdq[i, g] & DNU)) for i in range(nints) for g in range(ngroups))
    return 1e6 * n_events / (group_time * (nints * ngroups - flagged - nints) * ny * nx)


@pytest.mark.parametrize("search", ["snowballs", "showers", "both"])
def test_extended_event_counts_and_rate_equal_stcal(snowy, showery, search):
    """``n_extended_events`` sums to stcal 1.20's number_extended_events (with both searches: the showers, which
    replace the snowballs' count), and JWST's EXTNCRS from it is what jwst 3.0 computes from stcal's."""
    r = snowy[0] if search == "snowballs" else showery[0]
    kw = {"snowballs": ON, "showers": SHOWERS, "both": {**ON, **SHOWERS}}[search]
    gdq, _, n_stcal = _stcal(r, extended=True, **kw)
    out = detect_jumps(r.chunk({"y": 17, "x": 23}), **kw)
    counts, ours = out["n_extended_events"].values, out["groupdq"].values
    assert out["n_extended_events"].dims == ("integration",) and counts.dtype == np.int64
    assert int(counts.sum()) == n_stcal >= 3 * r.sizes["integration"]  # 3 injected per integration, at least
    if search == "both":
        assert _stcal(r, extended=True, **ON)[2] != n_stcal  # the snowballs alone count otherwise
    usable = ((ours & DNU) == 0).any(axis=(2, 3))
    got = extended_emission_events(counts, usable, r.attrs["group_time"], r.sizes["y"] * r.sizes["x"])
    assert got == pytest.approx(_jwst_extncrs(gdq, n_stcal, r.attrs["group_time"]), rel=1e-12) and got > 0


def test_extended_events_per_integration_and_through_detector1():
    """Each integration's count is stcal's on that integration alone (snowball counts do not depend on other
    integrations); detector1 (separate graphs) and fit_ramps pass the count on; without a search it is None
    and the rate JWST records is 0, and none with 2 groups (jwst skips the step)."""
    sim = simulate((2, 5, 30, 34), seed=3, snowballs=2, cr_probability=5e-4)
    r, _ = calibrated_ramps((2, 5, 30, 34), seed=3, snowballs=2, cr_probability=5e-4)
    per_int = [_stcal(r.isel(integration=[i]), extended=True, **ON, edge_size=3)[2] for i in range(2)]
    out = detect_jumps(r.chunk({"y": 11, "x": 13}), **ON, edge_size=3)
    np.testing.assert_array_equal(out["n_extended_events"].values, per_int)
    assert min(per_int) > 0
    result = detector1(sim.ramps, chunks=(11, 13), expand_large_events=True, edge_size=3)
    np.testing.assert_array_equal(result.n_extended_events.compute(), per_int)
    plain = detector1(sim.ramps, chunks=(11, 13))
    assert plain.n_extended_events is None and "n_extended_events" not in detect_jumps(out)
    usable = np.ones((2, 5), dtype=bool)
    assert extended_emission_events(None, usable, 10.0, 100) == 0.0
    assert extended_emission_events([1, 2], usable, 10.0, 100) == pytest.approx(1e6 * 3 / (10.0 * 8 * 100), rel=1e-15)
    assert extended_emission_events([1], np.ones((1, 2), dtype=bool), 10.0, 100) is None
