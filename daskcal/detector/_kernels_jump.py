"""Numba kernels for two-point-difference jump detection (kernel layer).

Every kernel works on flat ``(nints, ngroups, npix)`` arrays (``flag_neighbors`` on
``(nplanes, ny, nx)`` planes) and writes into an ``out`` array. Behaviour follows
``stcal.jump.twopoint_difference`` (stcal 1.20) as JWST calls it (equal group
spacing, ``n_reads_groupdiff = 2 * nframes``), including its floating-point types:
data and read noise are scaled to electrons in the input precision, differences of
absolute values minus the median are rounded to float32 before the ratio, and
medians after the first iteration are rounded to float32.

Pixel-local statistics use all integrations of a pixel together (the medians
run over integrations and groups), as stcal does.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from daskcal.detector._kernels_sort import sort_head
from daskcal.dq import DQ

__all__ = ["primary_jumps", "neighbor_sources", "flag_neighbors", "after_jump_flags", "clear_flagged_jumps"]

_JUMP = int(DQ.JUMP_DET)
_BAD = int(DQ.SATURATED | DQ.DO_NOT_USE)
_NOT_JUMP = 0xFF ^ _JUMP


@njit(nogil=True, cache=True)
def _has_jump(gdq, p):  # pragma: no cover - compiled
    """Whether any group after the first of pixel ``p`` carries JUMP_DET."""
    nints, ngroups, _ = gdq.shape
    for i in range(nints):
        for grp in range(1, ngroups):
            if gdq[i, grp, p] & _JUMP:
                return True
    return False


@njit(nogil=True, cache=True)
def _pixel_diffs(data, gdq, gain, p, diffs):  # pragma: no cover - compiled
    """First differences of pixel ``p`` in electrons; NaN where either group is SATURATED/DO_NOT_USE."""
    nints, ngroups, _ = data.shape
    nd = ngroups - 1
    for i in range(nints):
        prev = data[i, 0, p] * gain
        prev_bad = (gdq[i, 0, p] & _BAD) != 0
        for g in range(1, ngroups):
            cur = data[i, g, p] * gain
            cur_bad = (gdq[i, g, p] & _BAD) != 0
            diffs[i * nd + g - 1] = np.nan if (prev_bad or cur_bad) else cur - prev
            prev = cur
            prev_bad = cur_bad


@njit(nogil=True, cache=True)
def _sort_finite(vals, buf):  # pragma: no cover - compiled
    """Sort the non-NaN values of ``vals`` into ``buf[:n]``; return ``n``.

    Short ramps (the usual case) are placed by rank without branches, which is
    several times faster than a comparison sort; ``buf`` needs ``2 * vals.size``.
    """
    m = vals.size
    n = np.int64(0)  # a literal 0 would compile sort_head twice (for Literal[int](0), then int64)
    for k in range(m):
        v = vals[k]
        if v == v:
            buf[m + n] = v
            n += 1
    if n > 16:
        for k in range(n):
            buf[k] = buf[m + k]
        sort_head(buf, n)
        return n
    for k in range(n):
        v = buf[m + k]
        rank = 0
        for j in range(n):
            w = buf[m + j]
            rank += (w < v) | ((w == v) & (j < k))
        buf[rank] = v
    return n


@njit(nogil=True, cache=True)
def _median_sorted(buf, n):  # pragma: no cover - compiled
    if n == 0:
        return np.nan
    h = n // 2
    if n % 2 == 1:
        return buf[h]
    return (buf[h - 1] + buf[h]) / 2.0


@njit(nogil=True, cache=True)
def _plain_median(vals, buf):  # pragma: no cover - compiled
    """``np.nanmedian`` of ``vals`` (NaN if none is finite)."""
    return _median_sorted(buf, _sort_finite(vals, buf))


@njit(nogil=True, cache=True)
def _clipped_median(vals, buf):  # pragma: no cover - compiled
    """stcal's ``calc_med_first_diffs`` for one pixel; returns (median, number of usable values).

    4+ usable: drop every value equal to the largest, median of the rest;
    3: median; 2: the smaller; fewer: NaN.
    """
    n = _sort_finite(vals, buf)
    if n < 2:
        return np.nan, n
    if n == 2:
        return buf[0], n
    if n == 3:
        return buf[1], n
    m = n
    while m > 0 and buf[m - 1] == buf[n - 1]:
        m -= 1
    return _median_sorted(buf, m), n


@njit(nogil=True, cache=True)
def _sigma(med, var_rn):  # pragma: no cover - compiled
    """Noise of one difference in electrons; NaN instead of 0 so such pixels are never flagged."""
    s = np.sqrt(np.abs(med) + var_rn)
    return np.nan if s == 0.0 else s


@njit(nogil=True, cache=True)
def primary_jumps(  # pragma: no cover - compiled
    data, gdq, gain, rnoise, nframes, thr_normal, thr_3diff, thr_2diff, single_pass, out
):
    """Flag primary jumps pixel by pixel (JUMP_DET at the later group of a difference).

    Parameters
    ----------
    data : ndarray, float, shape (nints, ngroups, npix)
        Ramps in DN (bias-subtracted), ngroups >= 2.
    gdq : ndarray, uint8, shape (nints, ngroups, npix)
        Group DQ; SATURATED / DO_NOT_USE groups are not used.
    gain, rnoise : ndarray, shape (npix,)
        Gain (e-/DN) and CDS read noise (DN).
    nframes : int
        Frames averaged per group (read variance of a difference is rn**2 / nframes).
    thr_normal, thr_3diff, thr_2diff : float
        Rejection thresholds in sigma for 4+, exactly 3 and exactly 2 usable
        differences (stcal's rejection, four-group and three-group thresholds).
    single_pass : bool
        True: flag every difference beyond ``thr_normal`` from the plain median in
        one pass (stcal with >= 10 usable differences). False: iterate, clipping
        the largest outlier each time.
    out : ndarray, uint8, shape (nints, ngroups, npix)
        Must hold a copy of ``gdq`` on entry; JUMP_DET is added.
    """
    nints, ngroups, npix = data.shape
    nd = ngroups - 1
    ntot = nints * nd
    diffs = np.empty(ntot)
    absd = np.empty(ntot)
    buf = np.empty(2 * ntot)
    for p in range(npix):
        g = gain[p]
        rn = rnoise[p] * g
        var_rn = np.float64(rn * rn) / nframes
        _pixel_diffs(data, gdq, g, p, diffs)
        if single_pass:
            med = _plain_median(diffs, buf)
            sig = _sigma(med, var_rn)
            for k in range(ntot):
                if np.abs(diffs[k] - med) / sig > thr_normal:
                    out[k // nd, k % nd + 1, p] |= _JUMP
            continue
        for k in range(ntot):
            absd[k] = np.abs(diffs[k])
        first = True
        while True:
            med, n = _clipped_median(absd, buf)  # leaves the usable values sorted in buf[:n]
            if n < 2:
                break
            if not first:
                med = np.float64(np.float32(med))
            sig = _sigma(med, var_rn)
            thr = thr_normal if n >= 4 else (thr_3diff if n == 3 else thr_2diff)
            # |round32(a - med)| / sig is monotone in a on either side of med, so the
            # largest ratio belongs to the smallest or the largest usable value.
            lo = np.abs(np.float64(np.float32(buf[0] - med))) / sig
            hi = np.abs(np.float64(np.float32(buf[n - 1] - med))) / sig
            rmax = max(lo, hi)
            if not rmax > thr:
                break
            for k in range(ntot):
                if np.abs(np.float64(np.float32(absd[k] - med))) / sig == rmax:
                    out[k // nd, k % nd + 1, p] |= _JUMP
                    absd[k] = np.nan
            first = False


@njit(nogil=True, cache=True)
def neighbor_sources(data, gdq, gain, rnoise, nframes, lo, hi, out):  # pragma: no cover - compiled
    """Mark jumps whose neighbours are to be flagged: lo < |diff - median| / sigma < hi.

    Parameters
    ----------
    data, gain, rnoise, nframes
        As for :func:`primary_jumps`.
    gdq : ndarray, uint8, shape (nints, ngroups, npix)
        Group DQ after primary detection.
    lo, hi : float
        ``min_jump_to_flag_neighbors`` and ``max_jump_to_flag_neighbors`` in sigma.
    out : ndarray, uint8, shape (nints, ngroups, npix)
        Zero on entry; 1 where a jump is a neighbour source.

    Notes
    -----
    The median is the plain median of all the pixel's signed differences and
    sigma is computed from it (stcal's ``median_diffs`` / ``sigma``).
    """
    nints, ngroups, npix = data.shape
    nd = ngroups - 1
    diffs = np.empty(nints * nd)
    buf = np.empty(2 * nints * nd)
    for p in range(npix):
        if not _has_jump(gdq, p):
            continue
        g = gain[p]
        rn = rnoise[p] * g
        _pixel_diffs(data, gdq, g, p, diffs)
        med = _plain_median(diffs, buf)
        sig = _sigma(med, np.float64(rn * rn) / nframes)
        for i in range(nints):
            for grp in range(1, ngroups):
                if gdq[i, grp, p] & _JUMP:
                    r = np.abs(diffs[i * nd + grp - 1] - med) / sig
                    if r < hi and r > lo:
                        out[i, grp, p] = 1


@njit(nogil=True, cache=True)
def flag_neighbors(src, out):  # pragma: no cover - compiled
    """Add JUMP_DET to the 4 neighbours of every source pixel that are not SATURATED/DO_NOT_USE.

    Parameters
    ----------
    src : ndarray, uint8, shape (nplanes, ny, nx)
        Nonzero at neighbour sources (from :func:`neighbor_sources`).
    out : ndarray, uint8, shape (nplanes, ny, nx)
        Group DQ, updated in place.
    """
    nplanes, ny, nx = src.shape
    for k in range(nplanes):
        for y in range(ny):
            for x in range(nx):
                if src[k, y, x] == 0:
                    continue
                if y > 0 and (out[k, y - 1, x] & _BAD) == 0:
                    out[k, y - 1, x] |= _JUMP
                if y < ny - 1 and (out[k, y + 1, x] & _BAD) == 0:
                    out[k, y + 1, x] |= _JUMP
                if x > 0 and (out[k, y, x - 1] & _BAD) == 0:
                    out[k, y, x - 1] |= _JUMP
                if x < nx - 1 and (out[k, y, x + 1] & _BAD) == 0:
                    out[k, y, x + 1] |= _JUMP


@njit(nogil=True, cache=True)
def after_jump_flags(data, gdq, gain, e1, n1, e2, n2, out):  # pragma: no cover - compiled
    """Flag groups after large jumps (stcal's ``transient_jumps``).

    A jump whose difference exceeds the pixel's plain median difference by at
    least ``e1`` (``e2``) electrons also flags the next ``n1`` (``n2``) groups,
    except SATURATED/DO_NOT_USE ones.

    Parameters
    ----------
    data, gain
        As for :func:`primary_jumps`.
    gdq : ndarray, uint8, shape (nints, ngroups, npix)
        Group DQ after primary and neighbour flagging.
    e1, e2 : float
        Amplitude thresholds in electrons.
    n1, n2 : int
        Groups to flag after such a jump.
    out : ndarray, uint8, shape (nints, ngroups, npix)
        Must hold a copy of ``gdq`` on entry (may be ``gdq`` itself); JUMP_DET is added.
    """
    nints, ngroups, npix = data.shape
    nd = ngroups - 1
    j1 = min(n1, ngroups - 2)
    j2 = min(n2, ngroups - 2)
    diffs = np.empty(nints * nd)
    buf = np.empty(2 * nints * nd)
    until = np.empty(ngroups, dtype=np.int64)
    for p in range(npix):
        if not _has_jump(gdq, p):
            continue
        _pixel_diffs(data, gdq, gain[p], p, diffs)
        med = _plain_median(diffs, buf)
        for i in range(nints):
            last = -1  # last group to flag so far
            until[0] = last
            for grp in range(1, ngroups):
                if gdq[i, grp, p] & _JUMP:
                    e = diffs[i * nd + grp - 1] - med
                    if e >= e1 and j1 > 0:
                        last = max(last, grp + j1)
                    if e >= e2 and j2 > 0:
                        last = max(last, grp + j2)
                until[grp] = last
            for grp in range(1, ngroups):
                if until[grp - 1] >= grp and (gdq[i, grp, p] & _BAD) == 0:
                    out[i, grp, p] |= _JUMP


@njit(nogil=True, cache=True)
def clear_flagged_jumps(gdq):  # pragma: no cover - compiled
    """Remove JUMP_DET where SATURATED or DO_NOT_USE is also set (in place, any shape)."""
    flat = gdq.reshape(-1)
    for k in range(flat.size):
        f = flat[k]
        if (f & _JUMP) and (f & _BAD):
            flat[k] = f & _NOT_JUMP
