"""Numba kernels of the likelihood ramp fit (stcal ``LIKELY``, Brandt 2024) (kernel layer).

A pixel's ramp in one integration is described by its ``n = ngroups - 1`` resultant
differences divided by the times between resultant midpoints (DN/s). Their
covariance is tridiagonal: ``alpha`` on the diagonal and ``beta`` beside it, each a
photon-noise part (rate guess over gain times a read-pattern coefficient) plus a
read-noise part (single-read noise squared times a coefficient); the coefficients
are computed once per exposure (:func:`daskcal.detector._ramp_likely.difference_covariance`).

The pieces, in the order a pixel goes through them:

* :func:`rate_guesses` takes the median of each integration's differences as its first rate guess;
* :func:`advance_determinant` runs the recursion of the covariance determinant, whose
  ``n``-th root scales the covariance (against overflow for long ramps); the roots are taken
  by the block layer with numpy, as stcal takes them (numpy's vectorised ``pow`` differs from
  the C library's by an ulp at times, and ties between equal chi squared values, of ramps
  left with 2 or 3 differences, follow the last bit);
* :func:`covariance` builds ``alpha``/``beta`` for a rate guess, divided by that scale;
* :func:`fit_differences` solves the generalised least squares problem in O(n)
  with the recursions ``theta``/``phi`` of Brandt (2024, paper I, eqs. 38-48) and
  returns the rate, chi squared and the pieces jump detection needs;
* :func:`omit_one` and :func:`omit_two` (paper II, sections 3.1-3.2) give the chi
  squared and rate of the same fit with one difference, or two adjacent ones, left out;
* :func:`find_jumps` leaves out the difference(s) whose omission lowers chi squared
  the most, while that exceeds the thresholds, and refits;
* :func:`search_jumps_kernel` runs the search on every pixel, :func:`final_fit_kernel` the
  final fit with the search's rate as the guess, and :func:`combine_integrations` weights the
  integrations into the exposure's rate.

The search and the final fit run :data:`LANES` pixels side by side (arrays ``(n, LANES)``,
the pixel loop innermost), so that the compiler vectorises them across pixels; each pixel's
arithmetic is that of a pixel alone. It follows the order of the equations as stcal 1.20
evaluates them, in float64, so that degenerate fits (one difference left, all masked) come out as the
same NaN or infinite values and the rates agree to rounding.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from daskcal.detector._kernels_ramp_fit import nan_free_median

DO_NOT_USE = 1
SATURATED = 2
JUMP_DET = 4
_NOT_DNU = 0xFFFFFFFF ^ DO_NOT_USE

# rows of the covariance-coefficient table (see difference_covariance)
A_PH, A_RN, B_PH, B_RN, DELTA_T, TWO_OK = 0, 1, 2, 3, 4, 5
N_COEFF = 6
# rows of the work table of fit_differences
_THETA, _PHI, _SMALL_PHI, _PHI_D, _BIG_THETA, _THETA_D, _DC, _DB, _CINV, _BM, _DM = range(11)
N_WORK = 11
# rows of the outputs of fit_differences (the last two are scratch)
RATE, CHISQ, UNCERT, VAR_P, VAR_R, SUM_A, SUM_B, SUM_C, _CROSS_P, _CROSS_R = range(10)
N_OUT = 10
#: Pixels fitted side by side: the per-pixel loops are innermost, so the compiler vectorises
#: the recursions and divisions across pixels (each pixel's arithmetic is unchanged). For
#: 256^2 x 10 groups on one core, search + final fit: 8 lanes 38 ms, 16: 34 ms, 32: 30 ms,
#: 64: 28 ms (whose work arrays are twice as large for long ramps, and whose later search
#: rounds, run on every lane of a block, are more often needed).
LANES = 32
#: Most differences whose median :func:`rate_guesses` takes across lanes (a sorting network of
#: n**2 / 2 steps; longer ramps are sorted pixel by pixel).
_LANE_SORT_MAX = 16
# planes of the product stack (the same layout as the OLS fit)
SLOPE, ERR, DQ_PLANE, VAR_POISSON, VAR_RNOISE = 0, 1, 2, 3, 4

_JIT = {"nogil": True, "cache": True, "error_model": "numpy"}
# The helpers that take arrays and run per pixel are inlined into the pass kernels (numba IR
# inlining, as in the OLS kernel): without it, the views and reference counting of each call
# cost 17% of the time (search 42 -> 33 ms, final fit 19 -> 17 ms for 256^2 x 10 groups).
_JIT_INLINE = dict(_JIT, inline="always")


@njit(**_JIT)
def _alpha_beta(photon, rn2, coeff, i):
    """Unscaled covariance entries ``(alpha_i, beta_i)`` (``beta_i`` is garbage for the last i)."""
    a = photon * coeff[A_PH, i] + rn2 * coeff[A_RN, i]
    b = photon * coeff[B_PH, i] + rn2 * coeff[B_RN, i]
    return a, b


@njit(**_JIT)
def advance_determinant(guess, gain, rnoise, coeff, scale, state, start, stop, det):
    """Run the determinant recursion of every pixel's covariance from step ``start`` to ``stop``.

    The determinant ``D_k`` of the leading k x k block of the covariance of
    :func:`covariance` for the rate ``guess[int, p]`` is ``alpha_k-1 D_k-1 - beta_k-2**2 D_k-2``;
    with the entries divided by ``scale[int, p]``, ``state[0]``/``state[1]`` hold
    ``D_k-2``/``D_k-1`` in that scale (``start == 2`` initialises them). ``det`` receives
    ``D_stop``; the caller renormalises (:func:`daskcal.detector._ramp_likely.covariance_scales`).
    The pixel loop is innermost, so the recursion is vectorised across pixels.
    """
    nints, npix = guess.shape
    photon = np.empty(npix, np.float64)
    rn2 = np.empty(npix, np.float64)
    for i in range(nints):
        before = state[0, i]
        last = state[1, i]
        s = scale[i]
        d = det[i]
        for p in range(npix):
            photon[p] = guess[i, p] / np.float64(gain[p])
            rn2[p] = rnoise[p] * rnoise[p]
        if start == 2:
            for p in range(npix):
                before[p] = 1.0
                last[p], _ = _alpha_beta(photon[p], rn2[p], coeff, 0)
        for k in range(start, stop + 1):
            for p in range(npix):
                a, _ = _alpha_beta(photon[p], rn2[p], coeff, k - 1)
                _, b = _alpha_beta(photon[p], rn2[p], coeff, k - 2)
                d[p] = a / s[p] * last[p] - b * b / (s[p] * s[p]) * before[p]
            if k < stop:
                for p in range(npix):
                    before[p] = last[p]
                    last[p] = d[p]


@njit(**_JIT)
def _sign(i):
    """-1 for even ``i``, +1 for odd (the alternating signs of the recursions)."""
    return 1.0 if i & 1 else -1.0


@njit(**_JIT)
def _nan_max(a, b):
    """max that returns NaN if either is NaN (numpy's ``amax``)."""
    if math.isnan(a) or math.isnan(b):
        return np.nan
    return a if a >= b else b


@njit(**_JIT)
def _nan_sum(values, n):
    """numpy's ``nansum`` of ``values[:n]`` (float32), and whether every value was NaN."""
    total = np.float32(0.0)
    all_nan = True
    for i in range(n):
        v = values[i]
        if not math.isnan(v):
            total += v
            all_nan = False
    return total, all_nan


@njit(**_JIT)
def combine_integrations(ints_out, ints_dq, p, buf, rate_out, rate_dq):
    """Write pixel ``p``'s exposure rate from its integrations (float32, as stcal stores them).

    Starting from the median of the integrations' rates, each integration is
    weighted by the inverse of its read-noise variance plus its Poisson variance
    scaled to that rate, twice. The DQ is the OR of the integrations' without
    DO_NOT_USE, which is set only when every integration has it.
    """
    nints = ints_out.shape[1]
    one = np.float32(1.0)
    zero = np.float32(0.0)
    n = 0
    for i in range(nints):
        s = ints_out[SLOPE, i, p]
        if not math.isnan(s):
            buf[n] = s
            n += 1
    slope = np.float32(nan_free_median(buf, n))
    weight = buf[nints:2 * nints]
    var_p = buf[2 * nints:3 * nints]
    terms = buf[3 * nints:4 * nints]
    for _ in range(2):
        for i in range(nints):
            ratio = slope / ints_out[SLOPE, i, p]
            if not (math.isfinite(ratio) and ratio >= zero):
                ratio = zero
            var_p[i] = ints_out[VAR_POISSON, i, p] * ratio
            weight[i] = one / (var_p[i] + ints_out[VAR_RNOISE, i, p])
        total, _ = _nan_sum(weight, nints)
        for i in range(nints):
            weight[i] /= total
            terms[i] = ints_out[SLOPE, i, p] * weight[i]
        slope, all_nan = _nan_sum(terms, nints)
        if all_nan:
            slope = np.float32(np.nan)
    for i in range(nints):
        terms[i] = var_p[i] * (weight[i] * weight[i])
    vp, all_nan = _nan_sum(terms, nints)
    if all_nan:
        vp = np.float32(np.nan)
    for i in range(nints):
        terms[i] = ints_out[VAR_RNOISE, i, p] * (weight[i] * weight[i])
    vr, all_nan = _nan_sum(terms, nints)
    if all_nan:
        vr = np.float32(np.nan)
    rate_out[SLOPE, p] = slope
    rate_out[ERR, p] = math.sqrt(vp + vr)
    rate_out[VAR_POISSON, p] = vp
    rate_out[VAR_RNOISE, p] = vr
    dq = np.uint32(0)
    n_dnu = 0
    for i in range(nints):
        dq |= ints_dq[i, p]
        n_dnu += (ints_dq[i, p] & DO_NOT_USE) != 0
    dq &= np.uint32(_NOT_DNU)
    if n_dnu == nints:
        dq |= np.uint32(DO_NOT_USE)
    rate_dq[p] = dq


@njit(**_JIT_INLINE)
def load_differences(data, gdq, coeff, i, p, diffs, use):
    """Integration ``i`` of pixel ``p``: fill ``diffs`` (differences over their times, DN/s) and
    ``use`` (1 where both groups have DQ 0)."""
    for k in range(diffs.shape[0]):
        diffs[k] = (data[i, k + 1, p] - data[i, k, p]) / coeff[DELTA_T, k]
        use[k] = 1.0 if gdq[i, k, p] == 0 and gdq[i, k + 1, p] == 0 else 0.0


@njit(**_JIT)
def median_guess(diffs, use, buf):
    """The first rate guess (DN/s): the median of the differences, clipped at 0.

    The median is over every difference, flagged or not, as in stcal, except non-finite ones
    between flagged groups (NaN samples detector1 flags), which stcal lets make it NaN.
    ``buf`` (n) is scratch.
    """
    m = 0
    has_nan = False
    for k in range(diffs.shape[0]):
        d = diffs[k]
        if use[k] or math.isfinite(d):
            has_nan |= math.isnan(d)
            buf[m] = d
            m += 1
    med = np.nan if has_nan else nan_free_median(buf, m)
    return med * (med > 0.0)


@njit(**_JIT)
def rate_guesses(data, gdq, coeff, guesses):
    """The first rate guess of every integration of every pixel (:func:`median_guess`).

    ``data``/``gdq`` (nints, ngroups, npix); ``guesses`` (nints, npix) float64, out. Up to
    :data:`_LANE_SORT_MAX` differences, the medians are taken LANES pixels at a time with an
    odd-even transposition sort across the lanes (the sorted values, hence the medians, are
    those of any sort); a pixel with a difference left out of its median (see
    :func:`median_guess`) or a NaN one takes the single-pixel path.
    """
    nints, ngroups, npix = data.shape
    n = ngroups - 1
    diffs = np.empty(n, np.float64)
    use = np.empty(n, np.float64)
    buf = np.empty(n, np.float64)
    if n > _LANE_SORT_MAX:
        for p in range(npix):
            for i in range(nints):
                load_differences(data, gdq, coeff, i, p, diffs, use)
                guesses[i, p] = median_guess(diffs, use, buf)
        return
    d = np.empty((n, LANES), np.float64)
    u = np.empty((n, LANES), np.float64)
    srt = np.empty((n, LANES), np.float64)
    regular = np.empty(LANES, np.bool_)
    h = n >> 1
    for p0 in range(0, npix, LANES):
        nl = min(LANES, npix - p0)
        for i in range(nints):
            load_lanes(data, gdq, coeff, i, p0, nl, d, u)
            for lane in range(nl):
                regular[lane] = True
            for k in range(n):
                for lane in range(nl):
                    x = d[k, lane]
                    regular[lane] &= not math.isnan(x) and (u[k, lane] != 0.0 or math.isfinite(x))
                    srt[k, lane] = x
            for rnd in range(n):
                for a in range(rnd & 1, n - 1, 2):
                    for lane in range(nl):
                        x = srt[a, lane]
                        y = srt[a + 1, lane]
                        srt[a, lane] = min(x, y)
                        srt[a + 1, lane] = max(x, y)
            for lane in range(nl):
                if regular[lane]:
                    med = srt[h, lane] if n & 1 else (srt[h, lane] + srt[h - 1, lane]) / 2.0
                    guesses[i, p0 + lane] = med * (med > 0.0)
                else:
                    for k in range(n):
                        diffs[k] = d[k, lane]
                        use[k] = u[k, lane]
                    guesses[i, p0 + lane] = median_guess(diffs, use, buf)


@njit(**_JIT_INLINE)
def load_lanes(data, gdq, coeff, i, p0, nl, diffs, use):
    """Integration ``i`` of pixels ``p0 .. p0 + nl - 1`` into lanes: ``diffs`` (n, LANES), the
    differences over their times (DN/s), and ``use`` (n, LANES), 1 where both groups have DQ 0."""
    n = diffs.shape[0]
    for k in range(n):
        for lane in range(nl):
            p = p0 + lane
            diffs[k, lane] = (data[i, k + 1, p] - data[i, k, p]) / coeff[DELTA_T, k]
            use[k, lane] = 1.0 if gdq[i, k, p] == 0 and gdq[i, k + 1, p] == 0 else 0.0


@njit(**_JIT_INLINE)
def covariance(guess, gain, rnoise, coeff, scale, alpha, beta, parts, nl):
    """Fill ``alpha`` and ``beta`` (n, LANES; beta's last row unused) for the rates ``guess``
    (DN/s) of each lane, divided by its ``scale``.

    ``parts`` (4, n, LANES) receives the unscaled photon and read-noise parts (rows
    ``A_PH, A_RN, B_PH, B_RN``), used for the variances. ``scale`` is the n-th root of
    the determinant of the unscaled matrix (against overflow in long ramps; see
    :func:`advance_determinant`).
    """
    n = alpha.shape[0]
    for i in range(n):
        for lane in range(nl):
            photon = guess[lane] / gain[lane]
            rn2 = rnoise[lane] * rnoise[lane]
            parts[A_PH, i, lane] = photon * coeff[A_PH, i]
            parts[A_RN, i, lane] = rn2 * coeff[A_RN, i]
            alpha[i, lane] = (parts[A_PH, i, lane] + parts[A_RN, i, lane]) / scale[lane]
            parts[B_PH, i, lane] = photon * coeff[B_PH, i]
            parts[B_RN, i, lane] = rn2 * coeff[B_RN, i]
            beta[i, lane] = (parts[B_PH, i, lane] + parts[B_RN, i, lane]) / scale[lane]


@njit(**_JIT_INLINE)
def fit_differences(diffs, use, alpha, beta, scale, parts, work, out, nl, variances):
    """Generalised least-squares rates of the differences ``diffs`` whose ``use`` is 1, per lane.

    ``alpha``/``beta``/``scale`` from :func:`covariance`; ``parts`` its unscaled parts;
    ``work`` (N_WORK, n + 1, LANES) receives the masked ``beta`` and differences and the
    recursions. ``out`` (N_OUT, LANES) receives RATE (DN/s), CHISQ, UNCERT (DN/s), the sums
    SUM_A, SUM_B, SUM_C of paper I (eqs. 61-63) and, with ``variances`` (the jump search
    needs none), VAR_P and VAR_R ((DN/s)**2).
    """
    n = diffs.shape[0]
    bm = work[_BM]
    dm = work[_DM]
    theta = work[_THETA]
    phi = work[_SMALL_PHI]
    big_phi = work[_PHI]
    phi_d = work[_PHI_D]
    big_theta = work[_BIG_THETA]
    theta_d = work[_THETA_D]
    dc = work[_DC]
    db = work[_DB]
    w = work[_CINV]
    for i in range(n - 1):
        for lane in range(nl):
            bm[i, lane] = beta[i, lane] * use[i + 1, lane] * use[i, lane]
    for i in range(n):
        for lane in range(nl):
            dm[i, lane] = diffs[i, lane] if use[i, lane] else 0.0
    for lane in range(nl):
        theta[0, lane] = 1.0
        theta[1, lane] = alpha[0, lane]
        phi[n, lane] = 1.0
        phi[n - 1, lane] = alpha[n - 1, lane]
        big_phi[n - 1, lane] = 0.0
        phi_d[n - 1, lane] = 0.0
        big_theta[0, lane] = -theta[0, lane]
        theta_d[0, lane] = 0.0
        theta_d[1, lane] = -dm[0, lane] * theta[0, lane]
    for i in range(2, n + 1):
        for lane in range(nl):
            theta[i, lane] = alpha[i - 1, lane] * theta[i - 1, lane] - bm[i - 2, lane] * bm[i - 2, lane] * theta[i - 2, lane]
    for i in range(n - 2, -1, -1):
        for lane in range(nl):
            phi[i, lane] = alpha[i, lane] * phi[i + 1, lane] - bm[i, lane] * bm[i, lane] * phi[i + 2, lane]
    for i in range(n - 2, -1, -1):
        s = _sign(i + 1)
        for lane in range(nl):
            big_phi[i, lane] = big_phi[i + 1, lane] * bm[i, lane] + s * bm[i, lane] * phi[i + 2, lane]
            phi_d[i, lane] = (phi_d[i + 1, lane] + s * dm[i + 1, lane] * phi[i + 2, lane]) * bm[i, lane]
    for i in range(1, n):
        s = _sign(i)
        for lane in range(nl):
            big_theta[i, lane] = big_theta[i - 1, lane] * bm[i - 1, lane] + s * theta[i, lane]
            theta_d[i + 1, lane] = bm[i - 1, lane] * theta_d[i, lane] + s * dm[i, lane] * theta[i, lane]
    for lane in range(nl):
        out[SUM_A, lane] = 0.0  # the off-diagonal part of A first, then A
        out[SUM_B, lane] = 0.0
        out[SUM_C, lane] = 0.0
        out[CHISQ, lane] = 0.0  # the diagonal part of A, for now
    for i in range(n):
        s = _sign(i)
        for lane in range(nl):
            det = theta[n, lane]
            dc[i, lane] = s / det * (phi[i + 1, lane] * big_theta[i, lane] + theta[i, lane] * big_phi[i, lane]) * use[i, lane]
            db[i, lane] = s / det * (phi[i + 1, lane] * theta_d[i + 1, lane] + theta[i, lane] * phi_d[i, lane])
            b_prev = 1.0 if i == 0 else bm[i - 1, lane]
            out[SUM_A, lane] += dm[i, lane] * s / det * b_prev * phi[i + 1, lane] * theta_d[i, lane]
            out[CHISQ, lane] += dm[i, lane] * dm[i, lane] * theta[i, lane] * phi[i + 1, lane] / det
            out[SUM_B, lane] += dm[i, lane] * dc[i, lane]
            out[SUM_C, lane] += dc[i, lane]
    for lane in range(nl):
        a_all = 2.0 * out[SUM_A, lane] + out[CHISQ, lane]
        b_sum = out[SUM_B, lane]
        c_sum = out[SUM_C, lane]
        out[SUM_A, lane] = a_all
        out[RATE, lane] = b_sum * (1.0 / c_sum)
        out[CHISQ, lane] = (a_all - b_sum * b_sum / c_sum) / scale[lane]
        out[UNCERT, lane] = math.sqrt(scale[lane] / c_sum)
    if not variances:
        return
    for lane in range(nl):
        out[VAR_P, lane] = 0.0
        out[VAR_R, lane] = 0.0
    for i in range(n):
        for lane in range(nl):
            w[i, lane] = dc[i, lane] / out[SUM_C, lane]
            out[VAR_P, lane] += w[i, lane] * w[i, lane] * parts[A_PH, i, lane]
            out[VAR_R, lane] += w[i, lane] * w[i, lane] * parts[A_RN, i, lane]
    for lane in range(nl):
        out[_CROSS_P, lane] = 0.0
        out[_CROSS_R, lane] = 0.0
    for i in range(n - 1):
        for lane in range(nl):
            ww = w[i + 1, lane] * w[i, lane]
            out[_CROSS_P, lane] += ww * parts[B_PH, i, lane]
            out[_CROSS_R, lane] += ww * parts[B_RN, i, lane]
    for lane in range(nl):
        out[VAR_P, lane] = out[VAR_P, lane] + 2.0 * out[_CROSS_P, lane]
        out[VAR_R, lane] = out[VAR_R, lane] + 2.0 * out[_CROSS_R, lane]


@njit(**_JIT_INLINE)
def omit_one(use, scale, work, fit, chi1, rate1, nl):
    """Chi squared and rate with each difference left out in turn (paper II, sec. 3.1), per lane.

    Needs ``work`` and ``fit`` as :func:`fit_differences` left them; ``work``'s row _CINV
    receives the diagonal of the inverse covariance. Unused differences get the full fit's
    values.
    """
    n = use.shape[0]
    theta = work[_THETA]
    phi = work[_SMALL_PHI]
    cinv = work[_CINV]
    dc = work[_DC]
    db = work[_DB]
    for i in range(n):
        for lane in range(nl):
            a_all = fit[SUM_A, lane]
            b_all = fit[SUM_B, lane]
            c_all = fit[SUM_C, lane]
            cd = theta[i, lane] * phi[i + 1, lane] / theta[n, lane] * use[i, lane]
            cinv[i, lane] = cd
            a = (cd * b_all - db[i, lane] * dc[i, lane]) / (c_all * cd - dc[i, lane] * dc[i, lane])
            b = (db[i, lane] - a * dc[i, lane]) / cd
            chi = (a_all + a * a * c_all - 2.0 * a * b_all + b * b * cd - 2.0 * b * db[i, lane]
                   + 2.0 * a * b * dc[i, lane])
            if use[i, lane]:
                chi1[i, lane] = chi / scale[lane]
                rate1[i, lane] = a
            else:
                chi1[i, lane] = fit[CHISQ, lane]
                rate1[i, lane] = fit[RATE, lane]


@njit(**_JIT_INLINE)
def omit_two(use, scale, work, fit, chi1, rate1, chi2, rate2, nl):
    """Chi squared and rate with each pair of adjacent differences left out (paper II, sec. 3.2).

    Run after :func:`omit_one` (uses its ``_CINV`` row and ``chi1``/``rate1``). A pair
    holding an unused difference gets the one-omitted values of the other.
    """
    n = use.shape[0]
    theta = work[_THETA]
    phi = work[_SMALL_PHI]
    bm = work[_BM]
    cinv = work[_CINV]
    dc = work[_DC]
    db = work[_DB]
    for k in range(n - 1):
        for lane in range(nl):
            a_all = fit[SUM_A, lane]
            b_all = fit[SUM_B, lane]
            c_all = fit[SUM_C, lane]
            off = -bm[k, lane] * theta[k, lane] * phi[k + 2, lane] / theta[n, lane]
            p_j = dc[k, lane] * dc[k, lane] - c_all * cinv[k, lane]
            j_k = dc[k, lane] * dc[k + 1, lane] - c_all * off
            bp_j = b_all * dc[k, lane] - db[k, lane] * c_all
            c = bp_j / p_j - (b_all * dc[k + 1, lane] - db[k + 1, lane] * c_all) / j_k
            c /= j_k / p_j - (dc[k + 1, lane] * dc[k + 1, lane] - c_all * cinv[k + 1, lane]) / j_k
            b = (bp_j - c * j_k) / p_j
            a = (b_all - b * dc[k, lane] - c * dc[k + 1, lane]) / c_all
            chi = a_all + a * a * c_all + b * b * cinv[k, lane] + c * c * cinv[k + 1, lane]
            chi -= 2.0 * a * b_all + 2.0 * b * db[k, lane] + 2.0 * c * db[k + 1, lane]
            chi += 2.0 * a * b * dc[k, lane] + 2.0 * a * c * dc[k + 1, lane] + 2.0 * b * c * off
            if not use[k, lane]:
                chi2[k, lane] = chi1[k + 1, lane]
                rate2[k, lane] = rate1[k + 1, lane]
            elif not use[k + 1, lane]:
                chi2[k, lane] = chi1[k, lane]
                rate2[k, lane] = rate1[k, lane]
            else:
                chi2[k, lane] = chi / scale[lane]
                rate2[k, lane] = a


@njit(**_JIT_INLINE)
def drop_jump(lane, use, fit, chi1, rate1, chi2, rate2, coeff, thresholds):
    """Leave out lane ``lane``'s jump, if any: the difference, or adjacent pair (only where the
    resultant between them has several reads, ``coeff[TWO_OK]``), whose omission lowers chi
    squared the most, if the better of the two drops, each less its threshold
    (``thresholds = (one, two)``), exceeds its threshold. A NaN chi squared anywhere (a pair's
    often is, even where no pair may be left out) means no drop, as in stcal.

    Returns ``(dropped, rate)``: whether differences were left out of ``use`` and the rate
    fitted without them (DN/s). Every difference (pair) at the best drop goes, as ties would
    in stcal.
    """
    n = use.shape[0]
    one_t, two_t = thresholds
    chisq = fit[CHISQ, lane]
    best1 = -np.inf
    for i in range(n):
        best1 = _nan_max(best1, chisq - chi1[i, lane])
    best2 = -np.inf
    for k in range(n - 1):
        best2 = _nan_max(best2, (chisq - chi2[k, lane]) * coeff[TWO_OK, k])
    one_better = best1 - one_t > best2 - two_t
    best = best1 * (best1 > one_t) * one_better + best2 * (best2 > two_t) * (not one_better)
    new_rate = 0.0
    dropped = False
    if best == 0.0 or math.isnan(best):
        return dropped, new_rate
    if one_better:
        for i in range(n):
            hit = chisq - chi1[i, lane] == best
            new_rate += rate1[i, lane] * hit
            dropped |= hit
        if dropped:
            for i in range(n):
                if chisq - chi1[i, lane] == best:
                    use[i, lane] = 0.0
    else:
        for k in range(n - 1):
            hit = chisq - chi2[k, lane] == best
            new_rate += rate2[k, lane] * hit
            dropped |= hit
        if dropped:
            for k in range(n - 1):
                if chisq - chi2[k, lane] == best:
                    use[k, lane] = 0.0
                    use[k + 1, lane] = 0.0
    return dropped, new_rate


@njit(**_JIT_INLINE)
def find_jumps(diffs, use, guess, scale, gain, rnoise, coeff, thresholds, alpha, beta, parts, work, fit,
               chi1, rate1, chi2, rate2, active, rate, nl):
    """Leave out jumps from ``use`` (in place) in every lane; ``rate`` (LANES) receives each lane's
    rate estimate (DN/s) of its last fit.

    Each round fits every lane with the covariance of its ``guess`` (scaled by ``scale``) and
    leaves out a jump where :func:`drop_jump` finds one; a lane is searched again while it
    dropped something and more than 3 differences are left. ``active`` (LANES) is scratch.
    """
    n = diffs.shape[0]
    # the covariance depends on the guess alone, which stays the same in every round
    covariance(guess, gain, rnoise, coeff, scale, alpha, beta, parts, nl)
    for lane in range(nl):
        active[lane] = True
    for rnd in range(n):
        fit_differences(diffs, use, alpha, beta, scale, parts, work, fit, nl, False)
        if rnd == 0:
            for lane in range(nl):
                rate[lane] = fit[RATE, lane]
        omit_one(use, scale, work, fit, chi1, rate1, nl)
        omit_two(use, scale, work, fit, chi1, rate1, chi2, rate2, nl)
        more = False
        for lane in range(nl):
            if not active[lane]:
                continue
            dropped, new_rate = drop_jump(lane, use, fit, chi1, rate1, chi2, rate2, coeff, thresholds)
            if not dropped:
                active[lane] = False
                continue
            rate[lane] = rate[lane] * 0.0 + new_rate
            left = 0.0
            for i in range(n):
                left += use[i, lane]
            if left <= 3:
                active[lane] = False
            more |= active[lane]
        if not more:
            break


@njit(**_JIT)
def search_jumps_kernel(data, gdq, gain, rnoise, dark, coeff, thresholds, guesses, scales, use_out, next_guesses):
    """The jump search of every integration of every pixel (:func:`find_jumps`), LANES pixels at a time.

    ``guesses``/``scales`` (nints, npix): the first rate guesses and their covariance scales.
    ``use_out`` (nints, n, npix) uint8, out: the differences left after the search.
    ``next_guesses`` (nints, npix), out: the final fit's rate guess, the search's rate clipped
    at 0 plus the dark current (DN/s).
    """
    nints, ngroups, npix = data.shape
    n = ngroups - 1
    diffs = np.empty((n, LANES), np.float64)
    use = np.empty((n, LANES), np.float64)
    alpha = np.empty((n, LANES), np.float64)
    beta = np.empty((n, LANES), np.float64)
    parts = np.empty((4, n, LANES), np.float64)
    work = np.zeros((N_WORK, n + 1, LANES), np.float64)
    fit = np.empty((N_OUT, LANES), np.float64)
    chi1 = np.empty((n, LANES), np.float64)
    rate1 = np.empty((n, LANES), np.float64)
    chi2 = np.empty((n, LANES), np.float64)
    rate2 = np.empty((n, LANES), np.float64)
    g = np.empty(LANES, np.float64)
    rn = np.empty(LANES, np.float64)
    guess = np.empty(LANES, np.float64)
    scale = np.empty(LANES, np.float64)
    active = np.empty(LANES, np.bool_)
    rate = np.empty(LANES, np.float64)
    for p0 in range(0, npix, LANES):
        nl = min(LANES, npix - p0)
        for lane in range(nl):
            g[lane] = gain[p0 + lane]
            rn[lane] = rnoise[p0 + lane]
        for i in range(nints):
            load_lanes(data, gdq, coeff, i, p0, nl, diffs, use)
            for lane in range(nl):
                guess[lane] = guesses[i, p0 + lane]
                scale[lane] = scales[i, p0 + lane]
            find_jumps(diffs, use, guess, scale, g, rn, coeff, thresholds, alpha, beta, parts, work, fit,
                       chi1, rate1, chi2, rate2, active, rate, nl)
            for k in range(n):
                for lane in range(nl):
                    use_out[i, k, p0 + lane] = np.uint8(use[k, lane])
            for lane in range(nl):
                r = rate[lane]
                next_guesses[i, p0 + lane] = r * (r > 0.0) + np.float64(dark[p0 + lane])


@njit(**_JIT)
def final_fit_kernel(data, gdq, pixeldq, gain, rnoise, coeff, guesses, scales, use_in, rate_out, rate_dq, ints_out,
                     ints_dq, nonfinite):
    """The final fit of every integration of every pixel, its DQ, and the exposure's rate.

    Parameters
    ----------
    data : float32 (nints, ngroups, npix)
        Ramps in DN (bias removed); ``ngroups >= 4``.
    gdq : uint8 (nints, ngroups, npix)
        Group DQ.
    pixeldq : uint32 (npix,)
    gain : float32 (npix,)
        e-/DN.
    rnoise : float64 (npix,)
        Read noise of one read in DN (the CDS read noise over sqrt 2).
    coeff : float64 (N_COEFF, ngroups - 1)
        Covariance coefficients and times (:func:`daskcal.detector._ramp_likely.difference_covariance`).
    guesses, scales : float64 (nints, npix)
        The rate (DN/s) the covariance assumes, and its scale.
    use_in : uint8 (nints, ngroups - 1, npix)
        The differences to fit (after the jump search); a usable difference left out gets
        its later group counted as a jump (``JUMP_DET`` in the integration's DQ).
    rate_out : float32 (5, npix), out
        Rows SLOPE, ERR, VAR_POISSON, VAR_RNOISE (row DQ_PLANE untouched).
    rate_dq : uint32 (npix,), out
    ints_out : float32 (5, nints, npix), out
    ints_dq : uint32 (nints, npix), out
    nonfinite : float32 (npix,), out
        Number of NaN or infinite samples of each pixel.
    """
    nints, ngroups, npix = data.shape
    n = ngroups - 1
    diffs = np.empty((n, LANES), np.float64)
    use = np.empty((n, LANES), np.float64)
    alpha = np.empty((n, LANES), np.float64)
    beta = np.empty((n, LANES), np.float64)
    parts = np.empty((4, n, LANES), np.float64)
    work = np.zeros((N_WORK, n + 1, LANES), np.float64)
    fit = np.empty((N_OUT, LANES), np.float64)
    g = np.empty(LANES, np.float64)
    rn = np.empty(LANES, np.float64)
    guess = np.empty(LANES, np.float64)
    scale = np.empty(LANES, np.float64)
    ibuf = np.empty(4 * nints, np.float32)
    for p0 in range(0, npix, LANES):
        nl = min(LANES, npix - p0)
        for lane in range(nl):
            g[lane] = gain[p0 + lane]
            rn[lane] = rnoise[p0 + lane]
        for i in range(nints):
            load_lanes(data, gdq, coeff, i, p0, nl, diffs, use)
            for lane in range(nl):
                guess[lane] = guesses[i, p0 + lane]
                scale[lane] = scales[i, p0 + lane]
            for lane in range(nl):
                p = p0 + lane
                any_jump = False
                any_sat = False
                all_flagged = True
                for k in range(ngroups):
                    q = gdq[i, k, p]
                    any_jump |= (q & JUMP_DET) != 0
                    any_sat |= (q & SATURATED) != 0
                    all_flagged &= (q & (SATURATED | DO_NOT_USE)) != 0
                for k in range(n):
                    if use[k, lane] and not use_in[i, k, p]:
                        any_jump = True  # left out by the jump search: group k + 1 gets JUMP_DET
                    use[k, lane] = use_in[i, k, p]
                idq = np.uint32(pixeldq[p])
                if all_flagged:
                    idq |= np.uint32(DO_NOT_USE)
                if any_sat:
                    idq |= np.uint32(SATURATED)
                if any_jump:
                    idq |= np.uint32(JUMP_DET)
                ints_dq[i, p] = idq
            covariance(guess, g, rn, coeff, scale, alpha, beta, parts, nl)
            fit_differences(diffs, use, alpha, beta, scale, parts, work, fit, nl, True)
            for lane in range(nl):
                p = p0 + lane
                ints_out[SLOPE, i, p] = fit[RATE, lane]
                ints_out[ERR, i, p] = fit[UNCERT, lane]
                ints_out[VAR_POISSON, i, p] = fit[VAR_P, lane]
                ints_out[VAR_RNOISE, i, p] = fit[VAR_R, lane]
        for lane in range(nl):
            p = p0 + lane
            bad = 0
            for i in range(nints):
                for k in range(ngroups):
                    bad += not math.isfinite(data[i, k, p])
            nonfinite[p] = bad
            if nints == 1:
                for plane in (SLOPE, ERR, VAR_POISSON, VAR_RNOISE):
                    rate_out[plane, p] = ints_out[plane, 0, p]
                rate_dq[p] = ints_dq[0, p]
            else:
                combine_integrations(ints_out, ints_dq, p, ibuf, rate_out, rate_dq)
