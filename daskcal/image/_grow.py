"""Adding exposures to a stored mosaic on its own grid (``daskcal.resample(..., into=MOSAIC)``).

The stored planes are the state a later addition needs: per tile, the weighted data sum is
``data * wht``, the weight ``wht``, the context bits ``con``, and each variance's running sums
(the reference's per-variance weighted sum and weight) come back from ``var_*`` and the
running weights ``vwt_*`` that every mosaic stores (:meth:`daskcal.image._driz.TileSums.of_planes`).
A tile that the new exposures reach starts its chain of inputs from those sums; the other tiles
are the stored ones. The result equals the mosaic built from all inputs at once to float32
rounding (data, wht, variances, err) and exactly (context, DQ, metadata): its inputs come after
the stored ones, so their context bits are the next ones, and ``con`` grows a plane every 32 inputs.

The mosaic records its inputs (``inputs``), exposure groups (``group_ids``, for the time totals),
their footprints (``footprints``, for ``s_region``) and drizzle parameters; an exposure it already
holds, or one that falls outside its grid, is refused before anything runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from daskcal.image import _driz, _grid

__all__ = ["Growth", "mosaic_parameters", "resample_into", "stored_attrs"]

#: Parameters a stored mosaic fixes (the keywords of :func:`daskcal.resample`), with their defaults.
FIXED = ("pixfrac", "kernel", "fillval", "weight_type", "good_bits", "enable_ctx", "enable_var", "compute_err",
         "propagate_dq", "pixmap_stepsize", "pixmap_order")
#: Keywords that choose a new grid, which a mosaic being added to already has.
GRID = ("output_wcs", "pixel_scale", "pixel_scale_ratio", "rotation", "crpix", "crval", "output_shape", "tile_shape",
        "single")


def stored_attrs(store: str | os.PathLike) -> dict:
    """The root attributes of a mosaic Zarr store (``ValueError`` if it is not a complete daskcal mosaic)."""
    store = Path(store)
    meta = store / "zarr.json"
    if not meta.is_file():
        what = "does not exist" if not store.exists() else "is not a complete Zarr store (no zarr.json)"
        msg = f"into={str(store)!r} {what}; expected a mosaic written by daskcal resample"
        raise ValueError(msg)
    attrs = json.loads(meta.read_text()).get("attributes", {})
    missing = [k for k in ("wcs_asdf", "inputs", "tile_shape", "group_ids", "footprints", "enable_var")
               if k not in attrs]
    if missing:
        msg = (f"{store} is not a mosaic daskcal can add to: its attributes lack {', '.join(missing)} (written by "
               f"another program or an earlier daskcal); build it again from all its inputs")
        raise ValueError(msg)
    return attrs


def mosaic_parameters(attrs: dict) -> dict:
    """The drizzle parameters a mosaic was made with (the keywords of :func:`daskcal.resample`)."""
    out = {k: attrs[k] for k in FIXED if k in attrs}
    for k in ("compute_err", "weight_type"):
        if out.get(k) in ("None", "none"):
            out[k] = None
    try:
        out["good_bits"] = int(out["good_bits"])
    except (TypeError, ValueError):
        if out.get("good_bits") == "None":
            out["good_bits"] = None
    return out


def check_same_parameters(given: dict, defaults: dict, stored: dict, store) -> None:
    """Refuse keywords that differ from the mosaic's own: its grid and drizzle parameters are fixed."""
    for name, value in given.items():
        if name in GRID and value != defaults[name]:
            msg = (f"{name}={value!r}: a mosaic being added to keeps its grid and tiles ({store}); leave {name} "
                   f"out with into=")
            raise ValueError(msg)
        if name in stored and value != defaults[name] and value != stored[name]:
            msg = f"{name}={value!r}, but {store} was made with {name}={stored[name]!r}; leave {name} out with into="
            raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class Growth:
    """What :func:`daskcal.image._resample._build_graph` needs of the stored mosaic: its arrays, the tiles it
    has written, the context bits its inputs hold (``ctx_offset``) and the context planes of the result."""

    store: str
    sources: dict  # name -> ZarrSource of every stored plane
    whole: dict  # name -> the stored plane as a dask array in tiles
    written: frozenset  # (iy, ix) tiles the stored mosaic has written
    tile_shape: tuple
    ctx_offset: int
    nplanes: int
    token: str

    def prior(self, iy, ix, tile, nplanes, spec, key, *, in_task: bool = False):
        """The running sums of stored tile ``(iy, ix)`` (None if it was never written): delayed (a task that reads
        them), or with ``in_task`` a :class:`StoredSums` for the task that adds to them to read itself."""
        import dask

        if (iy, ix) not in self.written:
            return None
        if in_task:
            return StoredSums(self.sources, tuple(tile), nplanes, spec)
        return dask.delayed(_prior_task)(self.sources, tile, nplanes, spec, dask_key_name=f"{key}-stored")

    def has(self, iy, ix) -> bool:
        """Whether the stored mosaic has written tile ``(iy, ix)``."""
        return (iy, ix) in self.written

    def stored_task(self, key, iy, ix, name):
        """A task ``key`` that gives plane ``name`` of the stored tile ``(iy, ix)`` (``con`` with the result's
        planes), and the dask array of the stored plane it reads a chunk of."""
        from daskcal.image._resample import _Ref, graph_task

        whole = self.whole[name]
        chunk = _Ref((whole.name, *(0,) * (whole.ndim - 2), iy, ix))
        if name == "con" and whole.shape[0] < self.nplanes:
            return graph_task(key, _more_planes, chunk, self.nplanes), whole
        return graph_task(key, _same, chunk), whole


def _same(block):
    return block


def _more_planes(con, nplanes: int):
    """A stored tile's context planes ``(n, y, x)`` with zero planes after them, ``nplanes`` in all."""
    out = np.zeros((nplanes, *con.shape[1:]), np.int32)
    out[: con.shape[0]] = con
    return out


@dataclasses.dataclass(frozen=True)
class StoredSums:
    """The running sums of a stored tile, read by the chain task that adds inputs to them
    (:func:`daskcal.image._resample._chain_task`) rather than by a task of their own.

    As a task of its own, every stored tile was read first (no other task was ready), and each
    chain then ran on the worker that held its sums: with ``resample --add`` of 2 exposures to a
    mosaic of 16 (9 tiles of 1024^2, 2 workers), one worker drew 3 of the 4 whole tiles and the
    other waited ~1 s of the 2.5 s run. Read in the chain, the tiles go to whichever worker is free,
    and a worker holds only the sums of the tile it is adding to.
    """

    sources: dict  # name -> ZarrSource of every stored plane
    tile: tuple  # (y0, y1, x0, x1), output px
    nplanes: int
    spec: _driz.DrizzleSpec

    def read(self) -> _driz.TileSums:
        return _prior_task(self.sources, self.tile, self.nplanes, self.spec)


def _prior_task(sources: dict, tile, nplanes, spec) -> _driz.TileSums:
    """Dask task: the running sums of a stored tile (its planes read from the store)."""
    y0, y1, x0, x1 = tile
    planes = {}
    for name, src in sources.items():
        lead = tuple(slice(0, n) for n in src.array().shape[:-2])
        planes[name] = src.read((*lead, slice(y0, y1), slice(x0, x1)))
    return _driz.TileSums.of_planes(planes, tile, nplanes, spec)


def resample_into(images, into, *, given: dict, defaults: dict, block_shape=None, check_inputs: bool = True):
    """:func:`daskcal.resample` with ``into``: the stored mosaic ``into`` with ``images`` added (lazy).

    ``given`` are the keywords the caller passed (refused where they differ from the mosaic's), ``defaults``
    :func:`daskcal.resample`'s defaults.
    """
    from daskcal.image import _resample as rs
    from daskcal.image._checks import warn_unusable_inputs
    from daskcal.image._dataset import wcs_from_text
    from daskcal.io._zarr_read import ZarrSource, read_as_dask

    if not isinstance(into, (str, os.PathLike)):
        msg = f"into must be the path of a mosaic Zarr store; got a {type(into).__name__}"
        raise TypeError(msg)
    store = Path(into)
    attrs = stored_attrs(store)
    stored = mosaic_parameters(attrs)
    check_same_parameters(given, defaults, stored, store)
    params = rs.ResampleParams(**stored)
    inps = rs._inputs(images)
    names = [str(i.ds.attrs.get("name", i.index)) for i in inps]
    have = set(attrs["inputs"])
    for k, name in enumerate(names):
        if name in have:
            msg = f"input {k} ({name!r}) is already in the mosaic {store}; an exposure is added once"
            raise ValueError(msg)
        if name in names[:k]:
            msg = f"input {k} ({name!r}) is given twice"
            raise ValueError(msg)
    wcs_out = wcs_from_text(attrs["wcs_asdf"])
    arrays = [p.name for p in store.iterdir() if (p / "zarr.json").is_file()]
    sources = {n: ZarrSource.at(store, n) for n in sorted(arrays)}
    if "data" not in sources or sources["data"].array().ndim != 2:
        msg = f"{store} is not one mosaic on a (y, x) grid (a single=True stack of groups?); it cannot be added to"
        raise ValueError(msg)
    out_shape = tuple(int(s) for s in sources["data"].array().shape)
    tile_shape = tuple(int(t) for t in attrs["tile_shape"])
    psr = float(attrs["pixel_scale_ratio"])
    spec = rs.drizzle_spec(params, psr, var_weights=True)
    missing = [n for n in _driz.output_names(spec) if n not in sources]
    if missing:
        msg = f"{store} lacks the arrays {', '.join(missing)} that adding inputs needs; build it again"
        raise ValueError(msg)
    n_old = len(attrs["inputs"])
    nplanes = (n_old + len(inps) - 1) // 32 + 1
    block_shape = int(block_shape if block_shape is not None else rs._default_block_shape(psr, tile_shape))
    margin = rs._kernel_margin(params, psr)
    ys, xs = rs._tiles(out_shape, tile_shape)
    tiles = [(ty, min(ty + tile_shape[0], out_shape[0]), tx, min(tx + tile_shape[1], out_shape[1]))
             for ty in ys for tx in xs]
    step = max(4, min(16, block_shape, round(64 * psr)))
    parts = {}
    for inp, name in zip(inps, names):
        try:
            lat = rs._lattice(inp, wcs_out, step, margin)
        except ValueError:
            lat = None
        parts[inp.index] = {} if lat is None else rs._plan_parts(inp, lat, tiles, tile_shape, out_shape, block_shape)
        if not parts[inp.index]:
            msg = (f"input {inp.index} ({name!r}) falls outside the grid of the mosaic {store} "
                   f"({out_shape[1]}x{out_shape[0]} px); nothing was added")
            raise ValueError(msg)
    if check_inputs:
        warn_unusable_inputs([i.ds for i in inps], good_bits=params.good_bits_int, weight_type=params.weight_type)
    workers = _grid.worker_memory()
    rs._check_fits_workers(inps, parts, tiles, psr, workers)
    from dask.base import tokenize

    written = _written_tiles(sources["data"])
    whole = {n: read_as_dask(src, (*src.array().shape[:-2], *tile_shape)) for n, src in sources.items()}
    growth = Growth(str(store.resolve()), sources, whole, frozenset(written), tile_shape, n_old, nplanes,
                    tokenize(sorted(sources.items()), sorted(written)))
    ds = rs._build_graph(inps, {None: [i.index for i in inps]}, parts, tiles, wcs_out, out_shape, tile_shape, params,
                         psr, False, grow=growth)
    touched = sorted({(t // len(xs), t % len(xs)) for per in parts.values() for t in per})
    ds.attrs.update(_grown_attrs(attrs, inps, names))
    ds.attrs[rs.WRITTEN_TILES] = len(written | set(touched))
    ds.attrs[UPDATED_TILES] = [list(t) for t in touched]
    return ds


#: Dataset attribute of a mosaic that :func:`daskcal.resample` with ``into`` returns: the ``[iy, ix]`` tiles the
#: added inputs reach (the others are the stored mosaic's, unchanged).
UPDATED_TILES = "tiles_updated"


def _written_tiles(source) -> set:
    """The ``(iy, ix)`` tiles a stored mosaic has written (all of them if its arrays are not sparse)."""
    from daskcal.io._zarr_read import WRITTEN_ATTR

    arr = source.array()
    written = arr.attrs.get(WRITTEN_ATTR)
    if written is not None:
        return {(int(a), int(b)) for a, b in written}
    chunk = arr.metadata.chunk_grid.chunk_shape
    return {(iy, ix) for iy in range(-(-arr.shape[0] // chunk[0])) for ix in range(-(-arr.shape[1] // chunk[1]))}


def _grown_attrs(attrs: dict, inps, names) -> dict:
    """The stored mosaic's attributes with ``inps`` added: inputs, exposure groups, time totals, footprints
    and ``s_region``, as a mosaic of all the inputs at once has them."""
    from daskcal.image import _resample as rs
    from daskcal.io._resume import RUN_ATTR

    out = {k: v for k, v in attrs.items() if k not in (RUN_ATTR, UPDATED_TILES)}
    seen = set(attrs["group_ids"])
    new_groups = [i for i in inps if str(i.ds.attrs.get("group_id", i.ds.attrs.get("name", i.index))) not in seen]
    if new_groups:
        t = rs._time_totals(new_groups)
        out["exposure_time"] = float(attrs["exposure_time"]) + t["exposure_time"]
        out["measurement_time"] = (None if attrs.get("measurement_time") is None or t["measurement_time"] is None
                                   else float(attrs["measurement_time"]) + t["measurement_time"])
        out["duration"] = float(attrs.get("duration") or 0.0) + t["duration"]
        for key, pick in (("start_time", min), ("end_time", max)):
            values = [v for v in (attrs.get(key), t[key]) if v is not None]
            out[key] = pick(values) if values else None
        out["pointings"] = int(attrs.get("pointings", len(seen))) + t["pointings"]
    out["group_ids"] = list(attrs["group_ids"]) + [g for g in dict.fromkeys(
        str(i.ds.attrs.get("group_id", i.ds.attrs.get("name", i.index))) for i in inps) if g not in seen]
    out["inputs"] = list(attrs["inputs"]) + list(names)
    footprints = [np.asarray(f, np.float64) for f in attrs["footprints"]]
    footprints += [_grid._footprint(i.wcs, i.shape) for i in inps]
    out["footprints"] = [f.tolist() for f in footprints]
    out["s_region"] = _grid.s_region_of(footprints)
    return out
