"""Numba kernels for the NaN-ignoring median of a stack of frames.

Kernels know only numpy arrays and scalars. Each loops over a ``(nframes, npix)``
view and writes into an ``out`` argument; they are compiled with ``nogil=True``
so several can run at once in Dask worker threads.

The result equals :func:`numpy.nanmedian` along axis 0 bit for bit: for an odd
number ``n`` of finite-or-infinite (non-NaN) values the median is
``(v[n//2] + v[n//2]) / 2`` and for an even number ``(v[n//2-1] + v[n//2]) / 2``,
both evaluated in the array's own float type, exactly as numpy's masked-array
median (the path ``np.nanmedian`` takes for fewer than 600 frames) does it.
All-NaN columns give NaN.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["nanmedian_columns", "nanmedian_stack"]

# Insertion sort beats a general sort for the short columns typical of a stack
# of exposures; longer columns use numba's np.sort.
_INSERTION_MAX = 48


@numba.njit(nogil=True, cache=True)
def _insertion_sort(buf, n):
    for i in range(1, n):
        v = buf[i]
        j = i - 1
        while j >= 0 and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v


@numba.njit(nogil=True, cache=True)
def nanmedian_columns(stack, out):
    """Median over axis 0 of ``stack`` (nframes, npix), ignoring NaN, into ``out`` (npix,).

    Parameters
    ----------
    stack : ndarray, shape (nframes, npix), float32 or float64
        Values; NaN marks a missing value. Not modified.
    out : ndarray, shape (npix,), same dtype as ``stack``
        Receives the medians; NaN where a column has no finite value.
    """
    nframes, npix = stack.shape
    buf = np.empty(nframes, dtype=stack.dtype)
    for j in range(npix):
        n = 0
        for i in range(nframes):
            v = stack[i, j]
            if v == v:  # not NaN
                buf[n] = v
                n += 1
        if n == 0:
            out[j] = np.nan
            continue
        if n <= _INSERTION_MAX:
            _insertion_sort(buf, n)
            s = buf
        else:
            s = np.sort(buf[:n])
        h = n // 2
        lo = s[h - 1] if n % 2 == 0 else s[h]
        total = lo + s[h]  # evaluated in the array's float type
        out[j] = total / 2.0  # exact halving, one rounding: same as numpy
    return out


def nanmedian_stack(stack, out=None):
    """Median over the first axis of ``stack`` ignoring NaN, equal to ``np.nanmedian(stack, axis=0)``.

    Parameters
    ----------
    stack : ndarray, shape (nframes, ...), float32 or float64
        Frames to combine. Not modified. Other dtypes go to ``np.nanmedian``.
    out : ndarray, optional
        Output of shape ``stack.shape[1:]`` and the dtype of ``stack``.

    Returns
    -------
    ndarray
        Median of shape ``stack.shape[1:]``; NaN where every frame is NaN.
    """
    stack = np.asarray(stack)
    if stack.ndim < 1:
        msg = f"stack must have at least one dimension; got shape {stack.shape}"
        raise ValueError(msg)
    frame_shape = stack.shape[1:]
    if out is None:
        out = np.empty(frame_shape, dtype=stack.dtype if stack.dtype.kind == "f" else np.float64)
    if stack.dtype not in (np.float32, np.float64) or stack.shape[0] == 0:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
            warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
            out[...] = np.nanmedian(stack, axis=0)
        return out
    flat = stack.reshape(stack.shape[0], -1)
    if out.flags.c_contiguous and out.dtype == stack.dtype:
        nanmedian_columns(flat, out.reshape(-1))
    else:
        tmp = np.empty(flat.shape[1], dtype=stack.dtype)
        nanmedian_columns(flat, tmp)
        out[...] = tmp.reshape(frame_shape)
    return out
