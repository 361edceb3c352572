"""Numba kernels for saturation flagging (kernel layer: numpy arrays in, ``out`` arrays filled).

Behaviour follows ``stcal.saturation.flag_saturated_pixels`` (stcal 1.20): a group at
or above the threshold (one per pixel, or per group) is SATURATED and so is every later
group of the integration; a group at or below 0 DN gets AD_FLOOR | DO_NOT_USE;
SATURATED is then grown into a (2N+1) x (2N+1) box in every group plane
(:func:`grow_bit`). With a read pattern, :func:`hidden_saturation` marks the groups whose
frames saturated though their average did not. Like stcal, a NaN sample gets no flag
and +Inf counts as saturated; detector1 asks instead (``nonfinite=True``) for
DO_NOT_USE alone on NaN or infinite samples (digitised data never hold them: they mark
corrupt input, not signal)."""

from __future__ import annotations

import numpy as np
from numba import njit

from daskcal.dq import DQ

__all__ = ["grow_bit", "hidden_saturation", "saturation_flags"]

_SATURATED = int(DQ.SATURATED)
_FLOOR = int(DQ.AD_FLOOR | DQ.DO_NOT_USE)
_DNU = int(DQ.DO_NOT_USE)


@njit(nogil=True, cache=True)
def saturation_flags(data, gdq, thresh, nonfinite, out):  # pragma: no cover - compiled
    """Flag saturation (carried forward) and the A/D floor, pixel by pixel.

    Parameters
    ----------
    data : ndarray, float, shape (nints, ngroups, npix)
        Raw ramps in DN (bias included).
    gdq : ndarray, uint8, shape (nints, ngroups, npix)
        Input group DQ.
    thresh : ndarray, float, shape (ti, tg, npix)
        Saturation threshold in DN, one plane for every group (``ti, tg = nints, ngroups``)
        or the same plane for all (``ti = tg = 1``); pixels that must not be checked carry a
        threshold above the A/D limit.
    nonfinite : bool
        Flag NaN and infinite samples DO_NOT_USE and nothing else (stcal: False).
    out : ndarray, uint8, shape (nints, ngroups, npix)
        Receives ``gdq`` with SATURATED and AD_FLOOR | DO_NOT_USE added.
    """
    nints, ngroups, npix = data.shape
    per_int, per_group = thresh.shape[0] > 1, thresh.shape[1] > 1
    seen = np.empty(npix, dtype=np.bool_)
    for i in range(nints):
        seen[:] = False
        ti = i if per_int else 0
        for g in range(ngroups):
            tg = g if per_group else 0
            for p in range(npix):
                v = data[i, g, p]
                f = gdq[i, g, p]
                if nonfinite and not np.isfinite(v):
                    f |= _DNU
                else:
                    if v >= thresh[ti, tg, p]:
                        seen[p] = True
                    if v <= 0:
                        f |= _FLOOR
                if seen[p]:
                    f |= _SATURATED
                out[i, g, p] = f


@njit(nogil=True, cache=True)
def grow_bit(flags, bit, n, out):  # pragma: no cover - compiled
    """Dilate ``bit`` into a (2n+1) x (2n+1) box in every plane.

    Parameters
    ----------
    flags : ndarray, uint8, shape (nplanes, ny, nx)
        DQ planes.
    bit : int
        The flag to grow (e.g. SATURATED).
    n : int
        Box half-width in pixels (>= 0). Pixels beyond the array edge count as unset.
    out : ndarray, uint8, shape (nplanes, ny, nx)
        Receives ``flags`` with ``bit`` set wherever a pixel within the box has it.
        May be ``flags`` itself: a plane's box counts are taken before it is written.
    """
    nplanes, ny, nx = flags.shape
    rows = np.empty((ny, nx), dtype=np.int32)  # 1 where the bit is set within +-n in x
    count = np.empty(nx, dtype=np.int32)
    for k in range(nplanes):
        for y in range(ny):
            c = 0
            for x in range(min(n, nx)):
                c += (flags[k, y, x] & bit) != 0
            for x in range(nx):
                if x + n < nx:
                    c += (flags[k, y, x + n] & bit) != 0
                if x - n - 1 >= 0:
                    c -= (flags[k, y, x - n - 1] & bit) != 0
                rows[y, x] = c > 0
        count[:] = 0
        for y in range(min(n, ny)):
            for x in range(nx):
                count[x] += rows[y, x]
        for y in range(ny):
            for x in range(nx):
                if y + n < ny:
                    count[x] += rows[y + n, x]
                if y - n - 1 >= 0:
                    count[x] -= rows[y - n - 1, x]
                f = flags[k, y, x]
                if count[x] > 0:
                    f |= bit
                out[k, y, x] = f


@njit(nogil=True, cache=True)
def hidden_saturation(data, flags, scaled, checked, out):  # pragma: no cover - compiled
    """Groups whose frames saturated although their average stayed below the threshold.

    Group ``g`` of a pixel is marked when its group is averaged from several frames
    (``checked[g]``), its value is at or above the threshold scaled down by the
    averaging (``scaled``), it carries neither SATURATED nor DO_NOT_USE yet, and the
    next group is SATURATED. The last group is never marked.

    Parameters
    ----------
    data : ndarray, float, shape (nints, ngroups, npix)
        Raw ramps in DN.
    flags : ndarray, uint8, shape (nints, ngroups, npix)
        Group DQ after the forward pass and the growth of SATURATED.
    scaled : ndarray, float64, shape (ti, ngroups, npix)
        Threshold times the group's dilution (mean frame / last frame), DN; ``ti`` is
        ``nints`` or 1 (the same for every integration).
    checked : ndarray, bool, shape (ngroups,)
        Groups whose dilution differs from 1.
    out : ndarray, uint8, shape (nints, ngroups, npix)
        Receives DO_NOT_USE where a group is marked, 0 elsewhere.
    """
    nints, ngroups, npix = data.shape
    per_int = scaled.shape[0] > 1
    skip = _SATURATED | _DNU
    out[:] = 0
    for i in range(nints):
        ti = i if per_int else 0
        for g in range(ngroups - 1):
            if not checked[g]:
                continue
            for p in range(npix):
                if ((flags[i, g, p] & skip) == 0 and (flags[i, g + 1, p] & _SATURATED) != 0
                        and data[i, g, p] >= scaled[ti, g, p]):
                    out[i, g, p] = _DNU
