"""CHARGELOSS: the read-noise variance recomputed without the CHARGELOSS groups' DO_NOT_USE, as
stcal 1.20's OLS_C does, on every scheduler and chunk grid."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from daskcal.detector._ramp_fit import fit_ramps
from daskcal.dq import DQ

from _reference import CUBE_GRIDS as GRIDS  # tests/detector on sys.path
from _reference import chunked, with_groupdq
from test_ramp_fit import assert_products_match, make_cube, stcal_fit

CL, DNU = int(DQ.CHARGELOSS), int(DQ.DO_NOT_USE)


def with_chargeloss(ramps, seed=0):
    """``ramps`` with CHARGELOSS | DO_NOT_USE from a random group to the end of some ramps (as jwst's
    charge_migration step flags them), CHARGELOSS alone on a few groups, and whole CHARGELOSS ramps."""
    rng = np.random.default_rng(seed)
    gdq = ramps["groupdq"].values.copy()
    nints, ngroups, ny, nx = gdq.shape
    first = rng.integers(0, ngroups, (nints, ny, nx))
    hit = (rng.random((nints, ny, nx)) < 0.25)[:, None] & (np.arange(ngroups)[None, :, None, None] >= first[:, None])
    gdq[hit] |= CL | DNU
    gdq[rng.random(gdq.shape) < 0.02] |= CL  # no DO_NOT_USE: stcal's toggle sets it
    gdq[0, :, 3, 4] |= CL | DNU
    return with_groupdq(ramps, gdq)


@pytest.fixture(scope="module")
def cube():
    return with_chargeloss(make_cube(3, 8, 41, 37, seed=4))


@pytest.fixture(scope="module")
def expected(cube):
    return stcal_fit(cube)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_chargeloss_matches_stcal(cube, expected, grid, scheduler):
    result = fit_ramps(chunked(cube, grid))
    with scheduler():
        rate, rateints = dask.compute(result.rate, result.rateints)
    assert_products_match(rate, expected[0], 1e-5)
    assert_products_match(rateints, expected[1], 1e-5)


@pytest.mark.parametrize(("nints", "ngroups", "suppress"), [(2, 2, True), (2, 3, False), (1, 5, True), (2, 20, False)])
def test_chargeloss_group_counts(nints, ngroups, suppress):
    r = with_chargeloss(make_cube(nints, ngroups, 23, 19, seed=ngroups), seed=ngroups)
    ref_rate, ref_ints = stcal_fit(r, suppress)
    result = fit_ramps(r.chunk({"y": 9, "x": 7}), suppress)
    assert_products_match(result.rate.compute(), ref_rate, 1e-5)
    assert_products_match(result.rateints.compute(), ref_ints, 1e-5)


def test_chargeloss_changes_the_read_noise_variance(cube, expected):
    plain = cube.copy()
    plain["groupdq"] = (cube["groupdq"].dims, cube["groupdq"].values & np.uint8(~CL & 0xFF))
    before = fit_ramps(plain).rateints["var_rnoise"].values
    after = fit_ramps(cube).rateints["var_rnoise"].values
    changed = before != after
    assert changed.sum() > 100
    # only where the integration has a CHARGELOSS group
    assert not changed[~((cube["groupdq"].values & CL) != 0).any(axis=1)].any()


def test_detector1_with_chargeloss_matches_the_stcal_chain(scheduler):
    import daskcal
    from daskcal.testing import simulate, stcal_detector1

    ramps = with_chargeloss(simulate((2, 7, 30, 26), seed=6, max_source_rate=3000.0).ramps.load(), seed=2)
    ref_rate, ref_ints = stcal_detector1(ramps)
    result = daskcal.detector1(ramps, chunks=(11, 9))
    with scheduler():
        rate, rateints = dask.compute(result.rate, result.rateints)
    assert_products_match(rate, ref_rate, 1e-4)
    assert_products_match(rateints, ref_ints, 1e-4)
