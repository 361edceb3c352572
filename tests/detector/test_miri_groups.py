"""MIRI's leading and trailing DO_NOT_USE groups (jwst's firstframe/lastframe steps flag them in
every pixel): stcal 1.20's ramp fit drops such group planes for MIRI (and clears JUMP_DET on the new
first group); its jump step treats them as any DO_NOT_USE group. daskcal against stcal on such cubes."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from daskcal.detector._jump import detect_jumps
from daskcal.detector._ramp_fit import fit_ramps
from daskcal.dq import DQ

from _reference import CUBE_GRIDS as GRIDS  # tests/detector on sys.path
from _reference import calibrated_ramps, chunked, stcal_jumps, with_groupdq
from test_fitopt import NAMES, assert_opt_matches, stcal_opt
from test_ramp_fit import assert_products_match, make_cube, stcal_fit

DNU, JUMP = int(DQ.DO_NOT_USE), int(DQ.JUMP_DET)


def miri(ramps, lead=1, trail=1, seed=0):
    """``ramps`` as MIRI: the first ``lead`` and last ``trail`` groups DO_NOT_USE in every pixel, and
    JUMP_DET on the first group after them in some pixels."""
    rng = np.random.default_rng(seed)
    gdq = ramps["groupdq"].values.copy()
    gdq[:, :lead] |= DNU
    if trail:
        gdq[:, -trail:] |= DNU
    gdq[:, lead][rng.random(gdq[:, lead].shape) < 0.1] |= JUMP
    return with_groupdq(ramps, gdq, instrument="MIRI")


@pytest.fixture(scope="module")
def cube():
    return miri(make_cube(3, 10, 41, 37, seed=6))


@pytest.fixture(scope="module")
def expected(cube):
    return stcal_fit(cube), stcal_opt(cube)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_miri_ramp_fit_matches_stcal(cube, expected, grid, scheduler):
    result = fit_ramps(chunked(cube, grid), save_opt=True)
    with scheduler():
        rate, rateints, opt = dask.compute(result.rate, result.rateints, result.fitopt)
    (ref_rate, ref_ints), ref_opt = expected
    assert_products_match(rate, ref_rate, 1e-5)
    assert_products_match(rateints, ref_ints, 1e-5)
    assert_opt_matches(opt, ref_opt, 8)


@pytest.mark.parametrize(("lead", "trail", "ngroups"), [(2, 1, 8), (1, 0, 6), (0, 1, 5), (3, 1, 6), (1, 1, 4)])
@pytest.mark.parametrize("suppress", [True, False])
def test_miri_group_patterns(lead, trail, ngroups, suppress):
    r = miri(make_cube(2, ngroups, 23, 19, seed=ngroups + lead), lead, trail, seed=lead)
    (ref_rate, ref_ints), ref_opt = stcal_fit(r, suppress), stcal_opt(r, suppress)
    result = fit_ramps(r.chunk({"y": 9, "x": 7}), suppress, save_opt=True)
    rate, rateints, opt = dask.compute(result.rate, result.rateints, result.fitopt)
    assert_products_match(rate, ref_rate, 1e-5)
    assert_products_match(rateints, ref_ints, 1e-5)
    assert_opt_matches(opt, ref_opt, ngroups)


def test_not_miri_keeps_the_groups():
    r = miri(make_cube(2, 6, 23, 19, seed=1))
    r.attrs["instrument"] = "NIRCAM"
    ref_rate, ref_ints = stcal_fit(r)
    result = fit_ramps(r)
    assert_products_match(result.rate.compute(), ref_rate, 1e-5)
    assert_products_match(result.rateints.compute(), ref_ints, 1e-5)


def test_miri_with_too_few_groups_left_is_an_error():
    r = miri(make_cube(1, 3, 8, 8, seed=1), lead=2, trail=0)
    with pytest.raises(ValueError, match="MIRI ramps need at least 2 groups"):
        fit_ramps(r)


@pytest.mark.parametrize("grid", ["1x1", "ragged"])
def test_miri_jumps_match_stcal(grid, scheduler):
    r, _ = calibrated_ramps((2, 9, 41, 37), seed=5, cr_probability=0.01)
    r = miri(r, seed=3)
    expect_gdq, expect_pdq = stcal_jumps(r)
    out = detect_jumps(chunked(r, grid))
    with scheduler():
        gdq, pdq = dask.compute(out["groupdq"].data, out["pixeldq"].data)
    np.testing.assert_array_equal(gdq, expect_gdq)
    np.testing.assert_array_equal(pdq, expect_pdq)
    assert ((gdq & JUMP) != 0).sum() > 50


@pytest.fixture(scope="module")
def miri_sim():
    from daskcal.testing import simulate

    return miri(simulate((2, 8, 41, 37), seed=9, cr_probability=5e-3, max_source_rate=3000.0).ramps.load(), seed=4)


@pytest.fixture(scope="module")
def miri_chain(miri_sim):
    from daskcal.testing import stcal_detector1

    return stcal_detector1(miri_sim)


@pytest.mark.parametrize("grid", ["1x1", "ragged"])
def test_miri_detector1_matches_the_stcal_chain(miri_sim, miri_chain, grid, scheduler):
    import daskcal
    from daskcal.detector._pipeline import detector1_steps

    chunks = GRIDS[grid] or miri_sim["data"].shape[2:]
    fused = daskcal.detector1(miri_sim, chunks=chunks)
    steps = detector1_steps(miri_sim, chunks=chunks)
    # both carry the usable group planes they found building the graph (PRIMECRS's): MIRI's first and last
    # groups DO_NOT_USE in every pixel
    want = np.ones((2, 8), dtype=bool)
    want[:, [0, -1]] = False
    np.testing.assert_array_equal(fused.usable_planes, want)
    np.testing.assert_array_equal(steps.usable_planes, want)
    with scheduler():
        a_rate, a_ints, b_rate, b_ints = dask.compute(fused.rate, fused.rateints, steps.rate, steps.rateints)
    for rate, rateints in ((a_rate, a_ints), (b_rate, b_ints)):
        assert_products_match(rate, miri_chain[0], 1e-4)
        assert_products_match(rateints, miri_chain[1], 1e-4)
