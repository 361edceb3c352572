"""Resample (drizzle) many exposures into a mosaic built tile by tile.

The graph (see ``docs/resample.md``):

1. On the client, a coarse pixel map of each input's pixel-edge lattice gives
   every lattice cell's output footprint; with a margin for the kernel this is the
   cell's *window*. Per output tile, the cells whose windows touch it give the
   input's region for that tile, cut into blocks (usually one).
2. One task per tile takes, for each input that reaches it, that region. It
   computes the region's pixel map once and drizzles the data and each
   sqrt(variance) of every block into a window holding the block's whole footprint
   (drizzle's C kernel), so drizzle never clips the input: the result equals a
   whole-mosaic drizzle to float rounding. The window's part in the tile is added to
   the tile's running sums (weighted sums, weights, context bits, variance sums per
   the reference's per-input recipe) before the next input, and the tile's output
   planes are finalised.

Nothing is handed from one tile to another: the seams between tiles (the kernel
margin) are drizzled by both tiles, so peak memory is the tiles in flight (their
sums, one input region and one window each) plus the input chunks being read,
whatever the mosaic size. Tile sizes come from a memory budget, which with a
``distributed`` client follows the workers' memory limit (:mod:`daskcal.image._grid`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Sequence

import numpy as np
import xarray as xr

from daskcal._params import param
from daskcal.image import _driz, _grid
from daskcal.image._checks import warn_no_overlap, warn_unusable_inputs
from daskcal.image._dataset import VARIANCE_NAMES, get_wcs, keeps_parsed_wcs, wcs_to_text
from daskcal.image._grid import _bbox, check_output_size, pixel_scale_of, resolve_output_wcs
from daskcal.io._zarr_write import register_slice

__all__ = ["resample", "ResampleParams", "ResampleOutputParams", "KERNELS", "WEIGHT_TYPES"]

log = logging.getLogger(__name__)

KERNELS = _driz.KERNELS
WEIGHT_TYPES = _driz.WEIGHT_TYPES
COMPUTE_ERR = ("from_var", "driz_err", None)
BLOCK_CONFIG = "daskcal.resample.block-memory"
DEFAULT_BLOCK_MEMORY = "512 MiB"
# a block holds per input pixel its arrays, weights and pixel map (~40 B) and, per output pixel of its
# window, drizzle's planes (~46 B)
BYTES_PER_BLOCK_INPUT_PIXEL = 40
BYTES_PER_WINDOW_PIXEL = 46


def _parse_good_bits(good_bits):
    from astropy.nddata.bitmask import interpret_bit_flags

    from daskcal.dq import dq_dict

    if good_bits is None:
        return None
    try:
        return interpret_bit_flags(good_bits, flag_name_map=dq_dict())
    except (ValueError, TypeError, KeyError) as exc:
        msg = (
            f"good_bits {good_bits!r} is not valid: {exc}; expected an integer, '4+8', '4,8', "
            f"DQ names such as 'JUMP_DET,DROPOUT', optionally with a leading '~'"
        )
        raise ValueError(msg) from exc


def _parse_fillval(fillval) -> float:
    if fillval is None:
        return float("nan")
    if isinstance(fillval, str):
        s = fillval.strip().upper()
        if s in ("", "INDEF", "NAN"):
            return float("nan")
        try:
            return float(s)
        except ValueError:
            msg = f"fillval must be a number, 'NaN' or 'INDEF'; got {fillval!r}"
            raise ValueError(msg) from None
    return float(fillval)


@dataclasses.dataclass(frozen=True)
class ResampleParams:
    """Validated parameters of :func:`resample` (defaults as the reference step's)."""

    pixfrac: float = param(1.0, "drop size relative to an input pixel, (0, 1]")
    kernel: str = param("square", "drizzle kernel: " + ", ".join(KERNELS), cli={"choices": KERNELS})
    fillval: str | float = param("NaN", "value of output pixels no input reaches (NaN, INDEF or a number)")
    weight_type: str | None = param(
        "ivm", "input weights: ivm (1/var_rnoise), ivm-sky (1/var_sky), exptime (measurement time, s) or none "
        "(1); times the good_bits mask", cli={"choices": WEIGHT_TYPES})
    good_bits: int | str | None = param(
        "~DO_NOT_USE+NON_SCIENCE", "DQ bits counted as good: integers, '4+8', DQ names; '~' inverts")
    enable_ctx: bool = param(True, "compute the context planes con(plane, y, x): which inputs reach each pixel",
                             cli={"flag": "--no-ctx", "help": "do not compute the context planes (con)"})
    enable_var: bool = param(True, "resample var_rnoise, var_flat and var_poisson as the reference does",
                             cli={"flag": "--no-var", "help": "do not resample the variance arrays"})
    compute_err: str | None = param(
        "from_var", "err: from_var (sqrt of the summed variances), driz_err (the drizzled input err) or none",
        cli={"choices": ["from_var", "driz_err", "none"]})
    propagate_dq: bool = param(False, "OR of contributing input DQ as dq")
    pixmap_stepsize: float = param(1, "evaluate the WCS every N input pixels and interpolate the rest", "px")
    pixmap_order: int = param(1, "spline order (1 or 3) of that interpolation", cli={"choices": [1, 3]})

    def __post_init__(self):
        if not (isinstance(self.pixfrac, (int, float)) and 0 < self.pixfrac <= 1):
            msg = f"pixfrac must be in (0, 1]; got {self.pixfrac!r}"
            raise ValueError(msg)
        if self.kernel not in KERNELS:
            msg = f"unknown kernel {self.kernel!r}; expected one of {', '.join(KERNELS)}"
            raise ValueError(msg)
        wt = "none" if self.weight_type is None else self.weight_type
        if wt not in WEIGHT_TYPES:
            msg = f"unknown weight_type {self.weight_type!r}; expected one of {', '.join(WEIGHT_TYPES)}"
            raise ValueError(msg)
        if self.compute_err not in COMPUTE_ERR:
            msg = f"unknown compute_err {self.compute_err!r}; expected 'from_var', 'driz_err' or None"
            raise ValueError(msg)
        if not self.pixmap_stepsize >= 1:
            msg = f"pixmap_stepsize must be >= 1 (px); got {self.pixmap_stepsize!r}"
            raise ValueError(msg)
        if self.pixmap_order not in (1, 3):
            msg = f"pixmap_order must be 1 or 3; got {self.pixmap_order!r}"
            raise ValueError(msg)
        _parse_fillval(self.fillval)
        _parse_good_bits(self.good_bits)

    @property
    def good_bits_int(self):
        return _parse_good_bits(self.good_bits)

    @property
    def weight_name(self) -> str:
        return "none" if self.weight_type is None else self.weight_type


@dataclasses.dataclass(frozen=True)
class ResampleOutputParams:
    """The output grid and layout keywords of :func:`resample` (their defaults, help and units; resample
    checks them where it builds the grid and the tiles)."""

    pixel_scale: float | None = param(None, "output pixel scale; overrides pixel_scale_ratio", "arcsec/px",
                                      derived="from pixel_scale_ratio", example=0.03)
    pixel_scale_ratio: float = param(1.0, "output pixel scale / first input's pixel scale")
    rotation: float | None = param(None, "output +y axis east of north", "deg",
                                   derived="the roll angle (JWST meta.wcsinfo), else the first input's",
                                   example=0.0)
    crpix: tuple[float, float] | None = param(
        None, "fiducial pixel (x, y), 0-based", "px", derived="inputs start at pixel 0", example=(0.0, 0.0),
        cli={"type": float, "nargs": 2, "metavar": ("X", "Y")})
    crval: tuple[float, float] | None = param(
        None, "sky position (RA, Dec) of the fiducial", "deg", derived="centre of the footprints",
        example=(150.1, 2.2), cli={"type": float, "nargs": 2, "metavar": ("RA", "DEC")})
    output_shape: tuple[int, int] | None = param(
        None, "output shape (nx, ny)", "px", derived="bounding box of all inputs", example=(4000, 4000),
        cli={"type": int, "nargs": 2, "metavar": ("NX", "NY")})
    output_wcs: str | None = param(
        None, "output grid: an ASDF file whose 'wcs' is the grid (Python: also a gwcs.WCS)",
        derived="built from the parameters above", example="grid.asdf", cli={"metavar": "FILE.asdf"})
    tile_shape: tuple[int, int] | None = param(
        None, "output tile = Zarr chunk (y, x)", "px",
        derived="320 MiB per tile task (Dask config daskcal.resample.tile-memory), at most 1/5 of a worker's "
        "memory per thread; smaller (not below 512) until each task thread has 16 tiles", example=(2048, 2048),
        cli={"type": int, "nargs": 2, "metavar": ("TY", "TX")})
    single: bool = param(False, "one mosaic per exposure group, stacked on a group dimension (outlier detection)")


@dataclasses.dataclass(frozen=True)
class _Input:
    index: int
    ds: xr.Dataset
    wcs: object
    shape: tuple
    bounds: tuple  # xmin, xmax, ymin, ymax (inclusive) from the WCS bounding box
    tmeasure: float
    level: float


def _inputs(images) -> list[_Input]:
    if isinstance(images, xr.Dataset):
        images = [images]
    images = list(images)
    if not images:
        msg = "resample needs at least one input image"
        raise ValueError(msg)
    out = []
    for k, ds in enumerate(images):
        if not isinstance(ds, xr.Dataset):
            msg = f"input {k} is a {type(ds).__name__}; expected an xarray.Dataset from daskcal.image_dataset"
            raise TypeError(msg)
        if "data" not in ds:
            msg = f"input {k} ({ds.attrs.get('name', '?')!r}) has no 'data' variable"
            raise ValueError(msg)
        shape = tuple(ds["data"].shape)
        if len(shape) != 2:
            msg = f"input {k} ({ds.attrs.get('name', '?')!r}) data must be 2-D; got shape {shape}"
            raise ValueError(msg)
        for name in ds.data_vars:
            if tuple(ds[name].shape) != shape:
                msg = f"input {k} ({ds.attrs.get('name', '?')!r}): {name} has shape {tuple(ds[name].shape)}, data {shape}"
                raise ValueError(msg)
        wcs = get_wcs(ds)
        (x1, x2), (y1, y2) = _bbox(wcs, shape)
        xmin, ymin = max(0, int(x1 + 0.5)), max(0, int(y1 + 0.5))
        xmax = max(xmin, min(shape[1] - 1, int(x2 + 0.5)))
        ymax = max(ymin, min(shape[0] - 1, int(y2 + 0.5)))
        texp = float(ds.attrs.get("exposure_time", 0) or 0)
        if not texp > 0:
            msg = f"input {k} ({ds.attrs.get('name', '?')!r}) needs a positive exposure_time; got {texp}"
            raise ValueError(msg)
        tm = ds.attrs.get("measurement_time")
        level = ds.attrs.get("level")
        level = 0.0 if (level is None or ds.attrs.get("subtracted", False)) else float(level)
        out.append(_Input(k, ds, wcs, shape, (xmin, xmax, ymin, ymax), float(tm if tm is not None else texp), level))
    return out


def _kernel_margin(p: ResampleParams, psr: float) -> int:
    """Output pixels by which a kernel can reach beyond the mapped pixel edges."""
    reach = {"square": 1.0, "point": 1.0, "turbo": 1.0, "gaussian": 3.0, "lanczos2": 3.0, "lanczos3": 4.0}[p.kernel]
    return int(math.ceil(reach * max(p.pixfrac, 1.0) / psr)) + 3


def _edges_map(inp: _Input, wcs_out, step: int):
    """Output (x, y) of an input's pixel-edge lattice every ``step`` px (client side, coarse)."""
    xmin, xmax, ymin, ymax = inp.bounds
    xs = np.unique(np.r_[np.arange(xmin - 0.5, xmax + 0.5, step), xmax + 0.5])
    ys = np.unique(np.r_[np.arange(ymin - 0.5, ymax + 0.5, step), ymax + 0.5])
    gx, gy = np.meshgrid(xs, ys)
    ox, oy = _driz.pixel_to_pixel(inp.wcs, wcs_out, gx, gy)
    return xs, ys, np.asarray(ox), np.asarray(oy)


@dataclasses.dataclass(frozen=True)
class _Lattice:
    """An input's pixel-edge lattice every few px and, per lattice cell, the output window its pixels reach.

    Cell ``(r, c)`` holds input rows ``ys[r] + 0.5 .. ys[r + 1] - 0.5`` and columns
    likewise; ``win`` is ``(y0, x0, y1, x1)`` (exclusive ends) per cell: the output
    bounding box of its mapped corners plus the kernel margin.
    """

    ys: np.ndarray  # pixel-edge coordinates (input px), ny + 1
    xs: np.ndarray
    win: np.ndarray  # (ncy, ncx, 4) int64


def _lattice(inp: _Input, wcs_out, step: int, margin: int) -> _Lattice:
    xs, ys, ox, oy = _edges_map(inp, wcs_out, step)
    if not (np.all(np.isfinite(ox)) and np.all(np.isfinite(oy))):
        msg = f"input {inp.index} ({inp.ds.attrs.get('name', '?')!r}) does not map onto the output WCS everywhere"
        raise ValueError(msg)
    corners_x = np.stack([ox[:-1, :-1], ox[:-1, 1:], ox[1:, :-1], ox[1:, 1:]])
    corners_y = np.stack([oy[:-1, :-1], oy[:-1, 1:], oy[1:, :-1], oy[1:, 1:]])
    win = np.stack([np.floor(corners_y.min(0)) - margin, np.floor(corners_x.min(0)) - margin,
                    np.ceil(corners_y.max(0)) + margin + 1, np.ceil(corners_x.max(0)) + margin + 1], axis=-1)
    return _Lattice(ys, xs, win.astype(np.int64))


@dataclasses.dataclass(frozen=True)
class _Part:
    """What one tile needs of one input: a region of it and the blocks of that region.

    ``cut`` (y0, y1, x0, x1) is the region plus a 2 px halo, so pixel corners at its
    edges interpolate as the whole input's; each block is ``(bounds, window)``: its
    pixels inside the cut (xmin, xmax, ymin, ymax, inclusive) as drizzle takes them,
    and the output window (oy, ox, wy, wx) that holds the block's whole footprint.
    """

    inp: int
    cut: tuple
    blocks: tuple


def _plan_parts(inp: _Input, lat: _Lattice, tiles, tile_shape, out_shape, block: int) -> dict:
    """Per tile the input touches: the :class:`_Part` to drizzle for it (tile index -> part).

    A tile's region of the input is the bounding box of the lattice cells whose
    windows touch it, cut into blocks of at most ``block`` px; each block is drizzled
    into a window holding its whole footprint (so drizzle never clips it) and only
    the window's part in the tile is kept. Neighbouring tiles read overlapping
    regions (the kernel margin and the inputs' rotation): their seams are drizzled twice
    instead of being held for the other tile.
    """
    ty, tx = tile_shape
    nty, ntx = -(-out_shape[0] // ty), -(-out_shape[1] // tx)
    w = lat.win
    inside = (w[..., 2] > 0) & (w[..., 3] > 0) & (w[..., 0] < out_shape[0]) & (w[..., 1] < out_shape[1])
    ty0 = np.clip(w[..., 0] // ty, 0, nty - 1)
    ty1 = np.clip((w[..., 2] - 1) // ty, 0, nty - 1)
    tx0 = np.clip(w[..., 1] // tx, 0, ntx - 1)
    tx1 = np.clip((w[..., 3] - 1) // tx, 0, ntx - 1)
    rows, cols = np.indices(w.shape[:2])
    ntiles = nty * ntx
    rmin, cmin = np.full(ntiles, np.iinfo(np.int64).max), np.full(ntiles, np.iinfo(np.int64).max)
    rmax, cmax = np.full(ntiles, -1), np.full(ntiles, -1)
    for dy in range(int((ty1 - ty0).max(initial=0)) + 1):
        for dx in range(int((tx1 - tx0).max(initial=0)) + 1):
            ok = inside & (ty0 + dy <= ty1) & (tx0 + dx <= tx1)
            t = ((ty0 + dy) * ntx + tx0 + dx)[ok]
            np.minimum.at(rmin, t, rows[ok])
            np.maximum.at(rmax, t, rows[ok])
            np.minimum.at(cmin, t, cols[ok])
            np.maximum.at(cmax, t, cols[ok])
    ny, nx = inp.shape
    h = 2
    parts = {}
    for t in np.flatnonzero(rmax >= 0).tolist():
        y0, y1 = int(lat.ys[rmin[t]] + 0.5), int(lat.ys[rmax[t] + 1] + 0.5)
        x0, x1 = int(lat.xs[cmin[t]] + 0.5), int(lat.xs[cmax[t] + 1] + 0.5)
        cut = (max(0, y0 - h), min(ny, y1 + h), max(0, x0 - h), min(nx, x1 + h))
        blocks = []
        for by0, by1 in _even_cuts(y0, y1, block):
            for bx0, bx1 in _even_cuts(x0, x1, block):
                window = _block_window(lat, by0, by1, bx0, bx1)
                if _touches(window, tiles[t]):
                    bounds = (bx0 - cut[2], bx1 - 1 - cut[2], by0 - cut[0], by1 - 1 - cut[0])
                    blocks.append((bounds, window))
        if blocks:
            parts[t] = _Part(inp.index, cut, tuple(blocks))
    return parts


def _block_window(lat: _Lattice, y0, y1, x0, x1) -> tuple:
    """Output window (oy, ox, wy, wx) of input rows y0:y1, columns x0:x1: the union of their cells' windows."""
    r = (lat.ys[1:] > y0 - 0.5) & (lat.ys[:-1] < y1 - 0.5)
    c = (lat.xs[1:] > x0 - 0.5) & (lat.xs[:-1] < x1 - 0.5)
    w = lat.win[np.ix_(r, c)]
    oy, ox = int(w[..., 0].min()), int(w[..., 1].min())
    return (oy, ox, int(w[..., 2].max()) - oy, int(w[..., 3].max()) - ox)


def _even_cuts(start, stop, size):
    """Cut [start, stop) into near-equal pieces of at most ``size`` (no slivers drizzle would reject)."""
    n = max(1, math.ceil((stop - start) / size))
    edges = np.linspace(start, stop, n + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist()))


def _tiles(shape, tile_shape):
    ty, tx = tile_shape
    ys = list(range(0, shape[0], ty))
    xs = list(range(0, shape[1], tx))
    return ys, xs


def _default_block_shape(psr: float, tile_shape) -> int:
    """Side (input px) of the blocks a tile's region is cut into.

    A region of about the tile's size (its side times ``psr``, plus the margin and the
    inputs' rotation) is one block; blocks are at most 1.25 tiles wide on the output,
    and at most the side whose block fits Dask config ``daskcal.resample.block-memory``
    (512 MiB).
    """
    import dask
    from dask.utils import parse_bytes

    budget = dask.config.get(BLOCK_CONFIG, None) or DEFAULT_BLOCK_MEMORY
    budget = parse_bytes(budget) if isinstance(budget, str) else int(budget)
    per_px = BYTES_PER_BLOCK_INPUT_PIXEL + BYTES_PER_WINDOW_PIXEL / psr**2
    by_budget = int(math.sqrt(max(budget, 1) / per_px))
    by_tile = int(math.ceil(1.25 * max(tile_shape) * psr)) + 16
    return max(64, min(by_budget, by_tile))


def _coarse_grid(wcs_in, wcs_out, inp: _Input, stepsize, order):
    """The reference's whole-input coarse pixel-map grid for ``pixmap_stepsize > 1``."""
    xmin, xmax, ymin, ymax = inp.bounds
    w, h = xmax - xmin + 1, ymax - ymin + 1
    if stepsize <= 1 or max(w, h) <= 10:
        return None
    nx = max(int(math.ceil(w / stepsize)), min(10, w))
    ny = max(int(math.ceil(h / stepsize)), min(10, h))
    xc, yc = np.linspace(xmin, xmax, nx), np.linspace(ymin, ymax, ny)
    gx, gy = np.meshgrid(xc, yc)
    px, py = _driz.pixel_to_pixel(wcs_in, wcs_out, gx, gy)
    if not (np.all(np.isfinite(px)) and np.all(np.isfinite(py))):
        return None
    return (yc, xc, np.asarray(px), np.asarray(py))


class _TileInput:
    """What a leaf task needs of one input besides its chunks and coarse grid.

    A plain class (not a dataclass), so dask embeds it in the task as it is instead
    of searching it for dask objects; ``chunks`` names per array the origins of the
    chunks that hold the region, in the order the task receives them; ``sources``
    the arrays the task reads itself from Zarr (name -> ZarrSource).

    ``mapping`` is how the task gets its region's pixel map: a :func:`~daskcal.image._driz.pixmap_source`
    (no WCS to parse), or None where the coarse grid (a dependency) gives it.
    """

    __slots__ = ("mapping", "part", "chunks", "sources", "coarse", "level", "exptime", "tmeasure", "ctx_index")

    def __init__(self, mapping, part, chunks, sources, coarse, level, exptime, tmeasure, ctx_index):
        self.mapping, self.part, self.chunks, self.sources, self.coarse = mapping, part, chunks, sources, coarse
        self.level, self.exptime, self.tmeasure, self.ctx_index = level, exptime, tmeasure, ctx_index


def _leaf_task(spec_in: _TileInput, deps, tile, nplanes, spec: _driz.DrizzleSpec, prev=None):
    """Dask task: ``prev`` (the partial sums of the inputs before this one in its chain, or None) plus one
    input's part of one output tile.

    ``deps`` are the input's chunks that hold its region (as many per array as
    ``spec_in.chunks`` names), then its coarse grid if it has one, then the packed outliers of each
    :class:`~daskcal.image._outliers.FlaggedDQ` among ``spec_in.sources``; arrays daskcal reads
    from Zarr (``spec_in.sources``) are read here, the region only. The region's blocks
    are drizzled into their windows and their parts in the tile added to ``prev`` in place (the
    sums cover the whole tile; ``prev`` has this task as its one dependent).
    """
    from daskcal.image._outliers import FlaggedDQ

    dep = iter(deps)
    arrays = {name: [(next(dep), origin) for origin in origins] for name, origins in spec_in.chunks.items()}
    coarse = next(dep) if spec_in.coarse else None
    cy0, cy1, cx0, cx1 = spec_in.part.cut
    region = (slice(cy0, cy1), slice(cx0, cx1))
    for name, source in spec_in.sources.items():
        block = source.read(region, next(dep)) if isinstance(source, FlaggedDQ) else source.read(region)
        arrays[name] = [(block, (cy0, cx0))]
    pieces = _input_pieces(arrays, spec_in, coarse, spec, tile)
    del arrays
    if not pieces:
        return prev
    if prev is None:
        return _driz.TileSums.of_pieces(pieces, nplanes, spec, spec_in.ctx_index, spec_in.tmeasure, box=tile)
    return prev.plus(pieces, spec_in.ctx_index, spec_in.tmeasure)


def _chain_task(spec_ins, deps, tile, nplanes, spec: _driz.DrizzleSpec, prev=None, finalize=False):
    """Dask task: :func:`_leaf_task` of several inputs one after the other (one chain), for inputs that read
    their regions themselves (from Zarr), so the task holds one input's region at a time whatever its length.

    As separate leaf tasks, a worker ran two chains interleaved: the next leaf of a chain reaches the worker a
    scheduler round trip after the last one ends, and in that gap the worker starts another chain's ready leaf,
    and so on. Two partial sums per worker thread instead of one, and a tile finished later: with resample of 16
    x 2048^2 into 9 tiles of 1024^2 on 2 workers, four tiles in flight, the first written at ~70% of the run
    (which is what a killed run loses).

    With ``finalize`` (the tile's only chain), the tile's planes (:func:`_finalize_task`) rather than its float64
    sums, which would otherwise wait for the finalize task behind the worker's next chain. ``prev`` may be a
    :class:`~daskcal.image._grow.StoredSums` (a stored mosaic's tile that inputs are added to), read here.
    """
    from daskcal.image._grow import StoredSums

    sums = prev.read() if isinstance(prev, StoredSums) else prev
    for spec_in, d in zip(spec_ins, deps, strict=True):
        sums = _leaf_task(spec_in, d, tile, nplanes, spec, sums)
    return _finalize_task(sums, tile, nplanes, spec) if finalize else sums


def _merge_task(a, b):
    """Dask task: the partial sums of two sets of inputs of one tile."""
    return _driz.TileSums.merge(a, b)


def _finalize_task(sums, tile, nplanes, spec: _driz.DrizzleSpec) -> dict:
    """Dask task: a tile's output planes from the sums of every input that reaches it."""
    if sums is None:
        return _driz.empty_planes((tile[1] - tile[0], tile[3] - tile[2]), nplanes, spec)
    planes = sums.finalize(tile)
    sums.release()  # this task is the sums' one dependent
    return planes


def _input_pieces(arrays, spec_in: _TileInput, coarse, spec: _driz.DrizzleSpec, tile) -> list:
    """One input's part of a tile: its region's pixel map and weights once, then each block drizzled into its
    window and cut to the tile (see :mod:`daskcal.image._driz`)."""
    part = spec_in.part
    cy0, cy1, cx0, cx1 = part.cut
    pixmap = _driz.pixmap_from_source(spec_in.mapping, cy0, cy1, cx0, cx1, coarse=coarse, order=spec.pixmap_order)
    arrays = {k: np.ascontiguousarray(_assemble(v, part.cut)) for k, v in arrays.items()}
    data = arrays["data"].astype(np.float32, copy=False)
    if spec_in.level:
        data = data - np.float32(spec_in.level)
    dq = arrays.get("dq")
    if dq is None:
        dq = np.zeros(data.shape, np.uint32)
    weight = _driz.weight_map(dq, spec.weight_type, spec.good_bits, spec_in.tmeasure,
                              var_rnoise=arrays.get("var_rnoise"), var_sky=arrays.get("var_sky"))
    region = dict(arrays, data=data, weight=weight, dq=dq.astype(np.uint32, copy=False))
    del arrays, data, dq, weight
    pieces = []
    h = 2
    for (xmin, xmax, ymin, ymax), window in part.blocks:
        if len(part.blocks) == 1:  # the whole region: its pixel map is shifted in place
            blk, pm, bounds = region, pixmap, (xmin, xmax, ymin, ymax)
        else:  # the block plus its halo, contiguous for drizzle
            sy = slice(max(0, ymin - h), min(cy1 - cy0, ymax + 1 + h))
            sx = slice(max(0, xmin - h), min(cx1 - cx0, xmax + 1 + h))
            blk = {k: np.ascontiguousarray(v[sy, sx]) for k, v in region.items()}
            pm = np.array(pixmap[sy, sx])
            bounds = (xmin - sx.start, xmax - sx.start, ymin - sy.start, ymax - sy.start)
        pm[..., 0] -= window[1]
        pm[..., 1] -= window[0]
        piece = _driz.drizzle_block(blk, pm, bounds, window, spec, spec_in.exptime, keep=tile)
        del blk, pm
        if piece is not None:
            pieces.append(piece)
    return pieces


def _time_totals(inps: list[_Input]) -> dict:
    seen, texp, tmeas, dur, starts, ends, all_meas = set(), 0.0, 0.0, 0.0, [], [], True
    for inp in inps:
        a = inp.ds.attrs
        gid = a.get("group_id", a.get("name", inp.index))
        if gid in seen:
            continue
        seen.add(gid)
        texp += float(a["exposure_time"])
        if a.get("measurement_time") is None:
            all_meas = False
            tmeas += float(a["exposure_time"])
        else:
            tmeas += float(a["measurement_time"])
        dur += float(a.get("duration") or 0.0)
        if a.get("start_time") is not None:
            starts.append(float(a["start_time"]))
        if a.get("end_time") is not None:
            ends.append(float(a["end_time"]))
    return {
        "exposure_time": texp,
        "measurement_time": tmeas if all_meas else None,
        "duration": dur,
        "start_time": min(starts) if starts else None,
        "end_time": max(ends) if ends else None,
        "pointings": len(seen),
    }


@keeps_parsed_wcs
def resample(
    images,
    *,
    output_wcs=None,
    pixfrac: float = 1.0,
    kernel: str = "square",
    fillval="NaN",
    weight_type: str | None = "ivm",
    good_bits="~DO_NOT_USE+NON_SCIENCE",
    enable_ctx: bool = True,
    enable_var: bool = True,
    compute_err: str | None = "from_var",
    propagate_dq: bool = False,
    pixmap_stepsize: float = 1,
    pixmap_order: int = 1,
    tile_shape: Sequence[int] | None = None,
    single: bool = False,
    block_shape: int | None = None,
    max_output_memory=None,
    check_inputs: bool = True,
    pixel_scale: float | None = None,
    pixel_scale_ratio: float = 1.0,
    rotation: float | None = None,
    crpix: Sequence[float] | None = None,
    crval: Sequence[float] | None = None,
    output_shape: Sequence[int] | None = None,
    into=None,
) -> xr.Dataset:
    """Drizzle exposures onto one output grid, tile by tile, as a lazy dataset.

    Parameters
    ----------
    images : sequence of xarray.Dataset
        Calibrated exposures (:func:`daskcal.image_dataset` / :func:`daskcal.open_images`).
    output_wcs : gwcs.WCS or path, optional
        Output grid, or an ASDF file with a ``wcs`` key. Default: built from the
        inputs with :func:`daskcal.output_wcs` and the grid arguments below.
    pixfrac : float, default 1.0
        Linear size of the drop relative to the input pixel, in (0, 1].
    kernel : str, default "square"
        One of square, point, turbo, gaussian, lanczos2, lanczos3.
    fillval : float or str, default "NaN"
        Value of output pixels no input reaches.
    weight_type : str, default "ivm"
        ivm (1/var_rnoise), ivm-sky (1/var_sky), exptime (measurement time, else
        exposure time, s) or none (1). Always times the ``good_bits`` DQ mask.
    good_bits : int or str, default "~DO_NOT_USE+NON_SCIENCE"
        DQ bits counted as good: integers, "4+8", "4,8", DQ names, "~" inverts.
    enable_ctx : bool, default True
        Compute the context planes ``con(plane, y, x)`` (bit ``k % 32`` of plane
        ``k // 32`` set where input ``k`` contributed).
    enable_var : bool, default True
        Resample ``var_rnoise``, ``var_flat``, ``var_poisson`` as the reference does.
    compute_err : {"from_var", "driz_err", None}, default "from_var"
        ``err`` as sqrt of the summed variances, the drizzled input ``err`` or none.
    propagate_dq : bool, default False
        OR of contributing input DQ as ``dq``.
    pixmap_stepsize : float, default 1
        Evaluate the WCS every this many input pixels and interpolate the rest.
    pixmap_order : {1, 3}, default 1
        Spline order of that interpolation.
    tile_shape : (int, int), optional
        Output tile (= Zarr chunk) shape. Default: the largest multiple of 256 px
        whose task fits Dask config ``daskcal.resample.tile-memory`` (320 MiB:
        1024 px) and, with an active ``distributed`` client, a fifth of its
        workers' memory limit per thread (768 px for 1 GiB workers); then, for
        a small mosaic, smaller in 256 px steps, not below 512 px, until it
        has Dask config ``daskcal.resample.tiles-per-thread`` (16; 0: off)
        tiles per task thread (the client's workers' threads, else Dask's
        ``num_workers`` or the CPU count), so that a killed run loses little
        (``--resume``) and no thread idles at the end. With a
        client, a tile task estimated to need more than half of a worker's
        memory per thread is refused (``ValueError``), as are input chunks
        that large.
    single : bool, default False
        Drizzle each exposure group (``group_id``) onto its own copy of the grid;
        the outputs are stacked on a ``group`` dimension.
    block_shape : int, optional
        Side (input px) of the blocks an input's region of a tile is drizzled
        in (each block's window holds its whole footprint). Default: the region
        whole (1.25 tile sides times the pixel scale ratio, plus 16 px), at most
        what fits Dask config ``daskcal.resample.block-memory`` (512 MiB); at
        least 64.
    max_output_memory : int or str, optional
        Largest allowed output size (see :func:`daskcal.image._grid.max_output_bytes`).
    check_inputs : bool, default True
        Read every input's ``dq`` (and weight variance) now and log a warning for
        each exposure that contributes nothing. Pass False when the inputs are
        lazy results of an expensive step that already checked them, such as
        :func:`daskcal.flag_outliers`: the check would compute that step once
        more (measured: 19.8 s of outlier detection for 8 x 2048^2 inputs).
    pixel_scale : float, optional
        Output pixel scale (arcsec/px); overrides ``pixel_scale_ratio``.
    pixel_scale_ratio : float, default 1.0
        Output pixel scale relative to the first input's.
    rotation : float, optional
        Output +y axis east of north (deg); default the roll angle (JWST
        ``meta.wcsinfo``), else the first input's.
    crpix : (float, float), optional
        Fiducial pixel (x, y), 0-based px; default: the inputs start at pixel 0.
    crval : (float, float), optional
        Sky position (RA, Dec) of the fiducial (deg); default the centre of the footprints.
    output_shape : (int, int), optional
        Output shape (nx, ny) in px; default the bounding box of all inputs.
        The grid arguments are used as :func:`daskcal.output_wcs` uses them; with
        ``output_wcs`` only ``output_shape`` applies. Every argument after
        ``images`` is keyword-only, and a misspelled one is an error.
    into : path, optional
        A mosaic Zarr store written by daskcal (:func:`daskcal.save`, ``daskcal
        resample``): the result is that mosaic with ``images`` added, on its grid
        and tiles and with its drizzle parameters (a keyword given otherwise is an
        error). Only the tiles the new exposures reach are computed, each starting
        from its stored planes; the others are the stored ones. The result equals
        the mosaic of all inputs resampled at once (stored ones first): data, wht,
        variances and err to float32 rounding, ``con`` (one more plane every 32
        inputs), ``dq`` and the metadata (``inputs``, time totals, ``s_region``)
        exactly. An exposure the mosaic already holds (by name) or one outside its
        grid is an error (``ValueError`` naming it) before anything is computed.
        Attribute ``tiles_updated`` lists the ``[iy, ix]`` tiles the new
        exposures reach. ``daskcal resample --add`` rewrites only those tiles
        of the store, atomically.

    Returns
    -------
    xarray.Dataset
        Lazy (dask) ``data``, ``wht``, ``con`` (int32), ``err``, ``var_*``, ``dq``
        as enabled, and with the variances (unless ``single``) their running weights
        ``vwt_rnoise``, ``vwt_flat``, ``vwt_poisson`` (what ``into`` needs); attributes:
        the WCS (``wcs_asdf``), time totals, ``s_region``, pixel scale, resample
        parameters, input names (``inputs``), exposure groups (``group_ids``) and
        the inputs' corner footprints (``footprints``, deg).
    """
    if into is not None:
        from daskcal.image import _grow

        given = dict(output_wcs=output_wcs, pixfrac=pixfrac, kernel=kernel, fillval=fillval, weight_type=weight_type,
                     good_bits=good_bits, enable_ctx=enable_ctx, enable_var=enable_var, compute_err=compute_err,
                     propagate_dq=propagate_dq, pixmap_stepsize=pixmap_stepsize, pixmap_order=pixmap_order,
                     tile_shape=tile_shape, single=single, pixel_scale=pixel_scale,
                     pixel_scale_ratio=pixel_scale_ratio, rotation=rotation, crpix=crpix, crval=crval,
                     output_shape=output_shape)
        return _grow.resample_into(images, into, given=given, defaults=_DEFAULTS, block_shape=block_shape,
                                   check_inputs=check_inputs)
    wcs_args = dict(pixel_scale=pixel_scale, pixel_scale_ratio=pixel_scale_ratio, rotation=rotation, crpix=crpix,
                    crval=crval, output_shape=output_shape)
    params = ResampleParams(pixfrac, kernel, fillval, weight_type, good_bits, enable_ctx, enable_var,
                            compute_err, propagate_dq, pixmap_stepsize, pixmap_order)
    inps = _inputs(images)
    nplanes_all = (len(inps) - 1) // 32 + 1
    wcs_out = resolve_output_wcs(inps_ds := [i.ds for i in inps], output_wcs, max_output_memory=max_output_memory,
                                 bytes_per_pixel=_bytes_per_pixel(params, nplanes_all), **wcs_args)
    out_shape = tuple(int(s) for s in wcs_out.array_shape)
    check_output_size(out_shape, _bytes_per_pixel(params, nplanes_all) * (1 if not single else len(_groups(inps))),
                      max_output_memory)
    out_scale = pixel_scale_of(wcs_out, out_shape)
    # as the reference step: a built grid has exactly the ratio asked for (default 1.0), not the measured one
    psr = wcs_args.get("pixel_scale_ratio", 1.0) if (output_wcs is None and wcs_args.get("pixel_scale") is None) else None
    if psr is None:
        psr = out_scale / pixel_scale_of(inps[0].wcs, inps[0].shape)
    psr = float(psr)
    workers = _grid.worker_memory()
    if tile_shape is None:
        side = _grid.split_tile_side(_grid.tile_side(psr, _grid.tile_budget(workers)), out_shape,
                                     _grid.task_threads())
        tile_shape = (min(side, out_shape[0]), min(side, out_shape[1]))
    tile_shape = (int(tile_shape[0]), int(tile_shape[1]))
    if min(tile_shape) < 1:
        msg = f"tile_shape must be positive; got {tile_shape}"
        raise ValueError(msg)
    if block_shape is None:
        block_shape = _default_block_shape(psr, tile_shape)
    if int(block_shape) < 8:
        msg = f"block_shape must be at least 8 input pixels; got {block_shape}"
        raise ValueError(msg)
    margin = _kernel_margin(params, psr)
    ys, xs = _tiles(out_shape, tile_shape)
    tiles = [(ty, min(ty + tile_shape[0], out_shape[0]), tx, min(tx + tile_shape[1], out_shape[1]))
             for ty in ys for tx in xs]
    # lattice cells of at most ~64 output px, so a tile's region of an input reaches little beyond the tile
    # (at pixel_scale_ratio 0.1, 16 px cells made each leaf drizzle ~1.9x the tile's area; 6 px cells ~1.2x)
    step = max(4, min(16, int(block_shape), int(round(64 * psr))))
    parts = {i.index: _plan_parts(i, _lattice(i, wcs_out, step, margin), tiles, tile_shape, out_shape,
                                  int(block_shape)) for i in inps}
    if not any(parts.values()):
        msg = "no input overlaps the output grid; check the inputs' WCS and the output WCS parameters"
        raise ValueError(msg)
    warn_no_overlap([str(i.ds.attrs.get("name") or f"input {i.index}") for i in inps if not parts[i.index]])
    if check_inputs:
        warn_unusable_inputs([i.ds for i in inps if parts[i.index]], good_bits=params.good_bits_int,
                             weight_type=params.weight_type)
    _check_fits_workers(inps, parts, tiles, psr, workers)
    groups = _groups(inps) if single else {None: [i.index for i in inps]}
    ds = _build_graph(inps, groups, parts, tiles, wcs_out, out_shape, tile_shape, params, psr, single)
    ds.attrs.update(_attrs(inps, wcs_out, out_shape, params, psr, out_scale, tile_shape))
    footprints = [_grid._footprint(i.wcs, i.shape) for i in inps if parts[i.index]]
    ds.attrs["s_region"] = _grid.s_region_of(footprints)  # the union of the footprints (spherical polygons)
    ds.attrs["footprints"] = [np.asarray(f, np.float64).tolist() for f in footprints]  # (RA, Dec) corners, deg
    del inps_ds
    return ds


def _defaults() -> dict:
    import inspect

    return {n: p.default for n, p in inspect.signature(resample).parameters.items()
            if p.default is not inspect.Parameter.empty}


def _groups(inps):
    groups: dict = {}
    for i in inps:
        gid = i.ds.attrs.get("group_id", i.ds.attrs.get("name", i.index))
        groups.setdefault(gid, []).append(i.index)
    return groups


def _bytes_per_pixel(p: ResampleParams, nplanes: int) -> float:
    n = 8.0
    if p.enable_ctx:
        n += 4 * nplanes
    if p.enable_var:
        n += 12
    if p.compute_err:
        n += 4
    if p.propagate_dq:
        n += 4
    return n


def _attrs(inps, wcs_out, out_shape, p, psr, out_scale, tile_shape):
    a = _time_totals(inps)
    a.update(
        wcs_asdf=wcs_to_text(wcs_out),
        pixel_scale=out_scale * 3600.0,
        pixel_scale_ratio=psr,
        pixelarea_arcsecsq=(out_scale * 3600.0) ** 2,
        pixelarea_steradians=math.radians(out_scale) ** 2,
        pixfrac=p.pixfrac,
        kernel=p.kernel,
        fillval=str(p.fillval),
        weight_type=p.weight_name,
        good_bits=str(p.good_bits),
        # what adding inputs later (``into``) needs to go on as if every input had been given at once
        enable_ctx=p.enable_ctx, enable_var=p.enable_var, compute_err=str(p.compute_err), propagate_dq=p.propagate_dq,
        pixmap_stepsize=p.pixmap_stepsize, pixmap_order=p.pixmap_order,
        group_ids=[str(g) for g in _groups(inps)],
        inputs=[str(i.ds.attrs.get("name", i.index)) for i in inps],
        tile_shape=list(tile_shape),
        name="mosaic",
    )
    return a


def _check_fits_workers(inps, parts, tiles, psr, workers) -> None:
    """With a cluster, refuse tile tasks and input chunks that could not fit a worker's memory (arrays daskcal
    reads from Zarr are read by region in the tile tasks: their chunks are not loaded whole)."""
    from daskcal.io._zarr_read import zarr_source

    if workers is None:
        return
    for inp in inps:
        arrays = [inp.ds[n].data for n in inp.ds.data_vars
                  if hasattr(inp.ds[n].data, "chunks") and zarr_source(inp.ds[n].data) is None]
        if not arrays:
            continue
        chunk = sum(a.dtype.itemsize * math.prod(max(c) for c in a.chunks) for a in arrays)
        _grid.check_task_fits(
            chunk, workers, f"input {inp.index} ({inp.ds.attrs.get('name', '?')!r}): one Dask chunk of its "
            f"{len(arrays)} arrays", "open the inputs with smaller chunks (daskcal.open_images(chunks=...))")
    need, worst = 0, None
    for k, per_tile in parts.items():
        for t, part in per_tile.items():
            tile = tiles[t]
            cy0, cy1, cx0, cx1 = part.cut
            win = max(part.blocks, key=lambda b: b[1][2] * b[1][3])[1]
            n = _grid.tile_task_bytes((tile[1] - tile[0], tile[3] - tile[2]), psr, win[2:], (cy1 - cy0, cx1 - cx0))
            if n > need:
                need, worst = n, (k, t)
    tile = tiles[worst[1]]
    _grid.check_task_fits(
        need, workers, f"a resample tile task (tile of {tile[1] - tile[0]}x{tile[3] - tile[2]} px, input "
        f"{worst[0]})", "lower tile_shape (--tile-shape) or block_shape")


def drizzle_spec(p: ResampleParams, psr: float, var_weights: bool = False) -> _driz.DrizzleSpec:
    """The engine's typed spec of validated resample parameters at pixel scale ratio ``psr`` (``var_weights``:
    also output the variances' running weights, which adding inputs to the mosaic later needs)."""
    return _driz.DrizzleSpec(kernel=p.kernel, pixfrac=float(p.pixfrac), psr=float(psr), weight_type=p.weight_name,
                             good_bits=p.good_bits_int, enable_ctx=bool(p.enable_ctx), enable_var=bool(p.enable_var),
                             compute_err=p.compute_err, propagate_dq=bool(p.propagate_dq),
                             fillval=_parse_fillval(p.fillval), pixmap_order=int(p.pixmap_order),
                             var_weights=var_weights)


#: Inputs of a tile added one after the other in one chain of leaf tasks (each takes the chain's sums so
#: far and one input's chunks); a tile reached by more inputs has several chains, merged pairwise. A chain
#: holds one partial sum at a time: independent leaves all computed first would hold one each (measured:
#: workers spilling partial sums at pixel_scale_ratio=0.1).
CHAIN = 8

#: A tile's inputs are cut into chains of ``CHAIN`` only as far as the mosaic needs chains to keep workers
#: busy: at most ``ceil(PARALLEL_CHAINS / tiles reached)`` chains per tile. Every chain of a tile holds a
#: partial sum (a float64 tile: 68 MB at 1024^2 with variances) until their merge, so chains of ``CHAIN``
#: made the memory grow with the number of inputs (image3 of 32 x 2048^2, 9 tiles: 4 chains a tile, 5-6
#: partial sums per worker at its peak); with this bound it does not.
PARALLEL_CHAINS = 8

#: Dataset attribute of a mosaic: the ``[iy, ix]`` tiles that some input reaches (computed and written;
#: the others are the planes' fill values, and their chunks are not written).
WRITTEN_TILES = "tiles_written"


def _build_graph(inps, groups, parts, tiles, wcs_out, out_shape, tile_shape, p, psr, single, grow=None):
    """The mosaic (lazy); with ``grow`` (:class:`daskcal.image._grow.Growth`), the stored mosaic it names with
    ``inps`` added: tiles they reach start from its stored sums, the others are its stored tiles."""
    import dask
    import dask.array as da
    from dask.base import tokenize

    from dask.delayed import Delayed

    from daskcal.image._outliers import flagged_dq
    from daskcal.io._zarr_read import zarr_source

    spec = drizzle_spec(p, psr, var_weights=not single)
    text_out = wcs_to_text(wcs_out)
    var_present = {i.index: [n for n in VARIANCE_NAMES if n in i.ds] for i in inps}
    ys, xs = _tiles(out_shape, tile_shape)
    side = max(tile_shape) * psr  # input px across one tile

    # what each leaf task takes of each input: the chunks that hold its region, and constants
    entries: dict = {}  # tile index -> [(input index, _TileInput arguments, its chunks and coarse grid)]
    all_chunked, all_sources = [], []
    for inp in inps:
        names = ["data", "dq"]
        if spec.weight_type == "ivm" or "var_rnoise" in var_present[inp.index]:
            names.append("var_rnoise")
        if spec.enable_var:
            names += [n for n in var_present[inp.index] if n != "var_rnoise"]
        if spec.weight_type == "ivm-sky" and "var_sky" in inp.ds:
            names.append("var_sky")
        if spec.driz_err and "err" in inp.ds:
            names.append("err")
        # arrays daskcal reads from Zarr are read by the leaf tasks themselves, each its region: no input chunk is
        # held between tasks, and the leaves of a tile depend only on each other (measured at pixel_scale_ratio 0.1,
        # 8 inputs, 2 workers of 1.5 GiB: with chunk tasks, reads ran in Dask's order rather than the tiles' and
        # partial sums of tiles waiting for them piled up until the workers paused); stored chunks that several
        # tiles' regions share are decoded by each (~7 ms a leaf there, against ~150 ms of drizzling)
        # a DQ flag_outliers returned for a DQ read from Zarr is read the same way, its outliers (a small packed
        # mask, a dependency of the leaf) applied in the leaf
        sources, chunked, flags = {}, {}, []
        for n in names:
            if n in inp.ds:
                arr = _as_dask(inp.ds[n])
                source = zarr_source(arr)
                flagged = flagged_dq(arr) if source is None else None
                if source is not None:
                    sources[n] = source
                elif flagged is not None:
                    sources[n] = flagged
                    flags.append(Delayed(flagged.bits, arr.dask, layer=arr.name))  # the layer holds every task
                else:
                    chunked[n] = _Chunked.of(_split_chunks(arr, side))
        all_chunked += chunked.values()
        all_sources += sources.values()
        coarse = _coarse_grid(inp.wcs, wcs_out, inp, p.pixmap_stepsize, p.pixmap_order)
        coarse_d = [dask.delayed(coarse)] if coarse is not None else []
        # the tasks' pixel maps: the coarse grid, else the program the planning above compiled (or the WCS texts)
        mapping = None if coarse is not None else _driz.pixmap_source(inp.wcs, wcs_out, inp.ds.attrs["wcs_asdf"],
                                                                       text_out)
        for t, part in parts[inp.index].items():
            regions = {n: c.region(part.cut) for n, c in chunked.items()}
            args = (mapping, part, {n: [o for _, o in r] for n, r in regions.items()}, sources, bool(coarse_d), inp.level,
                    float(inp.ds.attrs["exposure_time"]), inp.tmeasure)
            deps = [d for r in regions.values() for d, _ in r] + coarse_d + flags
            entries.setdefault(t, []).append((inp.index, args, deps))

    # per tile (and exposure group): chains of leaf tasks, one per input that reaches it, the chains' partial
    # sums merged pairwise (so a tile reached by many inputs never holds all of them), and the tile's planes
    gkeys = list(groups)
    token = tokenize(text_out, [i.ds.attrs["wcs_asdf"] for i in inps], [c.blocks.ravel().tolist() for c in
                     all_chunked], all_sources, tiles, spec, p.pixmap_stepsize, single, sorted(groups.items(), key=str),
                     None if grow is None else grow.token)
    per_group = []
    written = set()
    for gpos, gid in enumerate(gkeys):
        members = groups[gid]
        pos_of = {k: pos for pos, k in enumerate(members)}
        reached = sum(1 for t in range(len(tiles)) if any(k in pos_of for k, _, _ in entries.get(t, [])))
        chains_per_tile = max(1, -(-PARALLEL_CHAINS // max(reached, 1)))
        nplanes = (len(members) - 1) // 32 + 1 if grow is None else grow.nplanes
        offset = 0 if grow is None else grow.ctx_offset  # context bits of the inputs already in the mosaic
        rows = []
        for iy in range(len(ys)):
            row = []
            for ix in range(len(xs)):
                t = iy * len(xs) + ix
                tile = tiles[t]
                mine = [(k, args, deps) for k, args, deps in entries.get(t, []) if k in pos_of]
                if not mine:
                    stored = grow is not None and grow.has(iy, ix)
                    if stored:
                        written.add((iy, ix))
                    row.append(("stored", None) if stored else ("empty", None))
                    continue
                written.add((iy, ix))
                key = f"resample-{token}-{gpos}-{t}"
                # priorities (distributed): a tile's later steps before other tiles' first ones, tiles in order,
                # so tiles are finished one after another instead of every tile's first partial sums held at once;
                # one stride for every tile (a tile's steps span less than 4 * (its inputs + 2)): strides of each
                # tile's own inputs had put tiles reached by few inputs before earlier tiles reached by many
                base = -(len(tiles) * gpos + t) * 4 * (len(inps) + 2)
                level, fin = [], None
                nchains = min(-(-len(mine) // CHAIN), chains_per_tile)
                length = -(-len(mine) // nchains)
                for c in range(0, len(mine), length):  # chains of inputs, then pairwise merges of the chains
                    seg = mine[c:c + length]
                    ins = [_TileInput(*args, pos_of[k] + offset if spec.enable_ctx else None) for k, args, _ in seg]
                    one_task = all(not any(i.chunks.values()) for i in ins)
                    # the stored sums a grown tile starts from (its first chain): read by the chain's task where that
                    # is one task, else by a task of their own
                    sums = None if grow is None or c > 0 else grow.prior(iy, ix, tile, nplanes, spec, key,
                                                                          in_task=one_task)
                    if one_task:
                        # every input reads its region itself: the chain is one task (see _chain_task), which
                        # also gives the tile's planes when it is the tile's only chain
                        whole = nchains == 1
                        with dask.annotate(priority=base + (2 * len(mine) + 2 if whole else c + len(seg))):
                            sums = dask.delayed(_chain_task)(ins, [deps for _, _, deps in seg], tile,
                                                             nplanes, spec, sums, finalize=whole,
                                                             dask_key_name=f"{key}-tile" if whole else
                                                             f"{key}-chain-{seg[0][0]}")
                        if whole:
                            fin = sums
                            continue
                    else:
                        for step, ((k, _, deps), inp_t) in enumerate(zip(seg, ins, strict=True)):
                            with dask.annotate(priority=base + c + step + 1):
                                sums = dask.delayed(_leaf_task)(inp_t, deps, tile, nplanes, spec, sums,
                                                                dask_key_name=f"{key}-leaf-{k}")
                    level.append(sums)
                if fin is None:
                    depth = 0
                    while len(level) > 1:
                        depth += 1
                        with dask.annotate(priority=base + len(mine) + depth):
                            level = [dask.delayed(_merge_task)(*level[j:j + 2],
                                                               dask_key_name=f"{key}-merge-{depth}-{j}")
                                     if j + 1 < len(level) else level[j] for j in range(0, len(level), 2)]
                    with dask.annotate(priority=base + 2 * len(mine) + 2):
                        fin = dask.delayed(_finalize_task)(level[0], tile, nplanes, spec, dask_key_name=f"{key}-tile")
                row.append(("tile", fin))
            rows.append(row)
        per_group.append((nplanes, rows))

    # the tiles' tasks in one layer, each plane of each group in one more (see _one_layer)
    fins = [ref for _, rows in per_group for row in rows for kind, ref in row if kind == "tile"]
    tasks = _one_layer(fins, f"resample-{token}-") if fins else None
    sizes = (tuple(np.diff([*ys, out_shape[0]]).tolist()), tuple(np.diff([*xs, out_shape[1]]).tolist()))
    data_vars = {}
    max_planes = max(n for n, _ in per_group)
    # one mosaic built here (not grown from a stored one): daskcal.save writes each tile's planes straight from
    # the tile's task (see _tile_planes); a plane's own chunks stay tasks that pick it from there
    whole_tiles = None
    if not single and grow is None:
        whole_tiles = _tile_planes(f"resample-tiles-{token}", per_group[0][1], tasks, sizes, per_group[0][0], spec)
    for name in _driz.output_names(spec):
        stacks = []
        for gpos, (nplanes, rows) in enumerate(per_group):
            arr = _plane(f"resample-{name}-{token}-{gpos}", name, rows, tasks, sizes, nplanes, spec, grow)
            if whole_tiles is not None:
                register_slice(arr, whole_tiles, name, arr.dtype)
            if name == "con" and nplanes < max_planes:
                pad = da.zeros((max_planes - nplanes, *out_shape), np.int32, chunks=(1, *tile_shape))
                arr = da.concatenate([arr, pad], axis=0)
            stacks.append(arr)
        dims = ("plane", "y", "x") if name == "con" else ("y", "x")
        if single:
            data_vars[name] = (("group", *dims), da.stack(stacks))
        else:
            data_vars[name] = (dims, stacks[0])
    coords = {"group": [str(g) for g in gkeys]} if single else {}
    ds = xr.Dataset(data_vars, coords=coords)
    if not single:
        _declare_sparse(ds, spec, sorted(written))
    return ds


@functools.lru_cache(maxsize=1)
def _zarr_fill_value_encoding() -> bool:
    """Whether this xarray's ``to_zarr`` takes a ``fill_value`` encoding (xarray 2025.1 does not)."""
    from xarray.backends.zarr import extract_zarr_variable_encoding

    probe = xr.Variable(("x",), np.zeros(1, np.float32), encoding={"fill_value": 0.0})
    try:
        enc = extract_zarr_variable_encoding(probe, raise_on_invalid=True, zarr_format=3)
    except (TypeError, ValueError):
        return False
    return enc.get("fill_value") == 0.0


def _declare_sparse(ds, spec, written) -> None:
    """Give each plane its fill value (Zarr ``fill_value``) and record the tiles that are written.

    Tiles no input reaches are each plane's fill value everywhere: :func:`daskcal.save` and the
    command line do not write their chunks (:data:`WRITTEN_TILES`), and daskcal's reader takes
    a missing chunk of a written tile for damage and one of another tile for the fill value.
    """
    from daskcal.io._zarr_read import SPARSE_ATTR, WRITTEN_ATTR

    if not _zarr_fill_value_encoding():
        log.info("xarray %s cannot set a Zarr array's fill_value: every tile of the mosaic is written",
                 xr.__version__)
        return
    for name in ds.data_vars:
        ds[name].encoding["fill_value"] = _driz.empty_value(name, spec).item()
        ds[name].attrs[SPARSE_ATTR] = True
        ds[name].attrs[WRITTEN_ATTR] = [list(t) for t in written]
    ds.attrs[WRITTEN_TILES] = len(written)


def _touches(window, tile):
    oy, ox, wy, wx = window
    return oy < tile[1] and oy + wy > tile[0] and ox < tile[3] and ox + wx > tile[2]


class _KeyPriority(dict):
    """Task priorities by key, as a layer annotation (a callable of the key: dask evaluates it per key)."""

    def __call__(self, key):
        return self.get(key, 0)


def _one_layer(fins: list, prefix: str):
    """The graph of the tiles' last tasks ``fins`` (Delayed) with every task whose key starts with ``prefix``
    (the tiles' chains, merges, stored sums and finalizes) in one layer, their priorities kept per key; a
    collection of it (a Delayed whose ``__dask_layers__`` is that layer).

    Each ``dask.delayed`` call is a graph layer of its own, and dask culls a graph layer by layer, each layer's
    pass going over every key needed so far: quadratic in the number of layers. A mosaic of 38016x35662 in
    1024^2 tiles (8 inputs at pixel_scale_ratio 0.1) had 24,759 layers (two per chain and fourteen per
    tile with the tiles' planes) and spent 14.2 s in culling before its first task (6,716 layers: 0.9 s;
    12,949: 3.8 s).
    """
    from dask.delayed import Delayed
    from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

    graph = HighLevelGraph.merge(*(f.__dask_graph__() for f in fins))
    mapping, priority, needs = {}, _KeyPriority(), set()
    layers, dependencies = {}, {}
    ours = {n for n in graph.layers if isinstance(n, str) and n.startswith(prefix)}
    for lname, layer in graph.layers.items():
        if lname not in ours:
            layers[lname], dependencies[lname] = layer, graph.dependencies[lname]
            continue
        mapping.update(layer)
        value = (layer.annotations or {}).get("priority")
        if value is not None:
            priority.update((k, value(k) if callable(value) else value) for k in layer)
        needs |= graph.dependencies[lname]
    name = f"{prefix}tiles"
    layers[name] = MaterializedLayer(mapping, annotations={"priority": priority} if priority else None)
    dependencies[name] = needs - ours
    return Delayed(fins[0].key, HighLevelGraph(layers, dependencies), layer=name)


class _Ref:
    """An argument of :func:`graph_task` that is the result of the task ``key``."""

    __slots__ = ("key",)

    def __init__(self, key):
        self.key = key


def graph_task(key, func, *args):
    """The graph task ``key``: ``func(*args)``, where a :class:`_Ref` argument is that task's result; a
    ``dask._task_spec.Task`` where dask has them (2024.12 and later), else the tuple form older dask reads."""
    try:
        from dask._task_spec import Task, TaskRef
    except ImportError:  # dask before 2024.12: (func, *args), a key among the arguments is its task's result
        return (func, *(a.key if isinstance(a, _Ref) else a for a in args))
    return Task(key, func, *(TaskRef(a.key) if isinstance(a, _Ref) else a for a in args))


def _plane(name: str, plane: str, rows, tasks, sizes, nplanes: int, spec, grow):
    """The output plane ``plane`` of one group as a dask array of one layer ``name``: its chunks (tiles) are
    ``plane`` of a tile's planes (``rows[iy][ix]`` is ``("tile", Delayed)``, a task of ``tasks``), the
    empty value (``("empty", None)``) or the stored mosaic's tile (``("stored", None)``, :class:`Growth`)."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    dtype = _driz.EMPTY[plane][0]
    lead = (0,) if plane == "con" else ()
    dsk, stored = {}, []
    for iy, row in enumerate(rows):
        for ix, (kind, ref) in enumerate(row):
            key = (name, *lead, iy, ix)
            if kind == "tile":
                dsk[key] = graph_task(key, _pick, _Ref(ref.key), plane)
            elif kind == "empty":
                shape = (*((nplanes,) if lead else ()), sizes[0][iy], sizes[1][ix])
                dsk[key] = graph_task(key, _full, shape, _driz.empty_value(plane, spec), np.dtype(dtype).str)
            else:
                dsk[key], whole = grow.stored_task(key, iy, ix, plane)
                stored.append(whole)
    deps = ([tasks] if tasks is not None else []) + list({id(w): w for w in stored}.values())
    chunks = (*(((nplanes,),) if lead else ()), *sizes)
    return da.Array(HighLevelGraph.from_collections(name, dsk, dependencies=deps), name, chunks, dtype=dtype)


def _tile_planes(name: str, rows, tasks, sizes, nplanes: int, spec):
    """The tiles' planes (a ``{plane: array}`` per tile) as one dask array of layer ``name`` (chunked as the
    tiles; dtype float32 only in name), each plane of the mosaic registered as a slice of it
    (:func:`daskcal.io._zarr_write.register_slice`), so that ``daskcal.save``'s write task of a tile takes the
    tile's task whole. Through the planes' own chunks, each tile cost one more task per plane (ten with
    variances): 613 tasks instead of 176 for 8 x 2048^2 in 56 tiles, and distributed spends about a millisecond
    of scheduler and worker time on each."""
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph

    dsk = {}
    for iy, row in enumerate(rows):
        for ix, (kind, ref) in enumerate(row):
            key = (name, iy, ix)
            if kind == "tile":
                dsk[key] = graph_task(key, _same, _Ref(ref.key))
            else:  # no input reaches it: the write task skips it (a sparse mosaic); its planes, if asked
                dsk[key] = graph_task(key, _empty_planes, (sizes[0][iy], sizes[1][ix]), nplanes, spec)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[tasks] if tasks is not None else [])
    return da.Array(graph, name, sizes, dtype=np.float32)


def _same(d):
    return d


def _empty_planes(tshape, nplanes: int, spec) -> dict:
    return {n: _driz._empty_plane(n, tshape, nplanes, spec) for n in _driz.output_names(spec)}


def _pick(d, name):
    return d[name]


def _full(shape, value, dtype: str):
    return np.full(shape, value, dtype)


@dataclasses.dataclass(frozen=True)
class _Chunked:
    """A 2-D dask array as its chunks (one delayed object each) and the chunks' edges."""

    blocks: np.ndarray  # of Delayed, (nby, nbx)
    ys: np.ndarray  # chunk edges, nby + 1
    xs: np.ndarray

    @classmethod
    def of(cls, arr):
        return cls(arr.to_delayed(optimize_graph=False), np.cumsum((0, *arr.chunks[0])),
                   np.cumsum((0, *arr.chunks[1])))

    def region(self, cut):
        """The chunks that hold ``cut`` (y0, y1, x0, x1) with their origins, for :func:`_assemble`."""
        y0, y1, x0, x1 = cut
        iy = np.flatnonzero((self.ys[:-1] < y1) & (self.ys[1:] > y0)).tolist()
        ix = np.flatnonzero((self.xs[:-1] < x1) & (self.xs[1:] > x0)).tolist()
        return [(self.blocks[i, j], (int(self.ys[i]), int(self.xs[j]))) for i in iy for j in ix]


def _assemble(chunks, cut):
    """The region ``cut`` (y0, y1, x0, x1) of an array from the chunks that hold it (a view if one does)."""
    y0, y1, x0, x1 = cut
    if len(chunks) == 1:
        block, (oy, ox) = chunks[0]
        return np.asarray(block)[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    out = None
    for block, (oy, ox) in chunks:
        block = np.asarray(block)
        if out is None:
            out = np.empty((y1 - y0, x1 - x0), block.dtype)
        sy0, sx0 = max(y0, oy), max(x0, ox)
        sy1, sx1 = min(y1, oy + block.shape[0]), min(x1, ox + block.shape[1])
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = block[sy0 - oy:sy1 - oy, sx0 - ox:sx1 - ox]
    return out


def _split_chunks(arr, side: float):
    """``arr`` (an input array daskcal does not read from Zarr itself) with its chunks cut to about ``side``
    px (kept where they are about that or smaller).

    A leaf task takes the chunks that hold its input region, about one tile's extent on the input (``side``),
    and Dask holds a chunk until every leaf that takes it has run. At small pixel scale ratios one input chunk
    would feed tens of tiles, whose chains of partial sums (84 MB per 1024^2 tile) would all be started
    before any could finish. Cut to the tile's extent, a chunk feeds a few neighbouring tiles.
    """
    side = max(64, int(side))

    def cuts(chunks):
        out = []
        for c in chunks:
            k = max(1, round(c / side))
            out += np.diff(np.linspace(0, c, k + 1).round().astype(int)).tolist()
        return tuple(out)

    new = tuple(cuts(c) for c in arr.chunks)
    return arr if new == arr.chunks else arr.rechunk(new)


def _as_dask(var):
    import dask.array as da

    d = var.data
    if isinstance(d, da.Array):
        return d
    return da.from_array(np.asarray(d), chunks=-1)


_DEFAULTS = _defaults()
