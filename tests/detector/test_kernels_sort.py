"""sort_head, the detector kernels' in-place sort, against numpy's sort."""

from __future__ import annotations

import numpy as np
import pytest

from daskcal.detector._kernels_sort import INSERTION_MAX, sort_head


@pytest.mark.parametrize("n", [0, 1, 2, 3, 17, INSERTION_MAX, INSERTION_MAX + 1, 300, 5000])
@pytest.mark.parametrize("kind", ["normal", "ties", "sorted", "reversed", "constant", "inf"])
def test_sort_head_equals_numpy(n, kind):
    rng = np.random.default_rng(n)
    values = {
        "normal": rng.normal(0.0, 100.0, n),
        "ties": np.round(rng.normal(0.0, 3.0, n)),
        "sorted": np.arange(n, dtype=np.float64),
        "reversed": np.arange(n, 0, -1, dtype=np.float64),
        "constant": np.full(n, 7.0),
        "inf": np.where(rng.random(n) < 0.2, np.inf, -rng.exponential(1.0, n)),
    }[kind]
    tail = rng.normal(size=5)
    buf = np.concatenate([values, tail])
    sort_head(buf, n)
    np.testing.assert_array_equal(buf[:n], np.sort(values))
    np.testing.assert_array_equal(buf[n:], tail)  # the rest of the buffer is left alone
