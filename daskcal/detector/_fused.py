"""detector1 as one fused block per chunk (block + graph layers).

Running the steps as separate graphs (``flag_saturation`` -> ``subtract_superbias``
-> ``detect_jumps`` -> ``fit_ramps``) builds a halo'd copy of the cube for each
step with a halo and keeps intermediate cubes alive between tasks. Here every
chunk is read once with one halo wide enough for the whole chain and runs all
steps in memory:

- saturation growth needs ``n_pix_grow_sat`` pixels of raw data around a pixel (``2 * n_pix_grow_sat``
  with a read pattern, whose hidden-saturation marks are grown from grown flags);
- jump neighbour flagging needs the primary jumps of the 4 neighbours, hence
  their saturation flags, hence ``n_pix_grow_sat + 1`` pixels of raw data.

So the halo is ``n_pix_grow_sat`` (``2 * n_pix_grow_sat``) ``+ (1 if flag_4_neighbors else 0)`` and every
result on the chunk's core is exactly what the step-by-step graph gives.
"""

from __future__ import annotations

import functools
import logging

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from daskcal.detector._common import pixel_chunked
from daskcal.detector._halo import halo_blocks_group
from daskcal.detector._jump import (
    JumpParameters,
    gain_pixeldq,
    jump_block_arguments,
    primary_block,
    secondary_block,
)
from daskcal.detector._fitopt import n_opt_planes
from daskcal.detector._ramp_fit import (
    RampFitParameters,
    _products,
    fit_block,
    fitted_algorithm,
    miri_groups,
    n_planes,
    pedestal_factor,
)
from daskcal.detector._saturation import (
    ATOD_LIMIT,
    SaturationParameters,
    effective_threshold,
    no_check_mask,
    resolve_read_pattern,
    saturation_block,
    saturation_pixeldq,
)
from daskcal.dq import DQ
from daskcal.io._zarr_write import take_slice

__all__ = ["COMPILE_SECONDS", "compile_kernels", "detector1_block", "detector1_graph", "plane_usable"]

_DNU = int(DQ.DO_NOT_USE)
_JUMP = int(DQ.JUMP_DET)

logger = logging.getLogger(__name__)


def _usable_planes(data: np.ndarray, gdq: np.ndarray) -> np.ndarray:
    """(nints, ngroups): planes with a pixel that is not DO_NOT_USE after the A/D-floor and NaN/Inf checks."""
    return (((gdq & _DNU) == 0) & (data > 0) & (data < np.inf)).any(axis=(2, 3))


def plane_usable(ds: xr.Dataset) -> np.ndarray:
    """Which (integration, group) planes have any usable pixel after saturation flagging.

    Jump detection chooses its method from this detector-wide statistic. Saturation
    adds DO_NOT_USE only at the A/D floor (<= 0 DN) and to NaN or infinite samples, so it is computed from the raw
    data and input DQ. The first chunk usually settles it (a plane with a usable
    pixel there is usable); only otherwise is the whole cube reduced.

    Returns
    -------
    ndarray of bool, shape (nints, ngroups)
    """
    data, gdq = ds["data"].data, ds["groupdq"].data
    first = _usable_planes(*da.compute(data.blocks[:, :, 0, 0], gdq.blocks[:, :, 0, 0]))
    if first.all():
        return first
    usable = _usable_planes(data, gdq)
    return np.asarray(usable.compute())


def detector1_block(data, gdq, pdq, sat, bias, gain, rnoise, dark, sat_dq=None, *, core=(slice(None), slice(None)),
                    usable,
                    n_pix_grow_sat, jump, fit, owns_data=False, atod_limit=ATOD_LIMIT, read_pattern=None):
    """Saturation, superbias, jumps and ramp fit on one halo'd chunk; products for its core.

    Parameters
    ----------
    data : ndarray (nints, ngroups, cy + halos, cx + halos)
        Raw ramps in DN (bias included).
    gdq : ndarray, uint8
        Input group DQ, same shape.
    pdq, sat, bias, gain, rnoise, dark : ndarray (cy + halos, cx + halos)
        Pixel DQ; saturation threshold (DN); superbias (DN, NaN as 0); gain
        (e-/DN); CDS read noise (DN); dark current (DN/s). ``bias`` and ``dark``
        may also be one number for every pixel.
    sat_dq : ndarray (cy + halos, cx + halos), optional
        DQ of the saturation reference (NO_SAT_CHECK; OR-ed into the pixel DQ); default ``pdq``.
    core : (slice, slice)
        The ``(y, x)`` slices of the halo'd block that hold its chunk. Default: all.
    usable : ndarray of bool (nints, ngroups)
        Detector-wide usable planes (:func:`plane_usable`).
    n_pix_grow_sat : int
        Saturation growth half-width (pixels).
    atod_limit : float, default 65535.0
        A-to-D limit (DN): unchecked pixels get the threshold ``atod_limit + 1``.
    jump, fit : dict
        Keyword arguments of :func:`jump_block` and :func:`fit_block`.
    owns_data : bool, default False
        ``data`` was made for this call alone (a halo'd block assembled inside
        the task), so the bias is subtracted in place instead of in a new cube.
    read_pattern : tuple of tuples of float, optional
        The frames of each group, for saturation's read-pattern checks
        (:func:`~daskcal.detector._saturation.saturation_block`; the halo is then ``2 * n_pix_grow_sat``
        wide for saturation).

    Returns
    -------
    ndarray, float32 (n_planes(nints) [+ n_opt_planes] + nints, cy, cx)
        The stacked planes of :func:`fit_block` (with ``save_opt``, the optional product's), then the number
        of each pixel's primary jumps in each integration (a view of the fitted
        halo'd block).
    """
    ys, xs = core
    checked = pdq if sat_dq is None else sat_dq
    pattern = {}
    if read_pattern is not None:  # the unchecked pixels and the raw superbias (group 2's check)
        pattern = {"skip": no_check_mask(sat, checked), "bias": None if np.ndim(bias) == 0 else bias,
                   "read_pattern": read_pattern}
    gdq = saturation_block(data, gdq, effective_threshold(sat, checked, atod_limit), n_pix_grow_sat=n_pix_grow_sat,
                           nonfinite=True, **pattern)
    # bias-subtracted ramps; in place when ``data`` is this task's own halo'd copy
    if np.ndim(bias) or bias:
        data = np.subtract(data, np.nan_to_num(np.asarray(bias, dtype=np.float32), nan=0.0),
                           out=data if owns_data else None)
    if np.ndim(dark) == 0:
        dark = np.full(gain.shape, dark, dtype=np.float32)
    # gdq is saturation_block's new array: flagged in place
    gdq = primary_block(data, gdq, gain, rnoise, usable, **_only(jump, "nframes", "thresholds", "method"),
                        in_place=True)
    nints = gdq.shape[0]
    primary_counts = np.count_nonzero(gdq & _JUMP, axis=1)  # (nints, y, x) before neighbour flags
    gdq = secondary_block(data, gdq, gain, rnoise, usable, **_only(jump, "nframes", "neighbors", "after_jump",
                                                                   "method"), in_place=True)
    pdq = gain_pixeldq(saturation_pixeldq(pdq, sat, sat_dq), gain)
    # Fitting the halo too (a few % more pixels) avoids copying the cropped cube.
    # The products are returned as a view of the core (not copied: the writer
    # copies each plane into Zarr's buffers anyway).
    planes = fit_block(data, gdq, pdq, gain, rnoise, dark, **fit, extra_planes=nints)
    planes[-nints:] = primary_counts
    return planes[:, ys, xs]


def _only(kwargs: dict, *names: str) -> dict:
    return {k: kwargs[k] for k in names if k in kwargs}


#: Seconds the kernels of :func:`compile_kernels` take to compile on a first run (2 cores, unloaded).
COMPILE_SECONDS = 7


def compile_kernels(ramps: xr.Dataset, algorithm: str = "OLS_C") -> None:
    """Call :func:`detector1_block` once on 3 x 3 pixels with the dtypes of ``ramps``' variables.

    numba compiles a kernel for each set of argument types it is called with; this calls
    every kernel a detector1 run of ``ramps`` can call (saturation growth, neighbour and
    after-jump flagging included) with the types its chunks give them, so that they are
    compiled, or loaded from numba's cache, in this process and stored in the cache for
    the workers (see :mod:`daskcal._precompile`). Only dtypes, sizes and attributes of
    ``ramps`` are read. ``algorithm`` is the ramp fit's (``"OLS_C"`` or ``"LIKELY"``).
    """
    nints, ngroups = ramps.sizes["integration"], ramps.sizes["group"]
    shape = (nints, ngroups, 3, 3)

    def plane(name, value):
        return np.full(shape[2:], value, dtype=ramps[name].dtype)

    data = np.broadcast_to(np.arange(1, ngroups + 1)[:, None, None] * 100.0 + 1000.0, shape).astype(ramps["data"].dtype)
    gdq = np.zeros(shape, dtype=ramps["groupdq"].dtype)
    bias = plane("superbias", 100.0) if "superbias" in ramps else 0.0
    jump = {"nframes": int(ramps.attrs["nframes"]), "thresholds": (4.0, 5.0, 6.0), "neighbors": (10.0, 1000.0),
            "after_jump": (100.0, 1, 100.0, 1)}
    fit = {"group_time": float(ramps.attrs["group_time"]), "frame_time": float(ramps.attrs["frame_time"]),
           "nframes": int(ramps.attrs["nframes"]), "suppress_one_group": True,
           "algorithm": fitted_algorithm(algorithm, ngroups), "groupgap": int(ramps.attrs["groupgap"])}
    detector1_block(data.copy(), gdq, plane("pixeldq", 0), plane("saturation", 60000.0), bias, plane("gain", 2.0),
                    plane("readnoise", 10.0), 0.0, usable=np.ones((nints, ngroups), dtype=bool), n_pix_grow_sat=1,
                    jump=jump, fit=fit, owns_data=True)


def _core_slices(index: int, sizes: tuple[int, ...], halo: int) -> slice:
    """Slice of halo'd block ``index`` along one axis that holds its chunk (no outer halo at the edges)."""
    lo = halo if index > 0 else 0
    return slice(lo, lo + sizes[index])


def data_producer_task(key, func, args: list, external_keys: set):
    """The task ``(func, *args)`` (legacy form, nested tasks allowed), marked as a data producer
    where this dask can.

    The distributed scheduler queues data-producer tasks and hands each to the next
    worker with a free thread, as it does for reads, instead of assigning them all when
    their small halo-edge inputs are ready: that left one of two workers idle for a whole
    task at the end of ~1 detector1 run in 4 (8 chunks split 5/3; work stealing never
    moved it). The mark is a private flag of ``dask._task_spec.Task``; where it is missing
    the plain tuple is returned (same results, distributed's usual assignment).

    Parameters
    ----------
    key : tuple
        The task's key.
    func : callable
    args : list
        Arguments: values, keys of other tasks, or nested legacy tasks.
    external_keys : set
        Keys of other tasks that ``args`` may refer to.
    """
    mark = _data_producer_hook()
    return (func, *args) if mark is None else mark(key, (func, *args), external_keys)


@functools.cache
def _data_producer_hook():
    """``mark(key, task, external_keys)`` that makes a data-producer task, or None where this dask
    has no such flag (logged once)."""
    try:
        from dask._task_spec import Task, convert_legacy_task

        def mark(key, task, external_keys):
            spec = convert_legacy_task(key, task, external_keys)
            return Task(key, spec.func, *spec.args, _data_producer=True, **spec.kwargs)

        mark(("probe", 0), (abs, ("probe-input", 0)), {("probe-input", 0)})
    except (ImportError, TypeError, AttributeError) as exc:
        logger.warning("dask %s cannot mark data-producer tasks (%s); detector1's chunk tasks are "
                       "assigned to workers by distributed's usual rules", dask.__version__, exc)
        return None
    return mark


def _fused_blocks(cube, pix, halo: int, nplanes: int, **kwargs) -> da.Array:
    """One :func:`detector1_block` task per chunk, which builds its own halo'd blocks.

    Every halo'd block (:func:`daskcal.detector._halo.halo_blocks`) is assembled,
    and read from Zarr where it can be, inside the task that uses it, so it
    exists only while that task runs: as separate tasks, the scheduler built
    them far ahead of their use. ``da.map_blocks`` with ``drop_axis`` is not
    used either: it concatenates the blocks of the dropped (integration, group)
    axes even when there is one, copying the cube in every task.
    """
    chunks_yx = cube[0].chunks[2:]
    # ``pix`` entries may be numbers (no superbias, no dark): passed to every block as they are
    inputs = [*cube, *pix]
    arrays = [a for a in inputs if isinstance(a, da.Array)]
    halos = dict(zip(map(id, arrays), halo_blocks_group(arrays, halo), strict=True))
    name = "detector1-" + tokenize(*inputs, halo, kwargs)
    layers = [layer for h in halos.values() for layer in h.layers]
    layers = list({id(x): x for x in layers}.values())
    referenced = set().union(*(layer.__dask_graph__().get_all_external_keys() for layer in layers))
    dsk = {}
    for i in range(len(chunks_yx[0])):
        for j in range(len(chunks_yx[1])):
            core = (_core_slices(i, chunks_yx[0], halo), _core_slices(j, chunks_yx[1], halo))
            func = functools.partial(detector1_block, core=core, owns_data=halos[id(cube[0])].fresh, **kwargs)
            key = (name, 0, i, j)
            args = [halos[id(a)].tasks[(i, j)] if id(a) in halos else a for a in inputs]
            dsk[key] = data_producer_task(key, func, args, referenced)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=layers)
    return da.Array(graph, name, chunks=((nplanes,), *chunks_yx), dtype=np.float32,
                    meta=np.empty((0, 0, 0), dtype=np.float32))


def _chunks_at_least(ds: xr.Dataset, halo: int) -> xr.Dataset:
    """``ds`` with every ``(y, x)`` chunk at least ``halo`` pixels wide, a narrower one joined to its
    neighbour: a halo'd block is built from the adjacent chunks only (with a narrower chunk, dask's
    overlap rechunked the array and the blocks of the inputs no longer lined up: a TypeError)."""

    def joined(sizes):
        out: list[int] = []
        for c in sizes:
            if out and (c < halo or out[-1] < halo):
                out[-1] += c
            else:
                out.append(c)
        return tuple(out)

    cy, cx = ds["data"].data.chunks[2:]
    new = joined(cy), joined(cx)
    if new == (cy, cx):
        return ds
    logger.debug("detector1: (y, x) chunks narrower than the %d px halo joined to their neighbours", halo)
    return ds.chunk({"y": new[0], "x": new[1]})


def detector1_graph(ramps: xr.Dataset, routed: dict[str, dict], chunks=None):
    """Build the fused detector1 graph; returns a :class:`RampFitResult` (lazy).

    ``routed`` holds the parameters of each step (``saturation``, ``jump``,
    ``ramp_fit``), already checked by name.
    """
    sat_params = SaturationParameters(**routed["saturation"])
    jump_params = JumpParameters(**routed["jump"])
    fit_params = RampFitParameters(**routed["ramp_fit"])
    ds = pixel_chunked(ramps, chunks)
    jump_args = jump_block_arguments(jump_params, ds)
    n = sat_params.n_pix_grow_sat
    pattern = resolve_read_pattern(ds, sat_params)
    # a read pattern's hidden-saturation marks need their group's flags already grown: 2n of raw data
    halo = (n if pattern is None else 2 * n) + (1 if jump_params.flag_4_neighbors else 0)
    ds = _chunks_at_least(ds, halo)
    nints = ds.sizes["integration"]
    chunks_yx = ds["data"].data.chunks[2:]
    usable = plane_usable(ds)
    algorithm = fitted_algorithm(fit_params.algorithm, ds.sizes["group"])
    # MIRI's leading/trailing DO_NOT_USE groups are left out by stcal's OLS_C fit only
    groups = miri_groups(ds.attrs, ds["groupdq"].data, ~usable.any(axis=0)) if algorithm == "OLS_C" else None
    fit = {
        "group_time": float(ds.attrs["group_time"]),
        "frame_time": float(ds.attrs["frame_time"]),
        "nframes": int(ds.attrs["nframes"]),
        "suppress_one_group": bool(fit_params.suppress_one_group),
        "save_opt": bool(fit_params.save_opt),
        "ped_factor": pedestal_factor(ds.attrs),
        "groups": groups,
        "algorithm": algorithm,
        "groupgap": int(ds.attrs["groupgap"]),
    }
    n_fitted = ds.sizes["group"] if groups is None else groups[1] - groups[0]
    n_fit = n_planes(nints) + (n_opt_planes(nints, n_fitted) if fit_params.save_opt else 0)
    pix = [ds[v].data.rechunk(chunks_yx) for v in ("pixeldq", "saturation", "superbias", "gain", "readnoise")
           if v in ds]
    if "superbias" not in ds:
        pix.insert(2, 0.0)  # no bias to subtract
    pix.append(0.0)  # dark current (DN/s): detector1 has none
    if "saturation_dq" in ds:
        pix.append(ds["saturation_dq"].data.rechunk(chunks_yx))
    cube = [ds["data"].data, ds["groupdq"].data.rechunk(ds["data"].data.chunks)]
    # Halos come from the neighbours' edges (a second read of them where read straight
    # from Zarr, see _halo.py), so no whole chunk waits for its neighbours' blocks (with
    # dask's overlap, the 2-D arrays' halo'd blocks were built far ahead and held: 130 MB
    # for a 4096^2 cube).
    stacked = _fused_blocks(
        cube,
        pix,
        halo,
        n_fit + nints,
        usable=usable,
        n_pix_grow_sat=n,
        atod_limit=float(sat_params.atod_limit),
        read_pattern=pattern,
        jump=jump_args,
        fit=fit,
    )
    jumps = take_slice(stacked, slice(n_fit, n_fit + nints))
    return _products(stacked, ramps, jumps.sum(axis=(1, 2), dtype=np.int64), save_opt=fit_params.save_opt,
                     groups=groups, primary_jump_planes=jumps, usable_planes=usable)
