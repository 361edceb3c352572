"""Numba kernels for OLS ramp fitting with optimal weighting (kernel layer).

The kernels reproduce the arithmetic of stcal 1.20's ``OLS_C`` fitter
(``stcal/ramp_fitting/src/slope_fitter.c``) one pixel at a time over flat
arrays: ``data[integration, group, pixel]`` (float32, DN) and ``groupdq`` of the
same shape (uint8). Everything is computed in float64 and written as float32.

Units: data in DN, rates in DN/s, variances in (DN/s)**2, gain in e-/DN; the
read noise handed to the kernel is ``readnoise * gain / sqrt(2 * nframes)``
(electrons per single read, as stcal scales it); times in s.

The pieces, in the order a pixel goes through them:

* :func:`load_pixel` gathers one pixel's ramp, applies one-good-group
  suppression and sets saturated groups to NaN;
* :func:`median_rate` estimates the pixel's rate from median first differences
  (used only for the Poisson variance);
* :func:`find_segments` cuts one integration into segments of good groups;
* :func:`fit_segment` fits one segment (slope and its two variances);
* :func:`combine_integration` and :func:`finish_rate` combine segments into an
  integration and integrations into the exposure;
* :func:`fit_ramps_kernel` loops over pixels and writes the outputs.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from daskcal.detector._kernels_sort import sort_head

# JWST bit values (same as daskcal.dq.DQ); plain ints so numba sees constants.
DO_NOT_USE = 1
SATURATED = 2
JUMP_DET = 4
PERSISTENCE = 32
CHARGELOSS = 128
NO_GAIN_VALUE = 1 << 19
INVALID = DO_NOT_USE | SATURATED
NOT_PERSISTENCE = 0xFF & ~PERSISTENCE

#: Variances at or above this are reported as 0 (stcal's LARGE_VARIANCE_THRESHOLD).
LARGE_VARIANCE = 1.0e6
#: Lower signal-to-noise bounds of the optimal-weighting exponents (Fixsen et al. 2000);
#: :func:`snr_index` spells them out as comparisons.
SNR_BOUNDS = (5.0, 10.0, 20.0, 50.0, 100.0)
#: Exponents P for S < 5, 5 <= S < 10, ..., S >= 100.
SNR_POWERS = (0.0, 0.4, 1.0, 3.0, 6.0, 10.0)

# rate planes in the float32 output (dq plane is written through a uint32 view)
SLOPE, ERR, DQ_PLANE, VAR_POISSON, VAR_RNOISE = 0, 1, 2, 3, 4

_JIT = {"nogil": True, "cache": True, "error_model": "numpy"}
# The helpers that take and index arrays in the per-pixel path are inlined into the pixel
# loop: numba IR inlining avoids per-call array reference counting (without it the fit ran
# 50% slower). Those of scalars alone, or called once per segment or pixel, are not: LLVM
# inlines the scalar ones anyway, and each IR-inlined helper is typed again inside
# fit_ramps_kernel, which costs compile time on a first run and no run time.
_JIT_INLINE = dict(_JIT, inline="always")


def weight_table(ngroups: int) -> np.ndarray:
    """Optimal weights ``|(i - mid) / mid| ** P`` for every segment length and P.

    Returns float64 ``(ngroups + 1, len(SNR_POWERS), ngroups)``; entry
    ``[n, k, i]`` is the weight of sample ``i`` of a segment of ``n >= 3`` groups
    with exponent ``SNR_POWERS[k]``. Computed in float32 like stcal (``powf``).
    """
    table = np.zeros((ngroups + 1, len(SNR_POWERS), max(ngroups, 1)), dtype=np.float64)
    for n in range(3, ngroups + 1):
        mid = (n - 1) / 2.0
        base = np.abs((np.arange(n) - mid) / mid).astype(np.float32)
        for k, power in enumerate(SNR_POWERS):
            table[n, k, :n] = base ** np.float32(power)
    return table


@njit(**_JIT_INLINE)
def load_pixel(data, gdq, p, suppress, dloc, qloc, stats):
    """Gather pixel ``p`` into ``dloc``/``qloc`` (nints, ngroups); fill ``stats``.

    ``stats[i]`` = (any JUMP_DET, any PERSISTENCE, groups with dq == 0,
    groups DO_NOT_USE or SATURATED, groups SATURATED). With ``suppress``,
    an integration with exactly one group good apart from PERSISTENCE gets
    DO_NOT_USE on every group. Saturated groups become NaN.

    Returns the number of NaN or infinite samples of the pixel (unflagged ones
    are used as stcal uses them; detector1's saturation step flags them first).
    """
    nints, ngroups = qloc.shape
    nonfinite = 0
    for i in range(nints):
        ngood = 0
        for g in range(ngroups):
            q = gdq[i, g, p]
            nonfinite += not np.isfinite(data[i, g, p])
            qloc[i, g] = q
            if q & NOT_PERSISTENCE == 0:
                ngood += 1
        if suppress and ngood == 1:
            for g in range(ngroups):
                qloc[i, g] |= DO_NOT_USE
        for k in range(5):
            stats[i, k] = 0
        for g in range(ngroups):
            q = qloc[i, g]
            if q & JUMP_DET:
                stats[i, 0] = 1
            if q & PERSISTENCE:
                stats[i, 1] = 1
            if q == 0:
                stats[i, 2] += 1
            if q & INVALID:
                stats[i, 3] += 1
            if q & SATURATED:
                stats[i, 4] += 1
                dloc[i, g] = np.nan
            else:
                dloc[i, g] = data[i, g, p]
    return nonfinite


@njit(**_JIT_INLINE)
def nan_free_median(buf, n):
    """Median of ``buf[:n]`` (no NaN inside); NaN if ``n == 0``. May reorder ``buf``.

    Short inputs use a branch-free odd-even transposition sort, longer ones
    :func:`~daskcal.detector._kernels_sort.sort_head`.
    """
    if n == 0:
        return np.nan
    h = n >> 1
    if n > 16:
        sort_head(buf, n)
        return buf[h] if n & 1 else (buf[h] + buf[h - 1]) / 2.0
    for rnd in range(n):  # odd-even transposition sort: branch-free min/max
        for a in range(rnd & 1, n - 1, 2):
            x = buf[a]
            y = buf[a + 1]
            buf[a] = min(x, y)
            buf[a + 1] = max(x, y)
    return buf[h] if n & 1 else (buf[h] + buf[h - 1]) / 2.0


@njit(**_JIT_INLINE)
def median_rate(dloc, qloc, is_0th, group_time, one_group_time, buf):
    """Mean over integrations of the median first-difference rate (DN/s).

    Groups flagged DO_NOT_USE or SATURATED and differences ending on a
    JUMP_DET group are left out. An integration with no usable difference
    contributes its first group over ``group_time`` (if usable), one with a
    lone good 0th group contributes that group over ``one_group_time``, and an
    integration with nothing usable contributes 0. With one group per
    integration the result is the mean of the first groups over ``one_group_time``.
    """
    nints, ngroups = qloc.shape
    inv_t = 1.0 / group_time
    acc = 0.0
    if ngroups == 1:
        for i in range(nints):
            acc += dloc[i, 0] / one_group_time
        return acc / nints
    for i in range(nints):
        if is_0th[i]:
            rate = dloc[i, 0] / one_group_time
        else:
            n = np.int64(0)  # not a literal 0 (see find_segments)
            prev = np.nan if qloc[i, 0] & DO_NOT_USE else dloc[i, 0] * inv_t
            first = prev
            for g in range(1, ngroups):  # branch-free: write always, count the usable
                q = qloc[i, g]
                cur = np.nan if q & DO_NOT_USE else dloc[i, g] * inv_t
                diff = cur - prev
                buf[n] = diff
                n += (q & JUMP_DET == 0) & (diff == diff)
                prev = cur
            if n == 0 and not math.isnan(first):
                buf[0] = first
                n = 1
            rate = nan_free_median(buf, n)
        if math.isnan(rate):
            rate = 0.0
        acc += rate
    return acc / nints


@njit(**_JIT)
def _add_segment(start, end, starts, lens, nseg, maxlen):
    length = end - start
    if length == 1 and maxlen > 1:
        return nseg, maxlen
    starts[nseg] = start
    lens[nseg] = length
    return nseg + 1, max(maxlen, length)


@njit(**_JIT_INLINE)
def find_segments(q, starts, lens):
    """Cut one integration's group DQ ``q`` into segments; return their number.

    A segment is a run of groups whose DQ is 0 apart from PERSISTENCE; a run
    preceded by a group flagged only JUMP_DET starts at that group. Segments
    of one group are dropped when a longer one exists; when all are one group
    long only the first is kept. ``starts``/``lens`` receive the segments.
    """
    ngroups = q.shape[0]
    # np.int64(0), not 0: a literal 0 handed to a compiled helper makes numba compile it
    # a second time for the literal's type
    nseg = np.int64(0)
    maxlen = np.int64(0)
    start = np.int64(0)
    in_seg = False
    for g in range(ngroups):
        if q[g] & NOT_PERSISTENCE == 0:
            if not in_seg:
                start = g
                if g > 0 and (q[g - 1] & NOT_PERSISTENCE) == JUMP_DET:
                    start = g - 1
                in_seg = True
        elif in_seg:
            nseg, maxlen = _add_segment(start, g, starts, lens, nseg, maxlen)
            in_seg = False
    if in_seg:
        nseg, maxlen = _add_segment(start, ngroups, starts, lens, nseg, maxlen)
    if nseg < 2:
        return nseg
    if maxlen < 2:
        return 1
    kept = 0
    for s in range(nseg):
        if lens[s] > 1:
            starts[kept] = starts[s]
            lens[kept] = lens[s]
            kept += 1
    return kept


@njit(**_JIT)
def snr_index(d, gain, rnoise):
    """Index into SNR_POWERS for a segment whose last-minus-first signal is ``d`` DN."""
    den = rnoise * rnoise + d * gain
    snr = 0.0
    if not (den <= 0.0 or gain == 0.0):  # a NaN ``den`` goes through, as in stcal
        snr = d * gain / math.sqrt(den)
        if snr < 0.0:
            snr = 0.0
    # NaN compares false everywhere and lands on the last exponent, as in stcal
    if snr < 5.0:
        return 0
    if snr < 10.0:
        return 1
    if snr < 20.0:
        return 2
    if snr < 50.0:
        return 3
    if snr < 100.0:
        return 4
    return 5


@njit(**_JIT_INLINE)
def weighted_sums(d, start, n, w, scale):
    """``(sum w, sum w x, sum w x**2, sum w y, sum w x y)`` over the ``n`` groups of ramp ``d`` from
    ``start``, with weights ``w[g] * scale``, ``x`` the group index and ``y`` the group's DN (NaN as 0).

    ``scale`` 1.0 leaves the weights exact (the slope fit); ``1 / rnoise**2`` gives stcal's
    optional-product weights. ``w x`` is formed once and reused, in the order both fits always had.
    """
    sw = sx = sxx = sy = sxy = 0.0
    for g in range(n):
        x = float(start + g)
        y = d[start + g]
        if math.isnan(y):
            y = 0.0
        wg = w[g] * scale
        wx = wg * x
        sw += wg
        sx += wx
        sxx += wx * x
        sy += wg * y
        sxy += wx * y
    return sw, sx, sxx, sy, sxy


@njit(**_JIT_INLINE)
def fit_segment(d, start, n, gain, rnoise, rate_est, dark, group_time, len1_time, wtab):
    """Fit one segment of ``n`` groups from ``start`` of ramp ``d`` (DN).

    Returns ``(slope, var_poisson, var_rnoise)`` in DN/s and (DN/s)**2.
    One group: that group over ``len1_time``; two groups: their difference over
    ``group_time``; more: least squares with optimal weights ``wtab``.
    """
    if n == 1:
        t = len1_time
        slope = d[start] / t
        nvar = 1.0
    elif n == 2:
        t = group_time
        slope = (d[start + 1] - d[start]) / t
        nvar = 1.0
    else:
        t = group_time * (n - 1)
        w = wtab[n, snr_index(d[start + n - 1] - d[start], gain, rnoise)]
        sw, sx, sxx, sy, sxy = weighted_sums(d, start, n, w, 1.0)
        slope = (sw * sxy - sx * sy) / (sw * sxx - sx * sx) / group_time
        if not (rnoise > 0.0):  # stcal's weights are inf/NaN then
            slope = np.nan
        nvar = (n * n * n - n) / 6.0
        if not (gain > 0.0):
            return slope, _var_poisson(rate_est, dark, t, gain), 0.0
    rn_t = rnoise / (group_time if n > 1 else len1_time)
    var_r = 12.0 * rn_t * rn_t / (6.0 * nvar * gain * gain)
    return slope, _var_poisson(rate_est, dark, t, gain), var_r


@njit(**_JIT)
def _var_poisson(rate_est, dark, t, gain):
    if rate_est > 0.0:
        return (rate_est + dark) / (t * gain)
    return dark / (t * gain)


@njit(**_JIT_INLINE)
def combine_integration(d, q, nseg, starts, lens, gain, rnoise, rate_est, dark, group_time,
                        len1_time, wtab, sums):
    """Fit and combine one integration's segments; return the integration's outputs.

    Segment slopes are weighted by their inverse read-noise variance (stcal
    JP-4318). Returns ``(slope, err, var_poisson, var_rnoise)`` before
    DQ-based invalidation, and adds ``(sum 1/var_p, sum 1/var_r,
    sum slope/var_r)`` to ``sums`` for the exposure-level combination.
    """
    inv_p = inv_r = inv_e = num = 0.0
    for s in range(nseg):
        slope, vp, vr = fit_segment(d, starts[s], lens[s], gain, rnoise, rate_est, dark,
                                    group_time, len1_time, wtab)
        inv_r += 1.0 / vr
        if vp > 0.0:
            inv_p += 1.0 / vp
        inv_e += 1.0 / (vp + vr)
        num += slope / vr
    var_p = 1.0 / inv_p if inv_p > 0.0 else 0.0
    if var_p >= LARGE_VARIANCE:
        var_p = 0.0
    var_r = 1.0 / inv_r
    if var_r >= LARGE_VARIANCE:
        var_r = 0.0
    var_e = 1.0 / inv_e
    err = 0.0 if var_e > LARGE_VARIANCE else math.sqrt(var_e)
    if inv_p > 0.0:
        sums[0] += inv_p
    sums[1] += inv_r
    sums[2] += num
    return num * var_r, err, var_p, var_r


@njit(**_JIT)
def finish_rate(sums, dq, nints, n_dnu, n_sat, any_sat, out, p):
    """Write the exposure-level rate of pixel ``p`` from the summed inverses."""
    if n_dnu == nints:
        dq |= DO_NOT_USE
    if n_sat == nints:
        dq |= SATURATED
    var_p = 1.0 / sums[0] if sums[0] > 0.0 else 0.0
    if var_p >= LARGE_VARIANCE or var_p < 0.0:
        var_p = 0.0
    var_r = 1.0 / sums[1] if sums[1] > 0.0 else 0.0
    if var_r >= LARGE_VARIANCE:
        var_r = 0.0
    slope = sums[2] * var_r
    err = math.sqrt(var_p + var_r)
    if dq & INVALID:
        slope = np.nan
        var_p = var_r = err = 0.0
    if any_sat:
        dq |= SATURATED
    out[SLOPE, p] = slope
    out[ERR, p] = err
    out[VAR_POISSON, p] = var_p
    out[VAR_RNOISE, p] = var_r
    return dq


@njit(**_JIT)
def _rnoise_var(n, gain, rnoise, group_time, len1_time):
    """Read-noise variance (DN/s)**2 of a segment of ``n`` groups, as stcal's CHARGELOSS pass computes it."""
    if n > 2 and not (gain > 0.0):
        return 0.0
    t = len1_time if n == 1 else group_time
    rn_t = rnoise / t
    return 12.0 * rn_t * rn_t / ((6.0 if n < 3 else n * n * n - n) * gain * gain)


@njit(**_JIT)
def chargeloss_rnoise(gdq, p, qloc, is_0th, int_var_r, gain, rnoise, group_time, one_group_time, qtmp, starts,
                      lens, ints_out, rate_out):
    """Recompute pixel ``p``'s read-noise variances where CHARGELOSS flags a group (stcal 1.20 OLS_C).

    In an integration with a CHARGELOSS group (in ``qloc``, after suppression), the
    input group DQ (``gdq``, before suppression) with DO_NOT_USE | CHARGELOSS toggled on
    every CHARGELOSS group is cut into segments, whose inverse read-noise variances
    give the integration's new ``var_rnoise``; the exposure's is recomputed from those
    and the other integrations' (``int_var_r``). Slopes and errors keep the first fit's
    variances, as in stcal; the invalid-integration zeros are replaced too.
    """
    nints, ngroups = qloc.shape
    any_cl = False
    evar = 0.0
    for i in range(nints):
        cl = False
        for g in range(ngroups):
            cl |= (qloc[i, g] & CHARGELOSS) != 0
        if not cl:
            if int_var_r[i] > 0.0:
                evar += 1.0 / int_var_r[i]
            continue
        any_cl = True
        for g in range(ngroups):
            q = gdq[i, g, p]
            qtmp[g] = q ^ (DO_NOT_USE | CHARGELOSS) if q & CHARGELOSS else q
        nseg = find_segments(qtmp, starts, lens)
        len1_time = one_group_time if is_0th[i] else group_time
        inv = 0.0
        for s in range(nseg):
            v = _rnoise_var(lens[s], gain, rnoise, group_time, len1_time)
            if v > 0.0:
                inv += 1.0 / v
        var_r = 1.0 / inv
        ints_out[VAR_RNOISE, i, p] = 0.0 if var_r >= LARGE_VARIANCE else var_r
        evar += inv
    if any_cl and evar > 0.0:
        var_r = 1.0 / evar
        rate_out[VAR_RNOISE, p] = 0.0 if var_r >= LARGE_VARIANCE else var_r


#: Rows of the per-segment optional output (stcal's opt_info names).
OPT_SLOPE, OPT_SIGSLOPE, OPT_VAR_POISSON, OPT_VAR_RNOISE, OPT_YINT, OPT_SIGYINT, OPT_WEIGHTS = range(7)
#: stcal's square root of 2 in the two-group sigslope (a truncated literal).
_SQRT2 = 1.41421356


@njit(**_JIT)
def segment_extras(d, start, n, gain, rnoise, wtab):
    """``(sigslope, yint, sigyint)`` of a segment, as stcal's optional product gives them.

    One group: zeros. Two groups: ``sqrt(2) * rnoise`` and the line through both
    groups at group index 0 (DN). More: the optimally weighted fit with weights
    ``w / rnoise**2``, intercept at group index 0 (DN), uncertainties in DN per group
    and DN.
    """
    if n == 1:
        return 0.0, 0.0, 0.0
    if n == 2:
        sig = _SQRT2 * rnoise
        x2 = start + 1.0
        return sig, d[start + 1] * (1.0 - x2) + d[start] * x2, sig
    w = wtab[n, snr_index(d[start + n - 1] - d[start], gain, rnoise)]
    sw, sx, sxx, sy, sxy = weighted_sums(d, start, n, w, 1.0 / (rnoise * rnoise))
    inv_den = 1.0 / (sw * sxx - sx * sx)
    return math.sqrt(sw * inv_den), (sxx * sy - sx * sxy) * inv_den, math.sqrt(sxx * inv_den)


@njit(**_JIT)
def write_opt(d, q, nseg, starts, lens, gain, rnoise, rate_est, dark, group_time, len1_time, wtab,
              slope_i, idq, ped_factor, i, p, opt_seg, opt_ped, opt_cr):
    """Write integration ``i`` of pixel ``p`` into the optional products (stcal's opt_info).

    ``opt_seg`` (7, nints, max segments, npix): rows ``OPT_*`` of each segment, in group
    order, unused slots left as they are (zero). ``opt_ped`` (nints, npix): the
    pedestal ``d[0] - slope_i * ped_factor`` (DN), 0 where ``idq`` has SATURATED or
    it is NaN. ``opt_cr`` (nints, ngroups - 1, npix): the jumps ``d[g] - d[g-1]`` of
    the groups flagged JUMP_DET, in order.
    """
    for s in range(nseg):
        start, n = starts[s], lens[s]
        slope, vp, vr = fit_segment(d, start, n, gain, rnoise, rate_est, dark, group_time, len1_time, wtab)
        sig, yint, sigy = segment_extras(d, start, n, gain, rnoise, wtab)
        opt_seg[OPT_SLOPE, i, s, p] = slope
        opt_seg[OPT_SIGSLOPE, i, s, p] = sig
        opt_seg[OPT_VAR_POISSON, i, s, p] = vp
        opt_seg[OPT_VAR_RNOISE, i, s, p] = vr
        opt_seg[OPT_YINT, i, s, p] = yint
        opt_seg[OPT_SIGYINT, i, s, p] = sigy
        opt_seg[OPT_WEIGHTS, i, s, p] = 1.0 / vr
    ped = 0.0
    if not idq & SATURATED:
        ped = d[0] - slope_i * ped_factor
        if math.isnan(ped):
            ped = 0.0
    opt_ped[i, p] = ped
    k = 0
    for g in range(1, q.shape[0]):
        if q[g] & JUMP_DET:
            opt_cr[i, k, p] = d[g] - d[g - 1]
            k += 1


@njit(**_JIT)
def fit_ramps_kernel(data, gdq, pixeldq, gain, rnoise, dark, group_time, frame_time, nframes,
                     suppress, wtab, rate_out, rate_dq, ints_out, ints_dq, nonfinite,
                     save_opt, ped_factor, opt_seg, opt_ped, opt_cr, presuppressed):
    """OLS ramp fit of every pixel (stcal OLS_C, optimal weighting).

    Parameters
    ----------
    data : float32 (nints, ngroups, npix)
        Ramps in DN (bias removed).
    gdq : uint8 (nints, ngroups, npix)
        Group DQ.
    pixeldq : uint32 (npix,)
        Pixel DQ.
    gain : float32 (npix,)
        Gain in e-/DN; pixels with gain <= 0 or NaN are flagged
        DO_NOT_USE | NO_GAIN_VALUE.
    rnoise : float32 (npix,)
        Read noise scaled as stcal does, ``readnoise * gain / sqrt(2 nframes)``.
    dark : float32 (npix,)
        Dark current in DN/s (added to the Poisson variance).
    group_time, frame_time : float
        Seconds.
    nframes : int
        Frames per group.
    suppress : bool
        Suppress integrations with a single good group.
    wtab : float64 array from :func:`weight_table`.
    rate_out : float32 (5, npix), out
        Rows SLOPE, ERR, VAR_POISSON, VAR_RNOISE (row DQ_PLANE untouched).
    rate_dq : uint32 (npix,), out
    ints_out : float32 (5, nints, npix), out
    ints_dq : uint32 (nints, npix), out
    nonfinite : float32 (npix,), out
        Number of NaN or infinite samples of each pixel.
    save_opt : bool
        Also write the optional products (see :func:`write_opt`) into ``opt_seg``
        (float32 (7, nints, max segments, npix)), ``opt_ped`` (float32 (nints, npix))
        and ``opt_cr`` (float32 (nints, ngroups - 1, npix)), zero-filled by the caller
        (without ``save_opt``: any float32 arrays of those ranks, untouched);
        ``ped_factor`` is stcal's ``((nframes + 1) / 2 + drop_frames1) / (nframes + groupgap)``.
    presuppressed : bool
        ``gdq`` already has one-good-group suppression applied (MIRI's dropped groups):
        ``suppress`` then only chooses the timing of one-group segments.
    """
    nints, ngroups, npix = data.shape
    one_group_time = (nframes + 1.0) * frame_time / 2.0
    dloc = np.empty((nints, ngroups), np.float64)
    qloc = np.empty((nints, ngroups), np.uint8)
    stats = np.empty((nints, 5), np.int64)
    is_0th = np.empty(nints, np.bool_)
    buf = np.empty(max(ngroups, 1), np.float64)
    starts = np.empty(ngroups, np.int64)
    lens = np.empty(ngroups, np.int64)
    sums = np.empty(3, np.float64)
    int_var_r = np.empty(nints, np.float64)
    qtmp = np.empty(ngroups, np.uint8)
    # The per-integration logic stays in this loop on purpose: moving it into an
    # inlined helper (views of ``stats`` and a 5-tuple return) cost 25% speed.
    for p in range(npix):
        nonfinite[p] = load_pixel(data, gdq, p, suppress and not presuppressed, dloc, qloc, stats)
        g = np.float64(gain[p])
        pdq = np.int64(pixeldq[p])  # int64 arithmetic, stored as uint32
        if not (g > 0.0):
            pdq |= DO_NOT_USE | NO_GAIN_VALUE
        rdq = pdq
        for i in range(nints):
            is_0th[i] = (not suppress) and stats[i, 2] == 1 and qloc[i, 0] == 0
            if stats[i, 0]:
                rdq |= JUMP_DET
            if stats[i, 1]:
                rdq |= PERSISTENCE
        rate_est = median_rate(dloc, qloc, is_0th, group_time, one_group_time, buf)
        sums[:] = 0.0
        n_dnu = n_sat = np.int64(0)  # not literals, which compile finish_rate twice
        for i in range(nints):
            idq = pdq
            if stats[i, 0]:
                idq |= JUMP_DET
            if stats[i, 1]:
                idq |= PERSISTENCE
            slope = np.nan if qloc[i, 0] & SATURATED else 0.0
            err = var_p = var_r = 0.0
            nseg = np.int64(0)
            len1_time = group_time
            if qloc[i, 0] & SATURATED:
                idq |= INVALID
            if stats[i, 3] == ngroups:
                idq |= DO_NOT_USE
                if stats[i, 4] == ngroups:
                    idq |= SATURATED
            elif not (qloc[i, 0] & SATURATED):
                nseg = find_segments(qloc[i], starts, lens)
                if nseg > 0:
                    len1_time = one_group_time if is_0th[i] else group_time
                    slope, err, var_p, var_r = combine_integration(
                        dloc[i], qloc[i], nseg, starts, lens, g, np.float64(rnoise[p]),
                        rate_est, np.float64(dark[p]), group_time, len1_time, wtab, sums)
                    if idq & INVALID:
                        slope = np.nan
                        err = var_p = var_r = 0.0
            if idq & DO_NOT_USE:
                n_dnu += 1
                slope = np.nan
            if save_opt:
                write_opt(dloc[i], qloc[i], nseg, starts, lens, g, np.float64(rnoise[p]), rate_est,
                          np.float64(dark[p]), group_time, len1_time, wtab, slope, idq, ped_factor, i, p,
                          opt_seg, opt_ped, opt_cr)
            if idq & SATURATED:
                n_sat += 1
                slope = np.nan
            if stats[i, 4] > 0:
                idq |= SATURATED
            ints_out[SLOPE, i, p] = slope
            ints_out[ERR, i, p] = err
            ints_out[VAR_POISSON, i, p] = var_p
            ints_out[VAR_RNOISE, i, p] = var_r
            int_var_r[i] = var_r
            ints_dq[i, p] = idq
        any_sat = np.bool_(False)
        for i in range(nints):
            any_sat |= stats[i, 4] > 0
        rate_dq[p] = finish_rate(sums, rdq, nints, n_dnu, n_sat, any_sat, rate_out, p)
        chargeloss_rnoise(gdq, p, qloc, is_0th, int_var_r, g, np.float64(rnoise[p]), group_time, one_group_time,
                          qtmp, starts, lens, ints_out, rate_out)
