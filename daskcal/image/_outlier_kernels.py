"""Outlier-flagging kernels: comparisons of an exposure with its blotted median.

Numba loops over 2-D arrays with an ``out`` argument (compiled ``nogil``) plus
thin numpy wrappers. They reproduce stcal 1.20's
``stcal.outlier_detection.utils.flag_crs``, ``flag_resampled_crs`` and
``compute_weight_threshold`` mask for mask, including their float32 arithmetic:

- ``flag_crs``: ``|sci - blot| > snr * err`` (NaN errors count as 0).
- ``flag_resampled_crs``: with ``d = |sci - blot - backg|`` and ``D`` the largest
  absolute difference of ``blot`` with its four neighbours, a pixel is an outlier
  when ``d > scale2*D + snr2*err`` and some pixel of its 3x3 neighbourhood has
  ``d > scale1*D + snr1*err``.
- ``compute_weight_threshold``: ``maskpt`` times the mean of the finite, non-zero
  weights after 3-sigma clipping about the median (at most 5 iterations).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["flag_crs", "flag_resampled_crs", "compute_weight_threshold", "abs_derivative"]


@numba.njit(nogil=True, cache=True)
def _abs_deriv_kernel(a, out):
    """Largest |a - neighbour| over the 4 neighbours (NaN where ``a`` is NaN, 0 if none).

    Mirrors stcal's ``_abs_deriv`` exactly, including that an infinite difference
    with the row above is ignored while one with the row below or a column
    neighbour is kept.
    """
    ny, nx = a.shape
    zero = a.dtype.type(0)
    for i in range(ny):
        for j in range(nx):
            v = a[i, j]
            if v != v:
                out[i, j] = v
                continue
            m = zero
            if i > 0:
                d = abs(v - a[i - 1, j])
                if np.isfinite(d):
                    m = d
            if i + 1 < ny:
                d = abs(a[i + 1, j] - v)
                if d > m:
                    m = d
            if j > 0:
                d = abs(v - a[i, j - 1])
                if d > m:
                    m = d
            if j + 1 < nx:
                d = abs(a[i, j + 1] - v)
                if d > m:
                    m = d
            out[i, j] = m
    return out


@numba.njit(nogil=True, cache=True)
def _resampled_crs_kernel(sci, err, blot, deriv, snr1, snr2, scale1, scale2, backg, big, out):
    """Two-threshold outlier mask with 3x3 growth of the first mask into ``out`` (bool)."""
    ny, nx = sci.shape
    first = np.zeros((ny, nx), dtype=np.bool_)
    second = np.zeros((ny, nx), dtype=np.bool_)
    for i in range(ny):
        for j in range(nx):
            e = err[i, j]
            if e != e:  # as np.nan_to_num: NaN -> 0, +-inf -> +-largest finite
                e = big - big
            elif e == np.inf:
                e = big
            elif e == -np.inf:
                e = -big
            d = abs(sci[i, j] - blot[i, j] - backg)
            first[i, j] = d > scale1 * deriv[i, j] + snr1 * e
            second[i, j] = d > scale2 * deriv[i, j] + snr2 * e
    for i in range(ny):
        for j in range(nx):
            if not second[i, j]:
                out[i, j] = False
                continue
            hit = False
            for ii in range(max(i - 1, 0), min(i + 2, ny)):
                for jj in range(max(j - 1, 0), min(j + 2, nx)):
                    if first[ii, jj]:
                        hit = True
            out[i, j] = hit
    return out


def _common_dtype(*arrays):
    dt = np.result_type(*arrays)
    if dt.kind != "f":
        dt = np.dtype(np.float64)
    return dt


def abs_derivative(blot):
    """Largest absolute difference of each pixel with its 4 neighbours (stcal's ``_abs_deriv``).

    Parameters
    ----------
    blot : ndarray, shape (ny, nx)
        Image (float). NaN pixels give NaN.

    Returns
    -------
    ndarray
        Same shape and dtype as ``blot``.
    """
    blot = np.asarray(blot)
    if not np.issubdtype(blot.dtype, np.floating):
        blot = blot.astype(np.float64)
    return _abs_deriv_kernel(np.ascontiguousarray(blot), np.empty(blot.shape, blot.dtype))


def flag_crs(sci_data, sci_err, blot_data, snr):
    """Outliers of an exposure against a reference on its own grid.

    Parameters
    ----------
    sci_data, sci_err, blot_data : ndarray, shape (ny, nx)
        Exposure, its total error (same unit; NaN counts as 0) and the reference
        (the median of the exposures).
    snr : float
        Threshold in units of ``sci_err``.

    Returns
    -------
    ndarray of bool
        True where ``|sci_data - blot_data| > snr * sci_err``.
    """
    sci, err, blot = (np.asarray(a) for a in (sci_data, sci_err, blot_data))
    _check_shapes(sci, err, blot)
    with np.errstate(invalid="ignore", over="ignore"):
        return np.greater(np.abs(sci - blot), snr * np.nan_to_num(err))


def flag_resampled_crs(sci_data, sci_err, blot_data, snr1, snr2, scale1, scale2, backg):
    """Outliers of an exposure against a blotted median, with derivative term and 3x3 growth.

    Parameters
    ----------
    sci_data, sci_err, blot_data : ndarray, shape (ny, nx)
        Exposure, its total error (NaN counts as 0) and the blotted median, all
        in the unit of the data.
    snr1, snr2 : float
        Thresholds in units of ``sci_err`` before and after growing the mask.
    scale1, scale2 : float
        Multipliers of the blot's absolute derivative before and after growing.
    backg : float
        Background subtracted from the difference (unit of the data).

    Returns
    -------
    ndarray of bool
        The outlier mask.
    """
    sci, err, blot = (np.asarray(a) for a in (sci_data, sci_err, blot_data))
    _check_shapes(sci, err, blot)
    dt = _common_dtype(sci, err, blot)
    sci, err, blot = (np.ascontiguousarray(a, dtype=dt) for a in (sci, err, blot))
    deriv = abs_derivative(blot)
    t = dt.type
    out = np.empty(sci.shape, dtype=bool)
    big = t(np.finfo(dt).max)
    _resampled_crs_kernel(sci, err, blot, deriv, t(snr1), t(snr2), t(scale1), t(scale2), t(backg), big, out)
    return out


def compute_weight_threshold(weight, maskpt):
    """Weight below which a resampled pixel is ignored: ``maskpt`` x the clipped mean weight.

    Parameters
    ----------
    weight : ndarray
        Drizzle weights of one exposure group on the output grid (any shape).
    maskpt : float
        Fraction of the mean weight (0.7 in the reference).

    Returns
    -------
    float
        ``maskpt`` times the mean (float64) of the finite, non-zero weights left
        after iterative 3-sigma clipping about the median with the standard
        deviation (at most 5 iterations); NaN when there is no such weight.
    """
    w = np.asarray(weight).ravel()
    w = w[np.isfinite(w) & (w != 0)]
    if w.size == 0:
        return np.nan
    for _ in range(5):
        cen = np.nanmedian(w)
        std = np.nanstd(w)
        keep = (w >= cen - std * 3.0) & (w <= cen + std * 3.0)
        if keep.all():
            break
        w = w[keep]
        if w.size == 0:
            return np.nan
    return float(np.mean(w, dtype="f8")) * maskpt


def _check_shapes(*arrays):
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2:
        msg = f"sci_data, sci_err and blot_data must be 2-D arrays of one shape; got {[a.shape for a in arrays]}"
        raise ValueError(msg)
