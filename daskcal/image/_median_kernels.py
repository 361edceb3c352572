"""The NaN-ignoring median of a stack of frames, for Dask blocks.

:func:`nanmedian_stack` equals :func:`numpy.nanmedian` along axis 0 bit for bit:
for an odd number ``m`` of non-NaN values the median is ``(v[m//2] + v[m//2]) / 2``
and for an even number ``(v[m//2-1] + v[m//2]) / 2``, both evaluated in the
array's own float type, exactly as numpy's masked-array median (the path
``np.nanmedian`` takes for fewer than 600 frames) does it. All-NaN columns give NaN.

Float stacks go through the numpy sorting network of
:func:`daskcal.image._median.nanmedian_frames` (9x faster than the per-pixel
insertion sort this module compiled with numba before, and serial: a Dask task runs it).
"""

from __future__ import annotations

import warnings

import numpy as np

from daskcal.image._median import nanmedian_frames

__all__ = ["nanmedian_stack"]


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
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
            warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
            out[...] = np.nanmedian(stack, axis=0)
        return out
    if out.flags.c_contiguous and out.dtype == stack.dtype:
        return nanmedian_frames(stack, out)
    out[...] = nanmedian_frames(stack)
    return out
