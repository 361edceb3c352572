"""Slow plain-numpy reference of the OLS ramp-fitting kernel (one pixel at a time).

Written from stcal 1.20's OLS_C behaviour, independently of the numba kernel,
for small random cubes only. Returns the same product dictionaries as
``fit_ramps`` (numpy arrays): ``rate`` on (y, x), ``rateints`` on (integration, y, x).
"""

from __future__ import annotations

import numpy as np

DNU, SAT, JUMP, PERS, NO_GAIN = 1, 2, 4, 32, 1 << 19
POWERS = [(5.0, 0.0), (10.0, 0.4), (20.0, 1.0), (50.0, 3.0), (100.0, 6.0), (np.inf, 10.0)]
BIG = 1e6


def _segments(q):
    """[(start, length)] of one integration's groups, stcal's rules."""
    good = [(int(v) & ~PERS & 0xFF) == 0 for v in q]
    segs = []
    g = 0
    while g < len(q):
        if not good[g]:
            g += 1
            continue
        start = g - 1 if g > 0 and (int(q[g - 1]) & ~PERS & 0xFF) == JUMP else g
        end = g
        while end < len(q) and good[end]:
            end += 1
        length = end - start
        longest = max([n for _, n in segs], default=0)
        if not (length == 1 and longest > 1):
            segs.append((start, length))
        g = end
    if len(segs) > 1:
        if max(n for _, n in segs) == 1:
            segs = segs[:1]
        else:
            segs = [s for s in segs if s[1] > 1]
    return segs


def _median_rate(d, q, is_0th, tg, t1):
    nints, ngroups = d.shape
    if ngroups == 1:
        return float(np.mean(d[:, 0] / t1))
    rates = []
    for i in range(nints):
        if is_0th[i]:
            r = d[i, 0] / t1
        else:
            loc = np.where(q[i] & DNU, np.nan, d[i] / tg)
            diffs = np.diff(loc)
            diffs[(q[i, 1:] & JUMP) != 0] = np.nan
            if np.all(np.isnan(diffs)):
                r = loc[0]
            else:
                r = np.nanmedian(diffs)
        rates.append(0.0 if np.isnan(r) else r)
    return float(np.mean(rates))


def _fit_segment(y, start, n, gain, rn, mrate, dark, tg, t1):
    y = y.astype(np.float64)
    if n == 1:
        t, slope, denom = t1, y[start] / t1, 6.0
        vp_t = t1
    elif n == 2:
        t, slope, denom = tg, (y[start + 1] - y[start]) / tg, 6.0
        vp_t = tg
    else:
        seg = y[start:start + n]
        sig = seg[-1] - seg[0]
        den = rn**2 + sig * gain
        snr = 0.0 if (den <= 0 or gain == 0) else max(sig * gain / np.sqrt(den), 0.0)
        power = next((p for bound, p in POWERS if snr < bound), 10.0)
        mid = (n - 1) / 2.0
        w = np.abs((np.arange(n) - mid) / mid).astype(np.float32) ** np.float32(power)
        x = start + np.arange(n, dtype=np.float64)
        yy = np.nan_to_num(seg.astype(np.float64), nan=0.0)
        with np.errstate(all="ignore"):  # read noise 0 gives inf/NaN weights, as in stcal
            w = w.astype(np.float64) / np.float64(rn) ** 2
            sw, sx, sxx = w.sum(), (w * x).sum(), (w * x * x).sum()
            sy, sxy = (w * yy).sum(), (w * x * yy).sum()
            slope = (sw * sxy - sx * sy) / (sw * sxx - sx * sx) / tg
        t, denom, vp_t = tg, float(n**3 - n), tg * (n - 1)
        if not gain > 0:
            return np.float64(slope), _vp(mrate, dark, vp_t, gain), np.float64(0.0)
    with np.errstate(all="ignore"):
        var_r = 12.0 * (np.float64(rn) / t) ** 2 / (denom * np.float64(gain) ** 2)
    return np.float64(slope), _vp(mrate, dark, vp_t, gain), var_r


def _vp(mrate, dark, t, gain):
    with np.errstate(all="ignore"):
        return np.float64((mrate + dark) if mrate > 0 else dark) / (t * np.float64(gain))


def _pixel(d, q, pdq, gain, rn, dark, tg, t1, suppress):
    nints, ngroups = d.shape
    q = q.astype(np.int64).copy()
    if suppress:
        for i in range(nints):
            if np.sum((q[i] & ~PERS & 0xFF) == 0) == 1:
                q[i] |= DNU
    d = np.where(q & SAT, np.nan, d.astype(np.float64))
    pdq = int(pdq)
    if not gain > 0:
        pdq |= DNU | NO_GAIN
    rdq = pdq
    for i in range(nints):
        rdq |= (JUMP if (q[i] & JUMP).any() else 0) | (PERS if (q[i] & PERS).any() else 0)
    is_0th = [(not suppress) and np.sum(q[i] == 0) == 1 and q[i, 0] == 0 for i in range(nints)]
    mrate = _median_rate(d, q, is_0th, tg, t1)
    ints = []
    tot_p = tot_r = tot_num = 0.0
    n_dnu = n_sat = 0
    for i in range(nints):
        idq = pdq | (JUMP if (q[i] & JUMP).any() else 0) | (PERS if (q[i] & PERS).any() else 0)
        slope, err, vp, vr = 0.0, 0.0, 0.0, 0.0
        whole_bad = np.all(q[i] & (DNU | SAT))
        if q[i, 0] & SAT:
            idq |= DNU | SAT
            slope = np.nan
        if whole_bad:
            idq |= DNU | (SAT if np.all(q[i] & SAT) else 0)
        elif not q[i, 0] & SAT:
            segs = _segments(q[i])
            if segs:
                fits = [_fit_segment(d[i], s, n, gain, rn, mrate, dark, tg, t1 if is_0th[i] else tg)
                        for s, n in segs]
                with np.errstate(all="ignore"):
                    inv_r = sum(1.0 / f[2] for f in fits)
                    inv_p = sum(1.0 / f[1] for f in fits if f[1] > 0)
                    inv_e = sum(1.0 / (f[1] + f[2]) for f in fits)
                    num = sum(f[0] / f[2] for f in fits)
                    vp = 1.0 / inv_p if inv_p > 0 else 0.0
                    vp = 0.0 if vp >= BIG else vp
                    vr = 1.0 / inv_r
                    vr = 0.0 if vr >= BIG else vr
                    ve = 1.0 / inv_e
                slope = num * vr
                err = 0.0 if ve > BIG else np.sqrt(ve)
                tot_p += inv_p if inv_p > 0 else 0.0
                tot_r += inv_r
                tot_num += num
                if idq & (DNU | SAT):
                    slope, err, vp, vr = np.nan, 0.0, 0.0, 0.0
        if idq & DNU:
            n_dnu += 1
            slope = np.nan
        if idq & SAT:
            n_sat += 1
            slope = np.nan
        if (q[i] & SAT).any():
            idq |= SAT
        ints.append((slope, err, idq, vp, vr))
    if n_dnu == nints:
        rdq |= DNU
    if n_sat == nints:
        rdq |= SAT
    with np.errstate(all="ignore"):
        vp = 1.0 / tot_p if tot_p > 0 else 0.0
        vp = 0.0 if (vp >= BIG or vp < 0) else vp
        vr = 1.0 / tot_r if tot_r > 0 else 0.0
        vr = 0.0 if vr >= BIG else vr
        slope = tot_num * vr
    err = np.sqrt(vp + vr)
    if rdq & (DNU | SAT):
        slope, err, vp, vr = np.nan, 0.0, 0.0, 0.0
    if any((q[i] & SAT).any() for i in range(nints)):
        rdq |= SAT
    return (slope, err, rdq, vp, vr), ints


def reference_fit(data, groupdq, pixeldq, gain, readnoise, *, group_time, frame_time, nframes,
                  suppress_one_group=True, dark=None):
    """Fit every pixel of small numpy cubes; see the module docstring."""
    nints, ngroups, ny, nx = data.shape
    suppress = bool(suppress_one_group and ngroups > 1)
    gain32 = np.asarray(gain, np.float32)
    rn = (np.asarray(readnoise, np.float32) * (gain32.astype(np.float64) / np.sqrt(2.0 * nframes))).astype(np.float32)
    tg = float(np.float32(group_time))
    t1 = (nframes + 1.0) * float(np.float32(frame_time)) / 2.0
    dark = np.zeros((ny, nx)) if dark is None else dark
    names = ("data", "err", "dq", "var_poisson", "var_rnoise")
    rate = {n: np.zeros((ny, nx), np.uint32 if n == "dq" else np.float32) for n in names}
    rints = {n: np.zeros((nints, ny, nx), np.uint32 if n == "dq" else np.float32) for n in names}
    for y in range(ny):
        for x in range(nx):
            r, ints = _pixel(data[:, :, y, x], groupdq[:, :, y, x], pixeldq[y, x], float(gain32[y, x]),
                             float(rn[y, x]), float(dark[y, x]), tg, t1, suppress)
            for k, n in enumerate(names):
                rate[n][y, x] = r[k]
                for i in range(nints):
                    rints[n][i, y, x] = ints[i][k]
    return rate, rints
