"""The simulated image WCS: its fitted inverse distortion is accurate and fitted without warnings."""

import warnings

import numpy as np
import pytest

from daskcal.image._simulate import _distortion_model, simulate_images


@pytest.mark.parametrize(("shape", "distortion", "tol"), [
    ((2048, 2048), 2.0, 1e-4),  # the module's promise: 1e-4 px
    ((512, 512), 2.0, 1e-4),    # simulate_images' defaults
    ((512, 512), 5.0, 1e-2),
    ((300, 200), 0.0, 1e-9),
])
def test_inverse_distortion_round_trips(shape, distortion, tol):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fit may be poorly conditioned"
        model = _distortion_model(shape, distortion)
    ny, nx = shape
    y, x = np.mgrid[0:ny - 1:61j, 0:nx - 1:59j]  # pixel centres across the array
    u, v = model(x, y)
    assert np.ptp(u - x) >= distortion  # the distortion is there
    xb, yb = model.inverse(u, v)
    assert np.max(np.hypot(xb - x, yb - y)) < tol


def test_simulate_images_warns_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sim = simulate_images(3, seed=2)
    assert len(sim.images) == 3
