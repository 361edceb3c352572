"""An in-place sort shared by the detector kernels (kernel layer).

numba's own ``np.sort`` / ``ndarray.sort`` compile a generic quicksort and, for the
slice they are given, numba's error-message machinery: 2-4 s of compiling for each
kernel that calls them on a first run. :func:`sort_head` compiles in a fraction of
that and is faster for the few to few hundred values of one pixel's ramp:
insertion sort up to :data:`INSERTION_MAX` values (half the time of numba's sort
for 18-118 values), median-of-three quicksort above it (the same speed).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["INSERTION_MAX", "sort_head"]

#: Longest input sorted by insertion alone (its O(n^2) overtakes quicksort at ~150).
INSERTION_MAX = 128
#: Partitions this short are left to the final insertion pass.
_CUTOFF = 16


@njit(nogil=True, cache=True)
def _insertion(buf, n):  # pragma: no cover - compiled
    for a in range(1, n):
        x = buf[a]
        b = a - 1
        while b >= 0 and buf[b] > x:
            buf[b + 1] = buf[b]
            b -= 1
        buf[b + 1] = x


@njit(nogil=True, cache=True)
def sort_head(buf, n):  # pragma: no cover - compiled
    """Sort ``buf[:n]`` in place, ascending; ``buf[:n]`` holds no NaN.

    Longer inputs are cut by an iterative median-of-three quicksort (Hoare
    partition) into runs of at most ``_CUTOFF`` values, each no larger than the
    next, that one insertion pass then sorts.
    """
    if n > INSERTION_MAX:
        stack = np.empty(128, np.int64)  # the smaller side is sorted first: depth <= log2(n)
        top = 0
        lo = np.int64(0)
        hi = np.int64(n - 1)
        while True:
            if hi - lo > _CUTOFF:
                mid = (lo + hi) >> 1
                a, b, c = buf[lo], buf[mid], buf[hi]
                if b < a:
                    a, b = b, a
                if c < b:
                    b, c = c, b
                    if b < a:
                        a, b = b, a
                buf[lo], buf[mid], buf[hi] = a, b, c
                i, j = lo, hi
                while True:  # buf[lo] <= b <= buf[hi] stop both scans
                    i += 1
                    while buf[i] < b:
                        i += 1
                    j -= 1
                    while b < buf[j]:
                        j -= 1
                    if i >= j:
                        break
                    buf[i], buf[j] = buf[j], buf[i]
                # buf[lo:j + 1] <= b <= buf[j + 1:hi + 1]: push the larger side, go on with the smaller
                if j - lo > hi - j:
                    stack[top], stack[top + 1] = lo, j
                    lo = j + 1
                else:
                    stack[top], stack[top + 1] = j + 1, hi
                    hi = j
                top += 2
            elif top == 0:
                break
            else:
                top -= 2
                lo, hi = stack[top], stack[top + 1]
    _insertion(buf, n)
