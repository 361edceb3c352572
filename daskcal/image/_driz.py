"""The drizzle engine's blocks: plain functions of NumPy arrays (no dask), shared by resample and outliers.

- :class:`DrizzleSpec`: the parameters, typed, from the public functions to the kernels;
  :data:`KERNELS`, :data:`WEIGHT_TYPES`: the one list of each.
- :func:`compute_pixmap` / :func:`pixel_to_pixel`: the pixel map (the WCS pair compiled by
  :mod:`daskcal.image._pixmap`, gwcs for models it does not know); :func:`pixmap_source` is what a
  task takes to compute it (:func:`pixmap_from_source`) without parsing a WCS.
- :func:`weight_map`: the reference's per-pixel drizzle weight.
- :func:`drizzle_block` drizzles one block of one input into an output *window*
  that holds the block's whole footprint: one GIL-free pass for square and point
  (:mod:`daskcal.image._dkernel`), drizzle's C kernel per plane for the others.
- :func:`cut_pieces` cuts a window into its parts per output tile.
- :class:`TileSums`: one input's (or several inputs') sums over a box of a tile
  (weighted sums, weights, context bits, and variance sums following the
  reference's per-input variance recipe); partial sums merge pairwise
  (:meth:`TileSums.merge`) and :meth:`TileSums.finalize` divides them into the
  output planes.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math

import numpy as np
from numba import njit

__all__ = [
    "KERNELS",
    "WEIGHT_TYPES",
    "DrizzleSpec",
    "Sums",
    "TileSums",
    "Window",
    "compute_pixmap",
    "cut_pieces",
    "drizzle_block",
    "pixel_to_pixel",
    "pixmap_from_source",
    "pixmap_source",
    "weight_map",
]

log = logging.getLogger(__name__)
VAR_NAMES = ("var_rnoise", "var_flat", "var_poisson")
#: Output planes of the variances' running weights (the reference's per-variance weight sums), one per
#: :data:`VAR_NAMES` entry: with the variance planes they are the state that adding inputs later needs.
VWT_NAMES = ("vwt_rnoise", "vwt_flat", "vwt_poisson")


@dataclasses.dataclass
class Window:
    """One block of one input drizzled into an output window at ``(oy, ox)``.

    ``wht`` is the drizzle weight; ``img`` the weighted means of the data, of
    sqrt(variance) per name in ``var`` and of the error (``err``) (float64 from the
    one-pass kernel, float32 from drizzle's); ``ctx`` where the block contributed;
    ``dq`` the OR of contributing DQ.
    """

    oy: int
    ox: int
    wht: np.ndarray
    img: np.ndarray
    var: dict
    err: np.ndarray | None
    ctx: np.ndarray | None
    dq: np.ndarray | None


@dataclasses.dataclass
class Sums:
    """One block of one input drizzled by the one-pass kernel onto the part of a tile it reaches, at ``(oy, ox)``:
    its float64 sums before any division (``swv[k]``: weighted sqrt-variance or error named ``planes[k]``)."""

    oy: int
    ox: int
    wht: np.ndarray
    swd: np.ndarray
    swv: np.ndarray | None
    planes: tuple
    ctx: np.ndarray | None
    dq: np.ndarray | None
    _buf: np.ndarray | None = None  # the pooled buffer its arrays are views of, if any

    def release(self) -> None:
        """Give its buffer back for other sums (:class:`_BufferPool`); its arrays can no longer be used."""
        buf, self._buf = self._buf, None
        self.wht = self.swd = self.swv = self.ctx = self.dq = None
        if buf is not None:
            _POOL.give(buf)

    @classmethod
    def union(cls, pieces) -> Sums:
        """The sums of one input's blocks that meet in a tile (their seams), over the union of their boxes:
        what one drizzle of the whole input gives."""
        y0, y1, x0, x1 = _box_of(pieces)
        first = pieces[0]

        def zeros(a):
            return None if a is None else np.zeros((*a.shape[:-2], y1 - y0, x1 - x0), a.dtype)

        out = cls(y0, x0, zeros(first.wht), zeros(first.swd), zeros(first.swv), first.planes, zeros(first.ctx),
                  zeros(first.dq))
        for pc in pieces:
            s = (slice(pc.oy - y0, pc.oy - y0 + pc.wht.shape[0]), slice(pc.ox - x0, pc.ox - x0 + pc.wht.shape[1]))
            out.wht[s] += pc.wht
            out.swd[s] += pc.swd
            if out.swv is not None:
                out.swv[:, s[0], s[1]] += pc.swv
            if out.ctx is not None:
                out.ctx[s] |= pc.ctx
            if out.dq is not None:
                out.dq[s] |= pc.dq
        return out


def _box_of(pieces) -> tuple[int, int, int, int]:
    """The box ``(y0, y1, x0, x1)`` of the mosaic that pieces (:class:`Window` or :class:`Sums`) cover together."""
    return (min(pc.oy for pc in pieces), max(pc.oy + pc.wht.shape[0] for pc in pieces),
            min(pc.ox for pc in pieces), max(pc.ox + pc.wht.shape[1] for pc in pieces))


#: Drizzle weight types, as the reference names them (None is "none").
WEIGHT_TYPES = ("ivm", "ivm-sky", "exptime", "none")
#: Drizzle kernels.
KERNELS = ("square", "point", "turbo", "gaussian", "lanczos2", "lanczos3")


def weight_map(dq, weight_type: str | None, good_bits, tmeasure: float, *, var_rnoise=None, var_sky=None):
    """The reference's per-pixel drizzle weight (float32): the good-DQ mask times the weight type's value.

    Parameters
    ----------
    dq : ndarray of uint32
        Data quality.
    weight_type : {"ivm", "ivm-sky", "exptime", "none", None}
        Inverse read-noise variance (``var_rnoise``; 1 where it is missing), inverse
        sky variance (``var_sky``), the measurement time (s), or 1.
    good_bits : int, str or None
        DQ bits that do not make a pixel bad (astropy bitmask syntax, JWST names).
    tmeasure : float
        Measurement (else exposure) time (s) for ``"exptime"``.
    var_rnoise, var_sky : ndarray, optional
        Variances (unit of data squared); non-finite or zero variances give weight 0.
    """
    from astropy.nddata.bitmask import bitfield_to_boolean_mask

    from daskcal.dq import dq_dict

    mask = bitfield_to_boolean_mask(dq, good_bits, good_mask_value=1, dtype=np.uint8, flag_name_map=dq_dict())
    if weight_type in ("ivm", "ivm-sky"):
        var = var_rnoise if weight_type == "ivm" else var_sky
        if var is None:
            return mask.astype(np.float32)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.asarray(var)
        inv[~np.isfinite(inv)] = 0
        return (inv * mask).astype(np.float32)
    if weight_type == "exptime":
        return (np.float32(tmeasure) * mask).astype(np.float32)
    return mask.astype(np.float32)


def pixel_to_pixel(wcs_in, wcs_out, x, y):
    """Output pixel (x, y) of input pixels (x, y), ignoring both bounding boxes.

    The pair of WCSs compiled into one program (:func:`daskcal.image._pixmap.compile_pixel_map`:
    every model JWST, Roman and HST imaging WCSs use; 0.012-0.067 s of CPU for a 2048^2 map
    against gwcs's 1.1-2.0 s, within 1e-8 px of it), else gwcs with ``with_bounding_box=False``
    (the WCS objects are cached and shared by a worker's threads, so their bounding boxes
    are never cleared as the reference does).
    """
    from daskcal.image._pixmap import compile_pixel_map

    program = compile_pixel_map(wcs_in, wcs_out)
    if program is not None:
        return program(x, y)
    ra, dec = wcs_in(x, y, with_bounding_box=False)
    ox, oy = wcs_out.invert(ra, dec, with_bounding_box=False)
    return np.asarray(ox, np.float64), np.asarray(oy, np.float64)


def compute_pixmap(wcs_in, wcs_out, y0, y1, x0, x1, coarse=None, order=1):
    """Pixel map ``(ny, nx, 2)`` (output x, y) of input rows y0:y1, columns x0:x1.

    ``coarse`` = (yc, xc, px, py): a whole-input coarse grid to interpolate with
    bivariate splines as the reference does for ``pixmap_stepsize > 1``.
    """
    from daskcal.image._pixmap import compile_pixel_map

    pixmap = np.empty((y1 - y0, x1 - x0, 2), np.float64)
    program = compile_pixel_map(wcs_in, wcs_out) if coarse is None else None
    if program is not None:
        program.grid(y0, y1, x0, x1, out=pixmap)
    elif coarse is None:
        x = np.broadcast_to(np.arange(x0, x1, dtype=np.float64), (y1 - y0, x1 - x0))
        y = np.broadcast_to(np.arange(y0, y1, dtype=np.float64)[:, None], (y1 - y0, x1 - x0))
        pixmap[..., 0], pixmap[..., 1] = pixel_to_pixel(wcs_in, wcs_out, x, y)
    else:
        from scipy import interpolate

        yc, xc, px, py = coarse
        fx = interpolate.RectBivariateSpline(yc, xc, px, kx=order, ky=order)
        fy = interpolate.RectBivariateSpline(yc, xc, py, kx=order, ky=order)
        yy, xx = np.arange(y0, y1, dtype=np.float64), np.arange(x0, x1, dtype=np.float64)
        pixmap[..., 0], pixmap[..., 1] = fx(yy, xx), fy(yy, xx)
    return pixmap


def pixmap_source(wcs_in, wcs_out, text_in: str, text_out: str):
    """What a task takes to compute pixel maps of ``wcs_in`` -> ``wcs_out`` (:func:`pixmap_from_source`).

    The pair compiled into one program (:class:`~daskcal.image._pixmap.PixelMapProgram`, picklable, a few
    KB), else (a model the compiler does not know) the two WCSs as ASDF text, ``(text_in, text_out)``, for
    gwcs in the task. Tasks that parsed the WCSs themselves spent, in each worker, ~0.7 s on asdf's and
    astropy.modeling's first use and then ~20-30 ms per WCS, on the critical path of a fresh cluster's
    first run, and each carried both texts (12 KB each for a JWST-like gwcs).
    """
    from daskcal.image._pixmap import compile_pixel_map

    program = compile_pixel_map(wcs_in, wcs_out)
    return program if program is not None else (text_in, text_out)


def pixmap_from_source(source, y0, y1, x0, x1, coarse=None, order=1):
    """:func:`compute_pixmap` of input rows y0:y1, columns x0:x1 from a :func:`pixmap_source` (None, or
    ignored, with ``coarse``)."""
    if coarse is not None:
        return compute_pixmap(None, None, y0, y1, x0, x1, coarse=coarse, order=order)
    if isinstance(source, tuple):  # only gwcs maps this pair
        from daskcal.image._dataset import wcs_from_text

        return compute_pixmap(wcs_from_text(source[0]), wcs_from_text(source[1]), y0, y1, x0, x1)
    return source.grid(y0, y1, x0, x1)


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


def drizzle_block(arrays: dict, pixmap, bounds, window, spec: DrizzleSpec, exptime: float,
                  keep=None) -> Window | Sums | None:
    """Drizzle one input block (with a halo) into a window; with ``keep``, return only the window's part in it.

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
    spec : DrizzleSpec
        Kernel, pixfrac, pixel scale ratio and which planes to drizzle.
    exptime : float
        The input's exposure time (s).
    keep : (y0, y1, x0, x1), optional
        A box of the mosaic (a tile): the result is the window's part in it (contiguous arrays;
        None where they do not meet); from the one-pass kernel, its undivided :class:`Sums`.
    """
    oy, ox, wy, wx = window
    shape = (wy, wx)
    if spec.kernel in ONE_PASS_KERNELS:
        return _drizzle_one_pass(arrays, pixmap, bounds, window, spec, keep)
    common = dict(exptime=exptime, pixfrac=spec.pixfrac, psr=spec.psr, bounds=bounds)
    weights = arrays["weight"]
    main = _new_drizzle(spec.kernel, shape, spec.enable_ctx)
    dq = arrays.get("dq") if spec.propagate_dq else None
    _add_image(main, arrays["data"], pixmap, weights, dq=dq, **common)
    var = {}
    if spec.enable_var:
        for name in VAR_NAMES:
            v = arrays.get(name)
            if v is None:
                continue
            d = _new_drizzle(spec.kernel, shape, False)
            with np.errstate(invalid="ignore"):
                _add_image(d, np.sqrt(v), pixmap, weights, **common)
            var[name] = d.out_img
    err = None
    if spec.driz_err and arrays.get("err") is not None:
        d = _new_drizzle(spec.kernel, shape, False)
        _add_image(d, arrays["err"], pixmap, weights, **common)
        err = d.out_img
    ctx = main.out_ctx[0] != 0 if spec.enable_ctx else None
    win = Window(oy, ox, main.out_wht, main.out_img, var, err, ctx, main.out_dq if dq is not None else None)
    return win if keep is None else cut_pieces(win, [keep])[0]


#: Kernels drizzled in one GIL-free pass (:mod:`daskcal.image._dkernel`); the others use drizzle's C kernel,
#: once for the data and once per variance plane.
ONE_PASS_KERNELS = ("square", "point")


def _drizzle_one_pass(arrays: dict, pixmap, bounds, window, spec: DrizzleSpec, keep=None) -> Window | Sums | None:
    """:func:`drizzle_block` for the square and point kernels: data, weights, sqrt-variances, context and DQ
    from one computation of each input pixel's overlaps (equal to drizzle's C kernel to float rounding).

    With ``keep``, the undivided :class:`Sums` over the part of the window in it (:meth:`TileSums.add_input`
    divides and adds them in one pass)."""
    from daskcal.image._dkernel import drizzle_window

    oy, ox, wy, wx = window
    names = [n for n in VAR_NAMES if spec.enable_var and arrays.get(n) is not None]
    planes = list(names)
    if spec.driz_err and arrays.get("err") is not None:
        planes.append("err")
    sqrt_var = None
    if planes:
        ny, nx = arrays["data"].shape
        sqrt_var = np.empty((len(planes), ny, nx), np.float32)
        with np.errstate(invalid="ignore"):
            for k, n in enumerate(planes):
                sqrt_var[k] = arrays["err"] if n == "err" else np.sqrt(arrays[n])
    dq = arrays.get("dq") if spec.propagate_dq else None
    box = buf = outputs = None
    if keep is not None:  # sums over the part in ``keep`` only (drizzle still clips to the whole window)
        found = _overlap(oy, ox, (wy, wx), keep)
        if found is None:
            return None
        oy, ox, (sy, sx) = found
        box = (sy.start, sy.stop, sx.start, sx.stop)
        shape = (sy.stop - sy.start, sx.stop - sx.start)
        plan = [("wht", np.float64, shape), ("swd", np.float64, shape), ("swv", np.float64, (len(planes), *shape)),
                ("ctx", np.bool_, shape if spec.enable_ctx else (0, 0)),
                ("dq", np.uint32, shape if dq is not None else (0, 0))]
        buf, outputs = _POOL.carve(plan)  # given back when TileSums.add_input has added them
    res = drizzle_window(np.asarray(arrays["data"], np.float32), np.asarray(arrays["weight"], np.float32),
                         pixmap, bounds, (wy, wx), kernel=spec.kernel, pixfrac=spec.pixfrac, sqrt_var=sqrt_var,
                         dq=None if dq is None else np.asarray(dq, np.uint32), want_ctx=spec.enable_ctx, keep=box,
                         outputs=None if outputs is None else list(outputs.values()))
    wht, swd, swv, ctx, dq = res.wht, res.swd, res.swv, res.ctx, res.dq
    if keep is not None:
        return Sums(oy, ox, wht, swd, swv, tuple(planes), ctx, dq, buf)
    covered = wht != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.where(covered, 1.0 / np.where(covered, wht, 1.0), 0.0)
        img = swd * inv  # float64: the sums stay float64 into the tile (results independent of the blocks)
        means = {n: swv[k] * inv for k, n in enumerate(planes)}  # float64 until one input's blocks merge
    err = means.pop("err", None)
    return Window(oy, ox, wht, img, means, err, ctx, dq)


def _overlap(oy, ox, shape, box):
    """Where an array of ``shape`` at ``(oy, ox)`` in the mosaic meets ``box`` (y0, y1, x0, x1):
    ``(y0, x0, slices into the array)``, or None if they do not meet."""
    y0, y1 = max(box[0], oy), min(box[1], oy + shape[0])
    x0, x1 = max(box[2], ox), min(box[3], ox + shape[1])
    if y0 >= y1 or x0 >= x1:
        return None
    return y0, x0, (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))


def cut_pieces(win: Window, tiles) -> tuple:
    """Copies of the parts of a window that fall in each tile (``(y0, y1, x0, x1)``), as Windows.

    Copies, so the window itself can be freed once its block task returns and
    each tile's task receives only its own part.
    """
    pieces = []
    for tile in tiles:
        found = _overlap(win.oy, win.ox, win.wht.shape, tile)
        if found is None:
            pieces.append(None)
            continue
        y0, x0, s = found

        def cut(a, s=s):
            return None if a is None else np.ascontiguousarray(a[s])

        pieces.append(Window(y0, x0, cut(win.wht), cut(win.img), {k: cut(v) for k, v in win.var.items()},
                             cut(win.err), cut(win.ctx), cut(win.dq)))
    return tuple(pieces)


_WCODES = {"ivm": 0, "ivm-sky": 0, "exptime": 1}  # anything else: weight 1


@njit(nogil=True, cache=True)
def _add_data_kernel(wht, swd, con, oy, ox, bit, use_ctx, w, img, ctx):
    """Add one piece's weights and weighted data at ``(oy, ox)`` of the sums; OR its context bit.

    The whole sum arrays and an offset (not views of them), so each dtype compiles once.
    """
    ny, nx = w.shape
    for i in range(ny):
        for j in range(nx):
            wv = w[i, j]
            if wv != 0:
                wht[oy + i, ox + j] += wv
                swd[oy + i, ox + j] += np.float64(wv) * np.float64(img[i, j])
            if use_ctx and ctx[i, j]:
                con[oy + i, ox + j] |= bit


@njit(nogil=True, cache=True)
def _var_step(vsum, vwt, y, x, v0, v1, v2, present, rn_slot, wcode, tmeasure):
    """The reference's per-input variance step at output pixel (y, x) for the squared means ``v0..v2``
    (float32): weight by 1/var_rnoise (ivm), the measurement time (exptime) or 1, and add ``v * weight**2``
    and ``weight`` where ``v`` is finite and non-negative."""
    if wcode == 0:
        if rn_slot < 0:
            weight = 1.0
        else:
            rn = v0 if rn_slot == 0 else (v1 if rn_slot == 1 else v2)
            weight = np.float64(np.float32(1.0) / rn) if (rn > 0 and np.isfinite(rn)) else 0.0
    elif wcode == 1:
        weight = tmeasure
    else:
        weight = 1.0
    if not weight > 0:
        return
    for k in range(3):
        if not present[k]:
            continue
        v = v0 if k == 0 else (v1 if k == 1 else v2)
        if v >= 0 and np.isfinite(v):
            vsum[k, y, x] += np.float64(v) * weight * weight
            vwt[k, y, x] += weight


@njit(nogil=True, cache=True)
def _add_var_kernel(vsum, vwt, oy, ox, w, m0, m1, m2, present, rn_slot, wcode, tmeasure):
    """:func:`_var_step` for one input's drizzled sqrt(var) means (float32), where the input reached
    (``w != 0``): the means are squared in float32, as the reference squares its float32 planes."""
    ny, nx = w.shape
    nan = np.float32(np.nan)
    for i in range(ny):
        for j in range(nx):
            if w[i, j] == 0:
                continue
            v0 = m0[i, j] * m0[i, j] if present[0] else nan
            v1 = m1[i, j] * m1[i, j] if present[1] else nan
            v2 = m2[i, j] * m2[i, j] if present[2] else nan
            _var_step(vsum, vwt, oy + i, ox + j, v0, v1, v2, present, rn_slot, wcode, tmeasure)


@njit(nogil=True, cache=True)
def _add_sums_kernel(wht, swd, swe, con, vsum, vwt, oy, ox, bit, use_ctx, w, sd, sv, slots, err_slot, ctx,
                     present, rn_slot, wcode, tmeasure):
    """One input's undivided sums (:class:`Sums`) added at ``(oy, ox)`` in one pass: weights, weighted data
    (``w * (sd / w)``, as :func:`_add_data_kernel` adds a mean), the context bit, the weighted error
    (``err_slot``) and the variance step of the float32 means ``sv[slots[k]] / w``."""
    ny, nx = w.shape
    nan = np.float32(np.nan)
    do_var = present[0] or present[1] or present[2]
    for i in range(ny):
        for j in range(nx):
            if use_ctx and ctx[i, j]:
                con[oy + i, ox + j] |= bit
            wv = w[i, j]
            if wv == 0:
                continue
            inv = 1.0 / wv
            wht[oy + i, ox + j] += wv
            swd[oy + i, ox + j] += wv * (sd[i, j] * inv)
            if err_slot >= 0:
                swe[oy + i, ox + j] += wv * (sv[err_slot, i, j] * inv)
            if do_var:
                m0 = np.float32(sv[slots[0], i, j] * inv) if present[0] else nan
                m1 = np.float32(sv[slots[1], i, j] * inv) if present[1] else nan
                m2 = np.float32(sv[slots[2], i, j] * inv) if present[2] else nan
                _var_step(vsum, vwt, oy + i, ox + j, m0 * m0, m1 * m1, m2 * m2, present, rn_slot, wcode, tmeasure)


@njit(nogil=True, cache=True)
def _finalize_kernel(swd, wht, vsum, vwt, present, fill, var_scale, data, wout, var, err, do_var, do_err):
    """Output data, weight, variances (sum v w^2 * scale / w / w) and err = sqrt(nansum(variances))."""
    ny, nx = wht.shape
    nan = np.float32(np.nan)
    for i in range(ny):
        for j in range(nx):
            wv = wht[i, j]
            data[i, j] = np.float32(swd[i, j] / wv) if wv != 0 else np.float32(fill)
            wout[i, j] = np.float32(wv)
            if do_var:
                total = np.float32(0.0)
                anyv = False
                for k in range(3):
                    vw = vwt[k, i, j]
                    if present[k] and vw > 0:
                        v = np.float32(vsum[k, i, j] * var_scale / vw / vw)
                        var[k, i, j] = v
                        if not np.isnan(v):
                            total += v
                            anyv = True
                    else:
                        var[k, i, j] = nan
                if do_err:
                    err[i, j] = np.sqrt(total) if anyv else nan


@dataclasses.dataclass(frozen=True)
class DrizzleSpec:
    """Everything the resample engine's tasks need to know of the parameters, typed, from the public function
    to the kernels (per-input values travel in :class:`InputSpec`).

    ``psr`` is the output/input pixel scale ratio; ``good_bits`` the integer DQ mask (None: every bit bad but 0);
    ``fillval`` the value of output pixels no input reaches; ``weight_type`` one of :data:`WEIGHT_TYPES`.
    """

    kernel: str
    pixfrac: float
    psr: float
    weight_type: str
    good_bits: int | None
    enable_ctx: bool
    enable_var: bool
    compute_err: str | None
    propagate_dq: bool
    fillval: float
    pixmap_order: int = 1
    var_weights: bool = False  # also output the variances' running weights (VWT_NAMES), so inputs can be added

    @property
    def keep_var_weights(self) -> bool:
        return self.enable_var and self.var_weights

    @property
    def driz_err(self) -> bool:
        return self.compute_err == "driz_err"

    @property
    def err_from_var(self) -> bool:
        return self.enable_var and self.compute_err == "from_var"

    @property
    def var_scale(self) -> float:
        return 1.0 / self.psr**2


class _BufferPool:
    """Freed :class:`TileSums` buffers of this process, kept for the next tile's sums (at most ``limit`` bytes).

    A fresh buffer of tens of MB is faulted in and zeroed by the kernel page by page: on a mosaic at pixel
    scale ratio 0.1 that was 54 ms of system time per 1024^2 tile (84 MB), more than drizzling the tile;
    zeroing a kept buffer takes ~8 ms. Only buffers of sums that nothing reads any more come back
    (:meth:`TileSums.release`: after a tile's finalize, and sums merged into others), each once.
    """

    def __init__(self, limit: int):
        import threading

        self.limit, self._free, self._lock = limit, [], threading.Lock()

    def take(self, nbytes: int) -> np.ndarray:
        """A uint8 buffer of at least ``nbytes`` whose first ``nbytes`` are zero: the smallest kept one of
        ``nbytes`` to twice that, else a new one of ``nbytes``.

        Taking a larger buffer, not only one of the same size: tiles at the mosaic's edges and input pieces
        come in many sizes. Counted on 8 JWST-like inputs (threaded, 1024^2 tiles): 75 of 88 takes found no
        buffer of their size, 1.5 GB of new buffers per mosaic.
        """
        with self._lock:
            fits = [k for k, b in enumerate(self._free) if nbytes <= b.nbytes <= 2 * nbytes]
            found = min(fits, key=lambda k: self._free[k].nbytes) if fits else None
            buf = None if found is None else self._free.pop(found)
        if buf is None:
            return np.zeros(nbytes, np.uint8)
        buf[:nbytes].fill(0)
        return buf

    def give(self, buf: np.ndarray) -> None:
        """Keep ``buf`` (nothing may use it any more), dropping the oldest kept buffers beyond the limit."""
        with self._lock:
            self._free.append(buf)
            while sum(b.nbytes for b in self._free) > self.limit:
                self._free.pop(0)

    def carve(self, plan) -> tuple[np.ndarray, dict]:
        """A zeroed buffer and the arrays of ``plan`` ((name, dtype, shape), ...) as views of it, 17 cache lines
        apart: arrays of a power-of-two size would otherwise start at addresses equal in their low bits, and a
        kernel's ten or so streams, all in the same cache sets, evict each other (measured: adding one input's
        sums to a 1024^2 tile took 32 ms instead of 10)."""
        buf = self.take(_plan_bytes(plan))
        return buf, _views_of(buf, plan)


_STAGGER = 17 * 64


def _plan_bytes(plan) -> int:
    """Bytes of a buffer that holds the arrays of ``plan`` as :func:`_views_of` lays them out."""
    return sum(np.dtype(dtype).itemsize * math.prod(shape) for _, dtype, shape in plan) + len(plan) * _STAGGER


def _views_of(buf: np.ndarray, plan) -> dict:
    """The arrays of ``plan`` ((name, dtype, shape), ...) as views of ``buf``, as :meth:`_BufferPool.carve` lays
    them out."""
    views, at = {}, 0
    for name, dtype, shape in plan:
        nbytes = np.dtype(dtype).itemsize * math.prod(shape)
        views[name] = buf[at:at + nbytes].view(dtype).reshape(shape)
        at += nbytes + _STAGGER
    return views
#: Per process: two 1024^2 tiles' sums with variances and context (84 MB each) and two input pieces (45 MB).
_POOL = _BufferPool(256 * 2**20)


class TileSums:
    """Running sums (float64) and context/DQ bits of a box ``(y0, y1, x0, x1)`` of one output tile.

    Sums of different inputs add (:meth:`merge`), so a tile is reduced by a tree of pairwise merges
    of per-input partial sums, each over the box its input reaches.
    """

    #: (name, dtype, planes) of the arrays, in the order they lie in the one buffer (planes 0: a 2-D array;
    #: None: one plane per 32 inputs of the context)
    _LAYOUT = (("wht", np.float64, 0), ("swd", np.float64, 0), ("vsum", np.float64, 3), ("vwt", np.float64, 3),
               ("swe", np.float64, 0), ("con", np.uint32, None), ("dq", np.uint32, 0))

    def __init__(self, box, nplanes: int, spec: DrizzleSpec):
        self.box, self.nplanes, self.spec = tuple(int(b) for b in box), nplanes, spec
        self.shape = (self.box[1] - self.box[0], self.box[3] - self.box[2])
        self._buf, views = _POOL.carve(self._plan())
        self._set(views)
        self.present = np.zeros(3, np.bool_)

    def _plan(self):
        """(name, dtype, shape) of each array it holds (those ``spec`` asks for)."""
        spec = self.spec
        wanted = {"wht": True, "swd": True, "swe": spec.driz_err, "con": spec.enable_ctx, "dq": spec.propagate_dq,
                  "vsum": spec.enable_var, "vwt": spec.enable_var}
        return [(name, dtype, self.shape if planes == 0 else (planes or self.nplanes, *self.shape))
                for name, dtype, planes in self._LAYOUT if wanted[name]]

    def _set(self, views: dict) -> None:
        """Set the arrays (views of the one buffer; those ``spec`` does not ask for: None).

        One allocation per partial sum (84 MB for a 1024^2 tile with variances and context) instead of
        seven of 4-25 MB: above glibc's mmap threshold (64 MiB on daskcal's workers,
        :data:`daskcal.cluster.WORKER_ENVIRON`) it is returned to the system when freed, where seven
        heap blocks, held for as long as their tile is in progress, fragmented the heap (measured:
        workers of 1.5 GiB paused with 0.8 GiB of unmanaged memory on a mosaic at pixel scale ratio 0.1).
        """
        for name, _, _ in self._LAYOUT:
            setattr(self, name, views.get(name))

    def __getstate__(self):  # the buffer's part its arrays use (a pooled buffer can be larger)
        used = None if self._buf is None else self._buf[:_plan_bytes(self._plan())]
        return {"box": self.box, "nplanes": self.nplanes, "spec": self.spec, "shape": self.shape, "_buf": used,
                "present": self.present}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._set(_views_of(self._buf, self._plan()))

    @classmethod
    def of_pieces(cls, pieces, nplanes: int, spec: DrizzleSpec, ctx_index, tmeasure: float, box=None) -> TileSums:
        """The sums of one input's pieces of a tile, over ``box`` (y0, y1, x0, x1; default: the box the pieces
        cover)."""
        if box is None:
            box = _box_of(pieces)
        sums = cls(box, nplanes, spec)
        sums.add_input(pieces, ctx_index, tmeasure)
        return sums

    @classmethod
    def of_planes(cls, planes: dict, tile, nplanes: int, spec: DrizzleSpec) -> TileSums:
        """The running sums that :meth:`finalize` turned into a tile's output ``planes`` (as stored in a mosaic),
        so that more inputs can be added to them (:func:`daskcal.resample` with ``into``).

        The weighted sums come back as ``data * wht`` and the variance sums as ``var * vwt**2 / var_scale``
        (from the ``vwt_*`` planes: :data:`VWT_NAMES`), in float64: a finalize of them gives the planes
        again, and with inputs added, what the sums of all inputs give, to float32 rounding. ``con`` may
        have fewer planes than ``nplanes`` (the context grows a plane per 32 inputs).
        """
        sums = cls(tile, nplanes, spec)  # every array zero
        # ufuncs with where= (the sums stay 0 elsewhere), in float64 as before: one pass each, where boolean
        # indexing gathered and scattered every operand (25 grown tiles of 512^2: 0.45 s of task time)
        wht = sums.wht
        wht[...] = planes["wht"]
        covered = wht != 0
        np.multiply(planes["data"], wht, out=sums.swd, where=covered, dtype=np.float64)
        if sums.con is not None:
            con = np.asarray(planes["con"]).view(np.uint32)
            sums.con[:con.shape[0]] = con
        if sums.dq is not None:
            sums.dq[...] = planes["dq"]
        if sums.swe is not None:
            np.multiply(planes["err"], spec.psr, out=sums.swe, where=covered, dtype=np.float64)
            np.multiply(sums.swe, wht, out=sums.swe, where=covered)
        if sums.vsum is not None:
            for k, (vname, wname) in enumerate(zip(VAR_NAMES, VWT_NAMES)):
                vwt, vsum, var = sums.vwt[k], sums.vsum[k], planes[vname]
                vwt[...] = planes[wname]
                ok = vwt > 0
                ok &= np.isfinite(var)
                np.copyto(vwt, 0.0, where=~ok)
                np.multiply(var, vwt, out=vsum, where=ok, dtype=np.float64)  # (var * vwt) * vwt / var_scale, as before
                np.multiply(vsum, vwt, out=vsum, where=ok)
                np.divide(vsum, spec.var_scale, out=vsum, where=ok)
            sums.present[:] = True  # a variance no input had keeps vwt 0: finalize gives NaN there, as before
        return sums

    @property
    def nbytes(self) -> int:
        """Bytes of the buffer it holds, its arrays' and any pooled tail beyond them (what Dask's ``sizeof``
        reports, so workers count and spill partial sums)."""
        return 0 if self._buf is None else self._buf.nbytes

    def _region(self, oy, ox, shape):
        return (slice(oy - self.box[0], oy - self.box[0] + shape[0]), slice(ox - self.box[2], ox - self.box[2] + shape[1]))

    def add_input(self, pieces, ctx_index, tmeasure: float) -> None:
        """Add one input's pieces (its blocks' parts of this tile): weighted sums, bits, variances."""
        self._live()
        if isinstance(pieces[0], Sums):  # consumed: their buffers go back to the pool
            united = pieces[0] if len(pieces) == 1 else Sums.union(pieces)
            self._add_sums_of_input(united, ctx_index, tmeasure)
            for pc in {id(p): p for p in (*pieces, united)}.values():
                pc.release()
            return
        use_ctx = self.con is not None and ctx_index is not None
        nobool, nocon = np.zeros((1, 1), np.bool_), np.zeros((1, 1), np.uint32)
        for pc in pieces:
            r = self._region(pc.oy, pc.ox, pc.wht.shape)
            with_ctx = use_ctx and pc.ctx is not None
            con = self.con[ctx_index // 32] if with_ctx else nocon
            bit = np.uint32(1) << np.uint32(ctx_index % 32) if with_ctx else np.uint32(0)
            _add_data_kernel(self.wht, self.swd, con, r[0].start, r[1].start, bit, with_ctx, pc.wht, pc.img,
                             pc.ctx if with_ctx else nobool)
            if self.swe is not None and pc.err is not None:
                self.swe[r] += np.multiply(pc.wht, pc.err, dtype=np.float64)
            if self.dq is not None and pc.dq is not None:
                self.dq[r] |= pc.dq
        if self.vsum is not None and pieces[0].var:
            if len(pieces) == 1:
                pc = pieces[0]
                # the reference squares float32 means (one drizzle of the input, float32 planes)
                r, w = self._region(pc.oy, pc.ox, pc.wht.shape), pc.wht
                means = {n: m.astype(np.float32, copy=False) for n, m in pc.var.items()}
            else:
                (y0, x0), w, means = _merged_means(pieces)
                r = self._region(y0, x0, w.shape)
            present = np.array([n in means for n in VAR_NAMES])
            self.present |= present
            dummy = np.zeros((1, 1), np.float32)
            m = [means.get(n, dummy) for n in VAR_NAMES]
            rn_slot = VAR_NAMES.index("var_rnoise") if "var_rnoise" in means else -1
            _add_var_kernel(self.vsum, self.vwt, r[0].start, r[1].start, w, m[0], m[1], m[2], present,
                            rn_slot, _WCODES.get(self.spec.weight_type, 2), float(tmeasure))

    def _add_sums_of_input(self, pc: Sums, ctx_index, tmeasure: float) -> None:
        """:meth:`add_input` of one input's :class:`Sums` (its blocks' already united), in one compiled pass."""
        r = self._region(pc.oy, pc.ox, pc.wht.shape)
        use_ctx = self.con is not None and ctx_index is not None and pc.ctx is not None
        con = self.con[ctx_index // 32] if use_ctx else np.zeros((1, 1), np.uint32)
        bit = np.uint32(1) << np.uint32(ctx_index % 32) if use_ctx else np.uint32(0)
        slots = np.array([pc.planes.index(n) if n in pc.planes else -1 for n in VAR_NAMES], np.int64)
        present = (slots >= 0) & (self.vsum is not None)
        self.present |= present
        err_slot = pc.planes.index("err") if "err" in pc.planes and self.swe is not None else -1
        none3, none2 = np.zeros((1, 1, 1)), np.zeros((1, 1))
        _add_sums_kernel(self.wht, self.swd, none2 if err_slot < 0 else self.swe, con,
                         self.vsum if present.any() else none3, self.vwt if present.any() else none3,
                         r[0].start, r[1].start, bit, use_ctx, pc.wht, pc.swd, none3 if pc.swv is None else pc.swv,
                         slots, err_slot, pc.ctx if use_ctx else np.zeros((1, 1), np.bool_), present,
                         0 if present[0] else -1, _WCODES.get(self.spec.weight_type, 2), float(tmeasure))
        if self.dq is not None and pc.dq is not None:
            self.dq[r] |= pc.dq

    def _live(self) -> TileSums:
        if self._buf is None:
            msg = "these tile sums were released (their buffer now holds other sums)"
            raise RuntimeError(msg)
        return self

    def release(self) -> None:
        """Give the buffer back for other sums (:class:`_BufferPool`); these sums can no longer be used.

        Call only where nothing else holds them: the resample graph's sums have one dependent task, which
        releases them once it has read them."""
        buf, self._buf = self._buf, None
        for name, _, _ in self._LAYOUT:
            setattr(self, name, None)
        if buf is not None:
            _POOL.give(buf)

    def _holds(self, box) -> bool:
        return self.box[0] <= box[0] and box[1] <= self.box[1] and self.box[2] <= box[2] and box[3] <= self.box[3]

    def plus(self, pieces, ctx_index, tmeasure: float) -> TileSums:
        """These sums and one more input's pieces, over the union of their boxes.

        Adds in place (and returns ``self``) where the pieces lie inside the box: a task's partial sums
        have one dependent in the graph (the next step of their tile), which owns them. Adding in
        place saves a copy of the sums per input (84 MB per 1024^2 tile).
        """
        y0, y1, x0, x1 = _box_of(pieces)
        box = (min(self.box[0], y0), max(self.box[1], y1), min(self.box[2], x0), max(self.box[3], x1))
        if box == self.box:
            out = self
        else:
            out = TileSums(box, self.nplanes, self.spec)
            out._add_sums(self)
            self.release()
        out.add_input(pieces, ctx_index, tmeasure)
        return out

    @classmethod
    def merge(cls, a: TileSums | None, b: TileSums | None) -> TileSums | None:
        """The sums of two sets of inputs, over the union of their boxes (None: no input).

        Adds one into the other in place where its box holds the other's (both are owned by the merge, as
        in :meth:`plus`)."""
        if a is None or b is None:
            return a if b is None else b
        if a._holds(b.box):
            a._add_sums(b)
            b.release()
            return a
        if b._holds(a.box):
            b._add_sums(a)
            a.release()
            return b
        box = (min(a.box[0], b.box[0]), max(a.box[1], b.box[1]), min(a.box[2], b.box[2]), max(a.box[3], b.box[3]))
        out = cls(box, a.nplanes, a.spec)
        out._add_sums(a)
        out._add_sums(b)
        a.release()
        b.release()
        return out

    def _add_sums(self, part: TileSums) -> None:
        """Add another set of inputs' sums, whose box lies inside this one's."""
        self._live(), part._live()
        r = self._region(part.box[0], part.box[2], part.shape)
        self.wht[r] += part.wht
        self.swd[r] += part.swd
        if self.swe is not None:
            self.swe[r] += part.swe
        if self.con is not None:
            self.con[:, r[0], r[1]] |= part.con
        if self.dq is not None:
            self.dq[r] |= part.dq
        if self.vsum is not None:
            self.vsum[:, r[0], r[1]] += part.vsum
            self.vwt[:, r[0], r[1]] += part.vwt
        self.present |= part.present

    def finalize(self, tile) -> dict:
        """The output planes of ``tile`` (y0, y1, x0, x1), which holds this box."""
        self._live()
        spec = self.spec
        tshape = (tile[1] - tile[0], tile[3] - tile[2])
        do_var, do_err = spec.enable_var, spec.err_from_var
        planes = {"data": np.empty(self.shape, np.float32), "wht": np.empty(self.shape, np.float32)}
        var = np.empty((3, *self.shape), np.float32) if do_var else np.empty((3, 1, 1), np.float32)
        err = np.empty(self.shape, np.float32) if do_err else np.empty((1, 1), np.float32)
        nosum = np.zeros((3, 1, 1))
        _finalize_kernel(self.swd, self.wht, self.vsum if do_var else nosum, self.vwt if do_var else nosum,
                         self.present, float(spec.fillval), spec.var_scale, planes["data"], planes["wht"], var, err,
                         do_var, do_err)
        if self.con is not None:
            planes["con"] = self.con.view(np.int32)
        if do_var:
            planes.update(zip(VAR_NAMES, var))
        if spec.keep_var_weights:
            planes.update(zip(VWT_NAMES, self.vwt.astype(np.float32)))
        if do_err:
            planes["err"] = err
        elif spec.driz_err and self.swe is not None:
            e = planes["err"] = np.full(self.shape, empty_value("err", spec), np.float32)
            covered = self.wht != 0
            e[covered] = (self.swe[covered] / self.wht[covered] / spec.psr).astype(np.float32)
        if self.dq is not None:
            planes["dq"] = self.dq
        if self.box == tuple(int(t) for t in tile):  # the resample graph's chains sum over whole tiles
            # con and dq are views of the sums' buffer: copied, so the planes do not hold it
            return {name: (np.array(planes[name]) if name in ("con", "dq") else planes[name]) if name in planes
                    else _empty_plane(name, tshape, self.nplanes, spec) for name in output_names(spec)}
        out = empty_planes(tshape, self.nplanes, spec)
        r = (slice(self.box[0] - tile[0], self.box[1] - tile[0]), slice(self.box[2] - tile[2], self.box[3] - tile[2]))
        for name, plane in planes.items():
            out[name][..., r[0], r[1]] = plane
        return out


def output_names(spec: DrizzleSpec) -> list:
    """The output planes of a resample, in order."""
    names = ["data", "wht"]
    if spec.enable_ctx:
        names.append("con")
    if spec.enable_var:
        names += list(VAR_NAMES)
    if spec.keep_var_weights:
        names += list(VWT_NAMES)
    if spec.driz_err or spec.err_from_var:
        names.append("err")
    if spec.propagate_dq:
        names.append("dq")
    return names


#: dtype and value of each output plane where no input lands (``None``: the spec's fill value).
EMPTY = {"data": (np.float32, None), "wht": (np.float32, 0.0), "con": (np.int32, 0), "err": (np.float32, "err"),
         "dq": (np.uint32, 0), "var_rnoise": (np.float32, np.nan), "var_flat": (np.float32, np.nan),
         "var_poisson": (np.float32, np.nan), **dict.fromkeys(VWT_NAMES, (np.float32, 0.0))}


def empty_value(name: str, spec: DrizzleSpec):
    """The value of output plane ``name`` where no input lands (its Zarr fill value)."""
    dtype, value = EMPTY[name]
    if value is None:
        value = spec.fillval
    elif value == "err":
        value = np.nan if spec.err_from_var else spec.fillval
    return dtype(value)


def _empty_plane(name: str, tshape, nplanes: int, spec: DrizzleSpec) -> np.ndarray:
    """Output plane ``name`` of a tile no input reaches."""
    shape = (nplanes, *tshape) if name == "con" else tshape
    return np.full(shape, empty_value(name, spec), EMPTY[name][0])


def empty_planes(tshape, nplanes: int, spec: DrizzleSpec) -> dict:
    """Every output plane of a tile no input reaches."""
    return {name: _empty_plane(name, tshape, nplanes, spec) for name in output_names(spec)}


def _merged_means(pieces):
    """One input's pieces meeting in a tile (its blocks' seams): origin, summed weight, weighted mean sqrt(var).

    As one drizzle of the whole input gives: sum(w * m) / sum(w), float32, NaN where no weight.
    """
    y0, y1, x0, x1 = _box_of(pieces)
    w = np.zeros((y1 - y0, x1 - x0), np.float64)
    sums = {name: np.zeros_like(w) for name in pieces[0].var}
    for pc in pieces:
        s = (slice(pc.oy - y0, pc.oy - y0 + pc.wht.shape[0]), slice(pc.ox - x0, pc.ox - x0 + pc.wht.shape[1]))
        w[s] += pc.wht
        for name, m in pc.var.items():
            sums[name][s] += np.multiply(pc.wht, m, dtype=np.float64)
    covered = w != 0
    means = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for name, sm in sums.items():
            means[name] = np.where(covered, sm / np.where(covered, w, 1.0), np.nan).astype(np.float32)
    return (y0, x0), w, means


def _register_sizeof() -> None:
    """Tell Dask the size of partial sums (without it a worker counts a 1024^2 tile's 84 MB as ~50 bytes of
    managed memory: it neither spills them nor places tasks by them)."""
    from dask.sizeof import sizeof

    sizeof.register(TileSums)(lambda s: s.nbytes)


_register_sizeof()
