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
from daskcal.detector._jump_events import flag_large_events, flag_showers, shower_settings, snowball_settings
from daskcal.detector._jump_sigclip import clear_full_planes, full_planes, sigclip_jumps
from daskcal.detector._kernels_jump import (
    after_jump_flags,
    clear_flagged_jumps,
    flag_neighbors,
    neighbor_sources,
    primary_jumps,
)
from daskcal.dq import DQ

__all__ = [
    "JumpMethod", "JumpParameters", "detect_jumps", "gain_pixeldq", "jump_block", "jump_block_arguments",
    "jump_mode", "primary_block", "secondary_block",
]

log = logging.getLogger(__name__)

#: stcal's minimum number of usable groups for the two-point method.
MIN_GROUPS = 3
#: Usable differences from which stcal flags all outliers in one pass.
MIN_DIFFS_SINGLE_PASS = 10
#: Integrations (or groups) from which stcal switches to sigma clipping.
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
    minimum_groups : int, default 3
        Fewest usable groups in every integration for the two-point method; with
        fewer (and no sigma clipping) the step flags nothing.
    minimum_sigclip_groups : int, default 100
        Integrations (``only_use_ints``) or usable groups in all (otherwise) from
        which jumps are found by sigma clipping instead.
    only_use_ints : bool, default True
        Sigma clipping compares a group's difference across integrations only;
        False: all differences of a pixel at once.
    min_diffs_single_pass : int, default 10
        Usable differences per integration from which the two-point method flags
        every outlier in one pass instead of iterating.
    expand_large_events : bool, default False
        Flag snowballs (NIR large events, see :mod:`daskcal.detector._jump_large`).
    min_jump_area : float, default 5.0
        Smallest region of jumps (pixels, holes filled) that can be a snowball.
    min_sat_area : float, default 1.0
        Smallest region of newly saturated pixels that counts as a snowball's core.
    expand_factor : float, default 2.0
        A snowball's ellipse is flagged with its minor axis times this (the major
        axis longer by as many pixels).
    use_ellipses : bool, default False
        Deprecated in stcal and JWST; no effect.
    sat_required_snowball : bool, default True
        A snowball needs a saturated core inside its ellipse (except near the edge);
        False: every large jump region is one, and no core is extended.
    min_sat_radius_extend : float, default 2.5
        Cores whose minor axis (pixels, full length) exceeds this are extended.
    sat_expand : int, default 2
        Pixels added to the radius of an extended core.
    edge_size : int, default 25
        Within this many pixels of the edge no saturated core is required.
    mask_snowball_core_next_int : bool, default True
        Flag the cores of an integration's snowballs as jumps in the next integration.
    snowball_time_masked_next_int : float, default 4000
        Seconds of the next integration (whole groups) in which they are flagged.
    max_extended_radius : int, default 200
        Largest radius (pixels) of any extended core or flagged snowball or shower ellipse.
    find_showers : bool, default False
        Flag showers (MIRI large events, see :mod:`daskcal.detector._jump_showers`).
    extend_snr_threshold : float, default 1.2
        Smoothed signal-to-noise ratio above which a pixel is extended emission.
    extend_min_area : int, default 90
        Smallest region of extended emission (pixels) that is a shower.
    extend_inner_radius : float, default 1.0
        Inner radius of the ring kernel (astropy's ``Ring2DKernel``), pixels.
    extend_outer_radius : float, default 2.6
        Its second argument (astropy's ring width), pixels.
    extend_ellipse_expand_ratio : float, default 1.1
        A shower's ellipse is flagged with its minor axis times this.
    time_masked_after_shower : float, default 15
        Seconds after a shower (whole groups) also flagged.
    max_shower_amplitude : float, default 4
        Largest change of a pixel's mean rate the shower flags may make (DN/s).
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
    minimum_groups: int = param(MIN_GROUPS, "fewest usable groups in every integration for the two-point "
                                "method (fewer, without sigma clipping: nothing flagged)")
    minimum_sigclip_groups: int = param(MIN_SIGCLIP_INTS, "integrations (only_use_ints) or usable groups in all "
                                        "from which jumps are found by sigma clipping")
    only_use_ints: bool = param(True, "sigma clipping compares a group's difference across integrations only "
                                "(false: all differences of a pixel)")
    min_diffs_single_pass: int = param(MIN_DIFFS_SINGLE_PASS, "usable differences per integration from which "
                                       "the two-point method flags every outlier in one pass")
    expand_large_events: bool = param(False, "flag snowballs (NIR large events): a jump region around a newly "
                                      "saturated core, enlarged", section="snowballs (large events)")
    min_jump_area: float = param(5.0, "smallest jump region (holes filled) that can be a snowball", "px")
    min_sat_area: float = param(1.0, "smallest newly saturated region that is a snowball core", "px")
    expand_factor: float = param(2.0, "a snowball's ellipse is flagged with its minor axis times this (the "
                                 "major axis longer by as many pixels)")
    use_ellipses: bool = param(False, "deprecated in stcal and JWST: no effect")
    sat_required_snowball: bool = param(True, "a snowball needs a saturated core inside its ellipse (except "
                                        "within edge_size of the edge)")
    min_sat_radius_extend: float = param(2.5, "cores whose minor axis (full length) exceeds this are extended",
                                         "px")
    sat_expand: int = param(2, "pixels added to the radius of an extended core", "px")
    edge_size: int = param(25, "distance from the edge within which no saturated core is required", "px")
    mask_snowball_core_next_int: bool = param(True, "flag snowball cores as jumps in the next integration")
    snowball_time_masked_next_int: float = param(4000.0, "time of the next integration in which they are "
                                                 "flagged (whole groups)", "s")
    max_extended_radius: int = param(200, "largest radius of an extended core or flagged snowball or shower",
                                     "px")
    find_showers: bool = param(False, "flag showers (MIRI large events): faint extended emission found by "
                               "smoothing each group's signal-to-noise ratios", section="showers (large events)")
    extend_snr_threshold: float = param(1.2, "smoothed signal-to-noise ratio above which a pixel is extended "
                                        "emission")
    extend_min_area: int = param(90, "smallest region of extended emission that is a shower", "px")
    extend_inner_radius: float = param(1.0, "inner radius of the ring kernel", "px")
    extend_outer_radius: float = param(2.6, "second argument of the ring kernel (astropy's Ring2DKernel: its "
                                       "width)", "px")
    extend_ellipse_expand_ratio: float = param(1.1, "a shower's ellipse is flagged with its minor axis times "
                                               "this (the major axis longer by as many pixels)")
    time_masked_after_shower: float = param(15.0, "time after a shower also flagged (whole groups)", "s")
    max_shower_amplitude: float = param(4.0, "largest change of a pixel's mean rate the shower flags may make "
                                        "(else its flags are restored)", "DN/s")

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
        for name in ("minimum_groups", "minimum_sigclip_groups", "min_diffs_single_pass"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < 1:
                msg = f"{name} must be an integer >= 1; got {value!r}"
                raise ValueError(msg)
        for name in ("min_jump_area", "min_sat_area", "min_sat_radius_extend", "snowball_time_masked_next_int"):
            _check_number(name, getattr(self, name), positive=False)
        for name in ("extend_snr_threshold", "extend_inner_radius", "time_masked_after_shower",
                     "max_shower_amplitude"):
            _check_number(name, getattr(self, name), positive=False)
        for name in ("expand_factor", "extend_outer_radius", "extend_ellipse_expand_ratio"):
            _check_number(name, getattr(self, name), positive=True)
        for name, low in (("sat_expand", 0), ("edge_size", 0), ("max_extended_radius", 1), ("extend_min_area", 0)):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < low:
                msg = f"{name} must be an integer >= {low}; got {value!r}"
                raise ValueError(msg)
        for name in ("flag_4_neighbors", "only_use_ints", *_LARGE_EVENT_BOOLS):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                msg = f"{name} must be True or False; got {getattr(self, name)!r}"
                raise ValueError(msg)
        if self.max_jump_to_flag_neighbors <= self.min_jump_to_flag_neighbors:
            msg = (
                "max_jump_to_flag_neighbors must be larger than min_jump_to_flag_neighbors; got "
                f"{self.max_jump_to_flag_neighbors!r} <= {self.min_jump_to_flag_neighbors!r}"
            )
            raise ValueError(msg)


#: The true/false parameters of large-event flagging.
_LARGE_EVENT_BOOLS = ("expand_large_events", "use_ellipses", "sat_required_snowball", "mask_snowball_core_next_int",
                      "find_showers")


def _check_number(name: str, value, *, positive: bool) -> None:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
    if not ok:
        bound = "> 0" if positive else ">= 0"
        msg = f"{name} must be a finite number {bound}; got {value!r}"
        raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class JumpMethod:
    """The parameters that choose stcal's method (see :class:`JumpParameters`), as the blocks get them."""

    minimum_groups: int = MIN_GROUPS
    min_diffs_single_pass: int = MIN_DIFFS_SINGLE_PASS
    minimum_sigclip_groups: int = MIN_SIGCLIP_INTS
    only_use_ints: bool = True

    @classmethod
    def of(cls, params: JumpParameters) -> JumpMethod:
        return cls(params.minimum_groups, params.min_diffs_single_pass, params.minimum_sigclip_groups,
                   params.only_use_ints)

    def may_clip(self, nints: int, ngroups: int) -> bool:
        """Whether some DO_NOT_USE pattern of a (nints, ngroups) cube leads to sigma clipping."""
        return (nints if self.only_use_ints else nints * ngroups) >= self.minimum_sigclip_groups

    def mode(self, usable: np.ndarray) -> str:
        """``"sigclip"``, ``"skip"``, ``"single"`` or ``"iterative"``: see :func:`jump_mode`."""
        nints, ngroups = usable.shape
        unusable = (~usable).sum(axis=1)  # whole DO_NOT_USE planes of each integration
        total = nints if self.only_use_ints else nints * ngroups - int(unusable.sum())
        if total >= self.minimum_sigclip_groups:
            return "sigclip"
        min_usable = ngroups - int(unusable.max(initial=0))
        if min_usable < self.minimum_groups:
            return "skip"
        return "single" if min_usable - 1 >= self.min_diffs_single_pass else "iterative"


def jump_mode(usable: np.ndarray, **method) -> str:
    """Which stcal path applies, from which (integration, group) planes have any usable pixel.

    Parameters
    ----------
    usable : ndarray of bool, shape (nints, ngroups)
        True where at least one pixel of the whole detector lacks DO_NOT_USE.
    **method
        The fields of :class:`JumpMethod` (defaults: JWST's).

    Returns
    -------
    str
        ``"sigclip"`` (``minimum_sigclip_groups`` integrations with ``only_use_ints``,
        else as many groups with a usable pixel), otherwise ``"skip"`` (fewer than
        ``minimum_groups`` usable groups in some integration: stcal skips the step),
        ``"single"`` (``min_diffs_single_pass`` usable differences: one pass) or ``"iterative"``.
    """
    return JumpMethod(**method).mode(np.asarray(usable, dtype=bool))


def primary_block(data, gdq, gain, rnoise, usable, *, nframes, thresholds, method=JumpMethod(), in_place=False):
    """Primary jumps of one chunk (no halo needed), by the method :meth:`JumpMethod.mode` chooses.

    Arguments as for :func:`jump_block`; returns the group DQ (uint8, same shape)
    with JUMP_DET added (to ``gdq`` itself with ``in_place``).
    """
    nints, ngroups, cy, cx = data.shape
    flat = (nints, ngroups, cy * cx)
    # the primary search reads only SATURATED / DO_NOT_USE from q and adds JUMP_DET
    # pixel by pixel, so flagging into q itself gives the same result
    q = np.ascontiguousarray(gdq, dtype=np.uint8).reshape(flat)
    out = q if in_place else q.copy()
    mode = method.mode(np.asarray(usable, dtype=bool))
    if mode != "skip":
        d = np.ascontiguousarray(data).reshape(flat)
        g = np.ascontiguousarray(gain).reshape(-1)
        if mode == "sigclip":
            sigclip_jumps(d, q, g, thresholds[0], method.only_use_ints, out)
        else:
            rn = np.ascontiguousarray(rnoise).reshape(-1)
            primary_jumps(d, q, g, rn, nframes, *thresholds, mode == "single", out)
    return out.reshape(data.shape)


def secondary_block(data, gdq, gain, rnoise, usable, planes=None, *, nframes, neighbors, after_jump,
                    method=JumpMethod(), in_place=False):
    """Neighbour and after-jump flags of one chunk from its primary jumps, then the DQ clean-up.

    ``gdq`` holds the primary jumps (:func:`primary_block`); ``planes`` (with sigma
    clipping) the detector-wide :func:`~daskcal.detector._jump_sigclip.full_planes`
    of them, whose lone JUMP_DET flags are cleared first (default: this chunk's own).
    Other arguments as for :func:`jump_block`; neighbours are exact except on the
    chunk's outer ring.
    """
    nints, ngroups, cy, cx = data.shape
    flat = (nints, ngroups, cy * cx)
    planes_shape = (nints * ngroups, cy, cx)
    out = np.ascontiguousarray(gdq, dtype=np.uint8).reshape(flat)
    out = out if in_place else out.copy()
    mode = method.mode(np.asarray(usable, dtype=bool))
    if mode != "skip":
        if mode == "sigclip":
            clear_full_planes(out, full_planes(out) if planes is None else planes)
        d = np.ascontiguousarray(data).reshape(flat)
        g = np.ascontiguousarray(gain).reshape(-1)
        rn = np.ascontiguousarray(rnoise).reshape(-1)
        if neighbors is not None:
            src = np.zeros(flat, dtype=np.uint8)
            neighbor_sources(d, out, g, rn, nframes, neighbors[0], neighbors[1], src)
            flag_neighbors(src.reshape(planes_shape), out.reshape(planes_shape))
        if after_jump is not None:
            e1, n1, e2, n2 = after_jump
            after_jump_flags(d, out, g, e1, n1, e2, n2, out)
    clear_flagged_jumps(out)
    return out.reshape(data.shape)


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
    method: JumpMethod = JumpMethod(),
    in_place: bool = False,
) -> np.ndarray:
    """Jump flags for one chunk (neighbours are exact except on the chunk's outer ring).

    With sigma clipping, a group plane in which every pixel is a jump or DO_NOT_USE
    is judged on this chunk alone: exact when the chunk is the whole detector (the
    graph of :func:`detect_jumps` reduces it over all chunks).

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
        Thresholds in sigma for 4+, 3 and 2 usable differences (the first is also
        the sigma-clipping limit).
    neighbors : (float, float) or None
        (min, max) sigma of jumps whose 4 neighbours are flagged; None disables.
    after_jump : (float, int, float, int) or None
        (e1 electrons, n1 groups, e2 electrons, n2 groups); None disables.
    method : JumpMethod, default JWST's
        What chooses between sigma clipping, the two-point method and skipping.
    in_place : bool, default False
        Add the flags to ``gdq`` itself (when it is a C-contiguous uint8 array
        the caller owns) instead of to a copy.

    Returns
    -------
    ndarray, uint8, shape (nints, ngroups, cy, cx)
    """
    out = primary_block(data, gdq, gain, rnoise, usable, nframes=nframes, thresholds=thresholds, method=method,
                        in_place=in_place)
    return secondary_block(data, out, gain, rnoise, usable, nframes=nframes, neighbors=neighbors,
                           after_jump=after_jump, method=method, in_place=True)


def gain_pixeldq(pdq, gain):
    """``pdq`` with NO_GAIN_VALUE | DO_NOT_USE where the gain is not positive (or NaN); numpy or dask.

    The result is uint32 (JWST's PIXELDQ type) for narrower inputs, which cannot hold NO_GAIN_VALUE (bit 19)."""
    flag = np.uint32(DQ.NO_GAIN_VALUE | DQ.DO_NOT_USE)
    out = pixeldq_dtype(pdq.dtype)
    return (pdq.astype(out) | np.where(gain > 0, np.uint32(0), flag)).astype(out)


def jump_block_arguments(params: JumpParameters, ramps: xr.Dataset) -> dict:
    """Check ``ramps`` for jump detection and turn ``params`` into :func:`jump_block` keywords.

    Computes the detector-wide scalars the blocks need (the median gain that
    converts the after-jump thresholds to electrons); logs a warning when there
    are too few groups.
    """
    nints, ngroups = ramps.sizes["integration"], ramps.sizes["group"]
    check_reference_values(ramps, ("gain", "readnoise"))
    method = JumpMethod.of(params)
    if ngroups < params.minimum_groups and not method.may_clip(nints, ngroups):
        log.warning(
            "jump detection needs %d groups; data have %d: no jumps will be flagged", params.minimum_groups, ngroups
        )

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
        "method": method,
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
    minimum_groups: int = 3,
    minimum_sigclip_groups: int = 100,
    only_use_ints: bool = True,
    min_diffs_single_pass: int = 10,
    expand_large_events: bool = False,
    min_jump_area: float = 5.0,
    min_sat_area: float = 1.0,
    expand_factor: float = 2.0,
    use_ellipses: bool = False,
    sat_required_snowball: bool = True,
    min_sat_radius_extend: float = 2.5,
    sat_expand: int = 2,
    edge_size: int = 25,
    mask_snowball_core_next_int: bool = True,
    snowball_time_masked_next_int: float = 4000.0,
    max_extended_radius: int = 200,
    find_showers: bool = False,
    extend_snr_threshold: float = 1.2,
    extend_min_area: int = 90,
    extend_inner_radius: float = 1.0,
    extend_outer_radius: float = 2.6,
    extend_ellipse_expand_ratio: float = 1.1,
    time_masked_after_shower: float = 15.0,
    max_shower_amplitude: float = 4.0,
) -> xr.Dataset:
    """Flag jumps (cosmic rays) with the two-point difference method or sigma clipping.

    Reproduces ``stcal.jump.jump.detect_jumps_data`` (stcal 1.20) as the JWST
    pipeline calls it, without snowball or shower options:
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

    With ``minimum_sigclip_groups`` integrations (``only_use_ints``) or groups with
    a usable pixel, the two-point search is replaced by ``astropy.stats.sigma_clip``
    of each pixel's differences (across integrations, or all at once) at
    ``rejection_threshold`` sigma; a group plane in which every pixel is then a
    jump or DO_NOT_USE loses its lone JUMP_DET flags (a detector-wide test);
    neighbour and after-jump flags follow as above.

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
    minimum_groups : int, default 3
        Fewest usable groups (some pixel lacking DO_NOT_USE) in every integration for
        the two-point method; with fewer, and no sigma clipping, nothing is flagged.
    minimum_sigclip_groups : int, default 100
        Integrations (``only_use_ints``), or groups with a usable pixel in all
        integrations (otherwise), from which sigma clipping is used.
    only_use_ints : bool, default True
        Sigma-clip each group's difference across integrations; False: all
        differences of a pixel together.
    min_diffs_single_pass : int, default 10
        Usable differences per integration from which the two-point method flags
        all outliers in one pass.
    expand_large_events : bool, default False
        Flag snowballs after the jumps (see Notes).
    min_jump_area : float, default 5.0
        Smallest 8-connected region of jumps (pixels, holes filled) that can be a snowball.
    min_sat_area : float, default 1.0
        Smallest region of newly saturated pixels (pixels) that is a snowball's core.
    expand_factor : float, default 2.0
        A snowball's ellipse is flagged with its minor axis times this factor, its
        major axis longer by as many pixels.
    use_ellipses : bool, default False
        Deprecated in stcal and the JWST pipeline; no effect (True logs a warning).
    sat_required_snowball : bool, default True
        A jump region is a snowball only with a new saturated core (this group or
        the next) inside its ellipse, or its centre within ``edge_size`` of the edge;
        False: every large jump region is one, and no core is extended.
    min_sat_radius_extend : float, default 2.5
        Cores whose minor axis (pixels, full length) exceeds this are extended by
        ``sat_expand`` and set SATURATED in the later groups of the integration.
    sat_expand : int, default 2
        Pixels added to the radius of an extended core.
    edge_size : int, default 25
        Distance (pixels) from the edge within which no core is required.
    mask_snowball_core_next_int : bool, default True
        Flag the extended snowballs' cores as jumps in the next integration.
    snowball_time_masked_next_int : float, default 4000
        Seconds of the next integration so flagged: groups 1 to
        ``int(time // group_time) - 1``.
    max_extended_radius : int, default 200
        Largest radius (pixels) of an extended core or a flagged snowball or shower ellipse.
    find_showers : bool, default False
        Flag showers after the jumps and snowballs (see Notes).
    extend_snr_threshold : float, default 1.2
        Smoothed signal-to-noise ratio above which a pixel is extended emission.
    extend_min_area : int, default 90
        Smallest 8-connected region of extended emission (pixels, holes filled) that is a shower.
    extend_inner_radius : float, default 1.0
        First argument of the ring kernel (astropy's ``Ring2DKernel``), pixels.
    extend_outer_radius : float, default 2.6
        Its second argument, pixels (astropy's ring *width*: the ring reaches 3.6 px by default).
    extend_ellipse_expand_ratio : float, default 1.1
        A shower's ellipse is flagged with its minor axis times this, its major axis longer
        by as many pixels.
    time_masked_after_shower : float, default 15.0
        Seconds after a shower also flagged: ``int(time // group_time)`` more groups.
    max_shower_amplitude : float, default 4.0
        Pixels whose mean difference over an integration the shower flags change by more
        than this times ``group_time`` (compared with differences in electrons, as stcal
        does) get their flags back. DN/s. (The JWST jump step hands stcal
        ``JumpData``'s own default, 6, times the group time, whatever this is.)

    Returns
    -------
    xarray.Dataset
        A new, pixel-chunked dataset with lazy ``groupdq`` and ``pixeldq``, and
        ``n_primary_jumps`` (int64 on ``integration``): the group samples flagged
        JUMP_DET by the primary search in each integration, before neighbour and
        after-jump flags (the sum is stcal's ``total_primary_crs``; input JUMP_DET
        flags count too; where stcal skips the step, reporting -99, the input's
        flags alone). With ``expand_large_events`` or ``find_showers`` also
        ``n_extended_events`` (int64 on ``integration``): the snowballs, or with
        ``find_showers`` the showers (whose count replaces the snowballs', as in stcal),
        flagged in each integration; the sum is stcal's ``number_extended_events``, from
        which the JWST jump step records ``extended_emission_events`` (see
        :func:`daskcal.detector._pipeline.extended_emission_events`). Without either search
        the variable is absent (stcal's count is 0). The input is not modified.

    Raises
    ------
    ValueError, TypeError
        Bad parameters or a malformed dataset (checked before any computation
        except of the 2-D gain and read-noise arrays).

    Notes
    -----
    Like stcal, the step does nothing but the DQ clean-up when some integration
    has fewer than ``minimum_groups`` groups with any pixel lacking DO_NOT_USE (and
    sigma clipping does not apply); this needs a small detector-wide reduction of
    ``groupdq`` that every block depends on. Where sigma clipping may apply, the
    graph has two passes: primary jumps per chunk, a reduction of their group
    planes, then neighbour flags (their primary jumps are held in between).

    With ``expand_large_events``, snowballs are then flagged as stcal 1.20's
    ``flag_large_events`` does (:mod:`daskcal.detector._jump_large`). A snowball's
    shape depends on its whole jump region, which has no size limit, so no halo
    can make chunks decide it exactly: the search runs detector-wide, one task per
    (integration, group) in group order on the whole 2-D plane of that group's
    SATURATED and JUMP_DET bits (one byte per pixel; with the plane before and after,
    the cores saturated so far and scikit-image's label images, about 80 MiB per
    task for 2048 x 2048), and returns only the
    ellipses to flag, which every chunk then draws into its own group DQ. The
    flags are those of the search on the whole detector whatever the chunking;
    the jump-flagged group DQ of every chunk (one byte per sample) is held until
    the search ends.

    With ``find_showers``, showers are then flagged as stcal 1.20's
    ``find_faint_extended`` does (:mod:`daskcal.detector._jump_showers`): per-pixel
    signal-to-noise ratios are smoothed chunk by chunk (a halo of the ring
    kernel's half-width), the extended emission's regions are found on whole
    group planes (one byte per pixel), and every chunk draws the showers'
    ellipses and restores the flags of pixels whose mean rate they change too
    much. That last test needs the ramps again, so every chunk's ramps (4 bytes
    per sample, float32) and group DQ are held until the region search ends. The smoothing is an FFT convolution, as in stcal, on the chunk instead
    of the whole plane: values differ in the last bits, which changes a flag only
    where a smoothed ratio lies within ~1e-12 of ``extend_snr_threshold``.
    """
    given = dict(locals())  # every parameter, by name (first statement: nothing else is local yet)
    del given["ramps"]
    params = JumpParameters(**given)
    validate_ramps(ramps, require=("gain", "readnoise"))
    args = jump_block_arguments(params, ramps)
    neighbors = args["neighbors"]

    ds = pixel_chunked(ramps)
    data, gdq = ds["data"].data, ds["groupdq"].data
    gain, rnoise, pdq = ds["gain"].data, ds["readnoise"].data, ds["pixeldq"].data
    dnu = int(DQ.DO_NOT_USE)
    usable = ((gdq & dnu) == 0).any(axis=(2, 3)).rechunk(-1)

    halo = 1 if neighbors is not None else 0
    # two passes: primary jumps per chunk (counted), then neighbour and after-jump flags with a halo
    first = {k: args[k] for k in ("nframes", "thresholds", "method")}
    primary = _halo_blocks(primary_block, data, gdq, gain, rnoise, [usable], 0, first)
    second = {k: args[k] for k in ("nframes", "neighbors", "after_jump", "method")}
    if args["method"].may_clip(ds.sizes["integration"], ds.sizes["group"]):
        planes = ((primary & int(DQ.JUMP_DET | DQ.DO_NOT_USE)) != 0).all(axis=(2, 3))
        new_gdq = _halo_blocks(secondary_block, data, primary, gain, rnoise, [usable, planes], halo, second)
        n_primary = count_primary_jumps(primary, usable, planes, args["method"])
    else:
        new_gdq = _halo_blocks(secondary_block, data, primary, gain, rnoise, [usable], halo, second)
        n_primary = count_primary_jumps(primary, usable, method=args["method"])

    n_events = None
    if params.expand_large_events:
        new_gdq, n_events = flag_large_events(new_gdq, snowball_settings(params, float(ds.attrs["group_time"])))

    new_pdq = gain_pixeldq(pdq, ds["gain"].data)
    if params.find_showers:
        settings = shower_settings(params, float(ds.attrs["group_time"]), int(ds.attrs["nframes"]),
                                   ds.sizes["integration"])
        # the showers' count replaces the snowballs' (stcal 1.20's number_extended_events is overwritten)
        new_gdq, n_events = flag_showers(data, new_gdq, gain, rnoise, new_pdq, settings)

    out = ds.drop_vars("n_extended_events", errors="ignore")  # an earlier search's count is not this one's
    out["groupdq"] = (ds["groupdq"].dims, new_gdq, ds["groupdq"].attrs)
    out["pixeldq"] = (ds["pixeldq"].dims, new_pdq, ds["pixeldq"].attrs)
    out["n_primary_jumps"] = ("integration", n_primary, N_PRIMARY_JUMPS_ATTRS)
    if n_events is not None:
        out["n_extended_events"] = ("integration", n_events, N_EXTENDED_EVENTS_ATTRS)
    return out


#: Attributes of the ``n_primary_jumps`` variable of :func:`detect_jumps`' result.
N_PRIMARY_JUMPS_ATTRS = {
    "long_name": "group samples flagged JUMP_DET by the primary search, per integration (stcal's "
                 "total_primary_crs, by integration); neighbour and after-jump flags not counted",
}


#: Attributes of the ``n_extended_events`` variable of :func:`detect_jumps`' result.
N_EXTENDED_EVENTS_ATTRS = {
    "long_name": "snowballs (expand_large_events) or, with find_showers, showers found per integration "
                 "(stcal's number_extended_events, by integration)",
}


def primary_counts_block(gdq, usable, planes=None, *, method: JumpMethod = JumpMethod()) -> np.ndarray:
    """JUMP_DET samples of each integration of one chunk after the primary search (block layer).

    ``gdq`` (nints, ngroups, cy, cx) is :func:`primary_block`'s output; with sigma clipping
    (:meth:`JumpMethod.mode` of the detector-wide ``usable`` planes), the lone JUMP_DET flags of
    the detector-wide full ``planes`` (:func:`full_planes`) are not counted: stcal counts after
    clearing them. Returns int64 (nints, 1, 1).
    """
    jump = int(DQ.JUMP_DET)
    flagged = (gdq & jump) != 0
    if planes is not None and method.mode(np.asarray(usable, dtype=bool)) == "sigclip":
        flagged &= ~(np.asarray(planes, dtype=bool)[:, :, None, None] & (gdq == jump))
    return flagged.sum(axis=(1, 2, 3), dtype=np.int64).reshape(-1, 1, 1)


def count_primary_jumps(primary: da.Array, usable: da.Array, planes: da.Array | None = None,
                        method: JumpMethod = JumpMethod()) -> da.Array:
    """int64 (nints,): :func:`primary_counts_block` of every chunk of ``primary``, summed (graph layer)."""
    pairs = [x for p in ([usable] if planes is None else [usable, planes]) for x in (p.rechunk(-1), "ab")]
    per_chunk = da.blockwise(
        primary_counts_block, "iyx", primary, "igyx", *pairs, concatenate=True, method=method,
        adjust_chunks={"y": 1, "x": 1}, dtype=np.int64, meta=np.empty((0, 0, 0), dtype=np.int64),
    )
    return per_chunk.sum(axis=(1, 2))


def _halo_blocks(func, data, gdq, gain, rnoise, planes: list, halo: int, kwargs: dict) -> da.Array:
    """uint8 ``func(data, gdq, gain, rnoise, *planes, **kwargs)`` on every chunk, with a ``halo``-pixel
    halo (trimmed off again); ``planes`` are whole (nints, ngroups) arrays."""
    d4 = {0: 0, 1: 0, 2: halo, 3: halo}
    d2 = {0: halo, 1: halo}
    if halo:
        data, gdq = (da.overlap.overlap(a, depth=d4, boundary="none") for a in (data, gdq))
        gain, rnoise = (da.overlap.overlap(a, depth=d2, boundary="none") for a in (gain, rnoise))
    pairs = [x for p in planes for x in (p.rechunk(-1), "ab")]
    out = da.blockwise(
        func, "igyx", data, "igyx", gdq, "igyx", gain, "yx", rnoise, "yx", *pairs,
        concatenate=True, dtype=np.uint8, meta=np.empty((0, 0, 0, 0), dtype=np.uint8), **kwargs,
    )
    return da.overlap.trim_internal(out, d4, boundary="none") if halo else out
