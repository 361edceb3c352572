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


def test_compute_weight_threshold_empty():
    assert np.isnan(K.compute_weight_threshold(np.zeros((3, 3), np.float32), 0.7))


def test_shape_mismatch_is_an_error():
    a = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match="one shape"):
        K.flag_resampled_crs(a, a, np.zeros((4, 3), np.float32), 5, 4, 1.2, 0.7, 0)
