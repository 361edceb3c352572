"""detector1 end to end: against the stcal chain, against truth, chunked == whole."""

import dask
import numpy as np
import pytest

import daskcal
from daskcal.testing import simulate, stcal_detector1

PRODUCTS = ("data", "err", "var_poisson", "var_rnoise")


def _close(ours, theirs, rtol=1e-4):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    both_nan = np.isnan(ours) & np.isnan(theirs)
    assert np.array_equal(np.isnan(ours), np.isnan(theirs)), "NaN pixels differ"
    scale = np.maximum(np.abs(theirs), 1e-6)
    rel = np.where(both_nan, 0.0, np.abs(ours - theirs) / scale)
    return rel.max()


@pytest.fixture(scope="module")
def sim():
    return simulate((2, 7, 90, 110), seed=21, cr_probability=3e-3, max_source_rate=3000.0)


@pytest.fixture(scope="module")
def reference(sim):
    return stcal_detector1(sim.ramps)


@pytest.fixture(scope="module")
def ours(sim):
    result = daskcal.detector1(sim.ramps, chunks=(37, 53))
    rate, rateints = dask.compute(result.rate, result.rateints)
    return rate, rateints


@pytest.mark.parametrize("product", ["rate", "rateints"])
def test_detector1_matches_the_stcal_chain(ours, reference, product):
    ds = ours[0] if product == "rate" else ours[1]
    ref = reference[0] if product == "rate" else reference[1]
    for name in PRODUCTS:
        assert _close(ds[name].values, ref[name]) < 1e-4, name
    np.testing.assert_array_equal(ds["dq"].values, ref["dq"])


def test_detector1_rates_agree_with_truth(ours, sim):
    rate = ours[0]
    t = sim.truth
    clean = ~(t["jumps"].any(("integration", "group")) | t["saturates"].any("integration") | t["dead"] | t["hot"]).values
    z = ((rate["data"] - t["rate"]) / rate["err"]).values[clean]
    assert 0.62 < np.nanmedian(np.abs(z)) < 0.72


def test_chunked_equals_single_chunk(sim, ours):
    whole = daskcal.detector1(sim.ramps, chunks=sim.ramps["data"].shape[2:]).rate.compute()
    for name in (*PRODUCTS, "dq"):
        np.testing.assert_array_equal(ours[0][name].values, whole[name].values)


def test_detector1_is_lazy_and_leaves_input_alone(sim):
    before = sim.ramps["groupdq"].values.copy(), sim.ramps["data"].values.copy()
    result = daskcal.detector1(sim.ramps)
    assert isinstance(result.rate["data"].data, dask.array.Array)
    result.rate.compute()
    np.testing.assert_array_equal(sim.ramps["groupdq"].values, before[0])
    np.testing.assert_array_equal(sim.ramps["data"].values, before[1])


def test_detector1_refuses_unknown_parameters_and_bad_input(sim):
    with pytest.raises(TypeError, match="rejection_treshold"):
        daskcal.detector1(sim.ramps, rejection_treshold=4.0)
    with pytest.raises(ValueError, match="no variable 'gain'"):
        daskcal.detector1(sim.ramps.drop_vars("gain"))
    with pytest.raises(ValueError, match="group_time"):
        bad = sim.ramps.copy()
        bad.attrs = {k: v for k, v in bad.attrs.items() if k != "group_time"}
        daskcal.detector1(bad)
    with pytest.raises(TypeError, match="data must have a floating dtype"):
        daskcal.detector1(sim.ramps.assign(data=sim.ramps["data"].astype(np.int32)))


def test_subtract_superbias_treats_nan_as_zero(sim):
    ramps = sim.ramps.copy()
    bias = ramps["superbias"].values.copy()
    bias[0, 0] = np.nan
    ramps["superbias"] = (("y", "x"), bias)
    out = daskcal.subtract_superbias(ramps).compute()
    np.testing.assert_array_equal(out["data"].values[:, :, 0, 0], ramps["data"].values[:, :, 0, 0])
    np.testing.assert_allclose(out["data"].values[:, :, 1, 1], ramps["data"].values[:, :, 1, 1] - bias[1, 1])


@pytest.mark.parametrize("params", [{}, {"n_pix_grow_sat": 2, "flag_4_neighbors": False},
                                    {"n_pix_grow_sat": 0, "after_jump_flag_dn1": 100.0, "after_jump_flag_time1": 25.0}])
def test_fused_graph_equals_the_steps_one_after_another(sim, params):
    from daskcal.detector._pipeline import detector1_steps

    fused = daskcal.detector1(sim.ramps, chunks=(23, 31), **params)
    steps = detector1_steps(sim.ramps, chunks=(40, 40), **params)
    a, b = dask.compute(fused.rateints, steps.rateints)
    for name in (*PRODUCTS, "dq"):
        np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        ((1, 10, 2048, 2048), (512, 1024)),  # the benchmark's exposure: 8 chunks
        ((1, 10, 4096, 4096), (512, 1024)),  # 4x the pixels, same chunks (bounded memory)
        ((1, 100, 1024, 1032), (256, 258)),  # many groups: fewer pixels per chunk
        ((2, 5, 100, 90), (100, 90)),  # small: one chunk
        ((1, 3000, 1024, 1024), (64, 64)),  # never below 64 pixels a side
        ((2048, 2048), (2048, 2048)),  # a 2-D image: one sample per pixel
    ],
)
def test_default_chunks_are_sized_by_samples(shape, expected):
    from daskcal.detector._common import CHUNK_SAMPLES, default_chunk_yx

    cy, cx = default_chunk_yx(shape)
    assert (cy, cx) == expected
    samples = int(np.prod(shape[:-2])) * cy * cx
    assert samples <= CHUNK_SAMPLES or min(cy, cx) <= 64
    # halving once more would have been needed only if the chunk were still too big
    assert samples * 2 > CHUNK_SAMPLES or (cy, cx) == tuple(shape[-2:])


def test_numpy_input_and_ingest_default_to_sample_sized_chunks(tmp_path):
    from daskcal import ingest
    from daskcal.detector._common import as_dask
    from daskcal.io._ramps import write_uncal

    sim = simulate((1, 400, 200, 300), seed=2)  # 400 groups: 21 Ki pixels per chunk at most
    arr = as_dask(sim.ramps["data"])
    assert arr.chunks[2:] == ((100,) * 2, (150,) * 2)
    paths = write_uncal(sim.ramps, tmp_path / "x_uncal.fits")
    ds = ingest(paths["uncal"], gain=paths["gain"], readnoise=paths["readnoise"], saturation=paths["saturation"])
    assert ds["data"].data.chunks[2:] == arr.chunks[2:]


def test_detector1_tasks_are_data_producers(tmp_path):
    """The scheduler queues data-producer tasks and hands each to the next free worker thread
    (distributed's root-ish queuing); detector1's chunk tasks must be such tasks, halo inputs
    and all, whether the ramps come from Zarr or from memory (where dask has the flag)."""
    from daskcal.detector._fused import _data_producer_hook

    if _data_producer_hook() is None:
        pytest.skip("this dask has no data-producer flag (the fallback is tested in test_schedulers.py)")
    from dask._task_spec import Task

    sim = simulate((1, 4, 40, 36), seed=5)
    daskcal.save(sim.ramps, tmp_path / "r.zarr")
    for ramps in (daskcal.open_ramps(tmp_path / "r.zarr", chunks=(16, 16)), sim.ramps):
        stacked = daskcal.detector1(ramps, chunks=(16, 16)).rate["data"].data
        layer = next(v for k, v in stacked.dask.layers.items() if k.startswith("detector1-"))
        tasks = list(dict(layer).values())
        assert len(tasks) == 3 * 3
        assert all(isinstance(t, Task) and t.data_producer for t in tasks)
        np.testing.assert_array_equal(stacked.compute(), daskcal.detector1(sim.ramps).rate["data"].values)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32])
def test_narrow_pixeldq_keeps_the_flags_the_steps_add(sim, dtype):
    """A uint8/uint16 pixeldq (as stcal's own tests build it) must not lose NO_SAT_CHECK (bit 21) and
    NO_GAIN_VALUE (bit 19) to a cast back to the input's type: the steps return uint32."""
    ramps = sim.ramps.copy()
    ramps["pixeldq"] = ramps["pixeldq"].astype(dtype) & 0xFF  # only the bits a uint8 holds
    sat = ramps["saturation"].values.copy()
    gain = ramps["gain"].values.copy()
    sat[3, 4] = np.nan
    gain[5, 6] = 0.0
    ramps["saturation"] = (("y", "x"), sat)
    ramps["gain"] = (("y", "x"), gain)
    satd = daskcal.flag_saturation(ramps)
    assert satd["pixeldq"].dtype == np.uint32
    assert satd["pixeldq"].values[3, 4] & daskcal.DQ.NO_SAT_CHECK
    jumped = daskcal.detect_jumps(satd)
    pdq = jumped["pixeldq"].values
    assert jumped["pixeldq"].dtype == np.uint32
    assert pdq[5, 6] & daskcal.DQ.NO_GAIN_VALUE and pdq[5, 6] & daskcal.DQ.DO_NOT_USE
    assert pdq[3, 4] & daskcal.DQ.NO_SAT_CHECK
    rate = daskcal.detector1(ramps, chunks=(37, 53)).rate.compute()
    assert rate["dq"].values[5, 6] & daskcal.DQ.NO_GAIN_VALUE
    assert rate["dq"].values[3, 4] & daskcal.DQ.NO_SAT_CHECK
    # the other pixels' flags are those of a uint32 input
    wide = sim.ramps.copy()
    wide["pixeldq"] = ramps["pixeldq"].astype(np.uint32)
    wide["saturation"], wide["gain"] = ramps["saturation"], ramps["gain"]
    np.testing.assert_array_equal(pdq, daskcal.detect_jumps(daskcal.flag_saturation(wide))["pixeldq"].values)


@pytest.mark.parametrize("grow", [3, 4])
def test_chunks_narrower_than_the_halo(grow, scheduler):
    """Chunks of 4 px (and a ragged 3 px one) against a halo of n_pix_grow_sat + 1: the fused graph joins them
    to their neighbours (it raised a TypeError: dask's overlap rechunked one input and the blocks no longer
    lined up) and equals the steps run one after another."""
    from daskcal.detector._pipeline import detector1_steps

    r = simulate((1, 5, 15, 13), seed=3, max_source_rate=20000.0).ramps
    thr = np.percentile(r["data"].values[0, -1], 95)  # ~10 pixels saturate in their last groups
    r = r.assign(saturation=(r["saturation"].dims, np.full(r["saturation"].shape, thr, r["saturation"].dtype)))
    with scheduler():
        fused = daskcal.detector1(r.chunk({"y": 4, "x": 5}), n_pix_grow_sat=grow).rateints.compute()
    steps = detector1_steps(r.chunk({"y": 4, "x": 5}), n_pix_grow_sat=grow).rateints.compute()
    for v in fused.data_vars:
        np.testing.assert_array_equal(fused[v].values, steps[v].values, err_msg=v)
    ungrown = detector1_steps(r, n_pix_grow_sat=0).rateints.compute()
    assert not np.array_equal(fused["data"].values, ungrown["data"].values, equal_nan=True)  # the growth counts
