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

The arithmetic follows the order of the equations as stcal 1.20 evaluates them, in
float64, so that degenerate fits (one difference left, all masked) come out as the
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
_THETA, _PHI, _SMALL_PHI, _PHI_D, _BIG_THETA, _THETA_D, _DC, _DB, _CINV = range(9)
N_WORK = 9
# outputs of fit_differences
RATE, CHISQ, UNCERT, VAR_P, VAR_R = range(5)
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

    The determinant ``D_i`` of the leading i x i block of the covariance of
    :func:`covariance` for the rate ``guess[int, p]`` is ``alpha_i-1 D_i-1 - beta_i-2**2 D_i-2``;
    with the entries divided by ``scale[int, p]``, ``state[0]``/``state[1]`` hold
    ``D_i-2``/``D_i-1`` in that scale (``start == 2`` initialises them). ``det`` receives
    ``D_stop``; the caller renormalises (:func:`daskcal.detector._ramp_likely.covariance_scales`).
    """
    nints, npix = guess.shape
    for i in range(nints):
        for p in range(npix):
            photon = guess[i, p] / np.float64(gain[p])
            rn2 = rnoise[p] * rnoise[p]
            s = scale[i, p]
            if start == 2:
                before = 1.0
                last, _ = _alpha_beta(photon, rn2, coeff, 0)
            else:
                before = state[0, i, p]
                last = state[1, i, p]
            d = last
            for k in range(start, stop + 1):
                a, _ = _alpha_beta(photon, rn2, coeff, k - 1)
                _, b = _alpha_beta(photon, rn2, coeff, k - 2)
                d = a / s * last - b * b / (s * s) * before
                if k < stop:
                    before = last
                    last = d
            state[0, i, p] = before
            state[1, i, p] = last
            det[i, p] = d


@njit(**_JIT_INLINE)
def covariance(guess, gain, rnoise, coeff, scale, alpha, beta, parts):
    """Fill ``alpha`` (n) and ``beta`` (n - 1) for the rate ``guess`` (DN/s), divided by ``scale``.

    ``parts`` (4, n) receives the unscaled photon and read-noise parts (rows
    ``A_PH, A_RN, B_PH, B_RN``), used for the variances. ``scale`` is the n-th root of
    the determinant of the unscaled matrix (against overflow in long ramps; see
    :func:`advance_determinant`).
    """
    n = alpha.shape[0]
    photon = guess / gain
    rn2 = rnoise * rnoise
    for i in range(n):
        parts[A_PH, i] = photon * coeff[A_PH, i]
        parts[A_RN, i] = rn2 * coeff[A_RN, i]
        alpha[i] = (parts[A_PH, i] + parts[A_RN, i]) / scale
    for i in range(n - 1):
        parts[B_PH, i] = photon * coeff[B_PH, i]
        parts[B_RN, i] = rn2 * coeff[B_RN, i]
        beta[i] = (parts[B_PH, i] + parts[B_RN, i]) / scale


@njit(**_JIT_INLINE)
def fit_differences(diffs, use, alpha, beta, scale, parts, bm, dm, work, out):
    """Generalised least-squares rate of the differences ``diffs`` whose ``use`` is 1.

    ``alpha``/``beta``/``scale`` from :func:`covariance`; ``parts`` its unscaled parts;
    ``bm`` (n - 1) and ``dm`` (n) receive the masked ``beta`` and differences; ``work``
    (N_WORK, n + 1) the recursions. ``out`` receives RATE (DN/s), CHISQ, UNCERT (DN/s),
    VAR_P and VAR_R ((DN/s)**2). Returns the sums ``(A, B, C)`` of paper I (eqs. 61-63).
    """
    n = diffs.shape[0]
    for i in range(n - 1):
        bm[i] = beta[i] * use[i + 1] * use[i]
    for i in range(n):
        dm[i] = diffs[i] if use[i] else 0.0
    theta = work[_THETA]
    phi = work[_SMALL_PHI]
    theta[0] = 1.0
    theta[1] = alpha[0]
    for i in range(2, n + 1):
        theta[i] = alpha[i - 1] * theta[i - 1] - bm[i - 2] * bm[i - 2] * theta[i - 2]
    phi[n] = 1.0
    phi[n - 1] = alpha[n - 1]
    for i in range(n - 2, -1, -1):
        phi[i] = alpha[i] * phi[i + 1] - bm[i] * bm[i] * phi[i + 2]
    big_phi = work[_PHI]
    phi_d = work[_PHI_D]
    big_phi[n - 1] = 0.0
    phi_d[n - 1] = 0.0
    for i in range(n - 2, -1, -1):
        s = _sign(i + 1)
        big_phi[i] = big_phi[i + 1] * bm[i] + s * bm[i] * phi[i + 2]
        phi_d[i] = (phi_d[i + 1] + s * dm[i + 1] * phi[i + 2]) * bm[i]
    big_theta = work[_BIG_THETA]
    theta_d = work[_THETA_D]
    big_theta[0] = -theta[0]
    theta_d[0] = 0.0
    theta_d[1] = -dm[0] * theta[0]
    for i in range(1, n):
        s = _sign(i)
        big_theta[i] = big_theta[i - 1] * bm[i - 1] + s * theta[i]
        theta_d[i + 1] = bm[i - 1] * theta_d[i] + s * dm[i] * theta[i]
    det = theta[n]
    dc = work[_DC]
    db = work[_DB]
    a_sum = 0.0
    a_diag = 0.0
    b_sum = 0.0
    c_sum = 0.0
    for i in range(n):
        s = _sign(i)
        dc[i] = s / det * (phi[i + 1] * big_theta[i] + theta[i] * big_phi[i]) * use[i]
        db[i] = s / det * (phi[i + 1] * theta_d[i + 1] + theta[i] * phi_d[i])
        b_prev = 1.0 if i == 0 else bm[i - 1]
        a_sum += dm[i] * s / det * b_prev * phi[i + 1] * theta_d[i]
        a_diag += dm[i] * dm[i] * theta[i] * phi[i + 1] / det
        b_sum += dm[i] * dc[i]
        c_sum += dc[i]
    a_all = 2.0 * a_sum + a_diag
    out[RATE] = b_sum * (1.0 / c_sum)
    out[CHISQ] = (a_all - b_sum * b_sum / c_sum) / scale
    out[UNCERT] = math.sqrt(scale / c_sum)
    w = work[_CINV]  # the weights dC / C (omit_one overwrites them)
    vp = vr = 0.0
    for i in range(n):
        w[i] = dc[i] / c_sum
        vp += w[i] * w[i] * parts[A_PH, i]
        vr += w[i] * w[i] * parts[A_RN, i]
    cp = cr = 0.0
    for i in range(n - 1):
        ww = w[i + 1] * w[i]
        cp += ww * parts[B_PH, i]
        cr += ww * parts[B_RN, i]
    out[VAR_P] = vp + 2.0 * cp
    out[VAR_R] = vr + 2.0 * cr
    return a_all, b_sum, c_sum


@njit(**_JIT)
def _sign(i):
    """-1 for even ``i``, +1 for odd (the alternating signs of the recursions)."""
    return 1.0 if i & 1 else -1.0


@njit(**_JIT_INLINE)
def omit_one(use, bm, sums, scale, work, chi1, rate1):
    """Chi squared and rate with each difference left out in turn (paper II, eqs. of sec. 3.1).

    Needs ``work`` as :func:`fit_differences` left it; its row _CINV receives the
    diagonal of the inverse covariance. Unused differences get the full fit's values
    (``sums = (A, B, C)``, the caller stores the full chi squared and rate in
    ``chi1``/``rate1`` beforehand: see :func:`fill_unused`).
    """
    n = use.shape[0]
    a_all, b_all, c_all = sums
    theta = work[_THETA]
    phi = work[_SMALL_PHI]
    det = theta[n]
    cinv = work[_CINV]
    dc = work[_DC]
    db = work[_DB]
    for i in range(n):
        cd = theta[i] * phi[i + 1] / det * use[i]
        cinv[i] = cd
        a = (cd * b_all - db[i] * dc[i]) / (c_all * cd - dc[i] * dc[i])
        b = (db[i] - a * dc[i]) / cd
        chi = a_all + a * a * c_all - 2.0 * a * b_all + b * b * cd - 2.0 * b * db[i] + 2.0 * a * b * dc[i]
        if use[i]:
            chi1[i] = chi / scale
            rate1[i] = a


@njit(**_JIT_INLINE)
def omit_two(use, bm, sums, scale, work, chi1, rate1, chi2, rate2):
    """Chi squared and rate with each pair of adjacent differences left out (paper II, sec. 3.2).

    Run after :func:`omit_one` (uses its ``_CINV`` row and filled ``chi1``/``rate1``).
    A pair holding an unused difference gets the one-omitted values of the other.
    """
    n = use.shape[0]
    a_all, b_all, c_all = sums
    theta = work[_THETA]
    phi = work[_SMALL_PHI]
    det = theta[n]
    cinv = work[_CINV]
    dc = work[_DC]
    db = work[_DB]
    for k in range(n - 1):
        if not use[k]:
            chi2[k] = chi1[k + 1]
            rate2[k] = rate1[k + 1]
            continue
        if not use[k + 1]:
            chi2[k] = chi1[k]
            rate2[k] = rate1[k]
            continue
        off = -bm[k] * theta[k] * phi[k + 2] / det
        p_j = dc[k] * dc[k] - c_all * cinv[k]
        j_k = dc[k] * dc[k + 1] - c_all * off
        bp_j = b_all * dc[k] - db[k] * c_all
        c = bp_j / p_j - (b_all * dc[k + 1] - db[k + 1] * c_all) / j_k
        c /= j_k / p_j - (dc[k + 1] * dc[k + 1] - c_all * cinv[k + 1]) / j_k
        b = (bp_j - c * j_k) / p_j
        a = (b_all - b * dc[k] - c * dc[k + 1]) / c_all
        chi = a_all + a * a * c_all + b * b * cinv[k] + c * c * cinv[k + 1]
        chi -= 2.0 * a * b_all + 2.0 * b * db[k] + 2.0 * c * db[k + 1]
        chi += 2.0 * a * b * dc[k] + 2.0 * a * c * dc[k + 1] + 2.0 * b * c * off
        chi2[k] = chi / scale
        rate2[k] = a


@njit(**_JIT_INLINE)
def find_jumps(diffs, use, guess, scale, gain, rnoise, coeff, thresholds, alpha, beta, parts, bm, dm, work, fit,
               chi1, rate1, chi2, rate2):
    """Leave out jumps from ``use`` (in place); return the rate estimate (DN/s) of the last fit.

    Each round fits with the covariance of ``guess`` (scaled by ``scale``) and finds the largest drop of chi
    squared from leaving out one difference, or two adjacent ones (only where the
    resultant between them has several reads, ``coeff[TWO_OK]``). If the better of the
    two, each less its threshold (``thresholds = (one, two)``), exceeds its
    threshold, those differences are left out and the pixel is searched again,
    while more than 3 differences are left. A NaN chi squared anywhere stops the search.
    """
    n = diffs.shape[0]
    one_t, two_t = thresholds
    rate = np.nan
    # the covariance depends on the guess alone, which stays the same in every round
    covariance(guess, gain, rnoise, coeff, scale, alpha, beta, parts)
    for rnd in range(n):
        sums = fit_differences(diffs, use, alpha, beta, scale, parts, bm, dm, work, fit)
        if rnd == 0:
            rate = fit[RATE]
        for i in range(n):
            chi1[i] = fit[CHISQ]
            rate1[i] = fit[RATE]
        omit_one(use, bm, sums, scale, work, chi1, rate1)
        best1 = -np.inf
        for i in range(n):
            best1 = _nan_max(best1, fit[CHISQ] - chi1[i])
        # The pairs are fitted even where none may be left out (one read per group): a NaN
        # chi squared of any pair (the last pair's often is) stops the search, as in stcal.
        omit_two(use, bm, sums, scale, work, chi1, rate1, chi2, rate2)
        best2 = -np.inf
        for k in range(n - 1):
            best2 = _nan_max(best2, (fit[CHISQ] - chi2[k]) * coeff[TWO_OK, k])
        one_better = best1 - one_t > best2 - two_t
        best = best1 * (best1 > one_t) * one_better + best2 * (best2 > two_t) * (not one_better)
        if best == 0.0 or math.isnan(best):
            break
        # every difference (pair) at the best drop goes, as ties would in stcal
        new_rate = 0.0
        dropped = False
        if one_better:
            for i in range(n):
                hit = fit[CHISQ] - chi1[i] == best
                new_rate += rate1[i] * hit
                dropped |= hit
            if dropped:
                for i in range(n):
                    if fit[CHISQ] - chi1[i] == best:
                        use[i] = 0
        else:
            for k in range(n - 1):
                hit = fit[CHISQ] - chi2[k] == best
                new_rate += rate2[k] * hit
                dropped |= hit
            if dropped:
                for k in range(n - 1):
                    if fit[CHISQ] - chi2[k] == best:
                        use[k] = 0
                        use[k + 1] = 0
        if not dropped:
            break
        rate = rate * 0.0 + new_rate
        left = 0
        for i in range(n):
            left += use[i]
        if left <= 3:
            break
    return rate


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

    ``data``/``gdq`` (nints, ngroups, npix); ``guesses`` (nints, npix) float64, out.
    """
    nints, ngroups, npix = data.shape
    n = ngroups - 1
    diffs = np.empty(n, np.float64)
    use = np.empty(n, np.float64)
    buf = np.empty(n, np.float64)
    for p in range(npix):
        for i in range(nints):
            load_differences(data, gdq, coeff, i, p, diffs, use)
            guesses[i, p] = median_guess(diffs, use, buf)


@njit(**_JIT)
def search_jumps_kernel(data, gdq, gain, rnoise, dark, coeff, thresholds, guesses, scales, use_out, next_guesses):
    """The jump search of every integration of every pixel (:func:`find_jumps`).

    ``guesses``/``scales`` (nints, npix): the first rate guesses and their covariance scales.
    ``use_out`` (nints, n, npix) uint8, out: the differences left after the search.
    ``next_guesses`` (nints, npix), out: the final fit's rate guess, the search's rate clipped
    at 0 plus the dark current (DN/s).
    """
    nints, ngroups, npix = data.shape
    n = ngroups - 1
    diffs = np.empty(n, np.float64)
    use = np.empty(n, np.float64)
    alpha = np.empty(n, np.float64)
    beta = np.zeros(n, np.float64)
    parts = np.zeros((4, n), np.float64)
    bm = np.zeros(n, np.float64)
    dm = np.empty(n, np.float64)
    work = np.zeros((N_WORK, n + 1), np.float64)
    fit = np.empty(5, np.float64)
    chi1 = np.empty(n, np.float64)
    rate1 = np.empty(n, np.float64)
    chi2 = np.zeros(n, np.float64)
    rate2 = np.zeros(n, np.float64)
    for p in range(npix):
        g = np.float64(gain[p])
        rn = rnoise[p]
        for i in range(nints):
            load_differences(data, gdq, coeff, i, p, diffs, use)
            rate = find_jumps(diffs, use, guesses[i, p], scales[i, p], g, rn, coeff, thresholds, alpha, beta,
                              parts, bm, dm, work, fit, chi1, rate1, chi2, rate2)
            for k in range(n):
                use_out[i, k, p] = np.uint8(use[k])
            next_guesses[i, p] = rate * (rate > 0.0) + np.float64(dark[p])


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
    diffs = np.empty(n, np.float64)
    use = np.empty(n, np.float64)
    alpha = np.empty(n, np.float64)
    beta = np.zeros(n, np.float64)
    parts = np.zeros((4, n), np.float64)
    bm = np.zeros(n, np.float64)
    dm = np.empty(n, np.float64)
    work = np.zeros((N_WORK, n + 1), np.float64)
    fit = np.empty(5, np.float64)
    ibuf = np.empty(4 * nints, np.float32)
    for p in range(npix):
        g = np.float64(gain[p])
        rn = rnoise[p]
        bad = 0
        for i in range(nints):
            any_jump = False
            any_sat = False
            all_flagged = True
            for k in range(ngroups):
                q = gdq[i, k, p]
                bad += not math.isfinite(data[i, k, p])
                any_jump |= (q & JUMP_DET) != 0
                any_sat |= (q & SATURATED) != 0
                all_flagged &= (q & (SATURATED | DO_NOT_USE)) != 0
            load_differences(data, gdq, coeff, i, p, diffs, use)
            for k in range(n):
                if use[k] and not use_in[i, k, p]:
                    any_jump = True  # left out by the jump search: group k + 1 gets JUMP_DET
                use[k] = use_in[i, k, p]
            covariance(guesses[i, p], g, rn, coeff, scales[i, p], alpha, beta, parts)
            fit_differences(diffs, use, alpha, beta, scales[i, p], parts, bm, dm, work, fit)
            ints_out[SLOPE, i, p] = fit[RATE]
            ints_out[ERR, i, p] = fit[UNCERT]
            ints_out[VAR_POISSON, i, p] = fit[VAR_P]
            ints_out[VAR_RNOISE, i, p] = fit[VAR_R]
            idq = np.uint32(pixeldq[p])
            if all_flagged:
                idq |= np.uint32(DO_NOT_USE)
            if any_sat:
                idq |= np.uint32(SATURATED)
            if any_jump:
                idq |= np.uint32(JUMP_DET)
            ints_dq[i, p] = idq
        nonfinite[p] = bad
        if nints == 1:
            for plane in (SLOPE, ERR, VAR_POISSON, VAR_RNOISE):
                rate_out[plane, p] = ints_out[plane, 0, p]
            rate_dq[p] = ints_dq[0, p]
        else:
            combine_integrations(ints_out, ints_dq, p, ibuf, rate_out, rate_dq)
