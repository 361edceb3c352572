"""Jump (cosmic-ray) detection by two-point differences, as a Dask graph.

Layers: :mod:`daskcal.detector._kernels_jump` (numba) <- :func:`jump_block` (one
chunk with a one-pixel halo) <- :func:`detect_jumps` (graph + API).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import dask.array as da
import numpy as np
import xarray as xr

from daskcal._params import param
from daskcal.detector._common import check_reference_values, pixel_chunked, pixeldq_dtype, validate_ramps
from daskcal.detector._kernels_jump import (
    after_jump_flags,
    clear_flagged_jumps,
    flag_neighbors,
    neighbor_sources,
    primary_jumps,
)
from daskcal.dq import DQ

__all__ = ["JumpParameters", "detect_jumps", "gain_pixeldq", "jump_block", "jump_block_arguments", "jump_mode"]

log = logging.getLogger(__name__)

#: stcal's minimum number of usable groups for the two-point method.
MIN_GROUPS = 3
#: Usable differences from which stcal flags all outliers in one pass.
MIN_DIFFS_SINGLE_PASS = 10
#: Integrations from which stcal switches to sigma clipping (not implemented here).
MIN_SIGCLIP_INTS = 100


@dataclasses.dataclass(frozen=True)
class JumpParameters:
    """Parameters of :func:`detect_jumps` (defaults are JWST's).

    Attributes
    ----------
    rejection_threshold : float, default 4.0
        Threshold in sigma for ramps with 4 or more usable differences.
    three_group_rejection_threshold : float, default 6.0
        Threshold in sigma when a pixel has 2 usable differences (3 groups).
    four_group_rejection_threshold : float, default 5.0
        Threshold in sigma when a pixel has 3 usable differences (4 groups).
    flag_4_neighbors : bool, default True
        Also flag the 4 adjacent pixels of jumps between the two limits below.
    max_jump_to_flag_neighbors : float, default 1000
        Jumps at or above this many sigma do not have neighbours flagged.
    min_jump_to_flag_neighbors : float, default 10
        Jumps at or below this many sigma do not have neighbours flagged.
    after_jump_flag_dn1, after_jump_flag_dn2 : float, default 0
        Jumps at least this large (DN, converted to electrons with the median
        gain) also flag the groups within ``after_jump_flag_time1`` (``..2``).
    after_jump_flag_time1, after_jump_flag_time2 : float, default 0
        Seconds after such a jump to flag (converted to whole groups with the
        group time); 0 disables.
    """

    rejection_threshold: float = param(4.0, "two-point difference threshold, 5 or more groups", "sigma")
    three_group_rejection_threshold: float = param(6.0, "the same, for 3 usable groups", "sigma")
    four_group_rejection_threshold: float = param(5.0, "the same, for 4 usable groups", "sigma")
    flag_4_neighbors: bool = param(True, "flag the 4 neighbours of a jump")
    max_jump_to_flag_neighbors: float = param(1000.0, "only jumps below this flag their neighbours", "sigma")
    min_jump_to_flag_neighbors: float = param(10.0, "only jumps above this flag their neighbours", "sigma")
    after_jump_flag_dn1: float = param(0.0, "jumps at least this large also flag the groups within "
                                       "after_jump_flag_time1", "DN")
    after_jump_flag_time1: float = param(0.0, "time after such a jump whose groups are flagged (0: off)", "s")
    after_jump_flag_dn2: float = param(0.0, "a second such rule: jump amplitude", "DN")
    after_jump_flag_time2: float = param(0.0, "a second such rule: time flagged after the jump (0: off)", "s")

    def __post_init__(self):
        for name in ("rejection_threshold", "three_group_rejection_threshold", "four_group_rejection_threshold"):
            _check_number(name, getattr(self, name), positive=True)
        for name in (
            "max_jump_to_flag_neighbors",
            "min_jump_to_flag_neighbors",
            "after_jump_flag_dn1",
            "after_jump_flag_time1",
            "after_jump_flag_dn2",
            "after_jump_flag_time2",
        ):
            _check_number(name, getattr(self, name), positive=False)
        if not isinstance(self.flag_4_neighbors, (bool, np.bool_)):
            msg = f"flag_4_neighbors must be True or False; got {self.flag_4_neighbors!r}"
            raise ValueError(msg)
        if self.max_jump_to_flag_neighbors <= self.min_jump_to_flag_neighbors:
            msg = (
                "max_jump_to_flag_neighbors must be larger than min_jump_to_flag_neighbors; got "
                f"{self.max_jump_to_flag_neighbors!r} <= {self.min_jump_to_flag_neighbors!r}"
            )
            raise ValueError(msg)


def _check_number(name: str, value, *, positive: bool) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        msg = f"{name} must be a finite number {bound}; got {value!r}"
        raise ValueError(msg)


def jump_mode(usable: np.ndarray) -> str:
    """Which stcal path applies, from which (integration, group) planes have any usable pixel.

    Parameters
    ----------
    usable : ndarray of bool, shape (nints, ngroups)
        True where at least one pixel of the whole detector lacks DO_NOT_USE.

    Returns
    -------
    str
        ``"skip"`` (fewer than 3 usable groups in some integration: stcal skips
        the step), ``"single"`` (10+ usable differences: one pass) or ``"iterative"``.
    """
    ngroups = usable.shape[1]
    min_usable = ngroups - int((~usable).sum(axis=1).max())
    if min_usable < MIN_GROUPS:
        return "skip"
    if min_usable - 1 >= MIN_DIFFS_SINGLE_PASS:
        return "single"
    return "iterative"


def jump_block(
    data: np.ndarray,
    gdq: np.ndarray,
    gain: np.ndarray,
    rnoise: np.ndarray,
    usable: np.ndarray,
    *,
    nframes: int,
    thresholds: tuple[float, float, float],
    neighbors: tuple[float, float] | None,
    after_jump: tuple[float, int, float, int] | None,
    in_place: bool = False,
) -> np.ndarray:
    """Jump flags for one chunk (neighbours are exact except on the chunk's outer ring).

    Parameters
    ----------
    data : ndarray, shape (nints, ngroups, cy, cx)
        Bias-subtracted ramps in DN.
    gdq : ndarray, uint8, shape (nints, ngroups, cy, cx)
        Group DQ.
    gain, rnoise : ndarray, shape (cy, cx)
        Gain (e-/DN) and CDS read noise (DN).
    usable : ndarray of bool, shape (nints, ngroups)
        Detector-wide: planes with at least one pixel lacking DO_NOT_USE (see :func:`jump_mode`).
    nframes : int
        Frames per group.
    thresholds : (float, float, float)
        Thresholds in sigma for 4+, 3 and 2 usable differences.
    neighbors : (float, float) or None
        (min, max) sigma of jumps whose 4 neighbours are flagged; None disables.
    after_jump : (float, int, float, int) or None
        (e1 electrons, n1 groups, e2 electrons, n2 groups); None disables.
    in_place : bool, default False
        Add the flags to ``gdq`` itself (when it is a C-contiguous uint8 array
        the caller owns) instead of to a copy.

    Returns
    -------
    ndarray, uint8, shape (nints, ngroups, cy, cx)
    """
    nints, ngroups, cy, cx = data.shape
    flat = (nints, ngroups, cy * cx)
    planes = (nints * ngroups, cy, cx)
    q = np.ascontiguousarray(gdq, dtype=np.uint8).reshape(flat)
    # the primary search reads only SATURATED / DO_NOT_USE from q and adds JUMP_DET
    # pixel by pixel, so flagging into q itself gives the same result
    out = q if in_place else q.copy()
    mode = jump_mode(np.asarray(usable, dtype=bool))
    if mode != "skip":
        d = np.ascontiguousarray(data).reshape(flat)
        g = np.ascontiguousarray(gain).reshape(-1)
        rn = np.ascontiguousarray(rnoise).reshape(-1)
        primary_jumps(d, q, g, rn, nframes, *thresholds, mode == "single", out)
        if neighbors is not None:
            src = np.zeros(flat, dtype=np.uint8)
            neighbor_sources(d, out, g, rn, nframes, neighbors[0], neighbors[1], src)
            flag_neighbors(src.reshape(planes), out.reshape(planes))
        if after_jump is not None:
            e1, n1, e2, n2 = after_jump
            after_jump_flags(d, out, g, e1, n1, e2, n2, out)
    clear_flagged_jumps(out)
    return out.reshape(data.shape)


def gain_pixeldq(pdq, gain):
    """``pdq`` with NO_GAIN_VALUE | DO_NOT_USE where the gain is not positive (or NaN); numpy or dask.

    The result is uint32 (JWST's PIXELDQ type) for narrower inputs, which cannot hold NO_GAIN_VALUE (bit 19)."""
    flag = np.uint32(DQ.NO_GAIN_VALUE | DQ.DO_NOT_USE)
    out = pixeldq_dtype(pdq.dtype)
    return (pdq.astype(out) | np.where(gain > 0, np.uint32(0), flag)).astype(out)


def jump_block_arguments(params: JumpParameters, ramps: xr.Dataset) -> dict:
    """Check ``ramps`` for jump detection and turn ``params`` into :func:`jump_block` keywords.

    Computes the detector-wide scalars the blocks need (the median gain that
    converts the after-jump thresholds to electrons) and refuses what the
    two-point method cannot do; logs a warning when there are too few groups.
    """
    nints, ngroups = ramps.sizes["integration"], ramps.sizes["group"]
    if nints >= MIN_SIGCLIP_INTS:
        msg = (
            f"detect_jumps supports fewer than {MIN_SIGCLIP_INTS} integrations "
            f"(stcal switches to sigma clipping, which is not implemented); got {nints}"
        )
        raise NotImplementedError(msg)
    check_reference_values(ramps, ("gain", "readnoise"))
    if ngroups < MIN_GROUPS:
        log.warning("jump detection needs %d groups; data have %d: no jumps will be flagged", MIN_GROUPS, ngroups)

    group_time = float(ramps.attrs["group_time"])
    n1 = int(params.after_jump_flag_time1 // group_time)
    n2 = int(params.after_jump_flag_time2 // group_time)
    after_jump = None
    if n1 > 0 or n2 > 0:
        median_gain = np.nanmedian(np.asarray(ramps["gain"].values))
        after_jump = (
            float(params.after_jump_flag_dn1 * median_gain),
            n1,
            float(params.after_jump_flag_dn2 * median_gain),
            n2,
        )
    neighbors = None
    if params.flag_4_neighbors:
        neighbors = (float(params.min_jump_to_flag_neighbors), float(params.max_jump_to_flag_neighbors))
    thresholds = (
        float(params.rejection_threshold),
        float(params.four_group_rejection_threshold),
        float(params.three_group_rejection_threshold),
    )

    return {
        "nframes": int(ramps.attrs["nframes"]),
        "thresholds": thresholds,
        "neighbors": neighbors,
        "after_jump": after_jump,
    }


def detect_jumps(
    ramps: xr.Dataset,
    rejection_threshold: float = 4.0,
    three_group_rejection_threshold: float = 6.0,
    four_group_rejection_threshold: float = 5.0,
    flag_4_neighbors: bool = True,
    max_jump_to_flag_neighbors: float = 1000.0,
    min_jump_to_flag_neighbors: float = 10.0,
    after_jump_flag_dn1: float = 0.0,
    after_jump_flag_time1: float = 0.0,
    after_jump_flag_dn2: float = 0.0,
    after_jump_flag_time2: float = 0.0,
) -> xr.Dataset:
    """Flag jumps (cosmic rays) with the two-point difference method.

    Reproduces ``stcal.jump.jump.detect_jumps_data`` (stcal 1.20) as the JWST
    pipeline calls it, without snowball, shower or sigma-clipping options:
    data and CDS read noise are scaled to electrons with the per-pixel gain;
    differences of SATURATED/DO_NOT_USE groups are ignored; per pixel, the
    largest outlier beyond the threshold (4+/3/2 usable differences: see the
    thresholds) is flagged and the search repeated until none remains (with 10
    or more usable differences everything beyond ``rejection_threshold`` from
    the median is flagged in one pass); the 4 neighbours of jumps between
    ``min_jump_to_flag_neighbors`` and ``max_jump_to_flag_neighbors`` sigma are
    flagged (across chunk edges); groups after large jumps are flagged; JUMP_DET
    is removed where SATURATED or DO_NOT_USE is set; pixels with a non-positive
    or NaN gain get NO_GAIN_VALUE | DO_NOT_USE in ``pixeldq``.

    Parameters
    ----------
    ramps : xarray.Dataset
        Ramp dataset with ``data`` (DN, superbias already subtracted), ``groupdq``,
        ``pixeldq``, ``gain`` (e-/DN) and ``readnoise`` (DN, CDS); attrs
        ``group_time`` (s) and ``nframes``. numpy- or dask-backed.
    rejection_threshold : float, default 4.0
        Sigma threshold with 4 or more usable differences.
    three_group_rejection_threshold : float, default 6.0
        Sigma threshold with 2 usable differences (3 groups).
    four_group_rejection_threshold : float, default 5.0
        Sigma threshold with 3 usable differences (4 groups).
    flag_4_neighbors : bool, default True
        Flag the 4 adjacent pixels of jumps within the limits below.
    max_jump_to_flag_neighbors : float, default 1000
        Upper limit (sigma) for neighbour flagging.
    min_jump_to_flag_neighbors : float, default 10
        Lower limit (sigma) for neighbour flagging.
    after_jump_flag_dn1, after_jump_flag_dn2 : float, default 0
        Jump amplitudes (DN; times the median gain) from which later groups are flagged.
    after_jump_flag_time1, after_jump_flag_time2 : float, default 0
        Time (s) after such jumps to flag, as ``int(time // group_time)`` groups.

    Returns
    -------
    xarray.Dataset
        A new, pixel-chunked dataset with lazy ``groupdq`` and ``pixeldq``; the
        input is not modified.

    Raises
    ------
    ValueError, TypeError
        Bad parameters or a malformed dataset (checked before any computation
        except of the 2-D gain and read-noise arrays).
    NotImplementedError
        100 or more integrations (stcal then uses sigma clipping).

    Notes
    -----
    Like stcal, the step does nothing but the DQ clean-up when some integration
    has fewer than 3 groups with any pixel lacking DO_NOT_USE; this needs a
    small detector-wide reduction of ``groupdq`` that every block depends on.
    """
    params = JumpParameters(
        rejection_threshold,
        three_group_rejection_threshold,
        four_group_rejection_threshold,
        flag_4_neighbors,
        max_jump_to_flag_neighbors,
        min_jump_to_flag_neighbors,
        after_jump_flag_dn1,
        after_jump_flag_time1,
        after_jump_flag_dn2,
        after_jump_flag_time2,
    )
    validate_ramps(ramps, require=("gain", "readnoise"))
    args = jump_block_arguments(params, ramps)
    neighbors = args["neighbors"]

    ds = pixel_chunked(ramps)
    data, gdq = ds["data"].data, ds["groupdq"].data
    gain, rnoise, pdq = ds["gain"].data, ds["readnoise"].data, ds["pixeldq"].data
    dnu = int(DQ.DO_NOT_USE)
    usable = ((gdq & dnu) == 0).any(axis=(2, 3)).rechunk(-1)

    halo = 1 if neighbors is not None else 0
    d4 = {0: 0, 1: 0, 2: halo, 3: halo}
    d2 = {0: halo, 1: halo}
    if halo:
        data, gdq = (da.overlap.overlap(a, depth=d4, boundary="none") for a in (data, gdq))
        gain, rnoise = (da.overlap.overlap(a, depth=d2, boundary="none") for a in (gain, rnoise))
    new_gdq = da.blockwise(
        jump_block,
        "igyx",
        data,
        "igyx",
        gdq,
        "igyx",
        gain,
        "yx",
        rnoise,
        "yx",
        usable,
        "ab",
        concatenate=True,
        dtype=np.uint8,
        meta=np.empty((0, 0, 0, 0), dtype=np.uint8),
        **args,
    )
    if halo:
        new_gdq = da.overlap.trim_internal(new_gdq, d4, boundary="none")

    new_pdq = gain_pixeldq(pdq, ds["gain"].data)

    out = ds.copy()
    out["groupdq"] = (ds["groupdq"].dims, new_gdq, ds["groupdq"].attrs)
    out["pixeldq"] = (ds["pixeldq"].dims, new_pdq, ds["pixeldq"].attrs)
    return out
