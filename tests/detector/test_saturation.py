"""flag_saturation: parity with stcal 1.20, the numpy reference, chunking, edge cases, errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from daskcal._simulate import simulate
from daskcal.detector._kernels_saturation import grow_bit, saturation_flags
from daskcal.detector._saturation import SaturationParameters, flag_saturation
from daskcal.dq import DQ

from _reference import SAT, make_ramps, saturation_reference, stcal_saturation  # tests/detector is on sys.path

NO_SAT_CHECK = int(DQ.NO_SAT_CHECK)


@pytest.fixture(scope="module")
def raw():
    """Two integrations with bright (saturating) sources, NaN thresholds, NO_SAT_CHECK and 0-DN groups."""
    r = simulate((2, 6, 80, 70), seed=1, max_source_rate=20000.0).ramps
    thr = r["saturation"].values.copy()
    thr[5, 7] = thr[0, 0] = np.nan
    pdq = r["pixeldq"].values.copy()
    pdq[10, 10] |= NO_SAT_CHECK
    pdq[79, 69] |= NO_SAT_CHECK
    data = r["data"].values.copy()
    data[0, 2, 10, 10] = 70000.0  # above the 65536 no-check threshold
    data[0, 3, 50, 50] = 0.0  # A/D floor
    data[1, 1, 79, 69] = 65535.0  # at the A/D limit but not checked
    data[1, 0, 0, 0] = 65000.0  # NaN threshold
    data[1, 4, 30, 30] = np.nan
    gdq = r["groupdq"].values.copy()
    gdq[0, 1, 20, 20] = SAT  # a pre-existing flag is grown but not carried
    return r.assign(
        data=(r["data"].dims, data),
        groupdq=(r["groupdq"].dims, gdq),
        saturation=(("y", "x"), thr),
        pixeldq=(("y", "x"), pdq),
    )


@pytest.mark.parametrize("n", [0, 1, 2])
@pytest.mark.parametrize("chunks", [(5, 7), (37, 53), None])
def test_parity_with_stcal(raw, n, chunks):
    ramps = raw.chunk({"y": chunks[0], "x": chunks[1]}) if chunks else raw
    out = flag_saturation(ramps, n)
    gdq, pdq = stcal_saturation(raw, n)
    np.testing.assert_array_equal(out["groupdq"].values, gdq)
    np.testing.assert_array_equal(out["pixeldq"].values, pdq)
    assert (gdq & SAT).any()


def test_specific_flags(raw):
    out = flag_saturation(raw, 0)
    gdq, pdq = out["groupdq"].values, out["pixeldq"].values
    assert gdq[0, 2, 10, 10] & SAT and gdq[0, 5, 10, 10] & SAT and not gdq[0, 1, 10, 10] & SAT
    assert gdq[0, 3, 50, 50] == int(DQ.AD_FLOOR | DQ.DO_NOT_USE)
    assert not gdq[1, :, 79, 69].any() and not gdq[1, :, 0, 0].any()
    assert pdq[5, 7] & NO_SAT_CHECK and pdq[0, 0] & NO_SAT_CHECK
    assert gdq[0, 1, 20, 20] == SAT and not gdq[0, 2, 20, 20]
    assert not gdq[1, :, 30, 30].any()  # NaN data is neither saturated nor at the floor


def test_kernels_match_numpy_reference():
    rng = np.random.default_rng(5)
    shape = (2, 5, 17, 23)
    data = rng.uniform(-50, 1000, shape).astype(np.float32)
    gdq = rng.choice(np.array([0, 1, 4], np.uint8), size=shape, p=[0.9, 0.05, 0.05])
    thresh = rng.uniform(800, 1200, shape[2:]).astype(np.float32)
    flat = (2, 5, 17 * 23)
    out = np.empty(flat, np.uint8)
    saturation_flags(data.reshape(flat), gdq.reshape(flat), thresh.reshape(1, 1, -1), False, out)
    for n in (0, 1, 3):
        expect = saturation_reference(data, gdq, thresh, n)
        got = out.reshape(shape)
        if n:
            got = np.empty((10, 17, 23), np.uint8)
            grow_bit(out.reshape(10, 17, 23), SAT, n, got)
            got = got.reshape(shape)
        np.testing.assert_array_equal(got, expect)


def test_all_saturated_pixel_and_growth_across_chunk_edge():
    r = make_ramps((1, 4, 12, 12), bias=1000.0)
    data = r["data"].values.copy()
    data[0, :, 5, 5] = 61000.0  # saturated from the first group, next to a chunk edge
    r = r.assign(data=(r["data"].dims, data)).chunk({"y": 6, "x": 6})
    gdq = flag_saturation(r, 1)["groupdq"].values
    assert np.all(gdq[0, :, 5, 5] == SAT)
    box = np.zeros((12, 12), bool)
    box[4:7, 4:7] = True
    for g in range(4):
        np.testing.assert_array_equal(gdq[0, g] == SAT, box)


def test_input_not_modified_and_lazy(raw):
    before = {k: v.values.copy() for k, v in raw.data_vars.items()}
    out = flag_saturation(raw)
    assert isinstance(out["groupdq"].data, da.Array) and isinstance(out["pixeldq"].data, da.Array)
    out["groupdq"].values
    for k, v in before.items():
        np.testing.assert_array_equal(raw[k].values, v)
    assert out is not raw and set(out.data_vars) == set(raw.data_vars)
    assert out["groupdq"].dtype == np.uint8 and out["pixeldq"].dtype == raw["pixeldq"].dtype


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1", None])
def test_bad_n_pix_grow_sat(bad):
    with pytest.raises(ValueError, match="n_pix_grow_sat"):
        SaturationParameters(bad)
    with pytest.raises(ValueError, match="n_pix_grow_sat"):
        flag_saturation(make_ramps(), bad)


def test_parameters_frozen():
    p = SaturationParameters(2)
    with pytest.raises(AttributeError):
        p.n_pix_grow_sat = 3


def test_bad_input():
    r = make_ramps()
    with pytest.raises(ValueError, match="saturation"):
        flag_saturation(r.drop_vars("saturation"))
    with pytest.raises(ValueError, match="dimensions"):
        flag_saturation(r.assign(data=r["data"].isel(integration=0)))
    with pytest.raises(TypeError, match="data must have a floating"):
        flag_saturation(r.assign(data=r["data"].astype(np.int32)))
    with pytest.raises(TypeError, match="xarray.Dataset"):
        flag_saturation(r["data"])
    with pytest.raises(ValueError, match="saturation must have dimensions"):
        flag_saturation(r.assign(saturation=r["saturation"].T))
    with pytest.raises(ValueError, match="group_time"):
        flag_saturation(xr.Dataset(r.data_vars))


def _boom(block):
    raise AssertionError("a chunk was computed")


def test_errors_and_graph_need_no_computation():
    r = make_ramps((1, 5, 16, 16))
    poison = {}
    for k, v in r.data_vars.items():
        meta = v.values[(slice(0, 0),) * v.ndim]
        poison[k] = (v.dims, da.from_array(v.values).map_blocks(_boom, meta=meta))
    lazy = r.assign(poison)
    out = flag_saturation(lazy, 2)
    assert isinstance(out["groupdq"].data, da.Array)
    with pytest.raises(ValueError, match="n_pix_grow_sat"):
        flag_saturation(lazy, -2)
    with pytest.raises(AssertionError, match="computed"):
        out["groupdq"].values
