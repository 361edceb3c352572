"""Blocks of the resample graph: plain functions of NumPy arrays (no dask).

- :func:`drizzle_block` drizzles one block of one input into an output *window*
  that holds the block's whole footprint (drizzle's C kernel), for the data, the
  square roots of the variances and optionally the error array.
- :func:`input_partial` adds the windows of one input that touch one tile into
  tile arrays and turns them into that input's contribution (weighted sums,
  weights, context bits, variance sums), following the reference's per-input
  variance recipe.
- :func:`merge_partials` adds contributions pairwise; :func:`finalize_tile`
  divides them into the output planes.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import warnings

import numpy as np

__all__ = [
    "Window",
    "drizzle_block",
    "input_partial",
    "merge_partials",
    "finalize_tile",
    "compute_pixmap",
    "pixel_to_pixel",
    "weight_map",
]

log = logging.getLogger(__name__)
VAR_NAMES = ("var_rnoise", "var_flat", "var_poisson")


@dataclasses.dataclass
class Window:
    """One block of one input drizzled into an output window at ``(oy, ox)``.

    ``wht`` is the drizzle weight; ``img`` the weighted means of the data, of
    sqrt(variance) per name in ``var`` and of the error (``err``); ``ctx`` where
    the block contributed; ``dq`` the OR of contributing DQ.
    """

    oy: int
    ox: int
    wht: np.ndarray
    img: np.ndarray
    var: dict
    err: np.ndarray | None
    ctx: np.ndarray | None
    dq: np.ndarray | None


def weight_map(data, dq, arrays: dict, weight_type: str | None, good_bits: int, tmeasure: float):
    """The reference's per-pixel drizzle weight: DQ mask times the weight type's value."""
    from astropy.nddata.bitmask import bitfield_to_boolean_mask

    mask = bitfield_to_boolean_mask(dq, good_bits, good_mask_value=1, dtype=np.uint8)
    if weight_type in ("ivm", "ivm-sky"):
        name = "var_rnoise" if weight_type == "ivm" else "var_sky"
        var = arrays.get(name)
        if var is None:
            inv = np.ones(data.shape, np.float32)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                inv = 1.0 / var
            inv[~np.isfinite(inv)] = 0
        result = inv * mask
    elif weight_type == "exptime":
        result = np.float32(tmeasure) * mask
    else:
        result = mask
    return result.astype(np.float32)


def pixel_to_pixel(wcs_in, wcs_out, x, y):
    """Output pixel (x, y) of input pixels (x, y), ignoring both bounding boxes.

    Evaluates the transforms with ``with_bounding_box=False`` instead of clearing
    the WCSs' bounding boxes (as the reference does): the WCS objects are cached
    and shared by the threads of a worker, so they must never be modified.
    """
    ra, dec = wcs_in(x, y, with_bounding_box=False)
    ox, oy = wcs_out.invert(ra, dec, with_bounding_box=False)
    return np.asarray(ox, np.float64), np.asarray(oy, np.float64)


def compute_pixmap(wcs_in, wcs_out, y0, y1, x0, x1, coarse=None, order=1):
    """Pixel map ``(ny, nx, 2)`` (output x, y) of input rows y0:y1, columns x0:x1.

    ``coarse`` = (yc, xc, px, py): a whole-input coarse grid to interpolate with
    bivariate splines as the reference does for ``pixmap_stepsize > 1``.
    """
    if coarse is None:
        y, x = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        ox, oy = pixel_to_pixel(wcs_in, wcs_out, x, y)
    else:
        from scipy import interpolate

        yc, xc, px, py = coarse
        fx = interpolate.RectBivariateSpline(yc, xc, px, kx=order, ky=order)
        fy = interpolate.RectBivariateSpline(yc, xc, py, kx=order, ky=order)
        yy, xx = np.arange(y0, y1, dtype=np.float64), np.arange(x0, x1, dtype=np.float64)
        ox, oy = fx(yy, xx), fy(yy, xx)
    return np.dstack([ox, oy])


def _new_drizzle(kernel, shape, ctx):
    from drizzle.resample import Drizzle

    img = np.zeros(shape, np.float32)
    wht = np.zeros(shape, np.float32)
    kw = {"kernel": kernel, "fillval": "0", "out_shape": shape, "out_img": img, "out_wht": wht}
    if ctx:
        kw["out_ctx"] = np.zeros((1, *shape), np.int32)
    else:
        kw["disable_ctx"] = True
    return Drizzle(**kw)


_ADD_PARAMS = None


def _add_image(driz, data, pixmap, weights, *, exptime, pixfrac, psr, bounds, dq=None):
    """``Drizzle.add_image`` for drizzle 2.2 and 3.x (``iscale``/``pixel_scale_ratio``)."""
    global _ADD_PARAMS
    if _ADD_PARAMS is None:
        _ADD_PARAMS = set(inspect.signature(driz.add_image).parameters)
    xmin, xmax, ymin, ymax = bounds
    kw = dict(exptime=exptime, pixmap=pixmap, weight_map=weights, wht_scale=1.0, pixfrac=pixfrac,
              in_units="cps", xmin=xmin, xmax=xmax, ymin=ymin, ymax=ymax)
    if "iscale" in _ADD_PARAMS:
        kw.update(iscale=1.0, pixel_scale_ratio=psr)
    else:  # pragma: no cover - older drizzle: `scale` sets the kernel size
        kw.update(scale=psr)
    if dq is not None:
        kw["dq"] = dq
    driz.add_image(data, **kw)


def drizzle_block(arrays: dict, pixmap, bounds, window, p: dict) -> Window:
    """Drizzle one input block (with a halo) into a window.

    Parameters
    ----------
    arrays : dict of ndarray
        ``data`` (sky already subtracted), ``weight`` and optionally ``dq``,
        ``err`` and the variances, all cut to the block plus its halo.
    pixmap : ndarray (ny, nx, 2)
        Output pixel coordinates of those pixels, relative to the window origin.
    bounds : (xmin, xmax, ymin, ymax)
        The block inside the cut (inclusive, 0-based), as drizzle takes them.
    window : (oy, ox, wy, wx)
        Window origin in the mosaic and its shape.
    p : dict
        ``kernel``, ``pixfrac``, ``psr``, ``exptime``, ``enable_ctx``, ``enable_var``,
        ``driz_err``, ``propagate_dq``.
    """
    oy, ox, wy, wx = window
    shape = (wy, wx)
    common = dict(exptime=p["exptime"], pixfrac=p["pixfrac"], psr=p["psr"], bounds=bounds)
    weights = arrays["weight"]
    main = _new_drizzle(p["kernel"], shape, p["enable_ctx"])
    dq = arrays.get("dq") if p["propagate_dq"] else None
    _add_image(main, arrays["data"], pixmap, weights, dq=dq, **common)
    var = {}
    if p["enable_var"]:
        for name in VAR_NAMES:
            v = arrays.get(name)
            if v is None:
                continue
            d = _new_drizzle(p["kernel"], shape, False)
            with np.errstate(invalid="ignore"):
                _add_image(d, np.sqrt(v), pixmap, weights, **common)
            var[name] = d.out_img
    err = None
    if p["driz_err"] and arrays.get("err") is not None:
        d = _new_drizzle(p["kernel"], shape, False)
        _add_image(d, arrays["err"], pixmap, weights, **common)
        err = d.out_img
    ctx = main.out_ctx[0] != 0 if p["enable_ctx"] else None
    return Window(oy, ox, main.out_wht, main.out_img, var, err, ctx,
                  main.out_dq if dq is not None else None)


def _overlap(win: Window, tile):
    ty0, ty1, tx0, tx1 = tile
    wy, wx = win.wht.shape
    y0, y1 = max(ty0, win.oy), min(ty1, win.oy + wy)
    x0, x1 = max(tx0, win.ox), min(tx1, win.ox + wx)
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0 - ty0, y1 - ty0), slice(x0 - tx0, x1 - tx0)), (slice(y0 - win.oy, y1 - win.oy), slice(x0 - win.ox, x1 - win.ox))


def input_partial(windows, tile, ctx_index: int | None, nplanes: int, p: dict) -> dict:
    """One input's contribution to one tile from the windows of its blocks.

    Parameters
    ----------
    windows : list of Window
        Windows of the input's blocks that touch the tile.
    tile : (y0, y1, x0, x1)
        The tile in mosaic pixels.
    ctx_index : int or None
        Context bit of this input (plane ``k // 32``, bit ``k % 32``).
    nplanes : int
        Context planes of the output.
    p : dict
        ``weight_type``, ``tmeasure`` (s), ``enable_var``, ``driz_err``, ``propagate_dq``.

    Returns
    -------
    dict
        ``swd`` (sum of weight x data), ``wht``, and as enabled ``swe`` (error),
        ``con`` (uint32 planes), ``dq``, ``vsum_<name>``, ``vwt_<name>``.
    """
    shape = (tile[1] - tile[0], tile[3] - tile[2])
    wht = np.zeros(shape, np.float64)
    swd = np.zeros(shape, np.float64)
    sv = {}
    swe = np.zeros(shape, np.float64) if p["driz_err"] else None
    ctx = np.zeros(shape, bool) if ctx_index is not None else None
    dq = np.zeros(shape, np.uint32) if p["propagate_dq"] else None
    for win in windows:
        ov = _overlap(win, tile)
        if ov is None:
            continue
        t, w = ov
        ww = win.wht[w].astype(np.float64)
        wht[t] += ww
        swd[t] += ww * win.img[w]
        for name, m in win.var.items():
            if name not in sv:
                sv[name] = np.zeros(shape, np.float64)
            sv[name][t] += ww * m[w]
        if swe is not None and win.err is not None:
            swe[t] += ww * win.err[w]
        if ctx is not None:
            ctx[t] |= win.ctx[w]
        if dq is not None and win.dq is not None:
            dq[t] |= win.dq[w]
    out = {"swd": swd, "wht": wht}
    if swe is not None:
        out["swe"] = swe
    if ctx is not None:
        con = np.zeros((nplanes, *shape), np.uint32)
        con[ctx_index // 32][ctx] = np.uint32(1) << np.uint32(ctx_index % 32)
        out["con"] = con
    if dq is not None:
        out["dq"] = dq
    if p["enable_var"]:
        _variance_contribution(out, sv, wht, p)
    return out


def _variance_contribution(out, sv, wht, p):
    """The reference's per-input variance step: square the drizzled sqrt(var), weight it."""
    covered = wht != 0
    means = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, s in sv.items():
            m = np.full(wht.shape, np.nan, np.float32)
            m[covered] = (s[covered] / wht[covered]).astype(np.float32)
            means[name] = m * m
    wtype = p["weight_type"]
    if wtype in ("ivm", "ivm-sky"):
        rn = means.get("var_rnoise")
        weight = np.zeros(wht.shape, np.float64)
        if rn is not None:
            good = (rn > 0) & np.isfinite(rn)
            weight[good] = np.reciprocal(rn[good])
        else:
            weight[:] = 1.0
    elif wtype == "exptime":
        weight = np.full(wht.shape, float(p["tmeasure"]))
    else:
        weight = np.ones(wht.shape)
    for name, v in means.items():
        mask = (v >= 0) & np.isfinite(v) & (weight > 0)
        vs = np.zeros(wht.shape, np.float64)
        vw = np.zeros(wht.shape, np.float64)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)
            vs[mask] = v[mask] * weight[mask] * weight[mask]
        vw[mask] = weight[mask]
        out[f"vsum_{name}"] = vs
        out[f"vwt_{name}"] = vw


def merge_partials(a: dict | None, b: dict | None) -> dict | None:
    """Add two contributions to the same tile (sums add, context and DQ bits OR)."""
    if a is None:
        return b
    if b is None:
        return a
    out = {}
    for k in a.keys() | b.keys():
        if k not in a:
            out[k] = b[k]
        elif k not in b:
            out[k] = a[k]
        elif k in ("con", "dq"):
            out[k] = a[k] | b[k]
        else:
            out[k] = a[k] + b[k]
    return out


def finalize_tile(part: dict | None, shape, nplanes: int, p: dict) -> dict:
    """Output planes of one tile from its merged contributions.

    ``p``: ``fillval`` (float), ``enable_ctx``, ``enable_var``, ``compute_err``,
    ``propagate_dq``, ``var_scale`` (1 / psr**2), ``err_scale`` (psr).
    """
    if part is None:
        part = {"swd": np.zeros(shape), "wht": np.zeros(shape)}
    wht = part["wht"]
    covered = wht != 0
    data = np.full(shape, p["fillval"], np.float32)
    data[covered] = (part["swd"][covered] / wht[covered]).astype(np.float32)
    out = {"data": data, "wht": wht.astype(np.float32)}
    if p["enable_ctx"]:
        con = part.get("con")
        if con is None:
            con = np.zeros((nplanes, *shape), np.uint32)
        out["con"] = con.view(np.int32)
    if p["enable_var"]:
        for name in VAR_NAMES:
            vw = part.get(f"vwt_{name}")
            v = np.full(shape, np.nan, np.float32)
            if vw is not None:
                ok = vw > 0
                v[ok] = (part[f"vsum_{name}"][ok] * p["var_scale"] / vw[ok] / vw[ok]).astype(np.float32)
            out[name] = v
    if p["compute_err"] == "from_var" and p["enable_var"]:
        stack = np.stack([out[n] for n in VAR_NAMES])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            err = np.sqrt(np.nansum(stack, axis=0)).astype(np.float32)
        err[np.all(np.isnan(stack), axis=0)] = np.nan
        out["err"] = err
    elif p["compute_err"] == "driz_err":
        err = np.full(shape, p["fillval"], np.float32)
        swe = part.get("swe")
        if swe is not None:
            err[covered] = (swe[covered] / wht[covered] / p["err_scale"]).astype(np.float32)
        out["err"] = err
    if p["propagate_dq"]:
        dq = part.get("dq")
        out["dq"] = np.zeros(shape, np.uint32) if dq is None else dq
    return out
