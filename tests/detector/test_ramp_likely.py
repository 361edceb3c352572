"""fit_ramps(algorithm="LIKELY"): parity with stcal 1.20's likelihood fit, truth, fallback, errors."""

from __future__ import annotations

import logging

import dask
import numpy as np
import pytest
import xarray as xr
from test_ramp_fit import (  # tests/detector is on sys.path (rootdir-less layout)
    NAMES,
    make_cube,
    max_rel,
)

import daskcal
from daskcal.detector._pipeline import detector1_steps
from daskcal.detector._ramp_fit import fit_ramps
from daskcal.dq import DQ
from daskcal.testing import stcal_detector1, stcal_fit_ramps


def _fit(ramps, chunks, **kwargs):
    result = fit_ramps(ramps.chunk({"y": chunks[0], "x": chunks[1]}), algorithm="LIKELY", **kwargs)
    return dask.compute(result.rate, result.rateints)


def _usable_differences(ramps):
    """(nints, ny, nx): differences whose two groups have DQ 0 (what the likelihood fit may use)."""
    q = ramps["groupdq"].values
    return ((q[:, 1:] == 0) & (q[:, :-1] == 0)).sum(axis=1)


@pytest.mark.parametrize(
    ("nints", "ngroups", "nframes", "chunks"),
    [(1, 4, 1, (5, 7)), (1, 10, 1, (37, 53)), (3, 10, 1, (5, 7)), (2, 6, 2, (64, 1)), (2, 40, 1, (37, 53)),
     (1, 150, 1, (23, 21))],
)
def test_parity_with_stcal(nints, ngroups, nframes, chunks):
    # stcal fits long ramps slowly: 150 groups on 23 x 21 px (15 blocks of LANES pixels and a partial one)
    ny, nx = (23, 21) if ngroups > 100 else (64, 64)
    ramps = make_cube(nints, ngroups, ny, nx, seed=100 + 10 * ngroups + nints, nframes=nframes)
    ref_rate, ref_ints = stcal_fit_ramps(ramps, algorithm="LIKELY")
    rate, rateints = _fit(ramps, chunks)
    for ours, ref in ((rate, ref_rate), (rateints, ref_ints)):
        np.testing.assert_array_equal(ours["dq"].values, ref["dq"])
        for name in NAMES:
            if name != "dq":
                assert max_rel(ours[name].values, ref[name]) <= 1e-4, name
    # the likelihood fit's own jump search added JUMP_DET where the input had none
    had_jump = (ramps["groupdq"].values & DQ.JUMP_DET).any(axis=1)
    assert ((rateints["dq"].values & DQ.JUMP_DET).astype(bool) & ~had_jump).any()
    assert np.isnan(rate["data"].values).any()  # unusable pixels are in the cube too


def test_ties_of_equal_chi_squared_follow_stcal():
    """Integrations left with exactly 2 or 3 usable differences can have two omissions of equal
    chi squared (leaving one difference or none), which rounding decides: with the covariance
    scales taken by numpy as in stcal (its vectorised ``pow`` differs from the C library's by an
    ulp at times), they are decided the same way. Several reads per group allow pairs."""
    ramps = make_cube(2, 6, 64, 64, seed=2, nframes=4)
    ref_rate, ref_ints = stcal_fit_ramps(ramps, algorithm="LIKELY")
    rate, rateints = _fit(ramps, (37, 53))
    assert np.isin(_usable_differences(ramps), (2, 3)).sum() > 500
    for ours, ref in ((rate, ref_rate), (rateints, ref_ints)):
        for name in NAMES:
            np.testing.assert_array_equal(ours[name].values, ref[name], err_msg=name)


def test_parity_with_dark_current():
    ramps = make_cube(2, 5, 40, 40, seed=3)
    dark = np.random.default_rng(1).uniform(0.0, 0.5, (40, 40)).astype(np.float32)
    ref_rate, ref_ints = stcal_fit_ramps(ramps, algorithm="LIKELY", dark=dark)
    result = fit_ramps(ramps, algorithm="LIKELY", dark_current=xr.DataArray(dark, dims=("y", "x")))
    rate, rateints = dask.compute(result.rate, result.rateints)
    for ours, ref in ((rate, ref_rate), (rateints, ref_ints)):
        np.testing.assert_array_equal(ours["dq"].values, ref["dq"])
        for name in NAMES:
            if name != "dq":
                assert max_rel(ours[name].values, ref[name]) <= 1e-4, name


def test_chunked_equals_single_chunk():
    ramps = make_cube(2, 6, 40, 40, seed=5)
    whole, _ = _fit(ramps, (40, 40))
    for chunks in ((5, 7), (40, 1), (13, 40)):
        parts, _ = _fit(ramps, chunks)
        for name in NAMES:
            np.testing.assert_array_equal(parts[name].values, whole[name].values)


def test_rate_against_truth_with_its_own_jump_search():
    """No jump flags given: the likelihood fit finds the cosmic rays itself. On pixels without
    a cosmic ray or saturation, (rate - truth) / err has a median |z| of 0.674 (a unit normal)."""
    sim = daskcal.simulate((1, 10, 160, 160), seed=4, cr_probability=3e-3)
    ramps, truth = sim.ramps, sim.truth
    data = (ramps["data"] - ramps["superbias"]).astype(np.float32)
    gdq = np.where(ramps["data"].values >= ramps["saturation"].values, np.uint8(DQ.SATURATED), np.uint8(0))
    gdq = np.maximum.accumulate(gdq, axis=1)
    ramps = ramps.assign(data=data, groupdq=(ramps["groupdq"].dims, gdq))
    rate = fit_ramps(ramps.chunk({"y": 64, "x": 64}), algorithm="LIKELY").rate.compute()
    t = truth
    hit = t["jumps"].any(("integration", "group")).values
    clean = ~(hit | t["saturates"].any("integration").values | t["dead"].values | t["hot"].values)
    z = (rate["data"].values - t["rate"].values) / rate["err"].values
    assert clean.sum() > 20_000
    med = np.median(np.abs(z[clean]))
    assert 0.64 < med < 0.71, med
    # most cosmic rays were found: their pixels carry JUMP_DET and their rates are near the truth
    found = (rate["dq"].values & DQ.JUMP_DET).astype(bool)
    assert found[hit].mean() > 0.5
    zhit = np.abs(z[hit & found & ~t["saturates"].any("integration").values])
    assert np.median(zhit) < 1.5


def test_fewer_than_four_groups_fall_back_to_ols_with_a_warning(caplog):
    ramps = make_cube(2, 3, 16, 16, seed=6)
    with caplog.at_level(logging.WARNING, logger="daskcal.detector._ramp_fit"):
        likely = fit_ramps(ramps, algorithm="LIKELY")
    assert any("LIKELY" in r.getMessage() and "OLS_C" in r.getMessage() for r in caplog.records)
    ols = fit_ramps(ramps)
    a, b = dask.compute(likely.rate, ols.rate)
    for name in NAMES:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    ref_rate, _ = stcal_fit_ramps(ramps, algorithm="LIKELY")  # stcal switches as well
    assert max_rel(a["data"].values, ref_rate["data"]) <= 1e-4


def test_bad_algorithm_is_named_in_one_line():
    ramps = make_cube(1, 5, 8, 8)
    for bad in ("likely", "OLS", 3):
        with pytest.raises(ValueError, match=r"algorithm must be one of OLS_C, LIKELY; got") as info:
            fit_ramps(ramps, algorithm=bad)
        assert repr(bad) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ValueError, match="algorithm"):
        daskcal.detector1(ramps.assign(saturation=(("y", "x"), np.full((8, 8), 6e4, np.float32))), algorithm="MLE")


def test_detector1_likely_matches_the_stcal_chain():
    sim = daskcal.simulate((2, 6, 48, 56), seed=8, cr_probability=3e-3, max_source_rate=3000.0)
    ref_rate, ref_ints = stcal_detector1(sim.ramps, algorithm="LIKELY")
    result = daskcal.detector1(sim.ramps, chunks=(17, 23), algorithm="LIKELY")
    rate, rateints = dask.compute(result.rate, result.rateints)
    for ours, ref in ((rate, ref_rate), (rateints, ref_ints)):
        np.testing.assert_array_equal(ours["dq"].values, ref["dq"])
        for name in NAMES:
            if name != "dq":
                assert max_rel(ours[name].values, ref[name]) <= 1e-4, name
    steps = detector1_steps(sim.ramps, chunks=(17, 23), algorithm="LIKELY").rate.compute()
    for name in NAMES:
        np.testing.assert_array_equal(steps[name].values, rate[name].values)


@pytest.mark.parametrize("ngroups", [4, 10, 17, 18, 40])
def test_rate_guesses_against_numpy(ngroups):
    """The first rate guess of each integration (lane sort up to 16 differences, pixel by pixel
    beyond): numpy's median of the differences, flagged ones included as in stcal, without
    non-finite ones between flagged groups; NaN if an included one is NaN; clipped at 0."""
    from daskcal.detector import _kernels_likely as kernels
    from daskcal.detector._ramp_likely import difference_covariance

    rng = np.random.default_rng(ngroups)
    nints, npix = 2, 300
    data = rng.normal(100, 60, (nints, ngroups, npix)).astype(np.float32).cumsum(axis=1)
    gdq = np.where(rng.random(data.shape) < 0.05, np.uint8(DQ.DO_NOT_USE), np.uint8(0))
    nan = rng.random(data.shape) < 0.03
    data[nan] = np.nan
    gdq[nan & (rng.random(data.shape) < 0.7)] = DQ.DO_NOT_USE
    coeff = difference_covariance(ngroups, 1, 0, 10.737)
    got = np.empty((nints, npix))
    kernels.rate_guesses(data, gdq, coeff, got)
    diffs = (data[:, 1:] - data[:, :-1]).astype(np.float64) / coeff[kernels.DELTA_T][None, :, None]
    use = (gdq[:, 1:] == 0) & (gdq[:, :-1] == 0)
    for i in range(nints):
        for p in range(npix):
            values = diffs[i, :, p][use[i, :, p] | np.isfinite(diffs[i, :, p])]
            med = np.median(values) if values.size else np.nan
            want = med * (med > 0)
            assert got[i, p] == want or (np.isnan(got[i, p]) and np.isnan(want)), (i, p)


def test_likely_keeps_miri_groups_and_refuses_save_opt():
    """stcal leaves MIRI's leading/trailing DO_NOT_USE groups out in its OLS_C fit only: its LIKELY fit takes
    the whole ramp (the flagged groups' differences are simply unused), and it has no optional product."""
    from test_miri_groups import miri

    ramps = miri(make_cube(2, 8, seed=17), lead=1, trail=1)
    ref_rate, ref_ints = stcal_fit_ramps(ramps, algorithm="LIKELY")
    rate, rateints = _fit(ramps, (5, 7))
    for ours, ref in ((rate, ref_rate), (rateints, ref_ints)):
        np.testing.assert_array_equal(ours["dq"].values, ref["dq"])
        for name in NAMES:
            if name != "dq":
                assert max_rel(ours[name].values, ref[name]) <= 1e-4, name
    with pytest.raises(ValueError, match="save_opt.*LIKELY"):
        fit_ramps(ramps, algorithm="LIKELY", save_opt=True)
