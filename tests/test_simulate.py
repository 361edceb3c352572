import numpy as np
import pytest

from daskcal import DQ, simulate


def test_same_seed_same_exposure_and_different_seed_differs():
    a = simulate((1, 4, 32, 40), seed=7)
    b = simulate((1, 4, 32, 40), seed=7)
    c = simulate((1, 4, 32, 40), seed=8)
    np.testing.assert_array_equal(a.ramps["data"].values, b.ramps["data"].values)
    assert not np.array_equal(a.ramps["data"].values, c.ramps["data"].values)


def test_ramps_grow_at_the_true_rate():
    sim = simulate((1, 10, 64, 64), seed=1, cr_probability=0.0, bad_pixel_fraction=0.0, max_source_rate=50.0)
    data = sim.ramps["data"].values[0] - sim.ramps["superbias"].values
    t = sim.ramps.attrs["group_time"]
    slope = (data[-1] - data[0]) / (9 * t)
    # median error of the two-point slope is well below the read noise per 100 s
    resid = slope - sim.truth["rate"].values
    assert abs(np.median(resid)) < 0.05
    assert np.std(resid) < 0.5


def test_injected_jumps_are_steps_of_their_amplitude():
    sim = simulate((2, 6, 48, 48), seed=2, cr_probability=0.02, max_source_rate=10.0, bad_pixel_fraction=0.0)
    jumps = sim.truth["jumps"].values
    assert jumps.sum() > 50
    assert not jumps[:, 0].any(), "no jump can be seen in the first group"
    i, g, y, x = np.nonzero(jumps)
    data = sim.ramps["data"].values
    step = data[i, g, y, x] - data[i, g - 1, y, x]
    amp = sim.truth["jump_dn"].values[i, g, y, x]
    # the step is the jump plus ~10 DN/s * 10.7 s of signal and read noise
    assert np.median(step - amp) == pytest.approx(10.7 * np.median(sim.truth["rate"].values[y, x]), abs=15)


def test_bright_sources_saturate_and_bad_pixels_are_flagged():
    sim = simulate((1, 10, 128, 128), seed=3, bad_pixel_fraction=1e-3)
    assert sim.truth["saturates"].values.any()
    sat_pix = sim.truth["saturates"].values[0]
    assert (sim.ramps["data"].values[0, -1][sat_pix] >= sim.ramps["saturation"].values[sat_pix]).all()
    pdq = sim.ramps["pixeldq"].values
    assert ((pdq & DQ.DEAD) > 0).sum() == sim.truth["dead"].values.sum() > 0
    assert ((pdq & DQ.HOT) > 0).sum() == sim.truth["hot"].values.sum() > 0
    assert sim.ramps["data"].values.max() <= 65535


def test_chunks_give_pixel_chunked_dask_arrays():
    sim = simulate((2, 3, 20, 30), seed=0, chunks=(7, 11))
    assert sim.ramps["data"].chunks == ((2,), (3,), (7, 7, 6), (11, 11, 8))
    assert sim.ramps["gain"].chunks == ((7, 7, 6), (11, 11, 8))


def test_bad_shape_is_refused():
    with pytest.raises(ValueError, match="shape"):
        simulate((1, 0, 10, 10))
