"""Sky matching: sky levels of calibrated exposures, alone or equalised in their overlaps (image3 step 2).

:func:`match_sky` follows JWST's ``skymatch`` step over ``stcal.skymatch``:

1. On the client: each image's footprint is a spherical polygon through the WCS
   of its pixel-edge border (``stepsize`` px between vertices); the overlap of
   an image with another image or exposure group is the intersection of their
   polygons, scanned back onto the image's pixels (gwcs's polygon fill) as row runs.
2. In one ``dask.compute``: the sky statistic (:mod:`daskcal.image._skystats`)
   of every image and of every image's part of each overlap. An image whose data and
   DQ fit Dask config ``daskcal.skymatch.image-memory`` (256 MiB) is read once by one
   task that runs every round of the statistic in memory (as the reference holds each
   image); a larger one as rounds of one task per (image, chunk) that re-read the
   chunk, each round bound to the previous one's small merged state so no chunk stays
   in memory between rounds. The least-squares match of the overlaps is one small
   task at the end (:mod:`daskcal.image._skylevels`).
3. On the client: levels per image as the reference records them in
   ``meta.background`` (``level``, ``subtracted``), and with ``subtract=True``
   the data minus the level, lazily.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import uuid

import numpy as np
import xarray as xr

from daskcal._params import param
from daskcal.image import _skylevels as levels_mod
from daskcal.image import _skystats as stats
from daskcal.image._dataset import keeps_parsed_wcs

log = logging.getLogger(__name__)

__all__ = ["SKYMETHODS", "SkyMatchParameters", "SkyMatchResult", "match_sky"]

SKYMETHODS = ("local", "global", "match", "global+match")


def _number(name, value, *, positive=False, allow_none=False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        msg = f"{name} must be a finite number{' or None' if allow_none else ''}; got {value!r}"
        raise ValueError(msg)
    if positive and not value > 0:
        msg = f"{name} must be positive; got {value!r}"
        raise ValueError(msg)
    return float(value)


def parse_dqbits(dqbits):
    """``ignore_flags`` for astropy's bitmask from a ``dqbits`` expression (None: DQ not used)."""
    from astropy.nddata.bitmask import interpret_bit_flags

    from daskcal.dq import dq_dict

    if dqbits is None:
        return None
    try:
        return interpret_bit_flags(dqbits, flag_name_map=dq_dict())
    except (ValueError, TypeError, KeyError) as exc:
        msg = (f"dqbits {dqbits!r} is not valid: {exc}; expected an integer, '4+8', DQ names such as "
               f"'DO_NOT_USE+NON_SCIENCE', optionally with a leading '~', or None")
        raise ValueError(msg) from None


@dataclasses.dataclass(frozen=True)
class SkyMatchParameters:
    """Validated parameters of :func:`match_sky` (JWST ``skymatch`` step names and defaults)."""

    skymethod: str = param("match", "local, global, match or global+match")
    match_down: bool = param(True, "match to the lowest sky (false: the highest)",
                             cli={"flag": "--match-up", "help": "match to the highest sky instead of the lowest"})
    subtract: bool = param(False, "subtract the levels from the data")
    stepsize: int | None = param(None, "largest spacing of footprint vertices along the image edges", "px",
                                 derived="the four corners only", example=100)
    skystat: str = param("mode", "statistic of the clipped pixel values: mean, median, mode or midpt")
    dqbits: object = param("~DO_NOT_USE+NON_SCIENCE",
                           "DQ bits that do not exclude a pixel (astropy bitmask syntax, JWST names; 'None': DQ unused)")
    lower: float | None = param(None, "lowest usable pixel value", "unit of data", derived="none", example=0.0)
    upper: float | None = param(None, "highest usable pixel value", "unit of data", derived="none", example=100.0)
    nclip: int = param(5, "sigma-clipping iterations")
    lsigma: float = param(4.0, "lower clipping limit", "sigma")
    usigma: float = param(4.0, "upper clipping limit", "sigma")
    binwidth: float = param(0.1, "histogram bin width of mode and midpt", "sigma")

    def __post_init__(self):
        set_ = object.__setattr__
        method = self.skymethod.lower() if isinstance(self.skymethod, str) else self.skymethod
        if method not in SKYMETHODS:
            msg = f"skymethod must be one of {SKYMETHODS}; got {self.skymethod!r}"
            raise ValueError(msg)
        set_(self, "skymethod", method)
        if self.skystat not in stats.SKYSTATS:
            msg = f"skystat must be one of {stats.SKYSTATS}; got {self.skystat!r}"
            raise ValueError(msg)
        for name in ("match_down", "subtract"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                msg = f"{name} must be True or False; got {getattr(self, name)!r}"
                raise TypeError(msg)
            set_(self, name, bool(getattr(self, name)))
        if self.stepsize is not None:
            if isinstance(self.stepsize, bool) or not isinstance(self.stepsize, (int, np.integer)) or self.stepsize < 1:
                msg = f"stepsize must be a positive number of pixels or None; got {self.stepsize!r}"
                raise ValueError(msg)
            set_(self, "stepsize", int(self.stepsize))
        if isinstance(self.nclip, bool) or not isinstance(self.nclip, (int, np.integer)) or self.nclip < 0:
            msg = f"nclip must be a non-negative integer; got {self.nclip!r}"
            raise ValueError(msg)
        set_(self, "nclip", int(self.nclip))
        for name in ("lsigma", "usigma", "binwidth"):
            set_(self, name, _number(name, getattr(self, name), positive=True))
        for name in ("lower", "upper"):
            set_(self, name, _number(name, getattr(self, name), allow_none=True))
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            msg = f"lower ({self.lower}) must not exceed upper ({self.upper})"
            raise ValueError(msg)
        parse_dqbits(self.dqbits)

    @property
    def ignore_bits(self):
        return parse_dqbits(self.dqbits)

    @property
    def stat_spec(self) -> stats.SkyStatSpec:
        return stats.SkyStatSpec(self.skystat, self.lower, self.upper, self.nclip, self.lsigma, self.usigma,
                                 self.binwidth)


@dataclasses.dataclass(frozen=True)
class SkyMatchResult:
    """Result of :func:`match_sky`.

    Attributes
    ----------
    images : list of xarray.Dataset
        New datasets in input order. Where a sky was found: attrs ``level`` (the
        sky, unit of ``data``), ``subtracted`` (= ``subtract``) and ``skymatch`` =
        ``{"method", "level", "status": "COMPLETE"}``, and with ``subtract=True``
        a lazy ``data`` minus the level. Elsewhere ``skymatch["status"]`` is
        ``"SKIPPED"`` and the rest is the input's.
    levels : dict
        ``{name: level}`` (None where no sky was found), names as ``attrs["name"]``
        (``name_k`` for a repeated name).
    """

    images: list
    levels: dict


@dataclasses.dataclass(frozen=True)
class _Image:
    index: int
    name: str
    ds: xr.Dataset
    wcs: object
    shape: tuple
    sky0: float


def _prepare(images, params: SkyMatchParameters) -> list[_Image]:
    from daskcal.image._dataset import get_wcs

    if isinstance(images, xr.Dataset):
        images = [images]
    images = list(images)
    if not images:
        msg = "match_sky needs at least one image"
        raise ValueError(msg)
    out, names = [], []
    for k, ds in enumerate(images):
        if not isinstance(ds, xr.Dataset):
            msg = f"image {k} is a {type(ds).__name__}; expected an xarray.Dataset from daskcal.image_dataset"
            raise TypeError(msg)
        name = str(ds.attrs.get("name") or f"image{k}")
        where = f"image {k} ({name!r})"
        if "data" not in ds or ds["data"].ndim != 2:
            msg = f"{where}: expected a 2-D 'data' variable on (y, x)"
            raise ValueError(msg)
        shape = tuple(ds["data"].shape)
        if "dq" in ds and tuple(ds["dq"].shape) != shape:
            msg = f"{where}: dq has shape {tuple(ds['dq'].shape)}; expected the shape of data {shape}"
            raise ValueError(msg)
        wcs = get_wcs(ds)
        out.append(_Image(k, name if name not in names else f"{name}_{k}", ds, wcs, shape,
                          _first_sky(ds, params, where)))
        names.append(out[-1].name)
    return out


def _first_sky(ds, params, where) -> float:
    """The sky the reference starts from, after its checks of ``meta.background`` (level, subtracted)."""
    level, subtracted = ds.attrs.get("level"), ds.attrs.get("subtracted")
    previous = ds.attrs.get("skymatch") or {}
    if subtracted:
        if level is None or not math.isfinite(float(level)):
            msg = f"{where}: subtracted is True but the sky level is {level!r}; expected a finite level"
            raise ValueError(msg)
        if not params.subtract:
            msg = f"{where}: its sky level was already subtracted; run with subtract=True or on the unsubtracted data"
            raise ValueError(msg)
        return float(level)
    if params.subtract and previous.get("status") == "COMPLETE":
        msg = f"{where}: sky-matched before without subtracting; subtract=True is inconsistent with that"
        raise ValueError(msg)
    return 0.0


# -- footprints and overlaps (client) ----------------------------------------------
def _footprint(wcs, shape, stepsize):
    """Spherical polygon of the pixel-edge border of an image (``_calc_bounding_polygon``)."""
    from spherical_geometry.polygon import SphericalPolygon

    ny, nx = shape
    nint_x = 2 if stepsize is None else max(2, int(np.ceil((nx + 1.0) / stepsize)))
    nint_y = 2 if stepsize is None else max(2, int(np.ceil((ny + 1.0) / stepsize)))
    xs = np.linspace(-0.5, nx - 0.5, nint_x, dtype=float)
    ys = np.linspace(-0.5, ny - 0.5, nint_y, dtype=float)[1:-1]
    x = np.concatenate([xs, np.full(ys.size, nx - 0.5), xs[::-1], np.full(ys.size, -0.5), xs[:1]])
    y = np.concatenate([np.full(xs.size, -0.5), ys, np.full(xs.size, ny - 0.5), ys[::-1], [-0.5]])
    ra, dec = wcs(x, y, with_bounding_box=False)
    ra, dec = np.array(ra, dtype=float), np.array(dec, dtype=float)
    ra[-1], dec[-1] = ra[0], dec[0]
    return SphericalPolygon.from_radec(ra, dec)


def _intersection(poly, other):
    from spherical_geometry.polygon import MalformedPolygonError

    try:
        return poly.intersection(other)
    except MalformedPolygonError:  # nearly identical polygons: the reference takes the first whole
        return poly.copy()


class _Runs:
    """Stands in for the mask in ``gwcs.region.Polygon.scan`` and records the filled row runs."""

    def __init__(self, shape):
        self.shape = shape
        self.runs = []

    def __getitem__(self, row):
        return _RowRuns(self, row)


class _RowRuns:
    def __init__(self, runs: _Runs, row: int):
        self.owner, self.row = runs, row

    def __setitem__(self, cols, value):
        start, stop, _ = cols.indices(self.owner.shape[1])  # numpy's meaning of the slice
        if stop > start:
            self.owner.runs.append((self.row, start, stop))


def _pixel_runs(wcs, shape, polygons) -> np.ndarray:
    """Row runs ``(row, start, stop)`` of the pixels inside any of ``polygons`` (RA, Dec vertex lists)."""
    from gwcs import region

    rec = _Runs(shape)
    for ra, dec in polygons:
        if len(ra) < 4:
            continue
        x, y = wcs.invert(ra, dec, with_bounding_box=False)
        region.Polygon(True, list(zip(x, y, strict=True))).scan(rec)
    return np.array(sorted(rec.runs), dtype=np.int64).reshape(-1, 3)


#: Largest angular radius (radians) of a footprint's bounding cap that :func:`_overlap_regions` trusts to rule out
#: an overlap; a wider footprint (or one whose inside is the far side of its border) is always intersected.
_CAP_LIMIT = np.radians(60.0)


def _cap(poly) -> tuple[np.ndarray, float] | None:
    """A spherical cap (unit centre, angular radius in radians) that holds polygon ``poly``: its vertices and
    inside points, in a cap under :data:`_CAP_LIMIT` (which is convex, so the arcs between them are in it too);
    None if there is no such cap."""
    points = np.concatenate([np.asarray(p, float).reshape(-1, 3) for p in (*poly.points, *poly.inside)])
    centre = points.sum(axis=0)
    norm = np.linalg.norm(centre)
    if not np.isfinite(norm) or norm == 0.0:
        return None
    centre /= norm
    radius = float(np.arccos(np.clip(points @ centre, -1.0, 1.0)).max())
    return (centre, radius) if radius < _CAP_LIMIT else None


def _apart(a, b) -> bool:
    """Whether the caps ``a`` and ``b`` (:func:`_cap`, None: unknown) are certainly disjoint (with 1e-9 rad to
    spare)."""
    if a is None or b is None:
        return False
    return float(np.arccos(np.clip(a[0] @ b[0], -1.0, 1.0))) > a[1] + b[1] + 1e-9


def _overlap_regions(inputs, items, polys):
    """Per image, the polygons (RA, Dec vertex lists; None when empty) and sky area of its overlap with every
    other item. Their pixels (:func:`_pixel_runs`) are found by the task that reads the image.

    As the reference, each image's overlap with another is ``its footprint.intersection(the other's)``, in both
    orders, but a pair whose footprints' bounding caps (:func:`_cap`) are apart is not intersected: their
    intersection is empty. spherical-geometry takes ~13 ms per intersection of two footprints here, which made
    sky matching quadratic in the exposures (32 exposures: 992 intersections, 13 s of the step's 19 s); in a
    mosaic of many exposures most pairs are apart. The intersections run on the cluster's workers when there is
    a ``distributed`` client (:func:`_intersections`)."""
    item_of = {i: n for n, members in enumerate(items) for i in members}
    caps = {img.index: _cap(polys[img.index]) for img in inputs}
    pairs = [(img.index, k) for img in inputs for other, members in enumerate(items) if other != item_of[img.index]
             for k in members if not _apart(caps[img.index], caps[k])]
    found = _intersections(polys, pairs)
    regions = {}
    for img in inputs:
        i = img.index
        for other, members in enumerate(items):
            if other == item_of[i]:
                continue
            radec, area = [], 0.0
            for k in members:
                if (i, k) not in found:
                    continue  # caps apart: an empty intersection, no area, no vertices
                a, vertices = found[(i, k)]
                if len(members) > 1 and a == 0.0:
                    continue
                area += a
                radec += vertices
            regions[(i, other)] = (radec if area != 0.0 else None, area)
    return regions


#: Fewest footprint intersections :func:`_intersections` sends to a cluster's workers (fewer run here).
_INTERSECTIONS_ON_WORKERS = 64


def _intersections(polys, pairs) -> dict:
    """``{(i, k): (area, RA/Dec vertex lists)}`` of ``polys[i].intersection(polys[k])`` for each pair.

    With a ``distributed`` client whose workers are other processes and at least
    :data:`_INTERSECTIONS_ON_WORKERS` pairs, in batches on its workers (:func:`daskcal._spread.spread`:
    spherical-geometry's intersections are Python and numpy on small arrays, threads of one process take
    turns), else here. 400 exposures in a 20x20 grid: 4404 intersections, ~40 s of the step's 67 s on one core."""
    from daskcal._spread import spread

    found = spread(_intersect_batch, [(polys[i], polys[k]) for i, k in pairs], least=_INTERSECTIONS_ON_WORKERS,
                   name="skymatch-overlaps")
    return dict(zip(pairs, found, strict=True))


def _intersect_batch(pairs) -> list:
    """Task: ``(area, RA/Dec vertex lists)`` of the intersection of each pair of footprints."""
    out = []
    for poly, other in pairs:
        inter = _intersection(poly, other)
        out.append((abs(inter.area()), list(inter.to_radec())))
    return out


def _items(inputs) -> tuple[tuple[int, ...], ...]:
    """Exposure groups (``group_id``) in order of first appearance, as the reference's model library."""
    groups: dict = {}
    for img in inputs:
        gid = img.ds.attrs.get("group_id")
        groups.setdefault(img.name if gid is None else str(gid), []).append(img.index)
    return tuple(tuple(v) for v in groups.values())


# -- the statistics graph --------------------------------------------------------------
def _dask_array(var):
    import dask.array as da

    arr = var.data
    return arr if isinstance(arr, da.Array) else da.from_array(np.asarray(arr), chunks=arr.shape)


def _chunk_runs(runs, y0, y1, x0, x1):
    if runs is None:
        return None
    keep = (runs[:, 0] >= y0) & (runs[:, 0] < y1) & (runs[:, 1] < x1) & (runs[:, 2] > x0)
    return runs[keep]


def _image_statistics(img, regions, spec, ignore_bits, shift, after, token):
    """Delayed ``[(value, npix), ...]`` of the statistic over each region of one image.

    ``regions``: per target None (whole image) or row runs. ``shift``: values (or a
    delayed tuple of them) subtracted from the data first. ``after``: a delayed value
    the first round waits for.
    """
    import dask
    from dask.graph_manipulation import bind

    data = _dask_array(img.ds["data"])
    dq = _dask_array(img.ds["dq"]).rechunk(data.chunks) if "dq" in img.ds else None
    if _fits_in_memory(data, dq):
        dblocks = _whole_blocks(data)
        qblocks = None if dq is None else _whole_blocks(dq)
        return dask.delayed(_whole_image_task)(spec, dblocks, qblocks, (img.ds.attrs["wcs_asdf"], img.shape, regions),
                                               ignore_bits, shift, after,
                                               dask_key_name=f"skymatch-stat-{token}-{img.index}")
    regions = [None if r is None else _pixel_runs(img.wcs, img.shape, r) for r in regions]
    ystarts = np.cumsum((0,) + data.chunks[0])
    xstarts = np.cumsum((0,) + data.chunks[1])
    cuts = list(itertools.product(range(len(data.chunks[0])), range(len(data.chunks[1]))))
    per_chunk = {(a, b): [None if r is None else _chunk_runs(r, ystarts[a], ystarts[a + 1], xstarts[b], xstarts[b + 1])
                          for r in regions] for a, b in cuts}
    states = [stats.initial_state(spec)] * len(regions)
    prev = after
    for r, kind in enumerate(stats.schedule(spec)):
        if prev is None:
            d, q = data, dq
        elif dq is None:
            d, q = bind(data, prev), None
        else:
            d, q = bind((data, dq), prev)
        dblocks = d.to_delayed(optimize_graph=False)  # culled once, by the final compute
        qblocks = None if q is None else q.to_delayed(optimize_graph=False)
        parts = [
            dask.delayed(stats.chunk_partials)(
                kind, states, dblocks[a, b], None if qblocks is None else qblocks[a, b],
                (int(ystarts[a]), int(xstarts[b])), img.shape[1], per_chunk[(a, b)], ignore_bits, shift,
                dask_key_name=f"skymatch-{kind}-{token}-{img.index}-{r}-{a}-{b}",
            )
            for a, b in cuts
        ]
        states = dask.delayed(_merge)(kind, spec, states, *parts,  # Delayed arguments at the top level stay
                                      dask_key_name=f"skymatch-merge-{token}-{img.index}-{r}")  # cheap
        prev = states
    return dask.delayed(_results)(spec, states, dask_key_name=f"skymatch-stat-{token}-{img.index}")


#: Dask config: the largest image (data and DQ, bytes) whose statistics one task computes with the
#: image in memory (read once); larger images are read chunk by chunk in each round of the statistic.
IMAGE_MEMORY_CONFIG = "daskcal.skymatch.image-memory"
DEFAULT_IMAGE_MEMORY = "256 MiB"


def _fits_in_memory(data, dq) -> bool:
    import dask
    from dask.utils import parse_bytes

    budget = dask.config.get(IMAGE_MEMORY_CONFIG, None)
    budget = DEFAULT_IMAGE_MEMORY if budget is None else budget
    budget = parse_bytes(budget) if isinstance(budget, str) else int(budget)
    nbytes = data.nbytes + (0 if dq is None else dq.nbytes)
    return nbytes <= budget


def _whole_image_task(spec, dblocks, qblocks, where, ignore_bits, shift, _after):
    """Dask task: the statistic over each region of one image, from all its chunks at once.

    ``where`` = (WCS as ASDF text, shape, regions): per region None (the whole image) or
    the overlap polygons, whose pixels are found here (gwcs's polygon fill; ~0.3 s per
    2048^2 overlap, so in the tasks rather than on the client).
    """
    from daskcal.image._dataset import wcs_from_text

    text, shape, polygons = where
    wcs = None
    regions = []
    for r in polygons:
        if r is not None and wcs is None:
            wcs = wcs_from_text(text)
        regions.append(None if r is None else _pixel_runs(wcs, shape, r))
    dq = None if qblocks is None else _whole(qblocks)
    return stats.whole_image_results(spec, _whole(dblocks), dq, regions, ignore_bits, shift)


def _whole_blocks(arr):
    """A whole image for :func:`_whole_image_task`: read by the task itself from Zarr where it can be
    (:func:`~daskcal.io._zarr_read.whole_argument`), else its chunks as a nested list."""
    from daskcal.io._zarr_read import WholeRead, whole_argument

    whole = whole_argument(arr)
    return whole if isinstance(whole, WholeRead) else arr.to_delayed(optimize_graph=False).tolist()


def _whole(blocks) -> np.ndarray:
    """Inside a task: the image :func:`_whole_blocks` handed over."""
    from daskcal.io._zarr_read import materialize

    blocks = materialize(blocks)  # read here from Zarr, or the chunks as a nested list
    if isinstance(blocks, np.ndarray):
        return blocks
    return np.block(blocks) if len(blocks) > 1 or len(blocks[0]) > 1 else np.asarray(blocks[0][0])


def _merge(kind, spec, states, *parts):
    return stats.advance(kind, spec, states, parts)


def _results(spec, states):
    return [stats.result(spec, st) for st in states]


def _match_task(layout, keys, areas, *image_results):
    """Overlap statistics of every image -> least-squares sky differences (one small task)."""
    overlaps = {key: (None, 0, area) for key, area in areas.items()}
    for i, other, t in keys:
        value, npix = image_results[i][t]
        overlaps[(i, other)] = (value, npix, areas[(i, other)])
    return levels_mod.match_deltas(layout, overlaps)


def _shift_of(layout, match, i):
    return levels_mod.shifts_after_match(layout, match)[i]


@keeps_parsed_wcs
def match_sky(
    images,
    *,
    skymethod="match",
    match_down=True,
    subtract=False,
    stepsize=None,
    skystat="mode",
    dqbits="~DO_NOT_USE+NON_SCIENCE",
    lower=None,
    upper=None,
    nclip=5,
    lsigma=4.0,
    usigma=4.0,
    binwidth=0.1,
) -> SkyMatchResult:
    """Compute sky levels of calibrated exposures, alone or matched in their overlaps.

    Parameters
    ----------
    images : sequence of xarray.Dataset
        Calibrated exposures (:func:`daskcal.image_dataset`) with ``data``, a WCS,
        optionally ``dq`` and attrs ``group_id`` (images of one group get one sky),
        ``level``/``subtracted`` of an earlier run. Not modified.
    skymethod : {"local", "global", "match", "global+match"}, default "match"
        "local": the statistic of each image (group: its members' smallest);
        "global": the smallest of those, for all; "match": differences that
        equalise the overlaps in the least-squares sense, relative to the lowest
        (``match_down``) or highest item; "global+match": match, then add the
        global sky of the matched images.
    match_down : bool, default True
        Match to the lowest sky (True) or the highest (False).
    subtract : bool, default False
        Subtract the levels from the data (lazily) and record ``subtracted=True``.
    stepsize : int, optional
        Largest spacing (px) of footprint vertices along the image edges; default:
        the four corners only.
    skystat : {"mean", "median", "mode", "midpt"}, default "mode"
        Statistic of the (clipped) pixel values.
    dqbits : str or int or None, default "~DO_NOT_USE+NON_SCIENCE"
        DQ bits that do not exclude a pixel (astropy bitmask syntax with JWST names);
        None: only non-finite data are excluded.
    lower, upper : float, optional
        Usable range of pixel values (unit of ``data``).
    nclip : int, default 5
        Sigma-clipping iterations.
    lsigma, usigma : float, default 4.0
        Lower and upper clipping limits (sigma).
    binwidth : float, default 0.1
        Histogram bin width (sigma) of "mode" and "midpt".

    Returns
    -------
    SkyMatchResult
        New datasets with ``level`` (unit of ``data``), ``subtracted`` and
        ``skymatch`` attributes, and ``levels`` by image name.

    Raises
    ------
    ValueError, TypeError
        For a bad parameter or image, before anything is computed.

    Notes
    -----
    All statistics run in one ``dask.compute`` on the current scheduler. Memory
    per task is one chunk; nothing held grows with the number of images.
    """
    import dask

    params = SkyMatchParameters(skymethod, match_down, subtract, stepsize, skystat, dqbits, lower, upper, nclip,
                                lsigma, usigma, binwidth)
    inputs = _prepare(images, params)
    items = _items(inputs)
    layout = levels_mod.Layout(items, tuple(img.sky0 for img in inputs), params.subtract, params.match_down)
    method = params.skymethod
    do_match, do_global = "match" in method, "global" in method
    need_whole = do_global or not do_match
    whole_after_match = need_whole and do_match and params.subtract
    spec, ignore = params.stat_spec, params.ignore_bits
    token = uuid.uuid4().hex[:8]

    regions = {}
    if do_match and len(items) > 1:
        polys = [_footprint(img.wcs, img.shape, params.stepsize) for img in inputs]
        regions = _overlap_regions(inputs, items, polys)
    targets = [[] for _ in inputs]  # per image: the overlap polygons (None: the whole image)
    keys = []
    for (i, other), (radec, _area) in regions.items():
        if radec is not None:
            keys.append((i, other, len(targets[i])))
            targets[i].append(radec)
    whole_index = {}
    if need_whole and not whole_after_match:
        for img in inputs:
            whole_index[img.index] = len(targets[img.index])
            targets[img.index].append(None)
    first = [_image_statistics(img, targets[img.index], spec, ignore, (), None, token) if targets[img.index] else []
             for img in inputs]
    todo = {"first": first}
    if do_match:
        areas = {key: area for key, (_, area) in regions.items()}
        todo["match"] = dask.delayed(_match_task)(layout, keys, areas, *first,
                                                  dask_key_name=f"skymatch-solve-{token}")
    if whole_after_match:
        todo["whole"] = [
            _image_statistics(img, [None], spec, ignore,
                              dask.delayed(_shift_of)(layout, todo["match"], img.index), todo["match"], token + "w")
            for img in inputs
        ]
    (done,) = dask.compute(todo)
    if need_whole:
        if whole_after_match:
            whole = [(res[0][0], res[0][1], None) for res in done["whole"]]
        else:
            whole = [(done["first"][i][whole_index[i]][0], done["first"][i][whole_index[i]][1], None)
                     for i in range(len(inputs))]
    else:
        whole = None
    lv = levels_mod.compute_levels(layout, method, match=done.get("match"), whole=whole)
    return _finish(inputs, params, lv)


def _finish(inputs, params, lv) -> SkyMatchResult:
    out, levels = [], {}
    for img in inputs:
        ds, i = img.ds, img.index
        if not lv.valid[i]:
            out.append(ds.assign_attrs(skymatch={"method": params.skymethod, "level": None, "status": "SKIPPED"}))
            levels[img.name] = None
            continue
        level = float(lv.sky[i])
        levels[img.name] = level
        attrs = {"level": level, "subtracted": params.subtract,
                 "skymatch": {"method": params.skymethod, "level": level, "status": "COMPLETE"}}
        new = ds.assign_attrs(attrs)
        if params.subtract:
            arr = _dask_array(ds["data"])
            for s in lv.steps[i]:
                arr = (arr - s).astype(arr.dtype)
            new = new.assign(data=ds["data"].copy(data=arr))
        out.append(new)
    width = max(len(n) for n in levels)
    log.info("skymatch (%s, %s):\n%s", params.skymethod, params.skystat,
             "\n".join(f"  {n:<{width}}  {'-' if v is None else f'{v:.6g}'}" for n, v in levels.items()))
    return SkyMatchResult(images=out, levels=levels)
