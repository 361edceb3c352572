"""The optional product of OLS ramp fitting (stcal's ``save_opt``, jwst's ``fitopt``): layout and dataset.

stcal 1.20 returns per-segment arrays ``(nints, max segments, ny, nx)`` and cosmic-ray
magnitudes ``(nints, max jumps, ny, nx)`` whose second axis is the largest count over
every pixel of the exposure, known only once every pixel is fitted. A chunk cannot know
that, so here the axes have their largest possible length for the number of groups,
fixed before any chunk is fitted: ``max_segments(ngroups)`` segments (a segment has two
groups or more unless it is an integration's only one, and a jump group starts the
next) and ``ngroups - 1`` jumps. Slots past a pixel's last segment or jump are 0, as
stcal fills them, so ``fitopt.isel(segment=slice(0, n))`` for stcal's ``n`` gives
stcal's arrays (stcal's axis can also be longer than the segments it fits: its count of
a ramp whose segments are all one group long counts the dropped ones; those slots are 0).

Planes in :func:`daskcal.detector._ramp_fit.fit_block`'s stacked output, from
``offset``: the 7 per-segment names (each ``nints * max_segments`` planes, integration
major), ``nints`` pedestal planes, then ``nints * (ngroups - 1)`` crmag planes.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from daskcal.detector._common import PIX_DIMS
from daskcal.io._zarr_write import take_slice

__all__ = ["SEGMENT_NAMES", "max_jumps", "max_segments", "n_opt_planes", "fitopt_dataset"]

#: Per-segment variables, in stcal's ``opt_info`` names and in plane order.
SEGMENT_NAMES = ("slope", "sigslope", "var_poisson", "var_rnoise", "yint", "sigyint", "weights")
_UNITS = {
    "slope": "DN/s", "sigslope": "", "var_poisson": "DN2/s2", "var_rnoise": "DN2/s2", "yint": "DN",
    "sigyint": "", "weights": "s2/DN2", "pedestal": "DN", "crmag": "DN",
}
_LONG = {
    "slope": "slope of each segment",
    "sigslope": "uncertainty of the segment's fit (stcal's sigslope: of the fit in group units, read noise in e-)",
    "var_poisson": "Poisson variance of the segment's slope",
    "var_rnoise": "read-noise variance of the segment's slope",
    "yint": "intercept of the segment's fit at group index 0",
    "sigyint": "uncertainty of the intercept (stcal's sigyint)",
    "weights": "weight of the segment in its integration: 1 / var_rnoise",
    "pedestal": "first group minus the integration's slope times the mean time of the first group (0 if "
                "saturated or not finite)",
    "crmag": "size of each JUMP_DET group's step from the group before, in group order",
}


def max_segments(ngroups: int) -> int:
    """Most segments an integration of ``ngroups`` groups can have (at least 1)."""
    return max(1, (ngroups + 1) // 2)


def max_jumps(ngroups: int) -> int:
    """Most JUMP_DET groups after the first: ``ngroups - 1``."""
    return max(0, ngroups - 1)


def n_opt_planes(nints: int, ngroups: int) -> int:
    """Planes of the optional product in the stacked block output."""
    return nints * (len(SEGMENT_NAMES) * max_segments(ngroups) + 1 + max_jumps(ngroups))


def fitopt_dataset(stacked, offset: int, nints: int, ngroups: int, coords: dict, attrs: dict) -> xr.Dataset:
    """The ``fitopt`` dataset from the planes of ``stacked`` (dask, float32) from ``offset``."""
    nseg, njump = max_segments(ngroups), max_jumps(ngroups)
    ny, nx = stacked.shape[1:]
    variables = {}
    at = offset
    for name in SEGMENT_NAMES:
        planes = take_slice(stacked, slice(at, at + nints * nseg)).reshape(nints, nseg, ny, nx)
        variables[name] = (("integration", "segment", *PIX_DIMS), planes, _attrs(name))
        at += nints * nseg
    variables["pedestal"] = (("integration", *PIX_DIMS), take_slice(stacked, slice(at, at + nints)),
                             _attrs("pedestal"))
    at += nints
    if njump:
        crmag = take_slice(stacked, slice(at, at + nints * njump)).reshape(nints, njump, ny, nx)
    else:  # one group per integration: no jump (dask cannot reshape an empty slice)
        crmag = da.zeros((nints, 0, ny, nx), chunks=((nints,), (0,), *stacked.chunks[1:]), dtype=np.float32)
    variables["crmag"] = (("integration", "jump", *PIX_DIMS), crmag, _attrs("crmag"))
    return xr.Dataset(variables, coords=coords, attrs=dict(attrs, product="fitopt"))


def _attrs(name: str) -> dict:
    out = {"long_name": _LONG[name]}
    if _UNITS[name]:
        out["units"] = _UNITS[name]
    return out
