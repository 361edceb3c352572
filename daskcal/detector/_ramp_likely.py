"""Likelihood ramp fitting (stcal ``LIKELY``, Brandt 2024): the block layer.

:func:`likely_block` fits one in-memory chunk with the kernels of
:mod:`daskcal.detector._kernels_likely` (rate guesses, jump search, final fit, each
with the covariance scales of :func:`covariance_scales`) and returns the same
stacked planes as the OLS block (:func:`daskcal.detector._ramp_fit.fit_block`), so
:func:`daskcal.detector._ramp_fit.fit_ramps` and detector1 use either through one graph.
"""

from __future__ import annotations

import functools

import numpy as np

from daskcal.detector import _kernels_likely as _k

__all__ = ["MIN_GROUPS", "ONE_OMIT_THRESHOLD", "TWO_OMIT_THRESHOLD", "covariance_scales", "difference_covariance",
           "likely_block"]

#: Fewest groups the likelihood fit takes (its jump search needs 3 differences).
MIN_GROUPS = 4
#: Least drop of chi squared that leaves out one difference (4.5 sigma squared; stcal's default).
ONE_OMIT_THRESHOLD = 20.25
#: Least drop of chi squared that leaves out two adjacent differences (stcal's default).
TWO_OMIT_THRESHOLD = 23.8
#: Every this many steps (and at the last) the determinant recursion is renormalised.
RESCALE_EVERY = 10


@functools.lru_cache(maxsize=32)
def difference_covariance(ngroups: int, nframes: int, groupgap: int, frame_time: float) -> np.ndarray:
    """Covariance coefficients of the resultant differences of evenly spaced groups (read-only).

    Group ``k`` averages the reads at ``(k * (nframes + groupgap) + j) * frame_time``,
    ``j = 1 .. nframes``. From each group's mean read time ``t``, its variance-weighted
    mean time ``tau`` (paper I, eq. 11) and its number of reads ``N``, the differences
    divided by the times between mean read times ``dt`` have (paper I, eqs. 28-29)

    - diagonal: ``rate / gain * (tau_k + tau_k+1 - 2 t_k) / dt_k**2 + rn**2 (1/N_k + 1/N_k+1) / dt_k**2``,
    - beside it: ``rate / gain * (t_k+1 - tau_k+1) / (dt_k dt_k+1) - rn**2 / (N_k+1 dt_k dt_k+1)``.

    Returns
    -------
    ndarray, float64 (N_COEFF, ngroups - 1)
        Rows ``A_PH, A_RN, B_PH, B_RN`` (the last entry of the two beside-diagonal
        rows is unused), ``DELTA_T`` (s) and ``TWO_OK`` (1 where the resultant between
        differences k and k + 1 has several reads, so both may be left out together).
    """
    reads = np.array([np.arange(1, nframes + 1) + k * (nframes + groupgap) for k in range(ngroups)],
                     dtype=np.float64) * frame_time
    count = np.full(ngroups, float(nframes))
    mean_t = reads.mean(axis=1)
    j = np.arange(1, nframes + 1)
    tau = (reads * (2 * nframes + 1 - 2 * j)).sum(axis=1) / nframes**2
    dt = np.diff(mean_t)
    n = ngroups - 1
    table = np.zeros((_k.N_COEFF, n), dtype=np.float64)
    table[_k.A_PH] = (tau[:-1] + tau[1:] - 2 * mean_t[:-1]) / dt**2
    table[_k.A_RN] = (1 / count[:-1] + 1 / count[1:]) / dt**2
    table[_k.B_PH, :-1] = (mean_t[1:-1] - tau[1:-1]) / (dt[1:] * dt[:-1])
    table[_k.B_RN, :-1] = -1 / (count[1:-1] * dt[1:] * dt[:-1])
    table[_k.DELTA_T] = dt
    table[_k.TWO_OK, :-1] = count[1:-1] > 1
    table.flags.writeable = False
    return table


def covariance_scales(guess, gain, rnoise, coeff) -> np.ndarray:
    """The n-th root of the determinant of each covariance (n differences), float64 like ``guess``.

    ``guess`` (nints, npix) is the rate (DN/s) each covariance assumes, ``gain`` and ``rnoise``
    (npix) its pixel's gain (e-/DN) and single-read noise (DN). The recursion
    (:func:`daskcal.detector._kernels_likely.advance_determinant`) is renormalised every
    :data:`RESCALE_EVERY` steps and at the last by the root of the determinant so far; the roots
    are numpy's ``**``, as stcal takes them, so that the scaled covariances, and the ties their
    rounding decides, are the same.
    """
    n = coeff.shape[1]
    scale = np.ones(guess.shape, dtype=np.float64)
    state = np.empty((2, *guess.shape), dtype=np.float64)
    det = np.empty(guess.shape, dtype=np.float64)
    start = 2
    for stop in [i for i in range(2, n + 1) if i % RESCALE_EVERY == 0 or i == n]:
        _k.advance_determinant(guess, gain, rnoise, coeff, scale, state, start, stop, det)
        root = det ** (1 / stop)
        scale *= root
        state[0] = state[1] / (det / root)
        state[1] = 1.0
        start = stop + 1
    return scale


def likely_block(data, groupdq, pixeldq, gain, readnoise, dark, *, frame_time, nframes, groupgap, out_planes):
    """Likelihood fit of one in-memory chunk (block layer).

    Parameters
    ----------
    data, groupdq : ndarray (nints, ngroups, ny, nx)
        Ramps in DN (bias removed) and group DQ (must fit in uint8); ``ngroups >= 4``.
    pixeldq, gain, readnoise, dark : ndarray (ny, nx)
        Pixel DQ, gain (e-/DN), CDS read noise (DN) and dark current (DN/s).
    frame_time : float
        Seconds.
    nframes, groupgap : int
        Frames averaged per group, frames dropped between groups.
    out_planes : ndarray, float32 (5 * (1 + nints) + 1, ny * nx)
        Receives the planes of :func:`daskcal.detector._ramp_fit.fit_block`.
    """
    nints, ngroups, ny, nx = data.shape
    npix = ny * nx
    flat = (nints, ngroups, npix)
    nvar = 5
    rate = out_planes[:nvar]
    ints = out_planes[nvar:-1].reshape(nvar, nints, npix)
    rn = np.asarray(readnoise, dtype=np.float32).reshape(npix) / np.sqrt(2.0)
    d = np.ascontiguousarray(data, dtype=np.float32).reshape(flat)
    q = np.ascontiguousarray(groupdq, dtype=np.uint8).reshape(flat)
    g = np.ascontiguousarray(gain, dtype=np.float32).reshape(npix)
    coeff = difference_covariance(ngroups, int(nframes), int(groupgap), float(frame_time))
    guess = np.empty((nints, npix), dtype=np.float64)
    _k.rate_guesses(d, q, coeff, guess)
    use = np.empty((nints, ngroups - 1, npix), dtype=np.uint8)
    final_guess = np.empty((nints, npix), dtype=np.float64)
    _k.search_jumps_kernel(d, q, g, rn, np.ascontiguousarray(dark, dtype=np.float32).reshape(npix), coeff,
                           (ONE_OMIT_THRESHOLD, TWO_OMIT_THRESHOLD), guess, covariance_scales(guess, g, rn, coeff),
                           use, final_guess)
    _k.final_fit_kernel(
        d, q, np.ascontiguousarray(pixeldq, dtype=np.uint32).reshape(npix), g, rn, coeff, final_guess,
        covariance_scales(final_guess, g, rn, coeff), use,
        rate, rate[_k.DQ_PLANE].view(np.uint32), ints, ints[_k.DQ_PLANE].view(np.uint32), out_planes[-1],
    )
