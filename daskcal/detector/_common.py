"""Checks and chunking shared by the detector steps (graph layer)."""

from __future__ import annotations

import logging
import math

import dask
import dask.array as da
import numpy as np
import xarray as xr

__all__ = [
    "RAMP_DIMS",
    "PIX_DIMS",
    "validate_ramps",
    "pixel_chunked",
    "as_dask",
    "default_chunk_yx",
    "check_chunk_yx",
    "pixeldq_dtype",
]

log = logging.getLogger(__name__)

RAMP_DIMS = ("integration", "group", "y", "x")
PIX_DIMS = ("y", "x")
#: Samples (integrations x groups x pixels) the default chunking puts in one (y, x) chunk at
#: most: 8 Mi, i.e. up to 40 MiB of float32 ramps and uint8 group DQ.
CHUNK_SAMPLES = 8 * 2**20
#: The default chunking does not cut a side below this many pixels.
MIN_CHUNK_SIDE = 64


def pixeldq_dtype(dtype) -> np.dtype:
    """The dtype of a step's output ``pixeldq`` for an input of ``dtype``: uint32 (JWST's PIXELDQ type), or
    the input's type when it is wider. A uint8 or uint16 ``pixeldq`` cannot hold the flags the steps add
    (NO_GAIN_VALUE is bit 19, NO_SAT_CHECK bit 21): cast back to it, they would be lost."""
    dtype = np.dtype(dtype)
    return dtype if dtype.itemsize > 4 else np.dtype(np.uint32)


def default_chunk_yx(shape: tuple[int, ...]) -> tuple[int, int]:
    """The default ``(y, x)`` chunk for an array of ``shape`` (``(..., ny, nx)``; every
    leading axis, such as integration and group, stays whole in a chunk).

    From the whole detector, the longer side (``y`` when equal) is halved until a
    chunk holds at most :data:`CHUNK_SAMPLES` samples (or both sides reach
    :data:`MIN_CHUNK_SIDE`). A (1, 10, 2048, 2048) exposure gets 512 x 1024 chunks
    (8 chunks, each with 25 MiB of ramps and group DQ; a 4096^2 one the same), a (1, 100, 1024, 1032)
    one 256 x 258. Chunks are sized by samples rather than pixels so that each
    detector1 task does about the same work whatever the number of groups: a few
    hundred ms, which keeps the scheduler's ~1 ms per task and the halo's second
    read of each chunk to a few per cent of the run (2 worker processes took 0.90 s
    on that 2048^2 exposure with 512 x 512 chunks, 0.80 s with 512 x 1024).
    """
    *lead, ny, nx = (int(n) for n in shape)
    per_pixel = max(1, int(np.prod(lead, dtype=np.int64)))
    cy, cx = max(ny, 1), max(nx, 1)
    while cy * cx * per_pixel > CHUNK_SAMPLES and max(cy, cx) > MIN_CHUNK_SIDE:
        if cy >= cx:
            cy = -(-cy // 2)
        else:
            cx = -(-cx // 2)
    return cy, cx

def check_chunk_yx(chunk_yx, name: str = "chunks") -> tuple[int, int] | None:
    """``chunk_yx`` as a ``(cy, cx)`` tuple of positive ints (None stays None).

    Raises
    ------
    TypeError, ValueError
        Not two integers, or one of them < 1 (``name`` says which parameter).
    """
    if chunk_yx is None:
        return None
    try:
        values = tuple(chunk_yx)
    except TypeError:
        values = None
    if (values is None or len(values) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)):
        msg = f"{name} must be two integers (y, x) in pixels; got {chunk_yx!r}"
        raise TypeError(msg)
    if min(values) < 1:
        msg = f"{name} must be two positive integers (y, x) in pixels; got {tuple(int(v) for v in values)}"
        raise ValueError(msg)
    return int(values[0]), int(values[1])


_RAMP_VARS = {"data": (RAMP_DIMS, np.floating), "groupdq": (RAMP_DIMS, np.integer)}
_PIX_VARS = {
    "pixeldq": np.integer,
    "gain": np.floating,
    "readnoise": np.floating,
    "saturation": np.floating,
    "superbias": np.floating,
}
_ATTRS = ("group_time", "frame_time", "nframes", "groupgap")


def validate_ramps(ramps: xr.Dataset, require: tuple[str, ...] = (), *, min_groups: int = 1) -> None:
    """Raise a clear error if ``ramps`` is not a ramp dataset daskcal can use.

    Parameters
    ----------
    ramps : xarray.Dataset
        The ramp dataset (see :func:`daskcal.open_ramps`).
    require : tuple of str
        Per-pixel reference arrays the caller needs (``"gain"``, ``"readnoise"``,
        ``"saturation"``, ``"superbias"``) besides ``data``, ``groupdq`` and ``pixeldq``.
    min_groups : int, default 1
        Fewest groups per integration the caller's method needs.

    Notes
    -----
    Only shapes, dtypes and names are checked here (cheap, no computation);
    value checks that need the data (gain > 0, readnoise >= 0) are done by
    :func:`check_reference_values`, which computes only the small 2-D arrays.
    """
    if not isinstance(ramps, xr.Dataset):
        msg = f"ramps must be an xarray.Dataset; got {type(ramps).__name__}"
        raise TypeError(msg)
    for name, (dims, kind) in _RAMP_VARS.items():
        _check_var(ramps, name, dims, kind)
    _check_var(ramps, "pixeldq", PIX_DIMS, np.integer)
    for name in require:
        _check_var(ramps, name, PIX_DIMS, _PIX_VARS[name])
    ny, nx = ramps["data"].shape[2:]
    for name in ["pixeldq", *require]:
        if ramps[name].shape != (ny, nx):
            msg = f"{name} must have shape (y, x) = {(ny, nx)} like data; got {ramps[name].shape}"
            raise ValueError(msg)
    if 0 in ramps["data"].shape:
        msg = (f"data has shape {dict(zip(RAMP_DIMS, ramps['data'].shape))}; expected at least one "
               f"integration, group and pixel")
        raise ValueError(msg)
    if ramps["groupdq"].shape != ramps["data"].shape:
        msg = f"groupdq must have the shape of data {ramps['data'].shape}; got {ramps['groupdq'].shape}"
        raise ValueError(msg)
    ngroups = ramps.sizes["group"]
    if ngroups < min_groups:
        msg = f"this step needs at least {min_groups} groups per integration; data has {ngroups}"
        raise ValueError(msg)
    for key in _ATTRS:
        if key not in ramps.attrs:
            msg = f"ramps.attrs[{key!r}] is missing; expected {', '.join(_ATTRS)} (s / counts as JWST defines them)"
            raise ValueError(msg)
    gt = float(ramps.attrs["group_time"])
    if not (math.isfinite(gt) and gt > 0):
        msg = f"ramps.attrs['group_time'] must be a positive number of seconds; got {ramps.attrs['group_time']!r}"
        raise ValueError(msg)
    nframes = int(ramps.attrs["nframes"])
    if nframes < 1:
        msg = f"ramps.attrs['nframes'] must be >= 1; got {ramps.attrs['nframes']!r}"
        raise ValueError(msg)


def _check_var(ds: xr.Dataset, name: str, dims: tuple[str, ...], kind) -> None:
    if name not in ds.data_vars:
        msg = f"ramps has no variable {name!r}; expected {name}{dims}"
        raise ValueError(msg)
    var = ds[name]
    if tuple(var.dims) != tuple(dims):
        msg = f"{name} must have dimensions {dims}; got {tuple(var.dims)}"
        raise ValueError(msg)
    if not np.issubdtype(var.dtype, kind):
        msg = f"{name} must have a {kind.__name__} dtype; got {var.dtype}"
        raise TypeError(msg)


def check_reference_values(ramps: xr.Dataset, names: tuple[str, ...]) -> None:
    """Check gain/readnoise values (reads those 2-D arrays, chunk by chunk).

    Gain that is non-positive or NaN is *not* an error for jump detection and
    ramp fitting (stcal flags such pixels NO_GAIN_VALUE | DO_NOT_USE), but a gain
    array with no usable pixel at all is. Negative or NaN read noise is an error.
    """
    # counted chunk by chunk (dask reductions), so the check's memory does not grow with the detector
    counts = {}
    if "gain" in names:
        gain = as_dask(ramps["gain"])
        counts["gain"] = (~(da.isfinite(gain) & (gain > 0))).sum()
    if "readnoise" in names:
        rn = as_dask(ramps["readnoise"])
        counts["readnoise"] = (~(da.isfinite(rn) & (rn >= 0))).sum()
    # read here, in this process's threads, whatever the scheduler: two 2-D planes (0.04-0.05 s for 2048^2 at 256 x 512
    # chunks), while a distributed cluster's ~300 small tasks took 0.5 s before the run's graph could be sent. The
    # threaded scheduler's function, not its name: dask < 2024.12 warns when a name is given while a client is active
    import dask.threaded

    found = dask.compute(*counts.values(), scheduler=dask.threaded.get)
    bad = dict(zip(counts, (int(n) for n in found), strict=True))
    if "gain" in bad:
        if bad["gain"] == ramps["gain"].size:
            msg = "gain must be positive and finite (e-/DN); no pixel is"
            raise ValueError(msg)
        if bad["gain"]:
            log.warning("gain is not positive and finite in %d pixels: they get NO_GAIN_VALUE | DO_NOT_USE", bad["gain"])
    if bad.get("readnoise"):
        msg = f"readnoise must be finite and >= 0 (DN, CDS); {bad['readnoise']} pixels are not"
        raise ValueError(msg)


def as_dask(var: xr.DataArray, chunk_yx: tuple[int, int] | None = None) -> da.Array:
    """The variable's data as a dask array chunked in pixels only.

    Every leading axis (integration, group) is one chunk; ``y``/``x`` keep the
    existing chunking, or take ``chunk_yx`` (numpy input: :func:`default_chunk_yx`).
    """
    chunk_yx = check_chunk_yx(chunk_yx)
    arr = var.data
    nlead = arr.ndim - 2
    if not isinstance(arr, da.Array):
        cy, cx = chunk_yx or default_chunk_yx(arr.shape)
        return da.from_array(np.asarray(arr), chunks=(-1,) * nlead + (cy, cx))
    if chunk_yx is not None:
        return arr.rechunk((-1,) * nlead + tuple(chunk_yx))
    if any(len(c) > 1 for c in arr.chunks[:nlead]):
        arr = arr.rechunk((-1,) * nlead + arr.chunks[nlead:])
    return arr


def pixel_chunked(ramps: xr.Dataset, chunk_yx: tuple[int, int] | None = None) -> xr.Dataset:
    """Return ``ramps`` with every variable a dask array chunked in pixels only.

    The ``(y, x)`` chunks of ``data`` are applied to every variable so blocks line up.
    """
    chunk_yx = check_chunk_yx(chunk_yx)
    data = as_dask(ramps["data"], chunk_yx)
    cy, cx = data.chunks[2], data.chunks[3]
    out = {}
    for name, var in ramps.data_vars.items():
        if var.dims[-2:] != PIX_DIMS:
            out[name] = var
            continue
        arr = as_dask(var)
        arr = arr.rechunk(arr.chunks[:-2] + (cy, cx))
        out[name] = (var.dims, arr, var.attrs)
    out["data"] = (ramps["data"].dims, data, ramps["data"].attrs)
    return xr.Dataset(out, coords=ramps.coords, attrs=dict(ramps.attrs))
