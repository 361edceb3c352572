"""save_opt: the optional product of the OLS ramp fit against stcal 1.20's opt_info, on every
scheduler and chunk grid."""

from __future__ import annotations

import dask
import numpy as np
import pytest

from daskcal.detector._fitopt import SEGMENT_NAMES, max_jumps, max_segments
from daskcal.detector._ramp_fit import fit_ramps
from daskcal.dq import DQ

from _reference import CUBE_GRIDS as GRIDS  # tests/detector on sys.path
from _reference import chunked, stcal_ramp_data
from test_ramp_fit import make_cube

NAMES = (*SEGMENT_NAMES, "pedestal", "crmag")


def stcal_opt(ramps, suppress_one_group=True):
    """stcal 1.20 ``ramp_fit_data(save_opt=True)`` with OLS_C, as jwst calls it; returns opt_info."""
    from stcal.ramp_fitting.ramp_fit import ramp_fit_data

    rd, rn, gain = stcal_ramp_data(ramps, suppress_one_group)
    _, _, opt = ramp_fit_data(rd, True, rn, gain, "OLS_C", "optimal", "none")
    return opt


def assert_opt_matches(ours, theirs, ngroups, rtol=1e-5):
    """Every variable equal to stcal's within ``rtol`` (NaN and inf where stcal has them), the slots
    stcal's shorter (or longer) axis does not have being 0."""
    for name in NAMES:
        a = np.asarray(ours[name].values, np.float64)
        b = np.asarray(theirs[name], np.float64)
        if a.ndim == 4:
            n = min(a.shape[1], b.shape[1])
            assert not a[:, n:].any(), f"{name}: slots past stcal's are not 0"
            assert not b[:, n:].any(), f"{name}: stcal's slots past ours are not 0"
            a, b = a[:, :n], b[:, :n]
        assert a.shape == b.shape, name
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        close = np.isclose(a, b, rtol=rtol, atol=0.0) | same
        bad = np.flatnonzero(~close)
        assert bad.size == 0, f"{name}: {bad.size} values differ, first at {np.unravel_index(bad[0], a.shape)}: " \
                              f"{a.flat[bad[0]]} vs {b.flat[bad[0]]}"


@pytest.fixture(scope="module")
def cube():
    return make_cube(3, 9, 41, 37, seed=12)


@pytest.fixture(scope="module")
def expected(cube):
    return stcal_opt(cube)


@pytest.mark.parametrize("grid", list(GRIDS))
def test_fitopt_matches_stcal(cube, expected, grid, scheduler):
    result = fit_ramps(chunked(cube, grid), save_opt=True)
    with scheduler():
        opt, rate = dask.compute(result.fitopt, result.rate)
    assert opt.sizes["segment"] == max_segments(9) and opt.sizes["jump"] == max_jumps(9)
    assert_opt_matches(opt, expected, 9)
    assert expected["slope"].shape[1] >= 2 and expected["crmag"].shape[1] >= 2  # several segments and jumps
    # the rate is the same as without save_opt
    plain = fit_ramps(cube).rate.compute()
    for name in rate.data_vars:
        np.testing.assert_array_equal(rate[name].values, plain[name].values)


@pytest.mark.parametrize(("nints", "ngroups", "nframes"), [(2, 1, 1), (2, 2, 1), (1, 3, 4), (2, 5, 2), (1, 30, 1)])
@pytest.mark.parametrize("suppress", [True, False])
def test_fitopt_group_counts(nints, ngroups, nframes, suppress):
    r = make_cube(nints, ngroups, 17, 15, seed=ngroups + nframes, nframes=nframes)
    r.attrs["groupgap"] = 1 if nframes > 1 else 0
    r.attrs["drop_frames1"] = 2 if ngroups == 5 else None
    expected = stcal_opt(r, suppress)
    opt = fit_ramps(r.chunk({"y": 7, "x": 6}), suppress, save_opt=True).fitopt.compute()
    assert_opt_matches(opt, expected, ngroups)


def test_fitopt_all_one_group_segments():
    # groups good, DO_NOT_USE, good, DO_NOT_USE, good: three one-group segments, of which stcal fits
    # the first and counts three (its axis has 3 slots, the last two 0)
    r = make_cube(1, 5, 6, 5, seed=3)
    gdq = np.zeros(r["groupdq"].shape, np.uint8)
    gdq[0, 1::2] = DQ.DO_NOT_USE
    r["groupdq"] = (r["groupdq"].dims, gdq)
    expected = stcal_opt(r, suppress_one_group=False)
    assert expected["slope"].shape[1] == 3
    assert_opt_matches(fit_ramps(r, False, save_opt=True).fitopt.compute(), expected, 5)


def test_no_fitopt_by_default_and_bad_value(cube):
    assert fit_ramps(cube).fitopt is None
    with pytest.raises(TypeError, match="save_opt must be True or False; got 'yes'"):
        fit_ramps(cube, save_opt="yes")


@pytest.fixture(scope="module")
def sim():
    from daskcal.testing import simulate

    return simulate((2, 8, 41, 37), seed=8, cr_probability=5e-3, max_source_rate=3000.0)


@pytest.fixture(scope="module")
def chain_expected(sim):
    from daskcal.testing import stcal_detect_jumps, stcal_flag_saturation, stcal_subtract_superbias

    return stcal_opt(stcal_detect_jumps(stcal_subtract_superbias(stcal_flag_saturation(sim.ramps))))


@pytest.mark.parametrize("grid", ["1x1", "ragged"])
def test_detector1_fitopt_matches_the_stcal_chain(sim, chain_expected, grid, scheduler):
    import daskcal
    from daskcal.detector._pipeline import detector1_steps

    chunks = GRIDS[grid] or sim.ramps["data"].shape[2:]
    fused = daskcal.detector1(sim.ramps, chunks=chunks, save_opt=True)
    steps = detector1_steps(sim.ramps, chunks=chunks, save_opt=True)
    with scheduler():
        a, b, jumps = dask.compute(fused.fitopt, steps.fitopt, fused.n_primary_jumps)
    assert_opt_matches(a, chain_expected, 8)
    for name in NAMES:
        np.testing.assert_array_equal(a[name].values, b[name].values)
    assert jumps.sum() > 0 and daskcal.detector1(sim.ramps, chunks=chunks).fitopt is None


@pytest.mark.parametrize("ngroups", [9, 1])
def test_fitopt_fits_opens_as_ramp_fit_output_model(tmp_path, ngroups):
    """to_fits of a fitopt product: jwst's _fitopt.fits layout, which stdatamodels' RampFitOutputModel opens
    without a warning (warnings are errors here), its arrays those of the product (and stcal's)."""
    import xarray as xr
    from stdatamodels.jwst.datamodels import RampFitOutputModel

    from daskcal import to_fits

    cube = make_cube(2, ngroups, 13, 11, seed=20 + ngroups)
    opt = fit_ramps(cube.chunk({"y": 5, "x": 7}), save_opt=True).fitopt.compute()
    path = to_fits(opt, tmp_path / "x_fitopt.fits")
    with RampFitOutputModel(str(path)) as model:
        assert model.meta.model_type == "RampFitOutputModel"
        for name in NAMES:
            got, want = getattr(model, name), opt[name].values
            assert got.dtype.name == "float32", name
            if name == "crmag" and ngroups == 1:  # no jump slot: FITS holds one of zeros
                assert got.shape == (2, 1, 13, 11) and not got.any() and want.shape == (2, 0, 13, 11)
                continue
            np.testing.assert_array_equal(got, want, err_msg=name)
        if ngroups == 9:
            assert_opt_matches({n: xr.DataArray(getattr(model, n)) for n in NAMES}, stcal_opt(cube), ngroups)
