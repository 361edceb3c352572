"""Saturation flagging of raw ramps (stcal ``flag_saturated_pixels`` as a Dask graph).

Layers: :mod:`daskcal.detector._kernels_saturation` (numba) <- :func:`saturation_block`
(one chunk) <- :func:`flag_saturation` (graph + API).
"""

from __future__ import annotations

import dataclasses

import dask.array as da
import numpy as np
import xarray as xr

from daskcal._params import param
from daskcal.detector._common import pixel_chunked, pixeldq_dtype, validate_ramps
from daskcal.detector._kernels_saturation import grow_bit, saturation_flags
from daskcal.dq import DQ

__all__ = [
    "ATOD_LIMIT",
    "SaturationParameters",
    "effective_threshold",
    "flag_saturation",
    "saturation_block",
    "saturation_graph",
    "saturation_pixeldq",
]

#: Hard DN limit of the 16-bit A-to-D converter (JWST's value).
ATOD_LIMIT = 65535.0


@dataclasses.dataclass(frozen=True)
class SaturationParameters:
    """Parameters of :func:`flag_saturation`.

    Attributes
    ----------
    n_pix_grow_sat : int, default 1
        Half-width in pixels of the box into which every saturated pixel's
        SATURATED flag is grown (charge spilling); 0 disables growth.
    """

    n_pix_grow_sat: int = param(1, "half-width of the box a saturated pixel's flag is grown into "
                                "(charge migration; 0: none)", "px")

    def __post_init__(self):
        n = self.n_pix_grow_sat
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            msg = f"n_pix_grow_sat must be an integer >= 0 (pixels); got {n!r}"
            raise ValueError(msg)


def effective_threshold(sat, pdq):
    """The thresholds (DN) the data are compared with; numpy or dask arrays.

    Pixels whose threshold is NaN or whose ``pdq`` has NO_SAT_CHECK get
    ``ATOD_LIMIT + 1``, so digitised data never saturate there (as stcal does).
    """
    skip = ((pdq & np.uint32(DQ.NO_SAT_CHECK)) != 0) | np.isnan(sat)
    return np.where(skip, sat.dtype.type(ATOD_LIMIT + 1), sat).astype(sat.dtype)


def saturation_pixeldq(pdq, sat):
    """``pdq`` with NO_SAT_CHECK added where the threshold is NaN; numpy or dask arrays.

    The result is uint32 (JWST's PIXELDQ type) for narrower inputs: a uint8 or uint16 ``pdq``, as
    stcal's own tests build it, cannot hold NO_SAT_CHECK (bit 21)."""
    flag = np.where(np.isnan(sat), np.uint32(DQ.NO_SAT_CHECK), np.uint32(0))
    return (pdq.astype(pixeldq_dtype(pdq.dtype)) | flag).astype(pixeldq_dtype(pdq.dtype))


def saturation_block(data: np.ndarray, gdq: np.ndarray, thresh: np.ndarray, *, n_pix_grow_sat: int,
                     nonfinite: bool = False) -> np.ndarray:
    """Saturation flags for one chunk.

    Parameters
    ----------
    data : ndarray, shape (nints, ngroups, cy, cx)
        Raw ramps in DN (bias included).
    gdq : ndarray, uint8, shape (nints, ngroups, cy, cx)
        Input group DQ.
    thresh : ndarray, shape (cy, cx)
        Effective saturation threshold in DN (no-check pixels above the A/D limit).
    n_pix_grow_sat : int
        Growth half-width in pixels.
    nonfinite : bool, default False
        Flag NaN and infinite samples DO_NOT_USE only (never SATURATED, so +Inf
        does not grow); False follows stcal (NaN unflagged, +Inf saturated).

    Returns
    -------
    ndarray, uint8, shape (nints, ngroups, cy, cx)
        The new group DQ.
    """
    nints, ngroups, cy, cx = data.shape
    flat = (nints, ngroups, cy * cx)
    out = np.empty(flat, dtype=np.uint8)
    saturation_flags(
        np.ascontiguousarray(data).reshape(flat),
        np.ascontiguousarray(gdq, dtype=np.uint8).reshape(flat),
        np.ascontiguousarray(thresh).reshape(-1),
        bool(nonfinite),
        out,
    )
    if n_pix_grow_sat == 0:
        return out.reshape(data.shape)
    planes = out.reshape(nints * ngroups, cy, cx)
    grow_bit(planes, int(DQ.SATURATED), int(n_pix_grow_sat), planes)  # in place
    return out.reshape(data.shape)


def flag_saturation(ramps: xr.Dataset, n_pix_grow_sat: int = 1) -> xr.Dataset:
    """Flag saturated and A/D-floor groups in raw ramps.

    The semantics are those of ``stcal.saturation.flag_saturated_pixels``
    (stcal 1.20) called without a read pattern or zero frame, with the
    ``saturation`` reference values as thresholds and ``pixeldq`` as the
    reference DQ:

    - a group whose value is >= the pixel's ``saturation`` threshold is flagged
      SATURATED, and so is every later group of that integration;
    - a group whose value is <= 0 DN is flagged AD_FLOOR | DO_NOT_USE (that group only);
    - pixels whose threshold is NaN, or whose ``pixeldq`` has NO_SAT_CHECK, are
      compared with a threshold of ``ATOD_LIMIT + 1`` = 65536 DN instead (so
      digitised data never saturate there); NaN thresholds add NO_SAT_CHECK to
      ``pixeldq``;
    - in every group, SATURATED is grown into the (2N+1) x (2N+1) box around each
      saturated pixel (N = ``n_pix_grow_sat``), across chunk edges.

    Parameters
    ----------
    ramps : xarray.Dataset
        Ramp dataset with ``data`` (raw DN, bias included), ``groupdq``, ``pixeldq``
        and ``saturation`` (DN). numpy- or dask-backed.
    n_pix_grow_sat : int, default 1
        Half-width in pixels of the growth box; 0 disables growth.

    Returns
    -------
    xarray.Dataset
        A new, pixel-chunked dataset with lazy ``groupdq`` and ``pixeldq``; the
        other variables are the input's. The input is not modified.

    Notes
    -----
    The group-2 check for frame-averaged groups and the zero-frame check of
    stcal (both need a read pattern / ZEROFRAME) are not implemented. As in
    stcal, a NaN sample is not flagged and +Inf counts as saturated;
    :func:`daskcal.detector1` flags both DO_NOT_USE instead (:func:`saturation_graph`).
    """
    return saturation_graph(ramps, SaturationParameters(n_pix_grow_sat))


def saturation_graph(ramps: xr.Dataset, params: SaturationParameters, *, nonfinite: bool = False) -> xr.Dataset:
    """:func:`flag_saturation`'s graph; ``nonfinite=True`` flags NaN and infinite samples
    DO_NOT_USE only (:func:`saturation_block`), as detector1 does."""
    validate_ramps(ramps, require=("saturation",))
    n = params.n_pix_grow_sat
    ds = pixel_chunked(ramps)
    data, gdq = ds["data"].data, ds["groupdq"].data
    thresh, pdq = ds["saturation"].data, ds["pixeldq"].data

    thresh_eff = effective_threshold(thresh, pdq)

    meta = np.empty((0, 0, 0, 0), dtype=np.uint8)
    if n == 0:
        new_gdq = da.map_blocks(saturation_block, data, gdq, thresh_eff, dtype=np.uint8, meta=meta, n_pix_grow_sat=0,
                                nonfinite=nonfinite)
    else:
        d4 = {0: 0, 1: 0, 2: n, 3: n}
        d2 = {0: n, 1: n}
        new_gdq = da.map_overlap(
            saturation_block,
            data,
            gdq,
            thresh_eff,
            depth=[d4, d4, d2],
            boundary="none",
            dtype=np.uint8,
            meta=meta,
            n_pix_grow_sat=n,
            nonfinite=nonfinite,
        )
    new_pdq = saturation_pixeldq(pdq, thresh)

    out = ds.copy()
    out["groupdq"] = (ds["groupdq"].dims, new_gdq, ds["groupdq"].attrs)
    out["pixeldq"] = (ds["pixeldq"].dims, new_pdq, ds["pixeldq"].attrs)
    return out
