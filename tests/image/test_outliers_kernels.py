"""Outlier-flagging kernels against stcal 1.20's utilities: exact mask equality."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from daskcal.image import _outlier_kernels as K

U = pytest.importorskip("stcal.outlier_detection.utils")


def _random_triplet(rng, shape, dtype=np.float32, specials=True):
    sci = rng.normal(0, 1, shape).astype(dtype)
    blot = rng.normal(0, 1, shape).astype(dtype)
    err = rng.uniform(0.1, 1, shape).astype(dtype)
    if specials:
        for a in (sci, blot, err):
            a[rng.random(shape) < 0.05] = np.nan
        blot[rng.random(shape) < 0.02] = np.inf
        err[rng.random(shape) < 0.02] = np.inf
        sci[rng.random(shape) < 0.02] = -np.inf
    return sci, err, blot


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flag_resampled_crs_random(seed, dtype):
    rng = np.random.default_rng(seed)
    shape = tuple(int(s) for s in rng.integers(1, 70, 2))
    sci, err, blot = _random_triplet(rng, shape, dtype)
    snr1, snr2, scale1, scale2, backg = 5.0 * rng.random(), 4.0 * rng.random(), 1.2, 0.7, 0.1 * seed
    with np.errstate(all="ignore"):
        expected = U.flag_resampled_crs(sci, err, blot, snr1, snr2, scale1, scale2, backg)
        deriv = U._abs_deriv(blot)
    np.testing.assert_array_equal(K.abs_derivative(blot), deriv)
    np.testing.assert_array_equal(K.flag_resampled_crs(sci, err, blot, snr1, snr2, scale1, scale2, backg), expected)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(K.flag_crs(sci, err, blot, snr1), U.flag_crs(sci, err, blot, snr1))


@settings(max_examples=80, deadline=None)
@given(
    arrays=st.integers(1, 12).flatmap(
        lambda ny: st.integers(1, 12).flatmap(
            lambda nx: st.tuples(
                *[hnp.arrays(np.float32, (ny, nx), elements=st.floats(-50, 50, width=32) | st.just(np.nan)) for _ in range(3)]
            )
        )
    ),
    snr=st.floats(0, 6),
)
def test_flag_resampled_crs_property(arrays, snr):
    sci, err, blot = arrays
    with np.errstate(all="ignore"):
        expected = U.flag_resampled_crs(sci, err, blot, snr, snr * 0.8, 1.2, 0.7, 0.0)
    np.testing.assert_array_equal(K.flag_resampled_crs(sci, err, blot, snr, snr * 0.8, 1.2, 0.7, 0.0), expected)


def test_flag_on_simulated_exposure():
    from scipy import ndimage

    from daskcal.image._simulate import simulate_images

    sim = simulate_images(1, (96, 80), seed=2, cosmic_rays=30)
    ds = sim.images[0]
    sci = ds["data"].values
    err = ds["err"].values
    blot = ndimage.gaussian_filter(sci, 1.0).astype(np.float32)
    expected = U.flag_resampled_crs(sci, err, blot, 5.0, 4.0, 1.2, 0.7, 0.0)
    got = K.flag_resampled_crs(sci, err, blot, 5.0, 4.0, 1.2, 0.7, 0.0)
    np.testing.assert_array_equal(got, expected)
    assert got.any()
    np.testing.assert_array_equal(K.flag_crs(sci, err, blot, 5.0), U.flag_crs(sci, err, blot, 5.0))


@pytest.mark.parametrize("seed", range(8))
def test_compute_weight_threshold(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 80)), int(rng.integers(1, 80)))
    w = rng.gamma(5, 1, shape).astype(np.float32 if seed % 2 else np.float64)
    w[rng.random(shape) < 0.2] = 0
    w[rng.random(shape) < 0.01] = 50
    w[rng.random(shape) < 0.01] = np.nan
    maskpt = 0.7
    t_ref = U.compute_weight_threshold(w, maskpt)
    t = K.compute_weight_threshold(w, maskpt)
    assert t == t_ref
    np.testing.assert_array_equal(w < t, w < t_ref)


@pytest.mark.parametrize("seed", range(4))
def test_compute_weight_threshold_quantised_weights(seed):
    """Many equal weights (ivm weights of a few read-noise levels, exptime weights): ties at the median and
    at the clipping bounds, where a median off by one rank would change the threshold."""
    rng = np.random.default_rng(seed)
    w = rng.choice(np.float32([0.5, 1.0, 1.0, 2.0, 2.5, 40.0]), size=(300, 211))
    w[rng.random(w.shape) < 0.1] = 0
    t_ref = U.compute_weight_threshold(w, 0.7)
    assert K.compute_weight_threshold(w, 0.7) == t_ref


@pytest.mark.parametrize("seed", range(10))
def test_median_float32_equals_numpy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 5000)) + seed % 2
    kinds = [
        rng.normal(0, 1, n),
        rng.integers(-3, 4, n),  # ties
        rng.lognormal(0, 8, n) * rng.choice([-1, 1], n),  # both signs, wide exponents
        np.concatenate([rng.normal(1e-40, 1e-41, n), [0.0, -0.0, np.inf, -np.inf]]),  # subnormals, zeros, infs
        rng.normal(10, 1e-4, n),  # values sharing their high 16 bits
    ]
    for a in kinds:
        a = np.asarray(a, np.float32)
        expected = np.median(a)
        got = K.median_float32(a)
        assert got.dtype == np.float32
        assert got == expected or (np.isnan(got) and np.isnan(expected)), (a.size, got, expected)


def test_add_sums_and_group_means():
    rng = np.random.default_rng(3)
    num, wsum = np.zeros((6, 7)), np.zeros((6, 7))
    swd, wht = rng.normal(size=(3, 4)), rng.uniform(0, 2, (3, 4))
    wht[0, 0], swd[0, 0] = 0.0, 5.0  # no weight: nothing added
    K.add_sums(num, wsum, 2, 1, swd, wht)
    K.add_sums(num, wsum, 3, 2, swd, wht)
    exp_num, exp_w = np.zeros((6, 7)), np.zeros((6, 7))
    for y0, x0 in ((2, 1), (3, 2)):
        exp_num[y0:y0 + 3, x0:x0 + 4] += np.where(wht != 0, swd, 0)
        exp_w[y0:y0 + 3, x0:x0 + 4] += wht
    np.testing.assert_array_equal(num, exp_num)
    np.testing.assert_array_equal(wsum, exp_w)
    img, w32 = np.empty((6, 7), np.float32), np.empty((6, 7), np.float32)
    K.group_means(num, wsum, np.float32(np.nan), img, w32)
    covered = exp_w.astype(np.float32) != 0
    np.testing.assert_array_equal(w32, exp_w.astype(np.float32))
    np.testing.assert_array_equal(img[covered], (exp_num[covered] / exp_w[covered]).astype(np.float32))
    assert np.isnan(img[~covered]).all()


def test_compute_weight_threshold_empty():
    assert np.isnan(K.compute_weight_threshold(np.zeros((3, 3), np.float32), 0.7))


def test_shape_mismatch_is_an_error():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="one shape"):
        K.flag_resampled_crs(a, a, np.zeros((4, 3), np.float32), 5, 4, 1.2, 0.7, 0)
