"""detect_jumps: parity with stcal 1.20, the Python reference, chunking, truth, edge cases, errors."""

from __future__ import annotations

import logging

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from daskcal._simulate import simulate
from daskcal.detector._jump import JumpParameters, detect_jumps, jump_mode
from daskcal.detector._kernels_jump import primary_jumps
from daskcal.detector._saturation import flag_saturation
from daskcal.dq import DQ

from _reference import (  # tests/detector on sys.path
    BAD, DNU, JUMP, SAT, calibrated_ramps, make_ramps, primary_reference, stcal_jumps,
)

NGV = int(DQ.NO_GAIN_VALUE)


def _assert_parity(ramps, chunks=None, **kw):
    expect_gdq, expect_pdq = stcal_jumps(ramps, **kw)
    src = ramps.chunk({"y": chunks[0], "x": chunks[1]}) if chunks else ramps
    out = detect_jumps(src, **kw)
    gdq, pdq = out["groupdq"].values, out["pixeldq"].values
    np.testing.assert_array_equal(pdq, expect_pdq)
    ndiff = int((gdq != expect_gdq).sum())
    assert ndiff == 0, f"{ndiff} group DQ values differ from stcal"
    return gdq


@pytest.fixture(scope="module")
def two_ints():
    r, truth = calibrated_ramps((2, 6, 96, 90), seed=3)
    g = r["gain"].values.copy()
    g[3, 3], g[4, 4], g[5, 5] = np.nan, -1.0, 0.0  # NaN, negative and zero gain
    r["gain"] = (("y", "x"), g)
    return r, truth


@pytest.mark.parametrize("chunks", [None, (5, 7), (37, 53)])
def test_parity_two_integrations(two_ints, chunks):
    r, _ = two_ints
    gdq = _assert_parity(r, chunks)
    assert (gdq & JUMP).sum() > 100


@pytest.mark.parametrize(
    "shape",
    [(1, 3, 64, 64), (1, 4, 64, 64), (2, 3, 48, 48), (1, 10, 64, 64), (3, 7, 32, 32), (1, 12, 48, 48), (2, 11, 40, 40)],
    ids=["3groups", "4groups", "2x3groups", "10groups", "3x7groups", "12groups-single-pass", "2x11groups-single-pass"],
)
def test_parity_group_counts(shape):
    r, _ = calibrated_ramps(shape, seed=sum(shape))
    _assert_parity(r, (37, 29))


@pytest.mark.parametrize("shape", [(2, 50, 12, 12), (1, 140, 8, 8)], ids=["98diffs", "139diffs"])
def test_parity_long_ramps(shape):
    # more than 16 differences per pixel: sorted by insertion (up to 128) or quicksort (above)
    r, _ = calibrated_ramps(shape, seed=sum(shape), cr_probability=0.01)
    assert (_assert_parity(r, (7, 5)) & JUMP).sum() > 10


def test_parity_after_jump_flags_and_neighbor_limits():
    r, _ = calibrated_ramps((1, 8, 64, 64), seed=11)
    kw = dict(
        after_jump_flag_dn1=100.0,
        after_jump_flag_time1=25.0,
        after_jump_flag_dn2=1000.0,
        after_jump_flag_time2=60.0,
        min_jump_to_flag_neighbors=5.0,
        max_jump_to_flag_neighbors=200.0,
        rejection_threshold=3.5,
    )
    gdq = _assert_parity(r, (23, 41), **kw)
    no_after = detect_jumps(r, **{k: v for k, v in kw.items() if not k.startswith("after")})["groupdq"].values
    assert (gdq & JUMP).sum() > (no_after & JUMP).sum()


def test_parity_no_neighbors():
    r, _ = calibrated_ramps((1, 5, 48, 48), seed=2)
    _assert_parity(r, (20, 20), flag_4_neighbors=False)


def test_parity_do_not_use_groups_and_saturation():
    r, _ = calibrated_ramps((2, 7, 64, 64), seed=5, max_source_rate=20000.0)
    rng = np.random.default_rng(0)
    gdq = r["groupdq"].values.copy()
    gdq[rng.random(gdq.shape) < 0.05] |= DNU
    gdq[0, :, 10, 10] |= SAT  # all saturated
    gdq[1, 2:, 11, 11] |= SAT
    gdq[0, 3, 12, 12] |= JUMP | SAT  # an earlier JUMP on a flagged group is removed
    r["groupdq"] = (r["groupdq"].dims, gdq)
    data = r["data"].values.copy()
    data[rng.random(data.shape) < 0.01] = np.nan  # unflagged NaN values are unusable too
    r["data"] = (r["data"].dims, data)
    assert (gdq & SAT).any()
    out = _assert_parity(r, (17, 30))
    assert not (out[0, :, 10, 10] & JUMP).any() and out[0, 3, 12, 12] == SAT


def test_whole_dnu_plane_skips_like_stcal():
    r, _ = calibrated_ramps((1, 3, 32, 32), seed=9)
    gdq = r["groupdq"].values.copy()
    gdq[0, 0] |= DNU  # min usable groups 2 < 3: stcal skips the step
    r["groupdq"] = (r["groupdq"].dims, gdq)
    out = _assert_parity(r, (16, 16))
    assert not (out & JUMP).any()
    assert jump_mode(np.array([[False, True, True]])) == "skip"
    assert jump_mode(np.ones((2, 11), bool)) == "single"
    assert jump_mode(np.ones((2, 10), bool)) == "iterative"


def test_truth_recovery_like_stcal():
    r, truth = calibrated_ramps((1, 10, 128, 128), seed=21)
    ours = detect_jumps(r.chunk({"y": 50, "x": 70}))["groupdq"].values & JUMP != 0
    theirs = stcal_jumps(r)[0] & JUMP != 0
    t = truth["jumps"].values
    usable = (r["groupdq"].values & BAD) == 0
    t = t & usable & np.roll(usable, 1, axis=1)
    ours_rate, theirs_rate = (ours & t).sum() / t.sum(), (theirs & t).sum() / t.sum()
    assert t.sum() > 100
    assert ours_rate == theirs_rate
    assert ours_rate > 0.85


def test_chunked_equals_single_chunk_and_dask_input(two_ints):
    r, _ = two_ints
    whole = detect_jumps(r)["groupdq"].values
    for chunks in ((5, 7), (13, 90), (96, 1)):
        got = detect_jumps(r.chunk({"y": chunks[0], "x": chunks[1]}))["groupdq"].values
        np.testing.assert_array_equal(got, whole)


def test_neighbors_flagged_across_chunk_edge():
    # a 500 DN jump at (3, 7) on the right edge of an 8-pixel chunk: its right neighbour is in the next chunk
    r = make_ramps((1, 6, 16, 16), readnoise=10.0, cr=[(0, 3, 7, 7, 500.0)])
    for chunks in (None, (8, 8)):
        src = r.chunk({"y": chunks[0], "x": chunks[1]}) if chunks else r
        gdq = detect_jumps(src)["groupdq"].values
        flagged = set(map(tuple, np.argwhere(gdq & JUMP)))
        assert {(0, 3, 7, 7), (0, 3, 6, 7), (0, 3, 8, 7), (0, 3, 7, 6), (0, 3, 7, 8)} <= flagged
    _assert_parity(r, (8, 8))


def test_nan_gain_pixel():
    r = make_ramps((1, 6, 8, 8), cr=[(0, 3, 2, 2, 500.0)])
    g = r["gain"].values.copy()
    g[2, 2] = np.nan
    g[5, 5] = 0.0
    r["gain"] = (("y", "x"), g)
    out = detect_jumps(r)
    pdq, gdq = out["pixeldq"].values, out["groupdq"].values
    assert pdq[2, 2] == NGV | DNU and pdq[5, 5] == NGV | DNU and pdq[0, 0] == 0
    assert not (gdq[:, :, 2, 2] & JUMP).any()
    _assert_parity(r)


def test_kernel_matches_python_reference():
    rng = np.random.default_rng(7)
    for nints, ngroups in ((1, 3), (1, 4), (2, 3), (1, 7), (3, 5)):
        npix = 300
        data = np.cumsum(rng.normal(20.0, 7.0, (nints, ngroups, npix)), axis=1).astype(np.float32)
        jumps = rng.random(data.shape) < 0.05
        data += np.cumsum(jumps * rng.uniform(-300, 600, data.shape), axis=1).astype(np.float32)
        gdq = np.where(rng.random(data.shape) < 0.08, DNU, 0).astype(np.uint8)
        gdq[rng.random(data.shape) < 0.03] |= SAT
        gain = rng.uniform(1.5, 2.5, npix).astype(np.float32)
        rn = rng.uniform(5.0, 12.0, npix).astype(np.float32)
        rn[:3] = 0.0
        out = gdq.copy()
        primary_jumps(data, gdq, gain, rn, 2, 4.0, 5.0, 6.0, False, out)
        np.testing.assert_array_equal(out, primary_reference(data, gdq, gain, rn, 2))
        assert (out & JUMP).any()


def test_input_not_modified_and_lazy(two_ints):
    r, _ = two_ints
    before = {k: v.values.copy() for k, v in r.data_vars.items()}
    out = detect_jumps(r, after_jump_flag_dn1=10.0, after_jump_flag_time1=30.0)
    assert isinstance(out["groupdq"].data, da.Array) and isinstance(out["pixeldq"].data, da.Array)
    out.compute()
    for k, v in before.items():
        np.testing.assert_array_equal(r[k].values, v)
    assert out["groupdq"].dtype == np.uint8 and out["pixeldq"].dtype == r["pixeldq"].dtype


def test_two_groups_warns_and_flags_nothing(caplog):
    r = make_ramps((1, 2, 8, 8), cr=[(0, 1, 2, 2, 5000.0)])
    with caplog.at_level(logging.WARNING, logger="daskcal.detector._jump"):
        out = detect_jumps(r)
    assert "needs 3 groups" in caplog.text
    assert not (out["groupdq"].values & JUMP).any()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("rejection_threshold", 0.0),
        ("rejection_threshold", np.nan),
        ("three_group_rejection_threshold", -1.0),
        ("four_group_rejection_threshold", "5"),
        ("flag_4_neighbors", 1),
        ("min_jump_to_flag_neighbors", -1.0),
        ("max_jump_to_flag_neighbors", 5.0),
        ("after_jump_flag_dn1", -1.0),
        ("after_jump_flag_time2", np.inf),
        ("after_jump_flag_time1", True),
    ],
)
def test_bad_parameters(name, value):
    with pytest.raises(ValueError, match=name):
        JumpParameters(**{name: value})
    with pytest.raises(ValueError, match=name):
        detect_jumps(make_ramps(), **{name: value})


def test_parameters_frozen_with_jwst_defaults():
    p = JumpParameters()
    assert (p.rejection_threshold, p.three_group_rejection_threshold, p.four_group_rejection_threshold) == (4, 6, 5)
    assert (p.max_jump_to_flag_neighbors, p.min_jump_to_flag_neighbors, p.flag_4_neighbors) == (1000, 10, True)
    with pytest.raises(AttributeError):
        p.rejection_threshold = 3.0


def test_bad_input():
    r = make_ramps()
    with pytest.raises(ValueError, match="gain"):
        detect_jumps(r.drop_vars("gain"))
    with pytest.raises(ValueError, match="readnoise"):
        detect_jumps(r.drop_vars("readnoise"))
    with pytest.raises(ValueError, match="dimensions"):
        detect_jumps(r.assign(groupdq=r["groupdq"].isel(group=0)))
    with pytest.raises(TypeError, match="groupdq must have a integer"):
        detect_jumps(r.assign(groupdq=r["groupdq"].astype(np.float32)))
    with pytest.raises(TypeError, match="xarray.Dataset"):
        detect_jumps(r["data"].values)
    with pytest.raises(ValueError, match="readnoise must be finite"):
        detect_jumps(r.assign(readnoise=r["readnoise"] * np.nan))
    with pytest.raises(ValueError, match="gain must be positive"):
        detect_jumps(r.assign(gain=r["gain"] * 0))
    with pytest.raises(ValueError, match="nframes"):
        detect_jumps(xr.Dataset(r.data_vars, attrs={**r.attrs, "nframes": 0}))


def _boom(block):
    raise AssertionError("a ramp chunk was computed")


def test_errors_and_graph_need_no_ramp_computation():
    r = make_ramps((1, 5, 16, 16))
    poison = {}
    for k in ("data", "groupdq"):
        arr = da.from_array(r[k].values, chunks=(-1, -1, 8, 8))
        poison[k] = (r[k].dims, arr.map_blocks(_boom, meta=r[k].values[:0, :0, :0, :0]))
    lazy = r.assign(poison)
    out = detect_jumps(lazy)  # builds the graph; only the 2-D gain and read noise are read
    assert isinstance(out["groupdq"].data, da.Array)
    with pytest.raises(ValueError, match="rejection_threshold"):
        detect_jumps(lazy, rejection_threshold=-1.0)
    with pytest.raises(AssertionError, match="computed"):
        out["groupdq"].values


def test_in_place_flags_equal_flags_on_a_copy():
    from daskcal.detector._jump import jump_block, jump_block_arguments

    sim = simulate((2, 6, 24, 20), seed=11)
    ramps = flag_saturation(sim.ramps).compute()
    params = JumpParameters(after_jump_flag_dn1=10, after_jump_flag_time1=1e9)
    kw = jump_block_arguments(params, ramps)
    args = (ramps["data"].values - ramps["superbias"].values, ramps["groupdq"].values,
            ramps["gain"].values, ramps["readnoise"].values, np.ones((2, 6), dtype=bool))
    copied = jump_block(*args, **kw)
    gdq = args[1].copy()
    in_place = jump_block(args[0], gdq, *args[2:], **kw, in_place=True)
    assert np.shares_memory(in_place, gdq)
    np.testing.assert_array_equal(in_place, copied)
    assert (copied & JUMP).any()
