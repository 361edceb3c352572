"""Importing this module sets numba's CPU compiler up in this process.

For the process that forks an embedded cluster's workers (:func:`daskcal.cluster.preload_workers`):
the first kernel a process calls, even one loaded from numba's cache, first loads numba's typing and
lowering registries (numba's array, linear algebra and typed-container implementations, scipy's
BLAS bindings): 0.3-0.6 s of each worker's first task here, against 20-40 ms for the task itself.
Compiling and calling one small function does it once in the fork server, before any worker is
forked (no thread is started, nothing is written: it is not cached).
"""

import numba
import numpy as np


@numba.njit(cache=False)
def _ready(values):
    return values.sum()


_ready(np.ones(2))
