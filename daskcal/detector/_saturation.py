"""Saturation flagging of raw ramps (stcal ``flag_saturated_pixels`` as a Dask graph).

Layers: :mod:`daskcal.detector._kernels_saturation` (numba) <- :func:`saturation_block`
(one chunk) <- :func:`flag_saturation` (graph + API).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import dask.array as da
import numpy as np
import xarray as xr

from daskcal._params import param
from daskcal.detector._common import (
    PIX_DIMS,
    RAMP_DIMS,
    pixel_chunked,
    pixeldq_dtype,
    validate_ramps,
)
from daskcal.detector._kernels_saturation import (
    grow_bit,
    hidden_saturation,
    saturation_flags,
)
from daskcal.dq import DQ

__all__ = [
    "ATOD_LIMIT",
    "SaturationParameters",
    "effective_threshold",
    "flag_saturation",
    "frames_read_pattern",
    "saturation_block",
    "saturation_graph",
    "check_superbias",
    "saturation_pixeldq",
    "zeroframe_block",
]

#: Hard DN limit of the 16-bit A-to-D converter (JWST's value, the default of ``atod_limit``).
ATOD_LIMIT = 65535.0

_SAT = np.uint8(DQ.SATURATED)
_DNU = np.uint8(DQ.DO_NOT_USE)
_FLOOR = np.uint8(DQ.AD_FLOOR | DQ.DO_NOT_USE)
_NO_SAT_CHECK = np.uint32(DQ.NO_SAT_CHECK)


@dataclasses.dataclass(frozen=True)
class SaturationParameters:
    """Parameters of :func:`flag_saturation`.

    Attributes
    ----------
    n_pix_grow_sat : int, default 1
        Half-width in pixels of the box into which every saturated pixel's
        SATURATED flag is grown (charge spilling); 0 disables growth.
    atod_limit : float, default 65535.0
        Limit of the A-to-D converter (DN): unchecked pixels (NO_SAT_CHECK or a NaN
        threshold) are compared with ``atod_limit + 1``.
    use_readpatt : bool, default True
        Use the read pattern (``read_pattern``, else ``ramps.attrs["read_pattern"]``,
        else the frames of ``ramps.attrs["nframes"]`` as JWST numbers them, :func:`frames_read_pattern`)
        to flag groups whose frames saturated but whose average did not, as JWST's
        saturation step does by default.
    read_pattern : tuple of tuples of float, optional
        Frames (numbers or times) averaged into each group; default the ramps'
        ``read_pattern`` attribute, else the frames of ``nframes`` (:func:`frames_read_pattern`).
    """

    n_pix_grow_sat: int = param(1, "half-width of the box a saturated pixel's flag is grown into "
                                "(charge migration; 0: none)", "px")
    atod_limit: float = param(ATOD_LIMIT, "A-to-D converter limit: unchecked pixels (NO_SAT_CHECK, NaN "
                              "threshold) get the threshold atod_limit + 1", "DN")
    use_readpatt: bool = param(True, "use the ramps' read pattern (attrs read_pattern, else the frames of nframes as "
                               "JWST numbers them) to flag groups whose frames saturated within the group average, and "
                               "group 2 (as JWST's saturation step)")
    read_pattern: tuple | None = param(None, "frames averaged into each group (one list per group)",
                                       derived="the ramps' read_pattern attribute, else the frames of their nframes "
                                       "(JWST's numbering)", python_only=True)

    def __post_init__(self):
        n = self.n_pix_grow_sat
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            msg = f"n_pix_grow_sat must be an integer >= 0 (pixels); got {n!r}"
            raise ValueError(msg)
        a = self.atod_limit
        if isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating)) or not math.isfinite(a):
            msg = f"atod_limit must be a finite number of DN; got {a!r}"
            raise ValueError(msg)
        if not isinstance(self.use_readpatt, (bool, np.bool_)):
            msg = f"use_readpatt must be True or False; got {self.use_readpatt!r}"
            raise TypeError(msg)
        if self.read_pattern is not None:
            if not self.use_readpatt:
                msg = "read_pattern was given but use_readpatt is False; drop one of them"
                raise ValueError(msg)
            object.__setattr__(self, "read_pattern", check_read_pattern(self.read_pattern, "read_pattern"))


def check_read_pattern(pattern, name: str = "read_pattern") -> tuple[tuple[float, ...], ...]:
    """``pattern`` (a sequence of non-empty sequences of frame numbers or times, finite and >= 0, the
    last of each group > 0: it divides the group's mean) as tuples of float.

    Raises
    ------
    ValueError
        Naming ``name`` and what is wrong.
    """
    if isinstance(pattern, (str, bytes)) or not isinstance(pattern, (Sequence, np.ndarray)) or len(pattern) == 0:
        msg = f"{name} must be a list with one list of frames per group; got {pattern!r}"
        raise ValueError(msg)
    out = []
    for g, frames in enumerate(pattern):
        try:
            values = tuple(float(f) for f in frames)
        except (TypeError, ValueError):
            values = ()
        if not values or not all(math.isfinite(v) and v >= 0 for v in values) or values[-1] <= 0:
            msg = (f"{name}[{g}] must be a non-empty list of frame numbers or times >= 0 ending with one > 0; "
                   f"got {frames!r}")
            raise ValueError(msg)
        out.append(values)
    return tuple(out)


def no_check_mask(sat, sat_dq):
    """Pixels (or samples, for 4-D thresholds) not checked: NO_SAT_CHECK in ``sat_dq`` or a NaN threshold."""
    return ((sat_dq & _NO_SAT_CHECK) != 0) | np.isnan(sat)


def effective_threshold(sat, sat_dq, atod_limit: float = ATOD_LIMIT):
    """The thresholds (DN) the data are compared with; numpy or dask arrays.

    Pixels whose threshold is NaN or whose ``sat_dq`` (the saturation reference's DQ, or the
    pixel DQ) has NO_SAT_CHECK get ``atod_limit + 1`` (in the threshold's dtype), as stcal does.
    """
    return np.where(no_check_mask(sat, sat_dq), sat.dtype.type(atod_limit + 1), sat).astype(sat.dtype)


def _or_over_ramp_axes(a):
    return np.bitwise_or.reduce(a, axis=(0, 1))


def saturation_pixeldq(pdq, sat, sat_dq=None):
    """The output pixel DQ: ``pdq`` | ``sat_dq`` | NO_SAT_CHECK where the threshold is NaN; numpy or dask.

    ``sat_dq`` defaults to ``pdq``. With per-group (4-D) thresholds the added flags are OR-ed
    over integrations and groups. The result is uint32 (JWST's PIXELDQ type) for narrower inputs:
    a uint8 or uint16 ``pdq``, as stcal's own tests build it, cannot hold NO_SAT_CHECK (bit 21)."""
    ref = pdq if sat_dq is None else sat_dq
    dtype = pixeldq_dtype(np.result_type(pdq.dtype, ref.dtype))
    added = ref.astype(dtype) | np.where(np.isnan(sat), _NO_SAT_CHECK, np.uint32(0)).astype(dtype)
    if added.ndim == 4:
        if isinstance(added, da.Array):
            added = da.map_blocks(_or_over_ramp_axes, added, drop_axis=[0, 1], dtype=dtype,
                                  meta=np.empty((0, 0), dtype=dtype))
        else:
            added = _or_over_ramp_axes(added)
    return pdq.astype(dtype) | added


def _per_group(thresh: np.ndarray, nints: int, ngroups: int, npix: int) -> np.ndarray:
    """``thresh`` ((y, x) or (integration, group, y, x)) as the kernel's (ti, tg, npix)."""
    if thresh.ndim == 2:
        return np.ascontiguousarray(thresh).reshape(1, 1, npix)
    return np.ascontiguousarray(thresh).reshape(nints, ngroups, npix)


def _dilution(read_pattern) -> np.ndarray:
    """Per group: its mean frame over its last frame (1: a single frame, nothing hidden), float64."""
    return np.array([np.mean(frames) / frames[-1] for frames in read_pattern], dtype=np.float64)


def _flag_hidden(data, flags, thresh, skip, read_pattern, n):
    """Add DO_NOT_USE (grown by ``n``) to groups whose frames saturated inside the average (in place)."""
    nints, ngroups, cy, cx = data.shape
    dilution = _dilution(read_pattern)
    checked = dilution != 1
    if ngroups < 2 or not checked[:-1].any():
        return
    # the unchecked pixels keep their (A/D-limit) threshold unscaled
    factor = np.where(skip[..., None, :, :] if skip.ndim == 2 else skip, 1.0, dilution[:, None, None])
    scaled = (thresh[..., None, :, :] if thresh.ndim == 2 else thresh) * factor
    ti = 1 if scaled.ndim == 3 else nints
    scaled = np.ascontiguousarray(scaled, dtype=np.float64).reshape(ti, ngroups, cy * cx)
    flat = (nints, ngroups, cy * cx)
    marks = np.empty(flat, dtype=np.uint8)
    hidden_saturation(np.ascontiguousarray(data).reshape(flat), flags.reshape(flat), scaled, checked, marks)
    if n:
        planes = marks.reshape(nints * ngroups, cy, cx)
        grow_bit(planes, int(DQ.DO_NOT_USE), int(n), planes)
    flags |= marks.reshape(flags.shape)


def _flag_second_group(data, flags, thresh, bias, read_pattern):
    """Add DO_NOT_USE to group 2 (index 1) where the frames of group 2 saturated (in place).

    Three conditions, per integration: the signal of group 1 above the bias, extrapolated to the last
    frame of group 3, stays below the threshold; the rise from group 1 to group 2 exceeds the headroom
    left after group 1 divided by the frames of group 2; group 3 is SATURATED and group 2 is not.
    """
    if data.shape[1] < 3:
        return
    first, second = data[:, 0], data[:, 1]
    limit = thresh if thresh.ndim == 2 else thresh[:, 0]
    # each integration's bias is that of its first group (stcal's bias[int, 0] for 4-D superbias)
    offset = 0.0 if bias is None else bias if bias.ndim == 2 else bias[:, 0]
    first_mean = np.mean(read_pattern[0])  # a numpy float64: the extrapolation is computed in float64
    extrapolated = (first - offset) / first_mean * read_pattern[2][-1] + offset
    steep = (second - first) > (limit - first) / len(read_pattern[1])
    newly = ((flags[:, 2] & _SAT) != 0) & ((flags[:, 1] & _SAT) == 0)
    hit = (extrapolated < limit) & steep & newly
    flags[:, 1] |= np.where(hit, _DNU, np.uint8(0))


def saturation_block(data: np.ndarray, gdq: np.ndarray, thresh: np.ndarray, skip: np.ndarray | None = None,
                     bias: np.ndarray | None = None, *, n_pix_grow_sat: int, nonfinite: bool = False,
                     read_pattern: tuple | None = None) -> np.ndarray:
    """Saturation flags for one chunk.

    Parameters
    ----------
    data : ndarray, shape (nints, ngroups, cy, cx)
        Raw ramps in DN (bias included).
    gdq : ndarray, uint8, shape (nints, ngroups, cy, cx)
        Input group DQ.
    thresh : ndarray, shape (cy, cx) or (nints, ngroups, cy, cx)
        Effective saturation threshold in DN (no-check pixels above the A/D limit).
    skip : ndarray of bool, shape of ``thresh``, optional
        The unchecked pixels (NO_SAT_CHECK or NaN threshold); needed with ``read_pattern``.
    bias : ndarray, shape (cy, cx) or (nints, ngroups, cy, cx), optional
        Superbias in DN for the group-2 check of ``read_pattern`` (default 0 DN); per
        group, each integration's check uses the bias of its first group.
    n_pix_grow_sat : int
        Growth half-width in pixels.
    nonfinite : bool, default False
        Flag NaN and infinite samples DO_NOT_USE only (never SATURATED, so +Inf
        does not grow); False follows stcal (NaN unflagged, +Inf saturated).
    read_pattern : tuple of tuples, optional
        Frames of each group (:func:`check_read_pattern`); when given, groups whose
        frames saturated within the average, and group 2, may get DO_NOT_USE. The
        block then needs a halo of ``2 * n_pix_grow_sat`` (``n_pix_grow_sat`` without).

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
        _per_group(thresh, nints, ngroups, cy * cx),
        bool(nonfinite),
        out,
    )
    out = out.reshape(data.shape)
    if n_pix_grow_sat:
        planes = out.reshape(nints * ngroups, cy, cx)
        grow_bit(planes, int(DQ.SATURATED), int(n_pix_grow_sat), planes)  # in place
    if read_pattern is not None:
        _flag_hidden(data, out, thresh, skip, read_pattern, n_pix_grow_sat)
        _flag_second_group(data, out, thresh, bias, read_pattern)
    return out


def zeroframe_block(zframe: np.ndarray, thresh: np.ndarray, *, n_pix_grow_sat: int) -> np.ndarray:
    """The zero frame of one chunk with its saturated and A/D-floor values (and their growth) set to 0.

    Parameters
    ----------
    zframe : ndarray, shape (nints, cy, cx)
        Zero frames in DN.
    thresh : ndarray, shape (cy, cx) or (nints, cy, cx)
        Effective thresholds in DN (for 4-D thresholds, those of each integration's first group).
    n_pix_grow_sat : int
        Half-width in pixels of the box a saturated value is grown into.

    Returns
    -------
    ndarray, shape and dtype of ``zframe``
        A new array.
    """
    flags = np.where(zframe >= thresh, _SAT, np.uint8(0)) | np.where(zframe <= 0, _FLOOR, np.uint8(0))
    flags = np.ascontiguousarray(flags, dtype=np.uint8)
    if n_pix_grow_sat:
        grow_bit(flags, int(DQ.SATURATED), int(n_pix_grow_sat), flags)
    return np.where(flags != 0, zframe.dtype.type(0), zframe)


def flag_saturation(ramps: xr.Dataset, n_pix_grow_sat: int = 1, *, atod_limit: float = ATOD_LIMIT,
                    use_readpatt: bool = True, read_pattern=None) -> xr.Dataset:
    """Flag saturated and A/D-floor groups in raw ramps.

    The semantics are those of ``stcal.saturation.flag_saturated_pixels``
    (stcal 1.20) with the ``saturation`` variable as ``sat_thresh``, ``saturation_dq``
    (default: ``pixeldq``) as ``sat_dq``, ``zeroframe`` as ``zframe`` and ``superbias``
    as ``bias`` (when present):

    - a group whose value is >= the pixel's ``saturation`` threshold is flagged
      SATURATED, and so is every later group of that integration;
    - a group whose value is <= 0 DN is flagged AD_FLOOR | DO_NOT_USE (that group only);
    - pixels whose threshold is NaN, or whose ``saturation_dq`` has NO_SAT_CHECK, are
      compared with a threshold of ``atod_limit + 1`` (65536 DN by default) instead, so
      digitised data never saturate there; ``atod_limit`` is used for nothing else;
    - in every group, SATURATED is grown into the (2N+1) x (2N+1) box around each
      saturated pixel (N = ``n_pix_grow_sat``), across chunk edges;
    - with a read pattern, a group averaged from several frames whose value is at or above
      the threshold times (mean frame / last frame), not yet SATURATED or DO_NOT_USE, before a
      SATURATED group, gets DO_NOT_USE, grown into the same box; and group 2 gets DO_NOT_USE
      where group 3 is newly SATURATED and the rise from group 1 hides a saturation in its
      frames (``superbias`` as the bias, that of each integration's first group when it is
      per group, 0 DN without);
    - ``pixeldq`` becomes ``pixeldq | saturation_dq``, with NO_SAT_CHECK where the threshold is NaN;
    - ``zeroframe`` values at or above the threshold (of group 1) or <= 0 DN, and the box
      around the saturated ones, are set to 0.

    Parameters
    ----------
    ramps : xarray.Dataset
        Ramp dataset with ``data`` (raw DN, bias included), ``groupdq``, ``pixeldq``
        and ``saturation`` (DN; ``(y, x)`` or per group ``(integration, group, y, x)``);
        optionally ``saturation_dq`` (the saturation reference's DQ, dims of ``saturation``
        or ``(y, x)``), ``zeroframe`` (``(integration, y, x)``, DN), ``superbias`` (DN; ``(y, x)``
        or per group ``(integration, group, y, x)``, as stcal's ``bias``) and
        ``attrs["read_pattern"]``. numpy- or dask-backed.
    n_pix_grow_sat : int, default 1
        Half-width in pixels of the growth box; 0 disables growth.
    atod_limit : float, default 65535.0
        A-to-D converter limit in DN; unchecked pixels get the threshold ``atod_limit + 1``.
    use_readpatt : bool, default True
        Use a read pattern (as JWST's saturation step, whose ``use_readpatt`` defaults to True):
        ``read_pattern``, else ``ramps.attrs["read_pattern"]``, else the frames of
        ``ramps.attrs["nframes"]`` as jwst 3.0 numbers them (group g averages frames
        ``g * nframes + 1`` to ``g * nframes + nframes``, dropped frames not counted; with one
        frame per group and ``(y, x)`` thresholds that pattern would change nothing and is not
        used). False: no read-pattern checks.
    read_pattern : list of lists of float, optional
        Frame numbers (or times) averaged into each group, one list per group; it wins over
        the ramps' attributes.

    Returns
    -------
    xarray.Dataset
        A new, pixel-chunked dataset with lazy ``groupdq`` and ``pixeldq`` (and
        ``zeroframe`` when present); the other variables are the input's. The input is
        not modified.

    Notes
    -----
    stcal also takes a 4-D ``pdq``; daskcal's ``pixeldq`` is ``(y, x)``. With 4-D thresholds
    stcal returns a 4-D ``pdq``; daskcal returns its OR over integrations and groups. stcal has
    no 3-D thresholds (they do not broadcast against a group plane), so neither has daskcal. As
    in stcal, a NaN sample is not flagged and +Inf counts as saturated; :func:`daskcal.detector1`
    flags both DO_NOT_USE instead (:func:`saturation_graph`).
    """
    params = SaturationParameters(n_pix_grow_sat, atod_limit, use_readpatt, read_pattern)
    return saturation_graph(ramps, params)


def check_saturation_inputs(ramps: xr.Dataset) -> None:
    """Check the variables the saturation step reads (dims, dtypes, shapes); errors name the variable."""
    validate_ramps(ramps)
    shape = ramps["data"].shape
    if "saturation" not in ramps.data_vars:
        msg = "ramps has no variable 'saturation'; expected saturation('y', 'x') in DN"
        raise ValueError(msg)
    sat = ramps["saturation"]
    if tuple(sat.dims) not in (PIX_DIMS, RAMP_DIMS):
        msg = f"saturation must have dimensions {PIX_DIMS} or {RAMP_DIMS}; got {tuple(sat.dims)}"
        raise ValueError(msg)
    if sat.shape != shape[-sat.ndim:]:
        msg = f"saturation must have shape {shape[-sat.ndim:]} like data; got {sat.shape}"
        raise ValueError(msg)
    if not np.issubdtype(sat.dtype, np.floating):
        msg = f"saturation must have a floating dtype; got {sat.dtype}"
        raise TypeError(msg)
    _check_optional(ramps, {"saturation_dq": ((PIX_DIMS, tuple(sat.dims)), np.integer),
                            "zeroframe": ((("integration", "y", "x"),), np.floating)})
    check_superbias(ramps)


def check_superbias(ramps: xr.Dataset) -> None:
    """Check ``superbias``, if any: ``(y, x)`` or per group ``(integration, group, y, x)`` like ``data``, floating
    (stcal's 2-D or 4-D ``bias``); errors name the variable and the shapes."""
    _check_optional(ramps, {"superbias": ((PIX_DIMS, RAMP_DIMS), np.floating)})


def _check_optional(ramps: xr.Dataset, checks: dict) -> None:
    sizes = dict(zip(RAMP_DIMS, ramps["data"].shape, strict=True))
    for name, (dims_ok, kind) in checks.items():
        if name not in ramps.data_vars:
            continue
        var = ramps[name]
        if tuple(var.dims) not in dims_ok:
            want = " or ".join(f"{d} {tuple(sizes[k] for k in d)}" for d in dict.fromkeys(dims_ok))
            msg = f"{name} must have dimensions {want}; got {tuple(var.dims)} {var.shape}"
            raise ValueError(msg)
        want = tuple(sizes[d] for d in var.dims)
        if var.shape != want:
            msg = f"{name} must have shape {want} like data; got {var.shape}"
            raise ValueError(msg)
        if not np.issubdtype(var.dtype, kind):
            msg = f"{name} must have a {kind.__name__} dtype; got {var.dtype}"
            raise TypeError(msg)


def frames_read_pattern(ngroups: int, nframes: int) -> tuple[tuple[float, ...], ...]:
    """The read pattern JWST's saturation step (jwst 3.0, ``use_readpatt``) builds for ``ngroups`` groups
    of ``nframes`` frames: group g holds frames ``g * nframes + 1`` to ``g * nframes + nframes``.

    As jwst's, the frames dropped between groups (``groupgap``) are not counted, so that the flags are
    the ones users get from the JWST pipeline for the same ramps; to use the frames as read instead,
    give the pattern (``read_pattern`` or the ramps' attribute, as :func:`daskcal.simulate` writes it).
    """
    return tuple(tuple(float(g * nframes + f + 1) for f in range(nframes)) for g in range(ngroups))


def resolve_read_pattern(ramps: xr.Dataset, params: SaturationParameters) -> tuple | None:
    """The read pattern the step uses, checked against the number of groups; None when there is none or
    ``use_readpatt`` is False.

    ``params.read_pattern``, else the ramps' ``read_pattern`` attribute, else the frames of their ``nframes``
    attribute as JWST's saturation step numbers them (:func:`frames_read_pattern`). With one frame per group and ``(y, x)``
    thresholds, the last changes nothing (every dilution is 1, and group 2's check needs group 2 above its
    threshold, which has saturated it already): it is not used, so detector1 keeps its fused graph.
    """
    if not params.use_readpatt:
        return None
    pattern, name = params.read_pattern, "read_pattern"
    if pattern is None:
        pattern, name = ramps.attrs.get("read_pattern"), "ramps.attrs['read_pattern']"
        if pattern is None:
            nframes = int(ramps.attrs["nframes"])
            if nframes == 1 and ramps["saturation"].ndim == 2:
                return None
            return frames_read_pattern(ramps.sizes["group"], nframes)
        pattern = check_read_pattern(pattern, name)
    ngroups = ramps.sizes["group"]
    if len(pattern) != ngroups:
        msg = f"{name} must have one list of frames per group ({ngroups}); got {len(pattern)}"
        raise ValueError(msg)
    return pattern


def needs_separate_graph(ramps: xr.Dataset, params: SaturationParameters) -> str | None:
    """Why detector1's fused graph cannot run this saturation step (None: it can)."""
    if ramps["saturation"].ndim == 4:
        return "per-group saturation thresholds"
    if "superbias" in ramps and ramps["superbias"].ndim == 4:
        return "a per-group superbias"
    return None


def saturation_graph(ramps: xr.Dataset, params: SaturationParameters, *, nonfinite: bool = False) -> xr.Dataset:
    """:func:`flag_saturation`'s graph; ``nonfinite=True`` flags NaN and infinite samples
    DO_NOT_USE only (:func:`saturation_block`), as detector1 does."""
    check_saturation_inputs(ramps)
    pattern = resolve_read_pattern(ramps, params)
    n = params.n_pix_grow_sat
    ds = pixel_chunked(ramps)
    data, gdq = ds["data"].data, ds["groupdq"].data
    thresh, pdq = ds["saturation"].data, ds["pixeldq"].data
    sat_dq = ds["saturation_dq"].data if "saturation_dq" in ds else pdq
    if thresh.ndim == 4 and sat_dq.ndim == 2:
        sat_dq = da.broadcast_to(sat_dq, thresh.shape, chunks=thresh.chunks)
    thresh_eff = effective_threshold(thresh, sat_dq, params.atod_limit)

    d4 = {0: 0, 1: 0, 2: n, 3: n}
    d2 = {0: n, 1: n}
    args, depth = [data, gdq, thresh_eff], [d4, d4, d4 if thresh.ndim == 4 else d2]
    if pattern is not None:
        args.append(no_check_mask(thresh, sat_dq))
        depth.append(depth[2])
        if "superbias" in ds:
            args.append(ds["superbias"].data)
            depth.append(d4 if ds["superbias"].ndim == 4 else d2)
        # a hidden-saturation mark needs its group's flags, already grown: a halo of 2n
        depth = [{k: 2 * v for k, v in d.items()} for d in depth]
    meta = np.empty((0, 0, 0, 0), dtype=np.uint8)
    kwargs = {"n_pix_grow_sat": n, "nonfinite": nonfinite, "read_pattern": pattern}
    if n == 0:
        new_gdq = da.map_blocks(saturation_block, *args, dtype=np.uint8, meta=meta, **kwargs)
    else:
        new_gdq = da.map_overlap(saturation_block, *args, depth=depth, boundary="none", dtype=np.uint8, meta=meta,
                                 **kwargs)

    out = ds.copy()
    out["groupdq"] = (ds["groupdq"].dims, new_gdq, ds["groupdq"].attrs)
    out["pixeldq"] = (ds["pixeldq"].dims, saturation_pixeldq(pdq, thresh, sat_dq), ds["pixeldq"].attrs)
    if "zeroframe" in ds:
        out["zeroframe"] = (ds["zeroframe"].dims, _zeroframe_graph(ds["zeroframe"].data, thresh_eff, n),
                            ds["zeroframe"].attrs)
    return out


def _zeroframe_graph(zframe: da.Array, thresh_eff: da.Array, n: int) -> da.Array:
    first = thresh_eff if thresh_eff.ndim == 2 else thresh_eff[:, 0]
    meta = np.empty((0, 0, 0), dtype=zframe.dtype)
    if n == 0:
        return da.map_blocks(zeroframe_block, zframe, first, dtype=zframe.dtype, meta=meta, n_pix_grow_sat=0)
    d3 = {0: 0, 1: n, 2: n}
    depth = [d3, d3 if first.ndim == 3 else {0: n, 1: n}]
    return da.map_overlap(zeroframe_block, zframe, first, depth=depth, boundary="none", dtype=zframe.dtype,
                          meta=meta, n_pix_grow_sat=n)
