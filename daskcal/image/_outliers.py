"""Outlier (cosmic-ray) detection in dithered exposures: the image-stage step 4.

With ``resample_data=True`` (the default, as in the reference), every exposure
group is drizzled alone onto the output grid and written, tile by tile, into a
sparse Zarr stack in a temporary directory (chunks no group touches are never
written). Each output tile's median reads only the layers of the groups that
overlap it. The median mosaic is blotted back onto each input's own grid and
compared with it (:func:`~daskcal.image._outlier_kernels.flag_resampled_crs`);
outliers get ``OUTLIER | DO_NOT_USE`` in a new DQ array.

With ``resample_data=False`` the median is taken of the inputs on their common
grid and compared with :func:`~daskcal.image._outlier_kernels.flag_crs`.

Everything is lazy: :func:`flag_outliers` returns new datasets whose ``dq`` is a
dask array and a dask-backed median mosaic; nothing runs until the caller
computes or saves them, with the scheduler of the caller's choosing.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Sequence

import numpy as np
import xarray as xr

from daskcal._params import param
from daskcal.image import _outlier_blocks as blocks
from daskcal.image._dataset import keeps_parsed_wcs
from daskcal.image._driz import KERNELS, WEIGHT_TYPES, pixmap_source
from daskcal.image._grid import _bbox
from daskcal.io._zarr_read import SPARSE_ATTR, ArrayNotes, read_task

log = logging.getLogger(__name__)

__all__ = ["flag_outliers", "OutlierResult", "OutlierParameters", "parse_pair"]

#: Default memory budget (bytes) of one tile's stack of layers in a median task.
DEFAULT_BUFFER_SIZE = 256 * 2**20
#: Default output tile (rows, columns).
DEFAULT_TILE = (1024, 1024)
#: Default input rows per drizzle/blot task.
DEFAULT_BLOCK_ROWS = 512
_KERNELS = KERNELS
_WEIGHT_TYPES = (*WEIGHT_TYPES, None)


def parse_pair(value, name):
    """Two floats from ``"5.0 4.0"`` (spaces or commas) or a pair of numbers.

    Raises
    ------
    ValueError
        When ``value`` is not exactly two finite numbers.
    """
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\s,]+", value.strip()) if p]
    elif isinstance(value, Sequence) or isinstance(value, np.ndarray):
        parts = list(value)
    else:
        parts = [value]
    try:
        nums = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        nums = ()
    if len(nums) != 2 or not all(math.isfinite(v) for v in nums):
        msg = f"{name} must be two numbers such as '5.0 4.0'; got {value!r}"
        raise ValueError(msg)
    return nums


@dataclasses.dataclass(frozen=True)
class OutlierParameters:
    """Validated parameters of :func:`flag_outliers` (see there for meanings)."""

    snr: str | tuple[float, float] = param(
        "5.0 4.0", "detection thresholds before and after growing the mask by its 3x3 neighbourhood "
        "(resample_data=False: the first)", "sigma")
    scale: str | tuple[float, float] = param(
        "1.2 0.7", "multipliers of the blotted median's absolute derivative added to the two thresholds")
    backg: float = param(0.0, "background subtracted from each difference", "unit of data")
    maskpt: float = param(0.7, "resampled pixels with weight below maskpt x their group's mean weight are left "
                          "out of the median")
    kernel: str = param("square", "drizzle kernel: " + ", ".join(KERNELS))
    pixfrac: float = param(1.0, "drizzle pixel shrink factor, (0, 1]")
    fillval: str = param("NaN", "value of resampled pixels no input covers (NaN, INDEF or a number)")
    weight_type: str | None = param("ivm", "drizzle weights: ivm (1/var_rnoise), exptime or none",
                                    cli={"choices": ["ivm", "exptime", "none"]})
    good_bits: object = param("~DO_NOT_USE", "DQ bits still counted as good (astropy bitmask syntax, JWST names)")
    resample_data: bool = param(
        True, "median of the single-drizzled groups on the output grid (false: of the inputs on their own grid)",
        cli={"flag": "--no-resample",
             "help": "take the median on the inputs' own grid (all inputs of one shape)"})
    in_memory: bool = param(False, "hold every tile's stack in memory, whatever buffer_size")
    buffer_size: int | None = param(
        None, "memory budget of one median task; larger stacks go through an on-disk buffer", "bytes",
        derived="256 MiB", example=DEFAULT_BUFFER_SIZE,
        cli={"type": float, "help": "memory budget of one median task in MB (default 256)"})
    tile_shape: tuple[int, int] | None = param(
        None, "output tile (rows, columns): Zarr chunk of the stack and median block", "px",
        derived="1024 x 1024", example=DEFAULT_TILE, cli={"type": int, "nargs": 2, "metavar": ("TY", "TX")})
    block_rows: int | None = param(None, "input rows per drizzle and blot task", "px", derived="512",
                                   python_only=True)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "snr", parse_pair(self.snr, "snr"))
        set_(self, "scale", parse_pair(self.scale, "scale"))
        if min(self.snr) < 0 or min(self.scale) < 0:
            msg = f"snr and scale must be non-negative; got snr={self.snr}, scale={self.scale}"
            raise ValueError(msg)
        for name in ("backg", "maskpt", "pixfrac"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
                msg = f"{name} must be a finite number; got {v!r}"
                raise ValueError(msg)
            set_(self, name, float(v))
        if not 0.0 <= self.maskpt <= 1.0:
            msg = f"maskpt must be in [0, 1]; got {self.maskpt}"
            raise ValueError(msg)
        if not 0.0 < self.pixfrac <= 1.0:
            msg = f"pixfrac must be in (0, 1]; got {self.pixfrac}"
            raise ValueError(msg)
        if self.kernel not in _KERNELS:
            msg = f"kernel must be one of {_KERNELS}; got {self.kernel!r}"
            raise ValueError(msg)
        if self.weight_type not in _WEIGHT_TYPES:
            msg = f"weight_type must be one of {_WEIGHT_TYPES}; got {self.weight_type!r}"
            raise ValueError(msg)
        fv = str(self.fillval).strip()
        if fv.upper() not in ("NAN", "INDEF", ""):
            try:
                float(fv)
            except ValueError:
                msg = f"fillval must be 'NaN', 'INDEF' or a number; got {self.fillval!r}"
                raise ValueError(msg) from None
        set_(self, "fillval", fv)
        from astropy.nddata.bitmask import interpret_bit_flags

        from daskcal.dq import dq_dict

        try:
            interpret_bit_flags(self.good_bits, flag_name_map=dq_dict())
        except (ValueError, TypeError, KeyError) as exc:
            msg = f"good_bits {self.good_bits!r} is not a valid bit-flag expression: {exc}"
            raise ValueError(msg) from None
        if self.buffer_size is None:
            set_(self, "buffer_size", DEFAULT_BUFFER_SIZE)
        if isinstance(self.buffer_size, bool) or not isinstance(self.buffer_size, (int, np.integer)) or self.buffer_size <= 0:
            msg = f"buffer_size must be a positive number of bytes; got {self.buffer_size!r}"
            raise ValueError(msg)
        set_(self, "buffer_size", int(self.buffer_size))
        ts = DEFAULT_TILE if self.tile_shape is None else self.tile_shape
        if np.ndim(ts) == 0:
            ts = (ts, ts)
        ts = tuple(int(t) for t in ts)
        if len(ts) != 2 or min(ts) < 1:
            msg = f"tile_shape must be two positive integers (rows, columns); got {self.tile_shape!r}"
            raise ValueError(msg)
        set_(self, "tile_shape", ts)
        br = DEFAULT_BLOCK_ROWS if self.block_rows is None else self.block_rows
        if isinstance(br, bool) or not isinstance(br, (int, np.integer)) or br < 1:
            msg = f"block_rows must be a positive integer; got {self.block_rows!r}"
            raise ValueError(msg)
        set_(self, "block_rows", int(br))
        set_(self, "resample_data", bool(self.resample_data))
        set_(self, "in_memory", bool(self.in_memory))

    @property
    def fill_value(self) -> float:
        """``fillval`` as a float (NaN for ``"NaN"``/``"INDEF"``)."""
        return np.nan if self.fillval.upper() in ("NAN", "INDEF", "") else float(self.fillval)


@dataclasses.dataclass
class OutlierResult:
    """Result of :func:`flag_outliers`.

    Attributes
    ----------
    images : list of xarray.Dataset
        New datasets, one per input and in input order, equal to the inputs but
        for ``dq`` (a lazy uint32 array with ``OUTLIER | DO_NOT_USE`` added).
    median : xarray.DataArray
        Lazy median mosaic (float32; the unit of the data) on ``(y, x)`` of the
        output grid (``resample_data=True``) or of the inputs' grid, with the WCS
        as ASDF text in ``attrs["wcs_asdf"]``. Named ``data``, the variable of
        every image and mosaic store, so that its ``to_dataset()`` has a ``data``
        variable (a variable called ``median`` is hidden by ``Dataset.median``).
    tempdir : object or None
        Holds the Zarr stack the lazy results read (path in ``tempdir.name``).
        It is removed by :meth:`cleanup` or at interpreter exit; compute or save
        what you need first.
    """

    images: list
    median: xr.DataArray
    tempdir: object = None

    def cleanup(self) -> None:
        """Remove the temporary stack; the lazy arrays cannot be computed afterwards."""
        if self.tempdir is not None:
            self.tempdir.cleanup()
            self.tempdir = None


@keeps_parsed_wcs
def flag_outliers(
    images,
    *,
    snr="5.0 4.0",
    scale="1.2 0.7",
    backg=0.0,
    maskpt=0.7,
    kernel="square",
    pixfrac=1.0,
    fillval="NaN",
    weight_type="ivm",
    good_bits="~DO_NOT_USE",
    resample_data=True,
    in_memory=False,
    buffer_size=None,
    tile_shape=None,
    tempdir=None,
    output_wcs=None,
    block_rows=None,
) -> OutlierResult:
    """Flag outliers (cosmic rays) by comparing each exposure with the median of all.

    Parameters
    ----------
    images : sequence of xarray.Dataset
        Calibrated exposures (:func:`daskcal.image_dataset`) with ``data``,
        ``err`` (total error, unit of data), ``dq``, optionally ``var_rnoise``,
        a WCS and a ``group_id`` attribute. Not modified. Every other argument is
        keyword-only.
    snr : str or (float, float), default "5.0 4.0"
        Detection thresholds (units of ``err``) before and after growing the
        mask by its 3x3 neighbourhood; ``resample_data=False`` uses the first.
    scale : str or (float, float), default "1.2 0.7"
        Multipliers of the blotted median's absolute derivative added to the
        two thresholds.
    backg : float, default 0.0
        Background (unit of data) subtracted from each difference.
    maskpt : float, default 0.7
        Resampled pixels with weight below ``maskpt`` times their group's mean
        (3-sigma-clipped) weight are left out of the median.
    kernel : str, default "square"
        Drizzle kernel ("square", "point", "turbo", "gaussian", "lanczos2", "lanczos3").
    pixfrac : float, default 1.0
        Drizzle pixel shrink factor, in (0, 1].
    fillval : str, default "NaN"
        Value of resampled pixels that receive no input ("NaN", "INDEF" or a number).
    weight_type : {"ivm", "ivm-sky", "exptime", "none", None}, default "ivm"
        Drizzle weights: inverse read-noise (or sky) variance, measurement time (s), or 1
        (as :func:`daskcal.resample`).
    good_bits : str or int, default "~DO_NOT_USE"
        DQ bits that still count as good (astropy bitmask syntax, JWST names).
    resample_data : bool, default True
        Median of the single-drizzled groups on the output grid (True) or of the
        inputs on their own (common) grid (False).
    in_memory : bool, default False
        Always hold a tile's stack in memory, whatever ``buffer_size``.
    buffer_size : int, optional
        Memory budget (bytes) of one median task's stack; larger stacks go
        through an on-disk median buffer of this size. Default 256 MiB.
    tile_shape : (int, int), optional
        Output tile (rows, columns): Zarr chunk of the stack and median block.
        Default (1024, 1024).
    tempdir : str or path-like, optional
        Parent of the temporary directory holding the stack (system default
        when None). It must be visible to every Dask worker.
    output_wcs : gwcs.WCS or str, optional
        Output grid (a gwcs or an ASDF file with a ``wcs`` key); default the
        grid :func:`daskcal.output_wcs` builds from the inputs.
    block_rows : int, optional
        Input rows per drizzle and blot task (default 512): each input is cut
        into row blocks whose pixel map is computed once and used by both.
        The drizzled blocks add as weighted sums, so the result does not depend
        on it beyond float32 rounding.

    Returns
    -------
    OutlierResult
        ``images`` (new datasets with lazy ``dq``), ``median`` (lazy mosaic)
        and the temporary directory they read from.

    Raises
    ------
    ValueError
        Fewer than two exposure groups (two images without resampling), images
        without a WCS, inconsistent shapes, malformed parameters.
    """
    buffer_size = DEFAULT_BUFFER_SIZE if buffer_size is None else buffer_size
    params = OutlierParameters(
        snr=snr, scale=scale, backg=backg, maskpt=maskpt, kernel=kernel, pixfrac=pixfrac, fillval=fillval,
        weight_type=weight_type, good_bits=good_bits, resample_data=resample_data, in_memory=in_memory,
        buffer_size=buffer_size, tile_shape=tile_shape, block_rows=block_rows,
    )
    images = _check_images(images)
    from daskcal.image._checks import warn_unusable_inputs

    warn_unusable_inputs(images, good_bits=params.good_bits, weight_type=params.weight_type, product="the median")
    if params.resample_data:
        return _flag_resampled(images, params, tempdir, output_wcs)
    return _flag_unresampled(images, params)


# -- input checks ---------------------------------------------------------------
def _check_images(images):
    from daskcal.image._dataset import get_wcs

    if isinstance(images, xr.Dataset):
        msg = "images must be a sequence of datasets, not one dataset"
        raise TypeError(msg)
    images = list(images)
    for k, ds in enumerate(images):
        if not isinstance(ds, xr.Dataset):
            msg = f"images[{k}] must be an xarray.Dataset; got {type(ds).__name__}"
            raise TypeError(msg)
        missing = [v for v in ("data", "err", "dq") if v not in ds]
        if missing:
            msg = f"images[{k}] ({ds.attrs.get('name', '?')!r}) lacks {missing}; outlier detection needs data, err and dq"
            raise ValueError(msg)
        get_wcs(ds)  # raises a clear ValueError when missing
        if ds["data"].ndim != 2:
            msg = f"images[{k}] data must be 2-D (y, x); got dims {ds['data'].dims}"
            raise ValueError(msg)
    return images


def _group_ids(images):
    ids = []
    for k, ds in enumerate(images):
        g = ds.attrs.get("group_id")
        ids.append(str(g) if g is not None else str(ds.attrs.get("name", k)))
    return ids


def _blocks(x):
    """Hand a dask array to a delayed task as its blocks (nested lists), without a re-keyed copy.

    Passing a dask array itself to ``dask.delayed`` optimises and renames its graph,
    so work shared with other outputs (the single drizzles behind the median) would
    run again for every task that receives it.
    """
    import dask.array as da

    if isinstance(x, da.Array):
        return x.to_delayed(optimize_graph=False).tolist()
    return x


def _member(ds):
    exptime = ds.attrs.get("measurement_time") or ds.attrs.get("exposure_time", 1.0)
    return {
        "data": _blocks(ds["data"].data),
        "dq": _blocks(ds["dq"].data),
        "var_rnoise": _blocks(ds["var_rnoise"].data) if "var_rnoise" in ds else None,
        "wcs": ds.attrs["wcs_asdf"],
        "exptime": float(exptime),
    }


class _Chunks:
    """A 2-D array cut into windows for tasks, by reference to its chunks' keys.

    A window is handed to a task as the chunks it overlaps plus its box inside
    them (see :func:`~daskcal.image._outlier_blocks.assemble`). A numpy array is
    sliced.
    """

    def __init__(self, x, keys=None, graph=None):
        import dask.array as da

        from daskcal.io._zarr_read import zarr_source

        self.dask = isinstance(x, da.Array)
        # An array exactly as read from Zarr: each task reads its own window (no read tasks, no dependency).
        # As chunks of read tasks, an exposure's data, dq and variances were read for its single drizzle and
        # held until its flags could be computed, after the median of every exposure: memory grew with the
        # number of exposures (32 x 2048^2: ~80 chunks of each per worker).
        self.source = zarr_source(x) if self.dask and keys is None else None
        if self.dask and self.source is None:
            self.keys = keys if keys is not None else x.__dask_keys__()
            self.ys = np.cumsum((0, *x.chunks[0]))
            self.xs = np.cumsum((0, *x.chunks[1]))
            if keys is None and graph is not None:
                graph.depend(x)
        self.x = x
        self.shape = x.shape

    def window(self, y0=0, y1=None, x0=0, x1=None):
        y1 = self.shape[0] if y1 is None else y1
        x1 = self.shape[1] if x1 is None else x1
        if self.source is not None:
            return (read_task, self.source, (slice(y0, y1), slice(x0, x1)))
        if not self.dask:
            return self.x[y0:y1, x0:x1]
        i0 = int(np.searchsorted(self.ys, y0, side="right")) - 1
        i1 = int(np.searchsorted(self.ys, y1, side="left"))
        j0 = int(np.searchsorted(self.xs, x0, side="right")) - 1
        j1 = int(np.searchsorted(self.xs, x1, side="left"))
        box = (y0 - int(self.ys[i0]), y1 - int(self.ys[i0]), x0 - int(self.xs[j0]), x1 - int(self.xs[j0]))
        chunks = [list(row[j0:j1]) for row in self.keys[i0:i1]]
        return (dict, [["chunks", chunks], ["box", box]])  # a task: dask fills in the chunks


def _new_dataset(ds, dq):
    new = ds.copy(deep=False)
    new["dq"] = (ds["dq"].dims, dq)
    new["dq"].attrs.update(ds["dq"].attrs)
    new.attrs = dict(ds.attrs)
    return new


# -- resample_data=True ----------------------------------------------------------
class _StackDirectory:
    """A temporary directory removed by ``cleanup()`` or at interpreter exit (not on GC).

    The lazy results read the stack after :func:`flag_outliers` returns, so the
    directory must outlive any reference the caller keeps to the result object.
    """

    def __init__(self, parent):
        import atexit

        from daskcal.io._atomic import temporary_directory

        self._dir = temporary_directory(parent, prefix="daskcal-outliers-")  # removed by a later run if we are killed
        self.name = self._dir.name
        atexit.register(self.cleanup)

    def cleanup(self):
        self._dir.cleanup()

    def __repr__(self):
        return f"<stack directory {self.name}>"


def _tiles_of(window, tile_shape, out_shape):
    y0, y1, x0, x1 = window
    ty, tx = tile_shape
    out = []
    for i in range(y0 // ty, (y1 - 1) // ty + 1):
        for j in range(x0 // tx, (x1 - 1) // tx + 1):
            out.append((i, j))
    return out


def _tile_box(i, j, tile_shape, out_shape):
    ty, tx = tile_shape
    return (i * ty, min((i + 1) * ty, out_shape[0]), j * tx, min((j + 1) * tx, out_shape[1]))


def _flag_resampled(images, params, tempdir, output_wcs_arg):
    import dask
    import zarr

    from daskcal.image._dataset import get_wcs, wcs_to_text
    from daskcal.image._grid import resolve_output_wcs
    ids = _group_ids(images)
    groups = list(dict.fromkeys(ids))
    if len(groups) < 2:
        msg = f"outlier detection with resampling needs at least 2 exposure groups (group_id); got {len(groups)}: {groups}"
        raise ValueError(msg)
    out_wcs = resolve_output_wcs(images, output_wcs_arg)
    out_shape = tuple(int(s) for s in out_wcs.array_shape)
    out_text = wcs_to_text(out_wcs)
    tile_shape = (min(params.tile_shape[0], out_shape[0]), min(params.tile_shape[1], out_shape[1]))
    margin = 3 + math.ceil(2 * params.pixfrac)

    tmp = _StackDirectory(tempdir)
    store = os.path.join(tmp.name, "single.zarr")
    # sparse on purpose: chunks no group touches are never written and read as NaN (declared, see
    # daskcal.io._zarr_read; the median tasks read it through zarr-python)
    zarr.create_array(
        store=store, shape=(len(groups), *out_shape), chunks=(1, *tile_shape), dtype="float32",
        fill_value=np.nan, zarr_format=3, config={"write_empty_chunks": False},
        compressors=None,  # a short-lived local scratch stack: raw chunks write and read fastest
        attributes={SPARSE_ATTR: True},
    )
    token = dask.base.tokenize(out_text, params, [ds.attrs.get("name") for ds in images], store)

    graph = _TaskGraph()
    # 1. per input block: one pixel map (kept for the blot), one drizzle into its window
    plans = [_plan_input(graph, k, ds, get_wcs(ds), out_wcs, out_text, out_shape, margin, params, token)
             for k, ds in enumerate(images)]

    # 2. per group: merge the block windows, mask low weights, write the group's layer
    group_tasks, group_tiles = [], []
    for gi, g in enumerate(groups):
        parts = [b for k, gid in enumerate(ids) if gid == g for b in plans[k].blocks]
        if not parts:
            group_tasks.append(None)
            group_tiles.append(set())
            continue
        ws = [b.window for b in parts]
        window = (min(w[0] for w in ws), max(w[1] for w in ws), min(w[2] for w in ws), max(w[3] for w in ws))
        tij = _tiles_of(window, tile_shape, out_shape)
        group_tiles.append(set(tij))
        # a group of one block drizzles inside its merge task (no window handed from task to task); else each
        # block is a task of its own
        drizzled = ([parts[0].drizzled] if len(parts) == 1 else
                    [graph.add(f"outlier-drizzle-{token}-{b.key}", *b.drizzled) for b in parts])
        group_tasks.append(graph.add(
            f"outlier-single-merge-{token}-{gi}", blocks.merge_group,
            drizzled, window, params, gi, store,
            [_tile_box(i, j, tile_shape, out_shape) for i, j in tij],
        ))

    # 3. per output tile: median of the layers that overlap it
    median_name = f"outlier-median-{token}"
    nty, ntx = math.ceil(out_shape[0] / tile_shape[0]), math.ceil(out_shape[1] / tile_shape[1])
    median_keys = []
    for i in range(nty):
        row = []
        for j in range(ntx):
            box = _tile_box(i, j, tile_shape, out_shape)
            layers = [gi for gi in range(len(groups)) if (i, j) in group_tiles[gi]]
            deps = [group_tasks[gi] for gi in layers]
            row.append(graph.add((median_name, i, j), blocks.median_tile,
                                 store, box, layers, params.buffer_size, params.in_memory, tmp.name, *deps))
        median_keys.append(row)
    chunks = (tuple(_tile_box(i, 0, tile_shape, out_shape)[1] - i * tile_shape[0] for i in range(nty)),
              tuple(_tile_box(0, j, tile_shape, out_shape)[3] - j * tile_shape[1] for j in range(ntx)))
    median = graph.array(median_name, chunks, np.float32)
    unit = images[0]["data"].attrs.get("units", images[0].attrs.get("bunit_data"))
    median_da = xr.DataArray(median, dims=("y", "x"), name="data", attrs={"wcs_asdf": out_text, "unit": unit})
    med_chunks = _Chunks(median, keys=median_keys, graph=graph)

    # 4. per input block: blot the median window under it with the block's pixel map; flag per input
    new_images = []
    for k, ds in enumerate(images):
        plan = plans[k]
        blots = []
        for b in plan.all_blocks:
            if b.window is None:  # rows that miss the output grid: nothing to compare with (blot 0, as blot_block)
                blots.append(graph.add(f"outlier-blot-{token}-{k}-{b.r0}", np.zeros,
                                       (b.r1 - b.r0, ds["data"].shape[1]), np.float32))
                continue
            blots.append(graph.add(f"outlier-blot-{token}-{k}-{b.r0}", blocks.blot_block,
                                   med_chunks.window(*b.window), b.window, b.pixmap, (b.r0 - b.c0, b.r1 - b.c0)))
        err = _Chunks(ds["err"].data, graph=graph)
        # the flags travel packed (1/32 of the DQ) and are applied by the tasks that take the DQ: a whole-exposure DQ
        # per input waited for resample's leaves, after the median (32 x 2048^2: ~210 MB per worker)
        bits = graph.add(f"outlier-flag-{token}-{k}", blocks.flag_bits, blots, plan.arrays["data"].window(),
                         err.window(), plan.backg, params)
        new_images.append(_new_dataset(ds, _flagged_dq(graph, ds["dq"].data, bits, f"outlier-dq-{token}-{k}")))
    return OutlierResult(images=new_images, median=median_da, tempdir=tmp)


@dataclasses.dataclass(frozen=True)
class FlaggedDQ:
    """How to read the DQ of an exposure as :func:`flag_outliers` returns it, inside a task: the DQ as read
    from Zarr (``source``), plus the outliers packed by the task ``bits`` (an input of the task that reads).

    :func:`flagged_dq` gives it for such a DQ array; resample's leaves read their regions this way.
    """

    source: object  # daskcal.io._zarr_read.ZarrSource
    bits: str
    shape: tuple

    def read(self, region, bits) -> np.ndarray:
        """The flagged DQ in ``region`` (one slice per axis), ``bits`` the result of task :attr:`bits`."""
        return blocks.with_outliers(self.source.read(region), bits, region, self.shape)


def _flagged_dq(graph, dq, bits, name):
    """The DQ ``dq`` with the outliers of task ``bits`` applied, chunked as ``dq``; as read from Zarr, each
    chunk's task reads its DQ itself, and the array is noted (:func:`flagged_dq`) for tasks that read their own
    regions."""
    import dask.array as da

    shape = tuple(int(n) for n in dq.shape)
    src = _Chunks(dq, graph=graph)  # a window of it: a read task (Zarr), its chunks, or a numpy slice
    chunks = dq.chunks if isinstance(dq, da.Array) else ((shape[0],), (shape[1],))
    ys, xs = np.cumsum((0, *chunks[0])), np.cumsum((0, *chunks[1]))
    for i in range(len(ys) - 1):
        for j in range(len(xs) - 1):
            y0, y1, x0, x1 = int(ys[i]), int(ys[i + 1]), int(xs[j]), int(xs[j + 1])
            graph.add((name, i, j), blocks.with_outliers, src.window(y0, y1, x0, x1), bits,
                      (slice(y0, y1), slice(x0, x1)), shape)
    out = graph.array(name, chunks, np.uint32)
    if src.source is not None:
        _FLAGGED.add(out.name, FlaggedDQ(src.source, bits, shape))
    return out


#: :class:`FlaggedDQ` of each DQ array :func:`_flagged_dq` made (see :func:`flagged_dq`).
_FLAGGED = ArrayNotes(4096)


def flagged_dq(arr) -> FlaggedDQ | None:
    """How a task reads dask array ``arr`` itself, when it is a DQ :func:`flag_outliers` made from a DQ
    read from Zarr (exactly as returned), else None."""
    return _FLAGGED.get(arr)


class _TaskGraph:
    """Tasks of the resampled path as one graph layer, built without ``dask.delayed``.

    ``dask.delayed`` optimises and culls the graphs of all its arguments on every
    call, which for hundreds of tasks fed by input chunks and median tiles took
    seconds on the client; here a task is a dask task tuple ``(func, *args)`` whose
    arguments (and the items of lists among them) may be other tasks' keys, and the
    layer is attached to the input arrays' graphs once.
    """

    def __init__(self):
        self.tasks = {}
        self.deps = {}

    def depend(self, collection):
        self.deps[id(collection)] = collection

    def add(self, key, func, *args):
        """Add the task ``func(*args)``; returns its key, for other tasks' arguments."""
        self.tasks[key] = (func, *args)
        return key

    def array(self, name, chunks, dtype):
        """A dask array whose chunks are the tasks ``(name, i, j)`` (with every task so far behind it)."""
        import dask.array as da
        from dask.highlevelgraph import HighLevelGraph

        hlg = HighLevelGraph.from_collections(name, dict(self.tasks), dependencies=list(self.deps.values()))
        return da.Array(hlg, name, chunks=chunks, dtype=dtype, meta=np.empty((0, 0), dtype))


@dataclasses.dataclass
class _BlockPlan:
    r0: int
    r1: int
    c0: int
    c1: int
    window: tuple | None
    pixmap: object = None  # task computing the pixel map of the cut (inside the tasks that take it)
    drizzled: object = None  # the task (window, swd, wht) of its single drizzle
    key: str = ""


@dataclasses.dataclass
class _InputPlan:
    all_blocks: list
    backg: float
    arrays: dict

    @property
    def blocks(self):
        """The blocks that land on the output grid."""
        return [b for b in self.all_blocks if b.window is not None]


def _plan_input(graph, k, ds, in_wcs, out_wcs, out_text, out_shape, margin, params, token):
    """Row blocks of one input, each with its window, pixel-map task and drizzle task."""
    shape = tuple(ds["data"].shape)
    text_in = ds.attrs["wcs_asdf"]
    exptime = float(ds.attrs.get("measurement_time") or ds.attrs.get("exposure_time") or 1.0)
    level = _sky_level(ds)
    backg = params.backg if level is None else level
    vname = "var_sky" if params.weight_type == "ivm-sky" else "var_rnoise"  # the variance the weights use
    arrays = {name: _Chunks(ds[name].data, graph=graph) for name in ("data", "dq", vname) if name in ds}
    data, dq, var = arrays["data"], arrays["dq"], arrays.get(vname)
    plans = []
    source = pixmap_source(in_wcs, out_wcs, text_in, out_text)  # the blocks' pixel maps, without parsing a WCS
    bbox = _bbox(in_wcs, shape) if in_wcs.bounding_box is not None else None
    cuts = blocks.row_blocks(shape[0], params.block_rows)
    windows = blocks.block_windows(in_wcs, out_wcs, shape, out_shape, margin, [(r0, r1) for r0, r1, _, _ in cuts])
    for (r0, r1, c0, c1), window in zip(cuts, windows):
        b = _BlockPlan(r0, r1, c0, c1, window)
        if window is not None:
            # computed inside the tasks that use it (its drizzle, then its blot: 26 ms for 514 x 2048 px), not
            # held from the drizzle until the blot (after the median of every exposure): 16 bytes per input
            # pixel, ~400 MB per worker on 32 exposures of 2048^2
            b.pixmap = (blocks.block_pixel_map, source, bbox, shape, (c0, c1))
            b.key = f"{k}-{r0}"
            b.drizzled = (  # a task, put in the graph by the group's merge (see _flag_resampled)
                blocks.drizzle_block,
                data.window(c0, c1), dq.window(c0, c1), None if var is None else var.window(c0, c1),
                b.pixmap, (r0 - c0, r1 - c0), window, params, exptime, level or 0.0,
            )
        plans.append(b)
    return _InputPlan(plans, backg, arrays)


def _sky_level(ds):
    """The sky level the reference subtracts before drizzling and adds to the blot, or None.

    stcal's ``Resample.add_model`` drizzles ``data - level`` unless the exposure's
    background was already subtracted, and JWST's outlier step then flags with the
    exposure's ``level`` as ``backg`` (the step's ``backg`` only when there is none).
    """
    level = ds.attrs.get("level")
    if level is None or ds.attrs.get("subtracted", False):
        return None
    level = float(level)
    return level if math.isfinite(level) else None


# -- resample_data=False ---------------------------------------------------------
def _flag_unresampled(images, params):
    import dask
    import dask.array as da

    from daskcal.image._median_kernels import nanmedian_stack

    if len(images) < 2:
        msg = f"outlier detection needs at least 2 images; got {len(images)}"
        raise ValueError(msg)
    shape = images[0]["data"].shape
    bad = [k for k, ds in enumerate(images) if ds["data"].shape != shape]
    if bad:
        msg = f"without resampling every image must have the shape of the first {shape}; images {bad} differ"
        raise ValueError(msg)
    n = len(images)
    ty, tx = min(params.tile_shape[0], shape[0]), min(params.tile_shape[1], shape[1])
    if not params.in_memory:  # keep one tile's stack within the budget
        while n * ty * tx * 4 > params.buffer_size and max(ty, tx) > 16:
            ty, tx = (max(ty // 2, 1), tx) if ty >= tx else (ty, max(tx // 2, 1))
    masked = []
    for ds in images:
        m = _member(ds)
        t = dask.delayed(blocks.masked_for_median, pure=True)(m["data"], m["dq"], m["var_rnoise"], params, m["exptime"])
        masked.append(da.from_delayed(t, shape=shape, dtype=np.float32, meta=np.empty((0, 0), np.float32)))
    stack = da.stack(masked).rechunk((n, ty, tx))
    median = stack.map_blocks(
        lambda b: nanmedian_stack(b), drop_axis=0, dtype=np.float32, meta=np.empty((0, 0), np.float32)
    )
    attrs = {"wcs_asdf": images[0].attrs["wcs_asdf"]}
    median_da = xr.DataArray(median, dims=("y", "x"), name="data", attrs=attrs)
    new_images = []
    for ds in images:
        t = dask.delayed(blocks.flag_against_median, pure=True)(
            _blocks(median), _blocks(ds["data"].data), _blocks(ds["err"].data), _blocks(ds["dq"].data), params
        )
        dq = da.from_delayed(t, shape=shape, dtype=np.uint32, meta=np.empty((0, 0), np.uint32))
        new_images.append(_new_dataset(ds, dq))
    return OutlierResult(images=new_images, median=median_da, tempdir=None)
