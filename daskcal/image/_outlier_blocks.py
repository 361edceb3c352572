"""Block functions of outlier detection: one task's worth of numpy work each.

- :func:`block_pixel_map`: the pixel map of one input block (rows plus a halo),
  computed once and used by both the block's drizzle and its blot.
- :func:`drizzle_block`: single-drizzle one input block into an output window
  holding its whole footprint (so drizzle never clips it).
- :func:`merge_group`: add a group's block sums, mask
  weights below the group threshold, write the window's tiles into the group's
  layer of the sparse Zarr stack.
- :func:`median_tile`: median of the layers that overlap one output tile.
- :func:`blot_block`: blot a window of the median onto an input block's rows.
- :func:`flag_bits`: an input's outliers against its blotted median, packed;
  :func:`with_outliers` applies them to a region of its DQ.

No dask here; WCSs travel as ASDF text (cached deserialisation).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from daskcal.image._driz import weight_map
from daskcal.image._median import MedianComputer
from daskcal.image._median_kernels import nanmedian_stack
from daskcal.image._outlier_kernels import compute_weight_threshold, flag_crs, flag_resampled_crs

log = logging.getLogger(__name__)

__all__ = [
    "pixel_map", "footprint_window", "block_windows", "row_blocks", "block_pixel_map", "drizzle_block",
    "merge_group", "median_tile", "blot_block", "flag_bits", "with_outliers",
]

#: Rows added each side of an input block so its edge pixels drizzle as in the whole input.
BLOCK_HALO = 2


def assemble(x):
    """An array from what a graph hands a task.

    An ndarray; nested lists of blocks (``np.block``); or a window of them,
    ``{"chunks": nested lists, "box": (y0, y1, x0, x1)}`` inside the assembled chunks.
    """
    if isinstance(x, dict):
        y0, y1, x0, x1 = x["box"]
        return assemble(x["chunks"])[y0:y1, x0:x1]
    if isinstance(x, list):
        return x[0][0] if len(x) == 1 and len(x[0]) == 1 else np.block(x)
    return x


def pixel_map(in_wcs, out_wcs, shape, rows=None, cols=None):
    """Output-grid pixel coordinates (x, y) of input pixel centres, shape ``(ny, nx, 2)``.

    The input's bounding box applies (NaN outside it); the output's does not, as in
    the reference's ``calc_pixmap(..., disable_bbox="to")``. ``rows``/``cols``
    restrict the map to given input rows/columns (1-D index arrays). The map is the
    resample engine's (:func:`daskcal.image._driz.pixel_to_pixel`: the WCS pair compiled
    into one program where its models are known, else gwcs).
    """
    from daskcal.image._driz import pixel_to_pixel
    from daskcal.image._grid import _bbox

    rows = np.arange(shape[0]) if rows is None else np.asarray(rows)
    cols = np.arange(shape[1]) if cols is None else np.asarray(cols)
    y, x = np.meshgrid(rows.astype(np.float64), cols.astype(np.float64), indexing="ij")
    ox, oy = pixel_to_pixel(in_wcs, out_wcs, x, y)
    out = np.empty((rows.size, cols.size, 2), np.float64)
    out[..., 0], out[..., 1] = ox, oy
    if in_wcs.bounding_box is not None:
        (x0, x1), (y0, y1) = _bbox(in_wcs, shape)
        outside = (x < x0) | (x > x1) | (y < y0) | (y > y1)
        out[outside] = np.nan
    return out


def footprint_window(in_wcs, out_wcs, shape, out_shape, margin, rows=None):
    """Output-grid window ``(y0, y1, x0, x1)`` holding an input's footprint plus ``margin`` px.

    ``rows`` = ``(r0, r1)`` restricts it to the footprint of input rows r0:r1.
    The extremes of a smooth map lie on the border of the mapped rectangle, so
    only its border pixels are mapped. Returns None when it misses the output grid.
    """
    return block_windows(in_wcs, out_wcs, shape, out_shape, margin, [(0, shape[0]) if rows is None else rows])[0]


def block_windows(in_wcs, out_wcs, shape, out_shape, margin, row_ranges):
    """:func:`footprint_window` of several row ranges of one input, from one evaluation of the WCS."""
    ny, nx = shape
    edge_rows = sorted({r for r0, r1 in row_ranges for r in (r0, r1 - 1)})
    across = pixel_map(in_wcs, out_wcs, shape, rows=edge_rows)  # (len(edge_rows), nx, 2)
    sides = pixel_map(in_wcs, out_wcs, shape, cols=[0, nx - 1])  # (ny, 2, 2)
    where = {r: i for i, r in enumerate(edge_rows)}
    out = []
    for r0, r1 in row_ranges:
        xy = np.concatenate([across[[where[r0], where[r1 - 1]]].reshape(-1, 2), sides[r0:r1].reshape(-1, 2)])
        out.append(_window_of(xy, margin, out_shape))
    return out


def _window_of(xy, margin, out_shape):
    xy = xy[np.all(np.isfinite(xy), axis=1)]
    if xy.size == 0:
        return None
    x0 = max(math.floor(xy[:, 0].min()) - margin, 0)
    x1 = min(math.ceil(xy[:, 0].max()) + margin + 1, out_shape[1])
    y0 = max(math.floor(xy[:, 1].min()) - margin, 0)
    y1 = min(math.ceil(xy[:, 1].max()) + margin + 1, out_shape[0])
    if x0 >= x1 or y0 >= y1:
        return None
    return (int(y0), int(y1), int(x0), int(x1))


def row_blocks(ny, rows, halo=BLOCK_HALO):
    """Cut ``ny`` input rows into near-equal blocks of at most ``rows``.

    Returns a list of ``(r0, r1, c0, c1)``: the block's rows and the rows of its
    cut (the block plus ``halo`` rows each side, within the input). Drizzle
    places a pixel's corners half-way to its neighbours' mapped centres, so the
    halo makes a block's edge pixels land exactly as in a whole-input drizzle.
    """
    n = max(1, math.ceil(ny / max(int(rows), 1)))
    edges = np.linspace(0, ny, n + 1).round().astype(int).tolist()
    return [(a, b, max(a - halo, 0), min(b + halo, ny)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def block_pixel_map(source, bbox, shape, cut_rows):
    """Pixel map (output x, y; float64) of input rows ``cut_rows`` = ``(c0, c1)``, all columns.

    The one pixel map of a block: its drizzle and its blot both use it. ``source``: the input and output
    WCSs as :func:`daskcal.image._driz.pixmap_source` gives them (by the graph's builder). ``bbox``: the
    input's bounding box ``((x0, x1), (y0, y1))`` (NaN outside it), or None.
    """
    from daskcal.image._driz import pixmap_from_source

    c0, c1 = cut_rows
    pm = pixmap_from_source(source, c0, c1, 0, shape[1])
    if bbox is not None:
        (x0, x1), (y0, y1) = bbox
        rows, cols = np.arange(c0, c1), np.arange(shape[1])
        pm[(rows < y0) | (rows > y1)] = np.nan
        pm[:, (cols < x0) | (cols > x1)] = np.nan
    return pm


def drizzle_block(data, dq, var_rnoise, pixmap, block, window, params, exptime, level):
    """Single-drizzle one input block (rows of a cut) into its output window.

    Parameters
    ----------
    data, dq, var_rnoise : ndarray or nested lists of blocks
        The cut's rows of the input; ``var_rnoise`` is the variance the weight type
        uses (``var_sky`` for ``"ivm-sky"``) and may be None.
    pixmap : ndarray, shape (nrows, nx, 2)
        :func:`block_pixel_map` of the cut (absolute output pixels).
    block : (int, int)
        The block's first and last+1 rows inside the cut; the halo rows only
        shape the corners of the edge pixels.
    window : (y0, y1, x0, x1)
        Output window holding the block's whole footprint plus a margin, so
        drizzle never clips it.
    params : OutlierParameters
        ``kernel``, ``pixfrac``, ``weight_type``, ``good_bits``.
    exptime : float
        Exposure time (s) for drizzle and the ``"exptime"`` weight.
    level : float
        Sky level (unit of data) subtracted before drizzling (0 when none).

    Returns
    -------
    tuple
        ``(window, swd, wht)``: the window, the sum of weight x data and the
        sum of weights over it (float64, 0 where nothing landed): sums, so a
        group's parts add without dividing and multiplying back.
    """
    from daskcal.image._driz import ONE_PASS_KERNELS, DrizzleSpec, drizzle_block as drizzle_window

    y0, y1, x0, x1 = window
    data = np.asarray(assemble(data), dtype=np.float32)
    if level:
        data = data - np.float32(level)
    var_rnoise = None if var_rnoise is None else assemble(var_rnoise)
    weight = weight_map(assemble(dq), params.weight_type, params.good_bits, exptime, var_rnoise=var_rnoise,
                        var_sky=var_rnoise)
    pm = pixmap  # computed inside this task for it alone (see _outliers._plan_input): shifted in place
    pm -= np.array([x0, y0], dtype=np.float64)
    nx = data.shape[1]
    bounds = (0, nx - 1, block[0], block[1] - 1)
    if params.kernel in ONE_PASS_KERNELS:  # the kernel's own sums: nothing divided here and multiplied back
        from daskcal.image._dkernel import drizzle_window as one_pass

        res = one_pass(data, weight, pm, bounds, (y1 - y0, x1 - x0), kernel=params.kernel,
                       pixfrac=float(params.pixfrac), want_ctx=False)
        return window, res.swd, res.wht
    spec = DrizzleSpec(kernel=params.kernel, pixfrac=float(params.pixfrac), psr=1.0, weight_type="none",
                       good_bits=None, enable_ctx=False, enable_var=False, compute_err=None, propagate_dq=False,
                       fillval=0.0)
    win = drizzle_window({"data": data, "weight": weight}, pm, bounds, (y0, x0, y1 - y0, x1 - x0), spec, exptime)
    wht = np.asarray(win.wht, np.float64)
    return window, np.asarray(win.img, np.float64) * wht, wht


def merge_group(parts, window, params, layer, store, tiles):
    """Merge a group's block windows, mask low weights, write the group's layer of the stack.

    Parameters
    ----------
    parts : list of tuple
        :func:`drizzle_block` results of every block of every member of the group.
    window : (y0, y1, x0, x1)
        Output window holding every part.
    params : OutlierParameters
        ``maskpt``, ``fillval``.
    layer : int
        Index of the group in the stack.
    store : str
        Path of the Zarr stack ``(ngroups, ny, nx)`` (fill NaN, chunks = tiles).
    tiles : list of tuple
        Tiles ``(y0, y1, x0, x1)`` (chunk-aligned) that the window touches.

    Returns
    -------
    float
        The group's weight threshold.

    Notes
    -----
    The parts are sums (of weight x data and of weight, float64) and add as
    such, which equals one drizzle of the whole group up to float32 rounding.
    """
    from daskcal.image._outlier_kernels import add_sums, group_means

    y0, y1, x0, x1 = window
    shape = (y1 - y0, x1 - x0)
    if len(parts) == 1 and parts[0][0] == window:
        num, wsum = parts[0][1], parts[0][2]
    else:
        num = np.zeros(shape, np.float64)
        wsum = np.zeros(shape, np.float64)
        for (wy0, _, wx0, _), swd, wht in parts:
            add_sums(num, wsum, wy0 - y0, wx0 - x0, swd, wht)
    del parts
    img = np.empty(shape, np.float32)
    wht = np.empty(shape, np.float32)
    group_means(num, wsum, np.float32(params.fill_value), img, wht)
    del num, wsum
    threshold = compute_weight_threshold(wht, params.maskpt)
    with np.errstate(invalid="ignore"):
        img[wht < threshold] = np.nan
    del wht
    _write_layer(store, layer, img, window, tiles)
    return threshold


def _write_layer(store, layer, img, window, tiles):
    import zarr

    arr = zarr.open_array(store, mode="r+")
    y0, y1, x0, x1 = window
    for ty0, ty1, tx0, tx1 in tiles:
        chunk = np.full((ty1 - ty0, tx1 - tx0), np.nan, np.float32)
        a0, a1 = max(ty0, y0), min(ty1, y1)
        b0, b1 = max(tx0, x0), min(tx1, x1)
        part = img[a0 - y0 : a1 - y0, b0 - x0 : b1 - x0]
        if not np.isfinite(part).any():
            continue  # an all-NaN chunk reads back as the fill value: leave it unwritten
        chunk[a0 - ty0 : a1 - ty0, b0 - tx0 : b1 - tx0] = part
        arr[layer, ty0:ty1, tx0:tx1] = chunk


def median_tile(store, tile, layers, budget, in_memory, tempdir, *_deps):
    """Median of the given layers of the stack over one tile (float32, NaN where none).

    The layers are read into memory when ``len(layers)`` tiles fit ``budget``
    bytes (or ``in_memory``), otherwise streamed through an on-disk
    :class:`~daskcal.image._median.MedianComputer` with ``budget`` as its buffer.
    """
    import zarr

    ty0, ty1, tx0, tx1 = tile
    shape = (ty1 - ty0, tx1 - tx0)
    if not layers:
        return np.full(shape, np.nan, np.float32)
    arr = zarr.open_array(store, mode="r")
    nbytes = len(layers) * shape[0] * shape[1] * 4
    if in_memory or nbytes <= budget:
        stack = np.empty((len(layers), *shape), np.float32)
        for k, g in enumerate(layers):
            stack[k] = arr[g, ty0:ty1, tx0:tx1]
        return nanmedian_stack(stack)
    mc = MedianComputer((len(layers), *shape), in_memory=False, buffer_size=int(budget), tempdir=tempdir)
    try:
        for g in layers:
            mc.append(arr[g, ty0:ty1, tx0:tx1])
        return mc.evaluate()
    finally:
        mc.cleanup()


def blot_block(median, window, pixmap, block):
    """Blot the median window onto the rows ``block`` (inside the cut) of an input.

    Parameters
    ----------
    median : ndarray or nested lists of blocks, or None
        The median mosaic inside ``window`` ``(y0, y1, x0, x1)``; None when the
        input misses the output grid (the blot is then 0).
    pixmap : ndarray, shape (nrows, nx, 2)
        :func:`block_pixel_map` of the block's cut.
    block : (int, int)
        The block's rows inside the cut.

    Returns
    -------
    ndarray of float32
        The blotted median on the block's rows (``drizzle.resample.blot_image``,
        linear, fill 0, intensity scale 1, as the reference's ``gwcs_blot``).
    """
    from drizzle.resample import blot_image

    b0, b1 = block
    out = np.zeros((b1 - b0, pixmap.shape[1]), np.float32)
    if median is None or window is None:
        return out
    y0, y1, x0, x1 = window
    pm = np.array(pixmap[b0:b1], dtype=np.float64, copy=True)
    pm[np.isnan(pm)] = -1  # as the reference: tblot cannot take NaN
    pm[..., 0] -= x0
    pm[..., 1] -= y0
    med = np.ascontiguousarray(assemble(median), dtype=np.float32)
    blot_image(data=med, pixmap=pm, out_img=out, fillval=0.0, iscale=1.0, interp="linear")
    return out


def outlier_mask(blots, data, err, backg, params):
    """The outliers of one input (bool, its shape) from its blotted median (row blocks in order) and
    ``flag_resampled_crs``; ``backg`` (unit of data) is subtracted from each difference."""
    data, err = np.asarray(assemble(data)), np.asarray(assemble(err))
    blot = blots[0] if len(blots) == 1 else np.concatenate(blots, axis=0)
    return flag_resampled_crs(data, err, blot, params.snr[0], params.snr[1], params.scale[0], params.scale[1], backg)


def flag_bits(blots, data, err, backg, params):
    """The outliers of one input packed 8 pixels a byte (``numpy.packbits`` of the flattened mask).

    What the flag task of an input returns: 1/32 of its DQ (128 KiB for 1024^2), so the flags
    of every exposure can wait for the tasks that apply them (crf writes, resample's leaves,
    which read the DQ they cover themselves) without holding whole-exposure DQ arrays.
    """
    return np.packbits(outlier_mask(blots, data, err, backg, params), axis=None)


def with_outliers(dq, bits, region, shape):
    """``dq`` (the DQ in ``region`` of an input of ``shape``) with OUTLIER | DO_NOT_USE where ``bits``
    (from :func:`flag_bits`) flags a pixel; a new uint32 array."""
    from daskcal.dq import DQ

    (y0, y1), (x0, x1) = ((s.start, s.stop) for s in region)
    return _apply(dq, _unpack_rows(bits, y0, y1, shape[1])[:, x0:x1].view(bool), DQ)


def _unpack_rows(bits, y0, y1, nx):
    """Rows ``y0:y1`` (of width ``nx``) of a mask packed by :func:`flag_bits`."""
    first, last = y0 * nx, y1 * nx
    b0 = first // 8
    flat = np.unpackbits(bits[b0:(last + 7) // 8])
    return flat[first - 8 * b0:last - 8 * b0].reshape(y1 - y0, nx)


def flag_against_median(median, data, err, dq, params):
    """New DQ of one input compared with the median on its own grid (``resample_data=False``)."""
    from daskcal.dq import DQ

    mask = flag_crs(np.asarray(assemble(data)), np.asarray(assemble(err)), assemble(median), params.snr[0])
    return _apply(dq, mask, DQ)


def masked_for_median(data, dq, var_rnoise, params, exptime):
    """An input with pixels below its own weight threshold set to NaN (``resample_data=False``)."""
    var_rnoise = None if var_rnoise is None else assemble(var_rnoise)
    weight = weight_map(assemble(dq), params.weight_type, params.good_bits, exptime, var_rnoise=var_rnoise,
                        var_sky=var_rnoise)
    threshold = compute_weight_threshold(weight, params.maskpt)
    out = np.array(assemble(data), dtype=np.float32, copy=True)
    # (np.errstate is per thread; warnings.catch_warnings, which this held with no filter in it, changes the
    # process's filters and restores them on exit over what other threads set meanwhile)
    with np.errstate(invalid="ignore"):
        out[weight < threshold] = np.nan
    return out


def _apply(dq, mask, DQ):  # noqa: N803
    new = np.array(assemble(dq), dtype=np.uint32, copy=True)
    new[mask] |= np.uint32(DQ.OUTLIER | DQ.DO_NOT_USE)
    return new
