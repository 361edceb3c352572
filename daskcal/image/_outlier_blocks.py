"""Block functions of outlier detection: one task's worth of numpy work each.

- :func:`drizzle_group`: single-drizzle one exposure group into its footprint
  window of the output grid, mask weights below the group threshold, write the
  window's tiles into the group's layer of the sparse Zarr stack.
- :func:`median_tile`: median of the layers that overlap one output tile.
- :func:`blot_and_flag`: blot a window of the median onto an input's grid and
  flag outliers there.

No dask here; WCSs travel as ASDF text (cached deserialisation).
"""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np

from daskcal.image._median import MedianComputer
from daskcal.image._median_kernels import nanmedian_stack
from daskcal.image._outlier_kernels import compute_weight_threshold, flag_crs, flag_resampled_crs

log = logging.getLogger(__name__)

__all__ = ["pixel_map", "footprint_window", "drizzle_weight", "drizzle_group", "median_tile", "blot_and_flag"]


def assemble(x):
    """An array from what a graph hands a task: an ndarray, or nested lists of blocks (np.block)."""
    if isinstance(x, list):
        return np.block(x)
    return x


def _wcs(text):
    from daskcal.image._dataset import wcs_from_text

    return wcs_from_text(text)


def pixel_map(in_wcs, out_wcs, shape, rows=None, cols=None):
    """Output-grid pixel coordinates (x, y) of input pixel centres, shape ``(ny, nx, 2)``.

    The input's bounding box applies (NaN outside it); the output's does not, as in
    the reference's ``calc_pixmap(..., disable_bbox="to")``. ``rows``/``cols``
    restrict the map to given input rows/columns (1-D index arrays).
    """
    if rows is None and cols is None:
        y, x = np.indices(shape, dtype=np.float64)
    else:
        rows = np.arange(shape[0]) if rows is None else np.asarray(rows)
        cols = np.arange(shape[1]) if cols is None else np.asarray(cols)
        y, x = np.meshgrid(rows.astype(np.float64), cols.astype(np.float64), indexing="ij")
    ra, dec = in_wcs(x, y)
    ox, oy = out_wcs.invert(ra, dec, with_bounding_box=False)
    return np.dstack([np.asarray(ox, dtype=np.float64), np.asarray(oy, dtype=np.float64)])


def footprint_window(in_wcs, out_wcs, shape, out_shape, margin):
    """Output-grid window ``(y0, y1, x0, x1)`` holding an input's footprint plus ``margin`` px.

    The extremes of a smooth map lie on the input's border, so only the border
    pixels are mapped. Returns None when the input misses the output grid.
    """
    ny, nx = shape
    edges = [
        pixel_map(in_wcs, out_wcs, shape, rows=[0, ny - 1]),
        pixel_map(in_wcs, out_wcs, shape, cols=[0, nx - 1]),
    ]
    xy = np.concatenate([e.reshape(-1, 2) for e in edges])
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


def drizzle_weight(dq, var_rnoise, weight_type, good_bits, exptime):
    """Per-pixel drizzle weight (float32): 0 for pixels whose DQ is not good.

    Parameters
    ----------
    dq : ndarray of uint32
        Data quality.
    var_rnoise : ndarray or None
        Read-noise variance (unit of data squared); used by ``"ivm"``.
    weight_type : {"ivm", "exptime", None}
        Inverse read-noise variance (1 where it is missing), the exposure time
        (s), or 1.
    good_bits : int, str or None
        DQ bits that do not make a pixel bad (astropy bitmask syntax, JWST names).
    exptime : float
        Measurement (or exposure) time (s) for ``"exptime"``.
    """
    from astropy.nddata.bitmask import bitfield_to_boolean_mask

    from daskcal.dq import dq_dict

    good = bitfield_to_boolean_mask(dq, good_bits, good_mask_value=1, dtype=np.uint8, flag_name_map=dq_dict())
    if weight_type == "ivm":
        if var_rnoise is None:
            return good.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.asarray(var_rnoise)
        inv[~np.isfinite(inv)] = 0
        return (inv * good).astype(np.float32)
    if weight_type == "exptime":
        return (np.float32(exptime) * good).astype(np.float32)
    return good.astype(np.float32)


def drizzle_group(members, window, out_wcs_text, params, layer, store, tiles):
    """Single-drizzle one exposure group; mask low weights; write its layer of the stack.

    Parameters
    ----------
    members : list of dict
        One dict per input of the group: ``data``, ``dq``, ``var_rnoise`` (or
        None), ``wcs`` (ASDF text), ``exptime`` (s).
    window : tuple of int
        ``(y0, y1, x0, x1)`` on the output grid containing every member's footprint.
    out_wcs_text : str
        Output WCS (ASDF text).
    params : OutlierParameters
        Drizzle and masking parameters.
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
    """
    from drizzle.resample import Drizzle

    y0, y1, x0, x1 = window
    out_wcs = _wcs(out_wcs_text)
    img = np.zeros((y1 - y0, x1 - x0), np.float32)
    wht = np.zeros((y1 - y0, x1 - x0), np.float32)
    driz = Drizzle(kernel=params.kernel, fillval="0", out_img=img, out_wht=wht, disable_ctx=True)
    for m in members:
        data = np.asarray(assemble(m["data"]), dtype=np.float32)
        var_rnoise = None if m["var_rnoise"] is None else assemble(m["var_rnoise"])
        weight = drizzle_weight(assemble(m["dq"]), var_rnoise, params.weight_type, params.good_bits, m["exptime"])
        pixmap = pixel_map(_wcs(m["wcs"]), out_wcs, data.shape)
        pixmap[..., 0] -= x0
        pixmap[..., 1] -= y0
        driz.add_image(data, exptime=m["exptime"], pixmap=pixmap, weight_map=weight, pixfrac=params.pixfrac, in_units="cps")
        del pixmap, weight
    threshold = compute_weight_threshold(wht, params.maskpt)
    img[wht == 0] = params.fill_value
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


def blot_and_flag(median, window, data, err, dq, in_wcs_text, out_wcs_text, params):
    """New DQ of one input: blot the median window onto its grid, compare and flag.

    Parameters
    ----------
    median : ndarray
        The median mosaic inside ``window`` ``(y0, y1, x0, x1)``.
    data, err, dq : ndarray
        The input exposure (``err`` total error, same unit as ``data``).
    in_wcs_text, out_wcs_text : str
        WCSs (ASDF text) of the input and of the median mosaic.
    params : OutlierParameters
        ``snr``, ``scale``, ``backg``.

    Returns
    -------
    ndarray of uint32
        ``dq | (OUTLIER | DO_NOT_USE)`` where an outlier was found.
    """
    from drizzle.resample import blot_image

    from daskcal.dq import DQ

    data, err, dq = np.asarray(assemble(data)), assemble(err), assemble(dq)
    median = None if median is None else assemble(median)
    blot = np.zeros(data.shape, np.float32)
    if window is not None:
        y0, y1, x0, x1 = window
        pixmap = pixel_map(_wcs(in_wcs_text), _wcs(out_wcs_text), data.shape)
        pixmap[np.isnan(pixmap)] = -1  # as the reference: tblot cannot take NaN
        pixmap[..., 0] -= x0
        pixmap[..., 1] -= y0
        blot_image(
            data=np.ascontiguousarray(median, dtype=np.float32), pixmap=pixmap, out_img=blot,
            fillval=0.0, iscale=1.0, interp="linear",
        )
        del pixmap
    mask = flag_resampled_crs(data, err, blot, params.snr[0], params.snr[1], params.scale[0], params.scale[1], params.backg)
    return _apply(dq, mask, DQ)


def flag_against_median(median, data, err, dq, params):
    """New DQ of one input compared with the median on its own grid (``resample_data=False``)."""
    from daskcal.dq import DQ

    mask = flag_crs(np.asarray(assemble(data)), np.asarray(assemble(err)), assemble(median), params.snr[0])
    return _apply(dq, mask, DQ)


def masked_for_median(data, dq, var_rnoise, params, exptime):
    """An input with pixels below its own weight threshold set to NaN (``resample_data=False``)."""
    var_rnoise = None if var_rnoise is None else assemble(var_rnoise)
    weight = drizzle_weight(assemble(dq), var_rnoise, params.weight_type, params.good_bits, exptime)
    threshold = compute_weight_threshold(weight, params.maskpt)
    out = np.array(assemble(data), dtype=np.float32, copy=True)
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        out[weight < threshold] = np.nan
    return out


def _apply(dq, mask, DQ):  # noqa: N803
    new = np.array(assemble(dq), dtype=np.uint32, copy=True)
    new[mask] |= np.uint32(DQ.OUTLIER | DQ.DO_NOT_USE)
    return new
