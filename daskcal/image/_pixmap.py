"""Exact pixel maps at compiled speed: a pair of gwcs WCSs as one program for one numba kernel.

:func:`compile_pixel_map` walks the astropy model tree of ``wcs_in.forward_transform``
followed by ``wcs_out.forward_transform.inverse`` (the analytic inverse gwcs's
``invert`` uses; bounding boxes ignored) and translates every model into a few
operations on float64 values (:mod:`daskcal.image._pixmap_kernels`):

- affine maps (``LIN``): Shift, Scale, Multiply, Const1D/2D, Identity, Mapping
  (no operation at all), AffineTransformation2D, Rotation2D, RotationSequence3D and
  the rotation matrices of the sky rotations;
- polynomials (``POLY1``, ``POLY2``): Polynomial1D, Polynomial2D;
- unit vectors (``S2V``, ``V2S``, ``NORM``): SphericalToCartesian,
  CartesianToSpherical and the spherical sides of the rotations and of TAN;
- the gnomonic projection (``PROJ``): Sky2Pix_TAN (NaN behind the horizon), and
  Pix2Sky_TAN as an affine map to a direction;
- element-wise ``+ - * / **`` of compound models (tweakwcs's TPCorr uses ``/``).

Then it simplifies the program: a spherical -> vector round trip (``V2S`` then
``S2V``, as between two WCSs, or between TPCorr and ``v23tosky``) becomes a
normalisation, dropped where only directions matter; chains of affine maps
are multiplied into one, and into the projection that follows them. A
TAN-to-TAN map thus becomes one projective map; a JWST-like one keeps its
polynomials, one ``S2V`` and one projection. The matrices come from astropy
itself: the models are evaluated at the origin and the unit vectors.

The results differ from gwcs's (``wcs_out.invert(*wcs_in(x, y, with_bounding_box=False),
with_bounding_box=False)``) by up to ~8e-9 px at 0.03 arcsec/px: gwcs rounds RA and
Dec in degrees (~3e-14 deg at RA 150); against a long-double evaluation of the
TAN formulas this program is several times closer than gwcs (the tests check both).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import weakref

import numpy as np

from daskcal.image import _pixmap_kernels as K

__all__ = ["PixelMapProgram", "compile_pixel_map"]

log = logging.getLogger(__name__)

_R0 = 180.0 / np.pi  # radius of the TAN projection's sphere (deg)
_K = np.pi / 180.0
_OP_NAMES = {K.LIN: "lin", K.PROJ: "proj", K.POLY1: "poly1", K.POLY2: "poly2", K.S2V: "s2v", K.V2S: "v2s",
             K.NORM: "norm", K.ADD: "add", K.SUB: "sub", K.MUL: "mul", K.DIV: "div", K.POW: "pow"}
_BINARY = {"+": K.ADD, "-": K.SUB, "*": K.MUL, "/": K.DIV, "**": K.POW}


class Unsupported(Exception):
    """A model with no compiled form (its name is the message)."""


# ---------------------------------------------------------------- the program


@dataclasses.dataclass(frozen=True, eq=False)
class PixelMapProgram:
    """Input pixel -> output pixel as a flat program for :func:`~daskcal.image._pixmap_kernels.run_program`.

    Plain and picklable: op codes (``code``), their float64 parameters, the
    register numbers (``io``: count, input x, y, output x, y) and a text listing.
    """

    code: np.ndarray
    params: np.ndarray
    io: np.ndarray
    text: str = ""

    def __call__(self, x, y) -> tuple[np.ndarray, np.ndarray]:
        """Output pixel (x, y) of input pixels ``x``, ``y`` (any shape, broadcast together), float64."""
        x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        shape = x.shape
        ox, oy = np.empty(shape), np.empty(shape)
        K.run_program(self.code, self.params, self.io, x.ravel(), y.ravel(), ox.reshape(-1), oy.reshape(-1),
                      0.0, 0.0, 0)
        return ox, oy

    def grid(self, y0: int, y1: int, x0: int, x1: int, out: np.ndarray | None = None) -> np.ndarray:
        """Map ``(y1 - y0, x1 - x0, 2)`` (output x, y) of the input pixel centres of rows y0:y1, columns x0:x1.

        ``out``: a C-contiguous float64 array of that shape to write into.
        """
        shape = (max(int(y1) - int(y0), 0), max(int(x1) - int(x0), 0), 2)
        if out is None:
            out = np.empty(shape, np.float64)
        elif out.shape != shape or out.dtype != np.float64 or not out.flags.c_contiguous:
            msg = f"out must be a C-contiguous float64 array of shape {shape}; got {out.dtype} {out.shape}"
            raise ValueError(msg)
        flat = out.reshape(-1, 2)
        K.run_program(self.code, self.params, self.io, _EMPTY, _EMPTY, flat[:, 0], flat[:, 1],
                      float(x0), float(y0), shape[1])
        return out


_EMPTY = np.empty(0, np.float64)


# ---------------------------------------------------------------- building: values and operations


@dataclasses.dataclass
class _Op:
    op: int
    ins: list
    outs: list
    params: np.ndarray
    iarg: int = 0


class _Builder:
    """Operations on numbered values (each value assigned once)."""

    def __init__(self):
        self.ops: list[_Op] = []
        self.nval = 0

    def emit(self, op, ins, nout, params=(), iarg=0):
        outs = list(range(self.nval, self.nval + nout))
        self.nval += nout
        self.ops.append(_Op(op, list(ins), outs, np.asarray(params, np.float64).ravel(), int(iarg)))
        return outs

    def lin(self, ins, matrix):
        """out = matrix @ (ins, 1); ``matrix`` (nout, nin + 1)."""
        matrix = np.asarray(matrix, np.float64)
        return self.emit(K.LIN, ins, matrix.shape[0], matrix)


# ---------------------------------------------------------------- translation of models


def _plain(model, name):
    """Value of parameter ``name`` (float64 array); Unsupported when it has a unit."""
    par = getattr(model, name)
    if par.unit is not None:
        raise Unsupported(f"{type(model).__name__} (parameter {name} with unit {par.unit})")
    return np.asarray(par.value, np.float64)


def _probe_affine(model, n):
    """(n_out, n + 1) matrix of an affine model, from its values at the origin and the unit vectors."""
    pts = np.zeros((n, n + 1))
    pts[np.arange(n), np.arange(1, n + 1)] = 1.0
    out = model(*pts)
    out = out if isinstance(out, tuple) else (out,)
    if any(hasattr(v, "unit") for v in out):
        raise Unsupported(f"{type(model).__name__} (values with units)")
    out = np.array(out, np.float64)
    t = out[:, 0]
    return np.column_stack([out[:, 1:] - t[:, None], t])


def _probe_rotation(model):
    """3x3 matrix of a sky rotation (lon, lat) -> (lon, lat): its values at the three axes, as vectors."""
    lon, lat = model(np.array([0.0, 90.0, 0.0]), np.array([0.0, 0.0, 90.0]))
    if hasattr(lon, "unit"):
        lon, lat = lon.to_value("deg"), lat.to_value("deg")
    from gwcs.geometry import SphericalToCartesian

    return np.array(SphericalToCartesian()(lon, lat))


def _sky_rotation(b, model, ins, wrap):
    v = b.emit(K.S2V, ins, 3)
    v = b.lin(v, np.column_stack([_probe_rotation(model), np.zeros(3)]))
    return b.emit(K.V2S, v, 2, iarg=wrap)


def _leaf_handlers():
    from astropy.modeling import models as m
    from gwcs import geometry

    def shift(b, model, ins):
        return b.lin(ins, [[1.0, float(_plain(model, "offset"))]])

    def scale(b, model, ins):  # astropy's Scale drops the unit of its factor
        return b.lin(ins, [[float(np.asarray(model.factor.value)), 0.0]])

    def multiply(b, model, ins):
        return b.lin(ins, [[float(_plain(model, "factor")), 0.0]])

    def const(b, model, ins):
        return b.lin([], [[float(_plain(model, "amplitude"))]])

    def affine(b, model, ins):
        mat, t = _plain(model, "matrix"), _plain(model, "translation")
        return b.lin(ins, np.column_stack([mat, t.ravel()]))

    def probed(b, model, ins):
        return b.lin(ins, _probe_affine(model, model.n_inputs))

    def poly1(b, model, ins):
        (x,) = ins
        if model.domain is not None and model.window is not None:
            x = _domain_map(b, x, model.domain, model.window)
        c = np.array([float(_plain(model, f"c{i}")) for i in range(model.degree + 1)])
        return b.emit(K.POLY1, [x], 1, c, iarg=model.degree)

    def poly2(b, model, ins):
        x, y = ins
        if model.x_domain is not None:
            x = _domain_map(b, x, model.x_domain, model.x_window)
        if model.y_domain is not None:
            y = _domain_map(b, y, model.y_domain, model.y_window)
        d = model.degree
        c = np.zeros((d + 1, d + 1))
        for i in range(d + 1):
            for j in range(d + 1 - i):
                c[i, j] = float(_plain(model, f"c{i}_{j}"))
        return b.emit(K.POLY2, [x, y], 1, c, iarg=d)

    def sph_seq(b, model, ins):
        rot = m.RotationSequence3D(np.asarray(model.angles.value, np.float64), axes_order=model.axes_order)
        v = b.lin(b.emit(K.S2V, ins, 3), _probe_affine(rot, 3))
        return b.emit(K.V2S, v, 2, iarg=K.WRAP_NONE)

    def pix2sky_tan(b, model, ins):
        v = b.lin(ins, [[0.0, -_K, 0.0], [_K, 0.0, 0.0], [0.0, 0.0, 1.0]])
        return b.emit(K.V2S, v, 2, iarg=K.WRAP_NONE)

    def sky2pix_tan(b, model, ins):
        v = b.emit(K.S2V, ins, 3)
        return b.emit(K.PROJ, v, 2, _proj_params([[0.0, _R0, 0.0, 0.0], [-_R0, 0.0, 0.0, 0.0]],
                                                 [0.0, 0.0, 1.0, 0.0], [0.0, 0.0]))

    def s2c(b, model, ins):
        return b.emit(K.S2V, ins, 3)

    def c2s(b, model, ins):
        return b.emit(K.V2S, ins, 2, iarg=K.WRAP_360 if model.wrap_lon_at == 360 else K.WRAP_NONE)

    handlers = {
        m.Shift: shift, m.Scale: scale, m.Multiply: multiply, m.Const1D: const, m.Const2D: const,
        m.Identity: lambda b, model, ins: list(ins),
        m.Mapping: lambda b, model, ins: [ins[i] for i in model.mapping],
        m.AffineTransformation2D: affine, m.Rotation2D: probed, m.RotationSequence3D: probed,
        m.Polynomial1D: poly1, m.Polynomial2D: poly2, m.SphericalRotationSequence: sph_seq,
        m.RotateNative2Celestial: lambda b, model, ins: _sky_rotation(b, model, ins, K.WRAP_360),
        m.RotateCelestial2Native: lambda b, model, ins: _sky_rotation(b, model, ins, K.WRAP_360),
        m.EulerAngleRotation: lambda b, model, ins: _sky_rotation(b, model, ins, K.WRAP_NONE),
        m.Pix2Sky_TAN: pix2sky_tan, m.Sky2Pix_TAN: sky2pix_tan,
        geometry.SphericalToCartesian: s2c, geometry.CartesianToSpherical: c2s,
    }
    try:  # JWST's ideal <-> V2V3 frames: affine maps
        from stdatamodels.jwst.transforms import models as jm

        handlers[jm.IdealToV2V3] = handlers[jm.V2V3ToIdeal] = probed
    except ImportError:  # pragma: no cover - stdatamodels is optional
        pass
    return handlers


_HANDLERS: dict | None = None


def _domain_map(b, x, domain, window):
    """astropy's ``poly_map_domain``: off + scl * x."""
    (d0, d1), (w0, w1) = np.asarray(domain, np.float64), np.asarray(window, np.float64)
    scl = (w1 - w0) / (d1 - d0)
    off = (w0 * d1 - w1 * d0) / (d1 - d0)
    if scl == 1.0 and off == 0.0:
        return x
    return b.lin([x], [[scl, off]])[0]


def _proj_params(num, den, t):
    return np.concatenate([np.ravel(num), np.ravel(den), np.ravel(t)])


def _translate(b: _Builder, model, ins: list) -> list:
    """Emit the operations of ``model`` applied to values ``ins``; its output values."""
    from astropy.modeling import CompoundModel

    global _HANDLERS
    if isinstance(model, CompoundModel):
        op = model.op
        if op == "|":
            return _translate(b, model.right, _translate(b, model.left, ins))
        if op == "&":
            nl = model.left.n_inputs
            return _translate(b, model.left, ins[:nl]) + _translate(b, model.right, ins[nl:])
        if op in _BINARY:
            left, right = _translate(b, model.left, ins), _translate(b, model.right, ins)
            return [b.emit(_BINARY[op], [u, v], 1)[0] for u, v in zip(left, right)]
        if op == "fix_inputs":
            return _translate(b, model.left, _fixed_inputs(b, model.left, model.right, ins))
        raise Unsupported(f"compound operator {op!r}")
    if len(model) != 1:
        raise Unsupported(f"{type(model).__name__} (a model set)")
    if _HANDLERS is None:
        _HANDLERS = _leaf_handlers()
    handler = _HANDLERS.get(type(model))
    if handler is None:
        raise Unsupported(type(model).__name__)
    outs = handler(b, model, ins)
    if len(outs) != model.n_outputs:  # pragma: no cover - a handler bug
        raise AssertionError(f"{type(model).__name__}: {len(outs)} outputs, expected {model.n_outputs}")
    return outs


def _fixed_inputs(b, left, fixed, ins):
    where = {left.inputs.index(k) if isinstance(k, str) else int(k): v for k, v in fixed.items()}
    rest = iter(ins)
    return [b.lin([], [[float(np.asarray(getattr(where[i], "value", where[i])))]])[0] if i in where
            else next(rest) for i in range(left.n_inputs)]


# ---------------------------------------------------------------- simplification


def _users(ops, finals):
    """value -> set of indices of the operations reading it (-1 for a final output)."""
    users: dict = {}
    for k, op in enumerate(ops):
        for v in op.ins:
            users.setdefault(v, set()).add(k)
    for v in finals:
        users.setdefault(v, set()).add(-1)
    return users


def _rows(op):
    """Rows of an affine-in-inputs operation as (coefficients by input value, constant)."""
    n = len(op.ins)
    if op.op == K.LIN:
        mat = op.params.reshape(len(op.outs), n + 1)
    else:  # PROJ: numerators, denominator
        mat = op.params[: 3 * (n + 1)].reshape(3, n + 1)
    rows = []
    for row in mat:
        coef: dict = {}
        for v, c in zip(op.ins, row[:n]):
            coef[v] = coef.get(v, 0.0) + c
        rows.append((coef, row[n]))
    return rows


def _substitute(rows, k, exprs, users):
    """Rows with every input that only operation ``k`` reads replaced by its affine expression; None if none is."""
    out, changed = [], False
    for coef, const in rows:
        new: dict = {}
        for v, c in coef.items():
            e = exprs.get(v)
            if e is not None and users.get(v) == {k}:
                changed = True
                ecoef, econst = e
                for u, d in ecoef.items():
                    new[u] = new.get(u, 0.0) + c * d
                const = const + c * econst
            else:
                new[v] = new.get(v, 0.0) + c
        out.append((new, const))
    return out if changed else None


def _matrix(rows):
    """(input values, matrix (nrows, nin + 1)) of affine rows."""
    ins = list(dict.fromkeys(v for coef, _ in rows for v in coef))
    mat = np.array([[coef.get(v, 0.0) for v in ins] + [const] for coef, const in rows], np.float64)
    return ins, mat


def _fold_op(op, k, exprs, users):
    """``op`` with the affine maps feeding only it multiplied in (None when nothing changes)."""
    if op.op in (K.ADD, K.SUB, K.MUL, K.DIV):
        a, b = (exprs.get(v) if users.get(v) == {k} and v in exprs else ({v: 1.0}, 0.0) for v in op.ins)
        if op.op in (K.ADD, K.SUB):
            s = 1.0 if op.op == K.ADD else -1.0
            coef = dict(a[0])
            for v, c in b[0].items():
                coef[v] = coef.get(v, 0.0) + s * c
            rows = [(coef, a[1] + s * b[1])]
        elif op.op == K.MUL and (not a[0] or not b[0]):
            cst, other = (a[1], b) if not a[0] else (b[1], a)
            rows = [({v: c * cst for v, c in other[0].items()}, other[1] * cst)]
        elif op.op == K.DIV and not b[0] and b[1] != 0.0:
            rows = [({v: c / b[1] for v, c in a[0].items()}, a[1] / b[1])]
        else:
            return None
        ins, mat = _matrix(rows)
        return _Op(K.LIN, ins, op.outs, mat.ravel()) if len(ins) <= 3 else None
    rows = _substitute(_rows(op), k, exprs, users)
    if rows is None:
        return None
    ins, mat = _matrix(rows)
    if op.op == K.LIN:
        return _Op(K.LIN, ins, op.outs, mat.ravel()) if len(ins) <= 3 else None
    if len(ins) not in (2, 3):
        return None
    return _Op(K.PROJ, ins, op.outs, np.concatenate([mat.ravel(), op.params[-2:]]))


def _fold(ops, finals):
    """One pass: multiply affine maps together and into projections; V2S then S2V -> NORM."""
    users = _users(ops, finals)
    exprs: dict = {}
    producer: dict = {}
    changed = False
    for k, op in enumerate(ops):
        if op.op in (K.LIN, K.PROJ, K.ADD, K.SUB, K.MUL, K.DIV):
            new = _fold_op(op, k, exprs, users)
            if new is not None:
                ops[k] = op = new
                changed = True
                users = _users(ops, finals)
        elif op.op == K.S2V:
            src = producer.get(op.ins[0])
            if src is not None and src.op == K.V2S and src.outs == op.ins:
                ops[k] = op = _Op(K.NORM, list(src.ins), op.outs, np.empty(0))
                changed = True
                users = _users(ops, finals)
        if op.op == K.LIN:
            for v, row in zip(op.outs, _rows(op)):
                exprs[v] = row
        for v in op.outs:
            producer[v] = op
    return changed


def _scale_free(vals, ops, users, depth=0):
    """True when values ``vals`` (a vector) are only read as a direction (their length does not matter)."""
    readers = set().union(*(users.get(v, set()) for v in vals))
    if -1 in readers or depth > 8:
        return False
    for k in readers:
        op = ops[k]
        if op.op == K.DIV and set(op.ins) <= set(vals):  # a ratio of two components (TPCorr's tangent plane)
            continue
        if len(op.ins) != len(vals) or set(op.ins) != set(vals):
            return False
        n = len(op.ins)
        if op.op in (K.V2S, K.NORM):
            continue
        if op.op == K.PROJ and not np.any(op.params[: 3 * (n + 1)].reshape(3, n + 1)[:, n]):
            continue
        if (op.op == K.LIN and not np.any(op.params.reshape(len(op.outs), n + 1)[:, n])
                and _scale_free(op.outs, ops, users, depth + 1)):
            continue
        return False
    return True


def _drop_norms(ops, finals):
    """Remove normalisations whose result is only used as a direction."""
    users = _users(ops, finals)
    for k, op in enumerate(ops):
        if op.op == K.NORM and _scale_free(op.outs, ops, users):
            alias = dict(zip(op.outs, op.ins))
            for other in ops[k + 1:]:
                other.ins = [alias.get(v, v) for v in other.ins]
            ops[k] = None
            return True
    return False


def _drop_identities(ops, finals):
    """Remove affine maps that are the identity (e.g. Scale(3600) after Scale(1/3600))."""
    for k, op in enumerate(ops):
        if op.op != K.LIN or len(op.ins) != len(op.outs) or not op.ins:
            continue
        n = len(op.ins)
        if np.array_equal(op.params.reshape(n, n + 1), np.eye(n, n + 1)):
            alias = dict(zip(op.outs, op.ins))
            for other in ops[k + 1:]:
                other.ins = [alias.get(v, v) for v in other.ins]
            finals[:] = [alias.get(v, v) for v in finals]
            ops[k] = None
            return True
    return False


def _merge_lins(ops, finals):
    """Two adjacent independent affine maps on at most 3 values in all become one (then one map can
    follow a projection, e.g. ``Shift & Shift``)."""
    for k in range(len(ops) - 1):
        a, b = ops[k], ops[k + 1]
        if a.op == K.LIN and b.op == K.LIN and not set(b.ins) & set(a.outs) and len(a.outs) + len(b.outs) <= 3:
            ins, mat = _matrix(_rows(a) + _rows(b))
            if len(ins) <= 3:
                ops[k] = _Op(K.LIN, ins, a.outs + b.outs, mat.ravel())
                ops[k + 1] = None
                return True
    return False


def _fold_into_proj(ops, finals):
    """An affine map of a projection's two outputs (read by nothing else) becomes part of the projection."""
    users = _users(ops, finals)
    producer = {v: k for k, op in enumerate(ops) for v in op.outs}
    for k, op in enumerate(ops):
        if op.op != K.LIN or len(op.outs) != 2 or not op.ins:
            continue
        src = {producer.get(v) for v in op.ins}
        if len(src) != 1 or None in src:
            continue
        p = ops[src.pop()]
        if p.op != K.PROJ or any(users.get(v, {k}) != {k} for v in p.outs):
            continue
        n = len(p.ins)
        num = p.params[: 2 * (n + 1)].reshape(2, n + 1)
        den, t = p.params[2 * (n + 1): 3 * (n + 1)], p.params[3 * (n + 1):]
        new_num, new_t = np.zeros((2, n + 1)), np.zeros(2)
        for r, (coef, const) in enumerate(_rows(op)):
            new_t[r] = const
            for v, c in coef.items():
                i = p.outs.index(v)
                new_num[r] += c * num[i]
                new_t[r] += c * t[i]
        ops[k] = _Op(K.PROJ, list(p.ins), op.outs, np.concatenate([new_num.ravel(), den, new_t]))
        return True
    return False


def _dead_code(ops, finals):
    """Drop operations (and rows of affine maps) whose results nothing reads."""
    live = set(finals)
    keep = []
    for op in reversed(ops):
        if not any(v in live for v in op.outs):
            continue
        if op.op == K.LIN and not all(v in live for v in op.outs):
            rows = [(v, row) for v, row in zip(op.outs, _rows(op)) if v in live]
            ins, mat = _matrix([row for _, row in rows])
            op = _Op(K.LIN, ins, [v for v, _ in rows], mat.ravel())
        live.update(op.ins)
        keep.append(op)
    ops[:] = keep[::-1]


def _simplify(ops, finals):
    steps = (_drop_norms, _drop_identities, _merge_lins, _fold_into_proj)
    while True:
        changed = _fold(ops, finals)
        _dead_code(ops, finals)
        while any(step(ops, finals) for step in steps):
            ops[:] = [op for op in ops if op is not None]
            _dead_code(ops, finals)
            changed = True
        if not changed:
            return


# ---------------------------------------------------------------- registers and encoding


def _encode(ops, inputs, finals, text) -> PixelMapProgram:
    """Registers for the values (an operation never writes one it reads) and the flat code."""
    last = {}
    for k, op in enumerate(ops):
        for v in op.ins:
            last[v] = k
    for v in finals:
        last[v] = len(ops)
    reg, free, nreg = {}, [], 0

    def take():
        nonlocal nreg
        if free:
            return free.pop()
        nreg += 1
        return nreg - 1

    for v in inputs:
        reg[v] = take()
    code = np.zeros((len(ops), K.NCOL), np.int64)
    params = []
    poff = 0
    for k, op in enumerate(ops):
        for v in op.outs:
            reg[v] = take()
        row = code[k]
        row[K.OP], row[K.NIN], row[K.NOUT] = op.op, len(op.ins), len(op.outs)
        row[K.IN0:K.IN0 + len(op.ins)] = [reg[v] for v in op.ins]
        row[K.OUT0:K.OUT0 + len(op.outs)] = [reg[v] for v in op.outs]
        row[K.POFF], row[K.IARG] = poff, op.iarg
        params.append(op.params)
        poff += op.params.size
        for v in dict.fromkeys(op.ins + op.outs):
            if last.get(v, -1) <= k:
                free.append(reg[v])
    for v in inputs:
        if v not in last:
            free.append(reg[v])
    io = np.array([nreg, reg[inputs[0]], reg[inputs[1]], reg[finals[0]], reg[finals[1]]], np.int64)
    flat = np.concatenate(params) if params else np.zeros(0)
    return PixelMapProgram(code=code, params=np.ascontiguousarray(flat, np.float64), io=io, text=text)


def _listing(ops):
    return "\n".join(f"{_OP_NAMES[op.op]} {op.ins} -> {op.outs}" for op in ops)


# ---------------------------------------------------------------- public


def _label(wcs, role):
    name = getattr(wcs, "name", None)
    return f"{role} WCS {name!r}" if name else f"{role} WCS"


def _compile(wcs_in, wcs_out) -> PixelMapProgram | None:
    forward = wcs_in.forward_transform
    if forward.n_inputs != 2 or wcs_out.forward_transform.n_inputs != 2:
        log.info("pixel map: gwcs fallback: not a pair of 2-D imaging WCSs")
        return None
    try:
        backward = wcs_out.forward_transform.inverse
    except NotImplementedError:
        log.info("pixel map: gwcs fallback: no analytic inverse of %s", _label(wcs_out, "output"))
        return None
    b = _Builder()
    inputs = [0, 1]
    b.nval = 2
    try:
        world = _translate(b, forward, inputs)
    except Unsupported as err:
        log.info("pixel map: gwcs fallback: no compiled form for %s in %s", err, _label(wcs_in, "input"))
        return None
    if forward.n_outputs != backward.n_inputs or backward.n_outputs != 2:
        log.info("pixel map: gwcs fallback: %s has %d world axes, %s %d", _label(wcs_in, "input"),
                 forward.n_outputs, _label(wcs_out, "output"), backward.n_inputs)
        return None
    try:
        finals = list(_translate(b, backward, world))
    except Unsupported as err:
        log.info("pixel map: gwcs fallback: no compiled form for %s in the inverse of %s", err,
                 _label(wcs_out, "output"))
        return None
    ops = b.ops
    _simplify(ops, finals)
    return _encode(ops, inputs, finals, _listing(ops))


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 256


def compile_pixel_map(wcs_in, wcs_out) -> PixelMapProgram | None:
    """The fused program for input pixel -> output pixel, or None when some model has no compiled form.

    When None, one ``log.info`` line names the model (e.g. ``pixel map: gwcs
    fallback: no compiled form for Tabular2D in input WCS 'x'``). Bounding boxes
    are ignored (as ``with_bounding_box=False``); the output WCS's analytic
    inverse (``forward_transform.inverse``, as gwcs's ``invert``) is used, None
    when it has none. Results are cached per pair of WCS objects (by identity:
    a WCS changed in place afterwards is not seen).

    Parameters
    ----------
    wcs_in, wcs_out : gwcs.WCS
        Input detector -> world, output detector -> world.

    Returns
    -------
    PixelMapProgram or None
    """
    key = (id(wcs_in), id(wcs_out))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
    if hit is not None and hit[0]() is wcs_in and hit[1]() is wcs_out:
        return hit[2]
    program = _compile(wcs_in, wcs_out)
    try:
        refs = (weakref.ref(wcs_in), weakref.ref(wcs_out))
    except TypeError:  # not weakly referenceable: no caching
        return program
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = (*refs, program)
    return program
