"""Ramp fitting: ordinary least squares with optimal weighting (stcal ``OLS_C``) or
maximum likelihood with its own jump search (stcal ``LIKELY``).

Layers (see ``shared/STYLE.md``): :func:`fit_block` fits one in-memory chunk
with the numba kernel in :mod:`daskcal.detector._kernels_ramp_fit` (OLS) or, through
:func:`daskcal.detector._ramp_likely.likely_block`, :mod:`daskcal.detector._kernels_likely`;
:func:`_fit_graph` maps it over pixel chunks with one ``map_blocks`` whose output
stacks every product plane on a new leading axis; :func:`fit_ramps` validates
the input and slices that one array into the ``rate`` and ``rateints``
datasets, so both share a single computation.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from daskcal._params import param
from daskcal.detector import _fitopt, _miri_groups
from daskcal.detector import _kernels_ramp_fit as _k
from daskcal.detector._common import (
    PIX_DIMS,
    as_dask,
    check_reference_values,
    pixel_chunked,
    validate_ramps,
)
from daskcal.detector._ramp_likely import MIN_GROUPS as LIKELY_MIN_GROUPS
from daskcal.detector._ramp_likely import likely_block
from daskcal.io._zarr_write import take_slice

__all__ = ["ALGORITHMS", "RampFitParameters", "RampFitResult", "fit_block", "fit_ramps", "fitted_algorithm"]

log = logging.getLogger(__name__)

#: Ramp fitting algorithms, by stcal's names.
ALGORITHMS = ("OLS_C", "LIKELY")

#: Product variables, in the order of their planes in the stacked block output.
PRODUCT_NAMES = ("data", "err", "dq", "var_poisson", "var_rnoise")
_UNITS = {
    "data": "DN/s",
    "err": "DN/s",
    "dq": "",
    "var_poisson": "DN2/s2",
    "var_rnoise": "DN2/s2",
}
_CARRIED_ATTRS = ("group_time", "frame_time", "nframes", "groupgap")


@dataclass(frozen=True)
class RampFitParameters:
    """Parameters of :func:`fit_ramps` that recipes and the command line give (defaults are jwst's)."""

    suppress_one_group: bool = param(
        True, "an integration with only one good group is unusable (ignored with one group per integration; "
        "OLS_C only)")
    save_opt: bool = param(False, "also make the optional product fitopt: every segment's fit, the pedestal and "
                           "the jumps' sizes (stcal's opt_info; OLS_C only)")
    algorithm: str = param(
        "OLS_C", "OLS_C (least squares, optimal weighting) or LIKELY (maximum likelihood with its own jump "
        f"search; needs {LIKELY_MIN_GROUPS} or more groups, else OLS_C with a warning)", cli={"choices": ALGORITHMS})

    def __post_init__(self):
        for name in ("suppress_one_group", "save_opt"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                msg = f"{name} must be True or False; got {getattr(self, name)!r}"
                raise TypeError(msg)
        if not isinstance(self.algorithm, str) or self.algorithm not in ALGORITHMS:
            msg = f"algorithm must be one of {', '.join(ALGORITHMS)}; got {self.algorithm!r}"
            raise ValueError(msg)
        if self.save_opt and self.algorithm == "LIKELY":
            msg = "save_opt (the fitopt product) is made by the OLS_C fit only, as in stcal: not with algorithm='LIKELY'"
            raise ValueError(msg)


def fitted_algorithm(algorithm: str, ngroups: int) -> str:
    """The algorithm that fits ``ngroups`` groups: ``algorithm``, or OLS_C (logged as a warning) for
    LIKELY with fewer than 4 groups, as stcal does."""
    if algorithm == "LIKELY" and ngroups < LIKELY_MIN_GROUPS:
        log.warning("the LIKELY ramp fit needs at least %d groups; these ramps have %d: fitting with OLS_C",
                    LIKELY_MIN_GROUPS, ngroups)
        return "OLS_C"
    return algorithm


@dataclass(frozen=True)
class RampFitResult:
    """Products of :func:`fit_ramps` (lazy, dask-backed).

    Attributes
    ----------
    rate : xarray.Dataset
        Exposure-level products on ``(y, x)``: ``data`` (DN/s, float32),
        ``err`` (DN/s), ``dq`` (uint32), ``var_poisson`` and ``var_rnoise``
        ((DN/s)**2).
    rateints : xarray.Dataset
        The same names per integration, on ``(integration, y, x)``.
    n_nonfinite : dask.array.Array
        0-d int64: the number of pixels with a NaN or infinite sample. In
        :func:`daskcal.detector1` those samples are DO_NOT_USE groups (a pixel
        left with no usable group gets a NaN rate and DO_NOT_USE in ``dq``);
        :func:`fit_ramps` alone uses unflagged ones as stcal does.
    fitopt : xarray.Dataset or None
        With ``save_opt``: the optional product (stcal's ``opt_info``, jwst's ``fitopt``)
        on ``(integration, segment, y, x)``: ``slope`` (DN/s), ``sigslope``,
        ``var_poisson``, ``var_rnoise`` ((DN/s)**2), ``yint`` (DN), ``sigyint``,
        ``weights`` (1 / var_rnoise) of each segment in group order; ``pedestal`` (DN)
        on ``(integration, y, x)``; ``crmag`` (DN) on ``(integration, jump, y, x)``.
        The ``segment`` and ``jump`` axes have their largest possible lengths,
        ``(ngroups + 1) // 2`` and ``ngroups - 1``, unused slots 0 (see
        :mod:`daskcal.detector._fitopt`). Otherwise None.
    n_primary_jumps : dask.array.Array or None
        int64 ``(integration,)``: group samples flagged JUMP_DET by the jump step's
        primary search in each integration (their sum is stcal's ``total_primary_crs``;
        neighbour and after-jump flags are not counted). From :func:`daskcal.detector1`,
        or the ``n_primary_jumps`` variable of :func:`fit_ramps`' input
        (:func:`daskcal.detect_jumps` adds it); otherwise None.
    primary_jump_planes : dask.array.Array or None
        float32 ``(integration, y, x)``: the per-pixel counts ``n_primary_jumps`` sums, where the
        fused detector1 graph stacks them with the fit's planes (so a writer can keep them with each
        chunk, as ``daskcal detector1`` does for a resumed run); otherwise None.
    n_extended_events : dask.array.Array or None
        int64 ``(integration,)``: snowballs (``expand_large_events``) or, with ``find_showers``, showers
        found in each integration (their sum is stcal's ``number_extended_events``). From
        :func:`daskcal.detector1` with either search, or the ``n_extended_events`` variable of
        :func:`fit_ramps`' input (:func:`daskcal.detect_jumps` adds it with either search); otherwise
        None (no search: JWST records 0 events).
    usable_planes : numpy.ndarray or None
        bool ``(integration, group)``: which group planes have a pixel that is not DO_NOT_USE after
        saturation flagging (:func:`daskcal.detector._fused.plane_usable`; the planes JWST's PRIMECRS and
        EXTNCRS are divided by), where :func:`daskcal.detector1` computed it building the graph (the fused
        graph, and the separate graphs of MIRI ramps); otherwise None.

    Notes
    -----
    All three are slices of one dask array, so computing them together
    (``dask.compute(result.rate, result.rateints, result.n_nonfinite)``) fits
    every chunk once.
    """

    rate: xr.Dataset
    rateints: xr.Dataset
    n_nonfinite: da.Array
    n_primary_jumps: da.Array | None = None
    fitopt: xr.Dataset | None = None
    primary_jump_planes: da.Array | None = None
    n_extended_events: da.Array | None = None
    usable_planes: np.ndarray | None = None


@functools.lru_cache(maxsize=32)
def _weights(ngroups: int) -> np.ndarray:
    table = _k.weight_table(ngroups)
    table.flags.writeable = False
    return table


def n_planes(nints: int) -> int:
    """Number of planes :func:`fit_block` stacks: 5 rate planes, 5 per integration, then
    one of the number of NaN or infinite samples per pixel (:data:`NONFINITE_PLANE`)."""
    return len(PRODUCT_NAMES) * (1 + nints) + 1


#: Index of the plane of :func:`fit_block`'s output that counts each pixel's NaN or infinite samples.
NONFINITE_PLANE = -1


def fit_block(data, groupdq, pixeldq, gain, readnoise, dark, *, group_time, frame_time, nframes,
              suppress_one_group, save_opt=False, ped_factor=0.0, groups=None, extra_planes=0,
              algorithm="OLS_C", groupgap=0):
    """Fit the ramps of one in-memory chunk (block layer).

    Parameters
    ----------
    data : ndarray (nints, ngroups, ny, nx)
        Ramps in DN, bias removed.
    groupdq : ndarray (nints, ngroups, ny, nx), integer
        Group DQ (JWST bits; must fit in uint8).
    pixeldq : ndarray (ny, nx), integer
        Pixel DQ.
    gain : ndarray (ny, nx)
        e-/DN.
    readnoise : ndarray (ny, nx)
        CDS read noise in DN.
    dark : ndarray (ny, nx)
        Dark current in DN/s (zeros for none).
    group_time, frame_time : float
        Seconds.
    nframes : int
        Frames averaged per group.
    suppress_one_group : bool
        Treat integrations with a single good group as having none (OLS_C).
    save_opt : bool, default False
        Also stack the optional product's planes (:mod:`daskcal.detector._fitopt`).
    ped_factor : float, default 0
        Mean time of the first group in group times, for the pedestal (stcal's
        ``((nframes + 1) / 2 + drop_frames1) / (nframes + groupgap)``).
    groups : (int, int), optional
        ``(first, stop)``: fit only these groups, as stcal does with MIRI's leading
        and trailing DO_NOT_USE groups (:mod:`daskcal.detector._miri_groups`). Default all.
    extra_planes : int, default 0
        Planes left unset after those (for the caller's own products).
    algorithm : {"OLS_C", "LIKELY"}, default "OLS_C"
        The fit; LIKELY needs ``ngroups >= 4`` (:func:`fitted_algorithm` chooses).
    groupgap : int, default 0
        Frames dropped between groups (LIKELY's read times).

    Returns
    -------
    ndarray, float32 (5 * (1 + nints) + 1 + extra_planes, ny, nx)
        Planes ``PRODUCT_NAMES`` for the rate, then for each name the
        ``nints`` rateints planes, then the number of NaN or infinite samples
        of each pixel, then with ``save_opt`` the optional product's planes
        (``n_opt_planes(nints, ngroups)`` more), then ``extra_planes``. The ``dq`` planes hold
        uint32 bit patterns (read them with ``.view(np.uint32)``).
    """
    nints, ngroups, ny, nx = data.shape
    npix = ny * nx
    if algorithm == "LIKELY":  # as stcal's: all groups (MIRI's too), no fitopt, suppress_one_group ignored
        whole = np.empty((n_planes(nints) + extra_planes, npix), dtype=np.float32)
        likely_block(data, groupdq, pixeldq, gain, readnoise, dark, frame_time=frame_time, nframes=nframes,
                     groupgap=groupgap, out_planes=whole[:n_planes(nints)])
        return whole.reshape(-1, ny, nx)
    suppress = bool(suppress_one_group and ngroups > 1)
    presuppressed = groups is not None and tuple(groups) != (0, ngroups)
    if presuppressed:
        data, groupdq = _miri_groups.trim_block(data, groupdq, groups, suppress)
        ngroups = data.shape[1]
    flat = (nints, ngroups, npix)
    d = np.ascontiguousarray(data, dtype=np.float32).reshape(flat)
    q = np.ascontiguousarray(groupdq, dtype=np.uint8).reshape(flat)
    g32 = np.asarray(gain, dtype=np.float32).reshape(npix)
    # stcal scales the CDS read noise to a single read in electrons, in float64,
    # and stores the result in its float32 read-noise array.
    scale = g32.astype(np.float64) / np.sqrt(2.0 * nframes)
    rn = (np.asarray(readnoise, dtype=np.float32).reshape(npix) * scale).astype(np.float32)
    n_opt = _fitopt.n_opt_planes(nints, ngroups) if save_opt else 0
    whole = np.empty((n_planes(nints) + n_opt + extra_planes, npix), dtype=np.float32)
    out = whole[:n_planes(nints)]
    opt = whole[n_planes(nints):n_planes(nints) + n_opt]
    opt[:] = 0.0
    opt_arrays = _opt_views(opt, nints, ngroups, npix) if save_opt else _NO_OPT
    rate = out[: len(PRODUCT_NAMES)]
    ints = out[len(PRODUCT_NAMES):NONFINITE_PLANE].reshape(len(PRODUCT_NAMES), nints, npix)
    _k.fit_ramps_kernel(
        d, q,
        np.ascontiguousarray(pixeldq, dtype=np.uint32).reshape(npix),
        g32, rn,
        np.ascontiguousarray(dark, dtype=np.float32).reshape(npix),
        float(np.float32(group_time)), float(np.float32(frame_time)), int(nframes),
        suppress, _weights(ngroups),
        rate, rate[_k.DQ_PLANE].view(np.uint32), ints, ints[_k.DQ_PLANE].view(np.uint32), out[NONFINITE_PLANE],
        bool(save_opt), float(ped_factor), *opt_arrays, presuppressed,
    )
    return whole.reshape(len(whole), ny, nx)


#: Stand-ins for the optional product's arrays when it is not asked for (ranks as the kernel types them).
_NO_OPT = (np.zeros((7, 0, 0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros((0, 0, 0), np.float32))


def _opt_views(opt: np.ndarray, nints: int, ngroups: int, npix: int) -> tuple:
    """The kernel's (segments, pedestal, crmag) views of the optional planes ``opt``."""
    nseg = _fitopt.max_segments(ngroups)
    n_seg_planes = len(_fitopt.SEGMENT_NAMES) * nints * nseg
    segs = opt[:n_seg_planes].reshape(len(_fitopt.SEGMENT_NAMES), nints, nseg, npix)
    ped = opt[n_seg_planes:n_seg_planes + nints]
    crmag = opt[n_seg_planes + nints:].reshape(nints, _fitopt.max_jumps(ngroups), npix)
    return segs, ped, crmag


def _fit_graph(data, groupdq, pixeldq, gain, readnoise, dark, **params) -> da.Array:
    """One ``map_blocks`` over pixel chunks; returns the stacked float32 planes (graph layer)."""
    nints, ngroups = data.shape[:2]
    if params.get("groups") is not None:
        ngroups = params["groups"][1] - params["groups"][0]
    nplanes = n_planes(nints) + (_fitopt.n_opt_planes(nints, ngroups) if params.get("save_opt") else 0)
    return da.map_blocks(
        fit_block,
        data, groupdq, pixeldq, gain, readnoise, dark,
        drop_axis=(0, 1),
        new_axis=0,
        chunks=((nplanes,), *data.chunks[2:]),
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
        # a name of its own per input (dask 2024.8 warns that token= is deprecated)
        name="fit-ramps-" + tokenize(data, groupdq, pixeldq, gain, readnoise, dark, params),
        **params,
    )


def _dark_array(dark_current, ramps: xr.Dataset) -> xr.DataArray:
    """Dark current (DN/s) as a (y, x) DataArray chunked like ``ramps`` (pixel-chunked)."""
    ny, nx = ramps["data"].shape[2:]
    if dark_current is None:
        dark_current = 0.0
    if np.ndim(dark_current) == 0:
        value = float(dark_current)
        if not np.isfinite(value):
            msg = f"dark_current must be finite (DN/s); got {dark_current!r}"
            raise ValueError(msg)
        arr = da.full((ny, nx), value, dtype=np.float32, chunks=ramps["data"].data.chunks[2:])
        return xr.DataArray(arr, dims=PIX_DIMS)
    if not isinstance(dark_current, xr.DataArray) or tuple(dark_current.dims) != PIX_DIMS:
        msg = f"dark_current must be a number or an xarray.DataArray on {PIX_DIMS} (DN/s); got {type(dark_current).__name__}"
        raise TypeError(msg)
    if dark_current.shape != (ny, nx):
        msg = f"dark_current must have shape {(ny, nx)}; got {dark_current.shape}"
        raise ValueError(msg)
    return dark_current


def fit_ramps(ramps: xr.Dataset, suppress_one_group: bool = True, *, algorithm: str = "OLS_C",
              save_opt: bool = False, dark_current=None) -> RampFitResult:
    """Fit count rates to up-the-ramp data (OLS with optimal weighting, or maximum likelihood).

    ``algorithm="OLS_C"`` reproduces stcal 1.20's default ramp fitter as jwst calls it
    (``weighting="optimal"``): segments between jumps and saturation are
    fitted with Fixsen et al. (2000) weights, combined with inverse read-noise
    variance weights into integrations and the exposure, with Poisson variance
    from the median first-difference rate.

    ``algorithm="LIKELY"`` reproduces stcal 1.20's likelihood fit (Brandt 2024): the
    group differences of each integration are fitted with their full (tridiagonal)
    covariance, read noise and the photon noise of a rate guess; its own jump search
    leaves out the one difference, or two adjacent ones, whose omission lowers chi
    squared by more than 20.25 (23.8 for two), again while more than 3 differences
    are left, and flags ``JUMP_DET`` in the integration's ``dq``. Integrations are
    combined with weights from their read-noise and rate-scaled Poisson variances.

    Parameters
    ----------
    ramps : xarray.Dataset
        Ramp dataset: ``data(integration, group, y, x)`` in DN with the bias
        removed and jumps flagged in ``groupdq``; ``pixeldq``, ``gain``
        (e-/DN) and ``readnoise`` (DN, CDS) on ``(y, x)``; attrs
        ``group_time``, ``frame_time`` (s), ``nframes``, ``groupgap``.
        Numpy- or dask-backed; dask chunks are kept in ``y``/``x``
        (numpy input is cut into chunks sized by its samples,
        :func:`daskcal.detector._common.default_chunk_yx`).
    suppress_one_group : bool, default True
        Treat integrations with only one good group as unusable
        (jwst's default). Ignored with one group per integration, and by LIKELY
        (as in stcal).
    algorithm : str, default "OLS_C"
        ``"OLS_C"`` or ``"LIKELY"``. LIKELY needs at least 4 groups; with fewer the
        ramps are fitted with OLS_C and a warning is logged (stcal switches too).
    save_opt : bool, default False
        Also return the optional product ``fitopt`` (see :class:`RampFitResult`),
        computed in the same pass; the pedestal uses the attrs ``groupgap`` and
        ``drop_frames1`` (default 0). OLS_C only, as in stcal.
    dark_current : float or xarray.DataArray on (y, x), optional
        Dark current in DN/s added to the Poisson variance (LIKELY: to the rate
        its final fit's covariance assumes). Default none (0).

    Returns
    -------
    RampFitResult
        Lazy ``rate`` and ``rateints`` datasets, and with ``save_opt`` the ``fitopt``
        dataset (see :class:`RampFitResult`).

    Raises
    ------
    TypeError, ValueError
        For a malformed dataset, read noise that is negative or not finite, a
        gain with no positive finite value, an unknown ``algorithm`` or a bad
        ``dark_current``; checked before any ramp is read.

    Notes
    -----
    Pixels that cannot be fitted (fully saturated, all groups DO_NOT_USE,
    gain <= 0 or NaN) get NaN with DO_NOT_USE in ``dq`` and zero variances,
    as stcal gives them. Unlike stcal, a chunk (or image) whose every pixel is
    saturated in the first group still returns per-pixel products instead of
    ``None``. In an integration with a ``CHARGELOSS`` group, the read-noise
    variances (``var_rnoise`` of the integration and the exposure) are
    recomputed from the segments the groups would form without the
    CHARGELOSS groups' DO_NOT_USE, as stcal 1.20 does; slopes and ``err`` keep
    the first fit's variances. NaN or
    infinite samples that ``groupdq`` does not flag are used as stcal uses them
    (:func:`daskcal.detector1` flags them DO_NOT_USE in its saturation step);
    ``n_nonfinite`` counts the pixels that have any.

    For MIRI ramps (``ramps.attrs["instrument"] == "MIRI"``), leading group planes
    that are DO_NOT_USE in every pixel and integration, and such a last plane, are
    left out of the fit as stcal does (:mod:`daskcal.detector._miri_groups`); this
    reduces the group DQ over the detector first (the first chunk alone when one of
    its pixels is usable in those planes).

    LIKELY gives what stcal's gives, also where that is not a number: an integration
    with no usable difference (saturated from its first groups, all DO_NOT_USE) has a
    NaN rate and variances and an infinite ``err``; pixels with a gain <= 0 or NaN
    are fitted with it (no ``NO_GAIN_VALUE``), and a difference touching a
    flagged group is left out (a group with any DQ bit, ``PERSISTENCE`` included).
    Its rate guess is the median of every difference, flagged ones included, as in
    stcal, except non-finite ones of flagged groups, which stcal would propagate
    as NaN into the whole integration. Read times come from ``nframes``,
    ``groupgap`` and ``frame_time`` (evenly spaced groups); a ``zeroframe`` is not used.
    """
    return fit_ramps_planes(ramps, suppress_one_group, algorithm=algorithm, save_opt=save_opt,
                            dark_current=dark_current)


def fit_ramps_planes(ramps: xr.Dataset, suppress_one_group: bool = True, *, algorithm: str = "OLS_C",
                     save_opt: bool = False, dark_current=None, all_dnu=None) -> RampFitResult:
    """:func:`fit_ramps`, with ``all_dnu``, the (ngroups,) group planes DO_NOT_USE everywhere when
    the caller knows them (MIRI's dropped groups), instead of reducing ``ramps["groupdq"]``."""
    validate_ramps(ramps, require=("gain", "readnoise"))
    check_reference_values(ramps, ("gain", "readnoise"))
    RampFitParameters(suppress_one_group, save_opt, algorithm)
    ds = pixel_chunked(ramps)
    dark = _dark_array(dark_current, ds)
    data = ds["data"].data
    cyx = data.chunks[2:]

    def yx(arr) -> da.Array:
        arr = as_dask(arr)
        return arr.rechunk(cyx)

    params = {
        "group_time": float(ramps.attrs["group_time"]),
        "frame_time": float(ramps.attrs["frame_time"]),
        "nframes": int(ramps.attrs["nframes"]),
        "suppress_one_group": bool(suppress_one_group),
        "save_opt": bool(save_opt),
        "ped_factor": pedestal_factor(ramps.attrs),
        "algorithm": fitted_algorithm(algorithm, ramps.sizes["group"]),
        "groupgap": int(ramps.attrs.get("groupgap", 0)),
    }
    # MIRI's leading/trailing DO_NOT_USE groups are left out by stcal's OLS_C fit only
    params["groups"] = (miri_groups(ramps.attrs, ds["groupdq"].data, all_dnu) if params["algorithm"] == "OLS_C"
                        else None)
    stacked = _fit_graph(
        data, ds["groupdq"].data.rechunk(data.chunks),
        yx(ds["pixeldq"]), yx(ds["gain"]), yx(ds["readnoise"]), yx(dark), **params,
    )
    jumps = ramps["n_primary_jumps"].data if "n_primary_jumps" in ramps else None
    events = ramps["n_extended_events"].data if "n_extended_events" in ramps else None
    return _products(stacked, ramps, jumps, save_opt=save_opt, groups=params["groups"], n_extended_events=events)


def miri_groups(attrs, gdq: da.Array, all_dnu=None) -> tuple[int, int] | None:
    """The ``(first, stop)`` groups stcal fits for MIRI ramps with leading or trailing group planes
    DO_NOT_USE everywhere (``all_dnu``, default computed from ``gdq``); None to fit them all."""
    ngroups = gdq.shape[1]
    if not _miri_groups.is_miri(attrs) or ngroups < 2:
        return None
    groups = _miri_groups.fitted_groups(_miri_groups.all_dnu_planes(gdq) if all_dnu is None else all_dnu)
    return None if groups == (0, ngroups) else groups


def pedestal_factor(attrs) -> float:
    """stcal's mean time of the first group in group times: ``((nframes + 1) / 2 + drop_frames1) / (nframes +
    groupgap)`` from the ramps' attrs (``drop_frames1`` and ``groupgap`` default 0)."""
    nframes = int(attrs["nframes"])
    drop = int(attrs.get("drop_frames1") or 0)
    return ((nframes + 1) / 2.0 + drop) / (nframes + int(attrs.get("groupgap") or 0))


def _products(stacked: da.Array, ramps: xr.Dataset, n_primary_jumps: da.Array | None = None, *,
              save_opt: bool = False, groups: tuple[int, int] | None = None,
              primary_jump_planes: da.Array | None = None,
              n_extended_events: da.Array | None = None, usable_planes: np.ndarray | None = None) -> RampFitResult:
    """The named products of ``stacked`` (:func:`fit_block`'s planes, and maybe more after them)."""
    nints = ramps.sizes["integration"]
    nvar = len(PRODUCT_NAMES)
    coords = {k: v for k, v in ramps.coords.items() if set(v.dims) <= set(PIX_DIMS)}
    icoords = {k: v for k, v in ramps.coords.items() if set(v.dims) <= {"integration", *PIX_DIMS}}
    attrs = {k: ramps.attrs[k] for k in _CARRIED_ATTRS if k in ramps.attrs}
    rate, rateints = {}, {}
    for k, name in enumerate(PRODUCT_NAMES):
        # one task per chunk each (slice and view), and writers take the stacked block once
        # per chunk instead of one sliced block per variable (daskcal.io._zarr_write)
        dtype = np.uint32 if name == "dq" else np.float32
        plane = take_slice(stacked, k, dtype)
        planes = take_slice(stacked, slice(nvar + k * nints, nvar + (k + 1) * nints), dtype)
        var_attrs = {"units": _UNITS[name]} if _UNITS[name] else {}
        rate[name] = xr.Variable(PIX_DIMS, plane, var_attrs)
        rateints[name] = xr.Variable(("integration", *PIX_DIMS), planes, var_attrs)
    nonfinite = take_slice(stacked, n_planes(nints) - 1)  # NONFINITE_PLANE, counted from the front
    return RampFitResult(
        rate=xr.Dataset(rate, coords=coords, attrs=dict(attrs, product="rate")),
        rateints=xr.Dataset(rateints, coords=icoords, attrs=dict(attrs, product="rateints")),
        n_nonfinite=(nonfinite > 0).sum(dtype=np.int64),
        n_primary_jumps=n_primary_jumps,
        primary_jump_planes=primary_jump_planes,
        n_extended_events=n_extended_events,
        usable_planes=usable_planes,
        fitopt=_fitopt.fitopt_dataset(stacked, n_planes(nints), nints,
                                      ramps.sizes["group"] if groups is None else groups[1] - groups[0], icoords, attrs)
        if save_opt else None,
    )
