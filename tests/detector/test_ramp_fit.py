"""fit_ramps: parity with stcal 1.20 OLS_C, the numpy reference, chunking, truth, errors."""

from __future__ import annotations

import threading

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

from daskcal.detector import _ramp_fit
from daskcal.detector._ramp_fit import RampFitResult, fit_ramps
from daskcal.dq import DQ

from _ramp_reference import reference_fit  # tests/detector is on sys.path (rootdir-less layout)
from _reference import stcal_ramp_data

NAMES = ("data", "err", "dq", "var_poisson", "var_rnoise")
TG = 10.737


def make_cube(nints, ngroups, ny=64, nx=64, *, seed=0, nframes=1):
    """Bias-free ramps with jumps, saturation, DO_NOT_USE and odd pixels flagged by hand."""
    rng = np.random.default_rng(seed)
    shape = (nints, ngroups, ny, nx)
    rate = rng.lognormal(1.0, 2.0, (ny, nx))
    rate[rng.random((ny, nx)) < 0.05] *= -0.1
    gain = rng.uniform(1.5, 2.5, (ny, nx)).astype(np.float32)
    rn = rng.uniform(5.0, 15.0, (ny, nx)).astype(np.float32)
    t = (np.arange(1, ngroups + 1) * TG)[None, :, None, None]
    electrons = rng.poisson(np.clip(rate * gain * t, 0, None) * np.ones((nints, 1, 1, 1)))
    data = electrons / gain + rng.normal(0.0, 1.0, shape) * rn / np.sqrt(2.0)
    gdq = np.zeros(shape, np.uint8)
    hit = rng.random(shape) < 0.03
    data += np.cumsum(hit * rng.uniform(50, 2000, shape), axis=1)
    gdq[hit] |= np.uint8(DQ.JUMP_DET)
    first = rng.integers(0, ngroups, (nints, ny, nx))
    sat = (rng.random((nints, ny, nx)) < 0.1)[:, None] & (np.arange(ngroups)[None, :, None, None] >= first[:, None])
    gdq[sat] |= np.uint8(DQ.SATURATED)
    gdq[rng.random(shape) < 0.03] |= np.uint8(DQ.DO_NOT_USE)
    gdq[rng.random(shape) < 0.01] |= np.uint8(DQ.PERSISTENCE)
    pdq = np.zeros((ny, nx), np.uint32)
    pdq[rng.random((ny, nx)) < 0.01] |= np.uint32(DQ.DO_NOT_USE)
    pdq[rng.random((ny, nx)) < 0.01] |= np.uint32(DQ.HOT | DQ.REFERENCE_PIXEL)
    gain[rng.random((ny, nx)) < 0.005] = np.nan
    gain[rng.random((ny, nx)) < 0.005] = 0.0
    return xr.Dataset(
        {
            "data": (("integration", "group", "y", "x"), data.astype(np.float32)),
            "groupdq": (("integration", "group", "y", "x"), gdq),
            "pixeldq": (("y", "x"), pdq),
            "gain": (("y", "x"), gain),
            "readnoise": (("y", "x"), rn),
        },
        attrs={"group_time": TG, "frame_time": TG / nframes, "nframes": nframes, "groupgap": 0},
    )


def stcal_fit(ramps, suppress_one_group=True, dark=None):
    """stcal 1.20 ``ramp_fit_data`` as jwst's ``ramp_fit`` calls it (copies of every input)."""
    from stcal.ramp_fitting.ramp_fit import ramp_fit_data

    rd, rn, gain = stcal_ramp_data(ramps, suppress_one_group, dark)
    image, integ, _ = ramp_fit_data(rd, False, rn, gain, "OLS_C", "optimal", "none")
    rename = {"data": "slope"}
    return ({n: image[rename.get(n, n)] for n in NAMES}, {n: integ[rename.get(n, n)] for n in NAMES})


def max_rel(ours, ref):
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(ref))
    same = (ours == ref) | np.isnan(ref)
    with np.errstate(all="ignore"):
        rel = np.where(same, 0.0, np.abs(ours - ref) / np.abs(ref))
    return float(rel.max()) if rel.size else 0.0


def assert_products_match(ours: xr.Dataset, ref: dict, rtol: float):
    for name in NAMES:
        if name == "dq":
            np.testing.assert_array_equal(ours["dq"].values, ref["dq"])
        else:
            assert max_rel(ours[name].values, ref[name]) <= rtol, name


@pytest.mark.parametrize(
    ("nints", "ngroups", "suppress"),
    [(1, 1, True), (3, 1, True), (1, 2, True), (3, 2, False), (1, 3, True), (3, 3, False),
     (1, 10, True), (1, 10, False), (3, 10, True), (2, 40, True), (1, 150, True)],
)
def test_parity_with_stcal(nints, ngroups, suppress):
    ramps = make_cube(nints, ngroups, seed=10 * ngroups + nints)
    ref_rate, ref_ints = stcal_fit(ramps, suppress)
    result = fit_ramps(ramps.chunk({"y": 37, "x": 53}), suppress_one_group=suppress)
    rate, rateints = dask.compute(result.rate, result.rateints)
    assert_products_match(rate, ref_rate, 1e-4)
    assert_products_match(rateints, ref_ints, 1e-4)
    # the cube exercises the special cases: unusable pixels and partial saturation
    assert np.isnan(rate["data"].values).any()
    assert (rate["dq"].values & DQ.SATURATED).any()


def test_parity_with_dark_current():
    ramps = make_cube(2, 5, 40, 40, seed=3)
    dark = np.random.default_rng(1).uniform(0.0, 0.5, (40, 40)).astype(np.float32)
    ref_rate, ref_ints = stcal_fit(ramps, dark=dark)
    result = fit_ramps(ramps, dark_current=xr.DataArray(dark, dims=("y", "x")))
    assert_products_match(result.rate.compute(), ref_rate, 1e-4)
    assert_products_match(result.rateints.compute(), ref_ints, 1e-4)


@pytest.mark.parametrize("chunks", [(5, 7), (37, 53), (64, 1)])
def test_chunked_equals_single_chunk(chunks):
    ramps = make_cube(2, 6, 64, 64, seed=5)
    whole = fit_ramps(ramps.chunk({"y": -1, "x": -1}))
    parts = fit_ramps(ramps.chunk({"y": chunks[0], "x": chunks[1]}))
    assert parts.rate["data"].data.chunks[0][0] == chunks[0]
    for a, b in ((whole.rate, parts.rate), (whole.rateints, parts.rateints)):
        a, b = dask.compute(a, b)
        for name in NAMES:
            np.testing.assert_array_equal(a[name].values, b[name].values)


def test_kernel_matches_numpy_reference():
    rng = np.random.default_rng(7)
    ramps = make_cube(2, 7, 24, 24, seed=11)
    data = ramps["data"].values.copy()
    data[rng.random(data.shape) < 0.01] = np.nan  # unflagged NaN groups
    rn = ramps["readnoise"].values.copy()
    rn[rng.random(rn.shape) < 0.02] = 0.0
    ramps = ramps.assign(data=(ramps["data"].dims, data), readnoise=(("y", "x"), rn))
    for suppress in (True, False):
        rate, rints = reference_fit(
            ramps["data"].values, ramps["groupdq"].values, ramps["pixeldq"].values,
            ramps["gain"].values, rn, group_time=TG, frame_time=TG, nframes=1, suppress_one_group=suppress,
        )
        result = fit_ramps(ramps.chunk({"y": 10, "x": 9}), suppress_one_group=suppress)
        ours_rate, ours_ints = dask.compute(result.rate, result.rateints)
        assert_products_match(ours_rate, rate, 1e-6)
        assert_products_match(ours_ints, rints, 1e-6)
        # unflagged NaN groups and zero read noise follow stcal too
        ref_rate, ref_ints = stcal_fit(ramps, suppress)
        assert_products_match(ours_rate, ref_rate, 1e-4)
        assert_products_match(ours_ints, ref_ints, 1e-4)


def test_nframes_and_random_ramps_against_reference():
    ramps = make_cube(1, 4, 20, 20, seed=13, nframes=4)
    rate, rints = reference_fit(
        ramps["data"].values, ramps["groupdq"].values, ramps["pixeldq"].values, ramps["gain"].values,
        ramps["readnoise"].values, group_time=TG, frame_time=TG / 4, nframes=4,
    )
    result = fit_ramps(ramps)
    assert_products_match(result.rate.compute(), rate, 1e-6)
    assert_products_match(result.rateints.compute(), rints, 1e-6)


def test_rate_and_rateints_share_one_computation(monkeypatch):
    calls = []
    lock = threading.Lock()
    real = _ramp_fit.fit_block

    def counting(*args, **kwargs):
        with lock:
            calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_ramp_fit, "fit_block", counting)
    result = fit_ramps(make_cube(2, 4, 32, 32).chunk({"y": 16, "x": 16}))
    assert isinstance(result, RampFitResult)
    assert not calls  # lazy
    dask.compute(result.rate, result.rateints)
    assert len(calls) == 4


def test_products_layout_and_dq_bits():
    ramps = make_cube(3, 4, 16, 16, seed=2)
    pdq = ramps["pixeldq"].values.copy()
    pdq[0, 0] = 0x7F800001  # bit pattern of a float32 signalling NaN
    pdq[0, 1] = 0xFFFFFFFE
    ramps = ramps.assign(pixeldq=(("y", "x"), pdq))
    result = fit_ramps(ramps)
    rate, rints = result.rate, result.rateints
    assert isinstance(rate["data"].data, da.Array)
    for name in NAMES:
        assert rate[name].dims == ("y", "x")
        assert rints[name].dims == ("integration", "y", "x")
        assert rate[name].dtype == (np.uint32 if name == "dq" else np.float32)
    assert rate["data"].attrs["units"] == "DN/s"
    assert rate.attrs["group_time"] == TG
    dq = rate["dq"].values
    assert dq[0, 0] & 0x7F800001 == 0x7F800001
    assert dq[0, 1] & 0xFFFFFFFE == 0xFFFFFFFE
    assert (rints["dq"].values[:, 0, 0] & 0x7F800001 == 0x7F800001).all()


def test_unusable_pixels_are_nan_do_not_use():
    ramps = make_cube(1, 5, 8, 8, seed=4)
    gdq = ramps["groupdq"].values.copy()
    gdq[:, :, 0, 0] = np.uint8(DQ.SATURATED)
    gdq[:, :, 0, 1] = np.uint8(DQ.DO_NOT_USE)
    gain = ramps["gain"].values.copy()
    gain[0, 2] = -1.0
    ramps = ramps.assign(groupdq=(ramps["groupdq"].dims, gdq), gain=(("y", "x"), gain))
    rate = fit_ramps(ramps).rate.compute()
    for x in range(3):
        assert np.isnan(rate["data"].values[0, x])
        assert rate["dq"].values[0, x] & DQ.DO_NOT_USE
        assert rate["err"].values[0, x] == 0
    assert rate["dq"].values[0, 0] & DQ.SATURATED
    assert rate["dq"].values[0, 2] & DQ.NO_GAIN_VALUE


def test_rate_against_truth():
    from daskcal._simulate import simulate

    sim = simulate((1, 10, 200, 200), seed=1)
    ramps, truth = sim.ramps, sim.truth
    data = ramps["data"] - ramps["superbias"]
    gdq = np.where(truth["jumps"].values, np.uint8(DQ.JUMP_DET), np.uint8(0))
    gdq |= np.where(ramps["data"].values >= ramps["saturation"].values, np.uint8(DQ.SATURATED), np.uint8(0))
    ramps = ramps.assign(data=data.astype(np.float32), groupdq=(ramps["groupdq"].dims, gdq))
    rate = fit_ramps(ramps).rate.compute()
    clean = (
        ~truth["jumps"].values.any(axis=(0, 1))
        & ~(gdq & DQ.SATURATED).any(axis=(0, 1))
        & (ramps["pixeldq"].values == 0)
    )
    z = (rate["data"].values - truth["rate"].values) / rate["err"].values
    med = np.median(np.abs(z[clean]))
    assert clean.sum() > 35_000
    assert 0.62 < med < 0.72, med


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda r: r.drop_vars("gain"), ValueError, "gain"),
        (lambda r: r.drop_vars("readnoise"), ValueError, "readnoise"),
        (lambda r: r.assign(readnoise=-r["readnoise"]), ValueError, "readnoise"),
        (lambda r: r.assign(gain=r["gain"] * 0), ValueError, "gain"),
        (lambda r: r.assign(data=r["data"].transpose("group", "integration", "y", "x")), ValueError, "dimensions"),
        (lambda r: r.assign(groupdq=r["groupdq"].astype(np.float32)), TypeError, "groupdq"),
        (lambda r: r.assign(gain=(("x", "y"), r["gain"].values.T)), ValueError, "gain must have dimensions"),
    ],
)
def test_bad_input_raises_before_computing(change, error, match):
    ramps = make_cube(1, 3, 8, 8)
    with pytest.raises(error, match=match):
        fit_ramps(change(ramps))


def test_bad_options_raise():
    ramps = make_cube(1, 3, 8, 8)
    with pytest.raises(TypeError, match="suppress_one_group"):
        fit_ramps(ramps, suppress_one_group="yes")
    with pytest.raises(ValueError, match="dark_current"):
        fit_ramps(ramps, dark_current=np.nan)
    with pytest.raises(TypeError, match="dark_current"):
        fit_ramps(ramps, dark_current=np.zeros((8, 8)))
