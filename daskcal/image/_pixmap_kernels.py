"""Numba kernel that runs a pixel-map program (built by :mod:`daskcal.image._pixmap`).

A program is a list of operations on float64 *registers*, each register one
chunk of ``CHUNK`` pixels; the kernel streams the pixels through the program
chunk by chunk, so every operation is a short loop over contiguous memory.
One row of ``code`` (int64) is one operation::

    [op, nin, nout, in0, in1, in2, out0, out1, out2, poff, iarg]

``poff`` is the offset of the operation's parameters in ``params`` (float64);
``iarg`` a small integer argument (polynomial degree, longitude wrap). An
operation never writes a register it reads (the register allocator ensures
it), so the loops need no temporaries. The row ``nreg`` of the register file is
scratch space for the polynomials.

Why a hand-written kernel: astropy/gwcs evaluate a compound model one model at
a time over whole arrays, with input validation, broadcasting and a temporary
array per step, and the sky step as spherical trigonometry in degrees; a
2048x2048 JWST-style pixel map (detector -> v2v3 -> v2v3vacorr -> world -> TAN
output pixel) costs 1.1 s of CPU there and 0.035 s here, TAN to TAN 1.1 s and
0.012 s (one thread, ``benchmarks/results/pixmap.txt``). Compiling this module
into an empty numba cache takes ~3.6 s of CPU, loading it from the cache ~0.5 s.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["CHUNK", "run_program"]

# operation codes
LIN, PROJ, POLY1, POLY2, S2V, V2S, NORM, ADD, SUB, MUL, DIV, POW = range(12)
# columns of a code row
OP, NIN, NOUT, IN0, OUT0, POFF, IARG = 0, 1, 2, 3, 6, 9, 10
NCOL = 11
#: pixels per chunk: the registers of a program stay in the L1/L2 cache
CHUNK = 256
#: longitude range of V2S: (-180, 180] or [0, 360)
WRAP_NONE, WRAP_360 = 0, 1

_D2R = math.pi / 180.0  # np.deg2rad's factor
_R2D = 180.0 / math.pi  # np.rad2deg's factor


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _lin(r, row, p, m):
    """Affine map: out_k = sum_j M[k, j] in_j + M[k, nin], M row-major (nout, nin + 1)."""
    nin = row[NIN]
    w = nin + 1
    for k in range(row[NOUT]):
        o = r[row[OUT0 + k]]
        q = row[POFF] + k * w
        c = p[q + nin]
        if nin == 0:
            for i in range(m):
                o[i] = c
        elif nin == 1:
            a, ca = r[row[IN0]], p[q]
            for i in range(m):
                o[i] = ca * a[i] + c
        elif nin == 2:
            a, b, ca, cb = r[row[IN0]], r[row[IN0 + 1]], p[q], p[q + 1]
            for i in range(m):
                o[i] = (ca * a[i] + cb * b[i]) + c
        else:
            a, b, z = r[row[IN0]], r[row[IN0 + 1]], r[row[IN0 + 2]]
            ca, cb, cz = p[q], p[q + 1], p[q + 2]
            for i in range(m):
                o[i] = (ca * a[i] + cb * b[i] + cz * z[i]) + c


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _proj(r, row, p, m):
    """Projective map: out_k = (N_k . in) / (D . in) + T_k, NaN unless D . in > 0 (behind a TAN horizon).

    Parameters: N (2, nin + 1), D (nin + 1), T (2), homogeneous in (in, 1); nin is 3 or 2.
    """
    nin = row[NIN]
    q = row[POFF]
    w = nin + 1
    o0, o1 = r[row[OUT0]], r[row[OUT0 + 1]]
    a, b = r[row[IN0]], r[row[IN0 + 1]]
    z = r[row[IN0 + 2]] if nin == 3 else a
    cz0 = p[q + 2] if nin == 3 else 0.0
    cz1 = p[q + w + 2] if nin == 3 else 0.0
    czd = p[q + 2 * w + 2] if nin == 3 else 0.0
    n0a, n0b, n0c = p[q], p[q + 1], p[q + nin]
    n1a, n1b, n1c = p[q + w], p[q + w + 1], p[q + w + nin]
    da, db, dc = p[q + 2 * w], p[q + 2 * w + 1], p[q + 2 * w + nin]
    t0, t1 = p[q + 3 * w], p[q + 3 * w + 1]
    for i in range(m):
        ai, bi, zi = a[i], b[i], z[i]
        den = da * ai + db * bi + czd * zi + dc
        if den > 0.0:
            o0[i] = (n0a * ai + n0b * bi + cz0 * zi + n0c) / den + t0
            o1[i] = (n1a * ai + n1b * bi + cz1 * zi + n1c) / den + t1
        else:
            o0[i] = np.nan
            o1[i] = np.nan


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _poly1(r, row, p, m):
    """sum_i c_i x^i (Horner), c in increasing power."""
    d, q = row[IARG], row[POFF]
    x, o = r[row[IN0]], r[row[OUT0]]
    c = p[q + d]
    for i in range(m):
        o[i] = c
    for k in range(d - 1, -1, -1):
        c = p[q + k]
        for i in range(m):
            o[i] = o[i] * x[i] + c


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _poly2(r, row, p, m):
    """sum_{i+j<=d} c_ij x^i y^j: Horner in y of Horner polynomials in x; c row-major (d + 1, d + 1)."""
    d, q = row[IARG], row[POFF]
    w = d + 1
    x, y, o = r[row[IN0]], r[row[IN0 + 1]], r[row[OUT0]]
    t = r[r.shape[0] - 1]
    for j in range(d, -1, -1):
        top = d - j
        c = p[q + top * w + j]
        for i in range(m):
            t[i] = c
        for k in range(top - 1, -1, -1):
            c = p[q + k * w + j]
            for i in range(m):
                t[i] = t[i] * x[i] + c
        if j == d:
            for i in range(m):
                o[i] = t[i]
        else:
            for i in range(m):
                o[i] = o[i] * y[i] + t[i]


#: below this angle (rad) or tangent, sin/cos/atan are short series (error ~1 ulp, as libm's) that vectorise
_SMALL = 0.1


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _small(v, m, scale):
    """True when every |v[:m] * scale| <= _SMALL (False with any NaN)."""
    for i in range(m):
        if not abs(v[i] * scale) <= _SMALL:
            return False
    return True


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _s2v(r, row, m):
    """(lon, lat) deg -> unit vector, as gwcs's SphericalToCartesian.

    Angles below ``_SMALL`` rad (all of a chunk: V2/V3 of a space telescope's
    focal plane) take Taylor series through x^11 / x^12 (truncation < 1e-22):
    the loop vectorises, ~10x faster than libm's sin and cos.
    """
    lon, lat = r[row[IN0]], r[row[IN0 + 1]]
    o0, o1, o2 = r[row[OUT0]], r[row[OUT0 + 1]], r[row[OUT0 + 2]]
    if _small(lon, m, _D2R) and _small(lat, m, _D2R):
        for i in range(m):
            a = lon[i] * _D2R
            b = lat[i] * _D2R
            a2, b2 = a * a, b * b
            sa = a + a * a2 * (-1 / 6 + a2 * (1 / 120 + a2 * (-1 / 5040 + a2 * (1 / 362880 + a2 * (-1 / 39916800)))))
            sb = b + b * b2 * (-1 / 6 + b2 * (1 / 120 + b2 * (-1 / 5040 + b2 * (1 / 362880 + b2 * (-1 / 39916800)))))
            ca = 1.0 + a2 * (-0.5 + a2 * (1 / 24 + a2 * (-1 / 720 + a2 * (1 / 40320 + a2 * (-1 / 3628800 + a2 / 479001600)))))
            cb = 1.0 + b2 * (-0.5 + b2 * (1 / 24 + b2 * (-1 / 720 + b2 * (1 / 40320 + b2 * (-1 / 3628800 + b2 / 479001600)))))
            o0[i] = cb * ca
            o1[i] = cb * sa
            o2[i] = sb
        return
    for i in range(m):
        a = lon[i] * _D2R
        b = lat[i] * _D2R
        cb = math.cos(b)
        o0[i] = cb * math.cos(a)
        o1[i] = cb * math.sin(a)
        o2[i] = math.sin(b)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _v2s_small(x, y, z, m):
    """True when every vector of the chunk is within _SMALL (tangent) of the +x axis in both angles."""
    for i in range(m):
        xi = x[i]
        if not (xi > 0.0 and abs(y[i]) <= _SMALL * xi and abs(z[i]) <= _SMALL * xi):
            return False
    return True


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _atan_small(t):
    t2 = t * t
    return t + t * t2 * (-1 / 3 + t2 * (1 / 5 + t2 * (-1 / 7 + t2 * (1 / 9 + t2 * (-1 / 11 + t2 * (1 / 13 + t2 * (-1 / 15)))))))


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _v2s(r, row, m):
    """Vector -> (lon, lat) deg, as gwcs's CartesianToSpherical; longitude in [0, 360) when ``iarg`` says so.

    Near the +x axis (a chunk of V2/V3 directions) atan2 is the atan series of
    y/x and z/h through t^15 (truncation < 1e-17 relative); otherwise libm's atan2.
    """
    x, y, z = r[row[IN0]], r[row[IN0 + 1]], r[row[IN0 + 2]]
    o0, o1 = r[row[OUT0]], r[row[OUT0 + 1]]
    if _v2s_small(x, y, z, m) and row[IARG] == WRAP_NONE:
        for i in range(m):
            xi, yi = x[i], y[i]
            h = math.sqrt(xi * xi + yi * yi)
            o1[i] = _atan_small(z[i] / h) * _R2D
            o0[i] = _atan_small(yi / xi) * _R2D
        return
    wrap = row[IARG]
    for i in range(m):
        xi, yi = x[i], y[i]
        h = math.sqrt(xi * xi + yi * yi)
        o1[i] = math.atan2(z[i], h) * _R2D
        lon = math.atan2(yi, xi) * _R2D if h != 0.0 else 0.0
        if wrap == WRAP_360 and lon < 0.0:  # numpy's mod(lon, 360) and astropy's +360 agree on (-180, 180]
            lon += 360.0
        o0[i] = lon


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _norm(r, row, m):
    """Vector -> unit vector."""
    x, y, z = r[row[IN0]], r[row[IN0 + 1]], r[row[IN0 + 2]]
    o0, o1, o2 = r[row[OUT0]], r[row[OUT0 + 1]], r[row[OUT0 + 2]]
    for i in range(m):
        s = 1.0 / math.sqrt(x[i] * x[i] + y[i] * y[i] + z[i] * z[i])
        o0[i] = x[i] * s
        o1[i] = y[i] * s
        o2[i] = z[i] * s


@numba.njit(nogil=True, cache=True, error_model="numpy")
def _binary(r, row, m):
    """Element-wise a (+ - * / **) b."""
    op = row[OP]
    a, b, o = r[row[IN0]], r[row[IN0 + 1]], r[row[OUT0]]
    if op == ADD:
        for i in range(m):
            o[i] = a[i] + b[i]
    elif op == SUB:
        for i in range(m):
            o[i] = a[i] - b[i]
    elif op == MUL:
        for i in range(m):
            o[i] = a[i] * b[i]
    elif op == DIV:
        for i in range(m):
            o[i] = a[i] / b[i]
    else:
        for i in range(m):
            o[i] = a[i] ** b[i]


@numba.njit(
    "void(int64[:, ::1], float64[::1], int64[::1], float64[:], float64[:], float64[:], float64[:], float64, float64,"
    " int64)",
    nogil=True,
    cache=True,
    error_model="numpy",
)
def run_program(code, params, io, x, y, ox, oy, gx0, gy0, gnx):
    """Run a pixel-map program over ``ox.size`` pixels.

    Parameters
    ----------
    code : ndarray, int64, shape (nops, NCOL)
        The operations (module docstring).
    params : ndarray, float64
        Their parameters.
    io : ndarray, int64, shape (5,)
        Number of registers, input x and y registers, output x and y registers.
    x, y : ndarray, float64
        Input pixel coordinates (any strides); ignored when ``gnx > 0``.
    ox, oy : ndarray, float64
        Output pixel coordinates (any strides), written.
    gx0, gy0, gnx : float, float, int
        When ``gnx > 0`` the inputs are the grid ``x = gx0 + k % gnx``,
        ``y = gy0 + k // gnx`` for pixel ``k`` (row-major), not ``x`` and ``y``.
    """
    nreg, rx, ry, rox, roy = io[0], io[1], io[2], io[3], io[4]
    n = ox.shape[0]
    r = np.empty((nreg + 1, CHUNK), np.float64)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        vx, vy = r[rx], r[ry]
        if gnx > 0:
            col, line = start % gnx, start // gnx
            for i in range(m):
                vx[i] = gx0 + col
                vy[i] = gy0 + line
                col += 1
                if col == gnx:
                    col = 0
                    line += 1
        else:
            for i in range(m):
                vx[i] = x[start + i]
                vy[i] = y[start + i]
        for k in range(code.shape[0]):  # dispatch here, not in a function of its own: 0.6 s less to compile
            row = code[k]
            op = row[OP]
            if op == LIN:
                _lin(r, row, params, m)
            elif op == PROJ:
                _proj(r, row, params, m)
            elif op == POLY1:
                _poly1(r, row, params, m)
            elif op == POLY2:
                _poly2(r, row, params, m)
            elif op == S2V:
                _s2v(r, row, m)
            elif op == V2S:
                _v2s(r, row, m)
            elif op == NORM:
                _norm(r, row, m)
            else:
                _binary(r, row, m)
        vx, vy = r[rox], r[roy]
        for i in range(m):
            ox[start + i] = vx[i]
            oy[start + i] = vy[i]
