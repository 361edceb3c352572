"""One-pass drizzle of one input window for the ``square`` and ``point`` kernels (numba, ``nogil``).

:func:`drizzle_window` computes each input pixel's overlap with the output
pixels once and adds, in that same loop, the weights, the weighted data, the
weighted square roots of up to three variance planes, the context and the DQ
bits. It reproduces drizzle 2.2's C kernels (``Drizzle.add_image`` with
``in_units="cps"``, ``iscale=1``, ``wht_scale=1``) to float rounding:

- **Which input pixels are drizzled.** Drizzle first shrinks the box
  ``xmin..xmax, ymin..ymax`` to the rows and columns with a finite pixel map,
  maps the box's outline to the output, clips it to the output's outline, maps
  the clipped polygon back to the input by a golden-section search (0.03 px)
  and scans only the input pixels that lie *whole* inside that polygon (with
  0.03 px of slack). So an input pixel that straddles the output's edge is
  dropped: the output's edge pixels get less weight than a full drizzle would
  give them. :func:`_scan_rows` reproduces that scan row by row.
- **Square kernel.** The corners of the pixel shrunk by ``pixfrac`` are
  bilinear interpolations of the pixel map (extrapolated at the input's edge);
  the drop weight on an output pixel is ``overlap / jacobian * weight`` where
  ``overlap`` is the signed area the quadrilateral shares with the output pixel
  (:func:`_box_overlap`) and ``jacobian`` the quadrilateral's signed area. A
  pixel with a NaN among the pixel-map values it interpolates is skipped.
- **Point kernel.** All of a pixel's flux lands on the output pixel nearest to
  its mapped centre (rounding half away from zero), with its plain weight.
- A drop whose weight rounds to 0 in float32 adds nothing (so NaN data with
  zero weight never reaches the sums); the context is set where that float32
  weight is positive, DQ is OR-ed where it is non-zero.

``pixel_scale_ratio`` does not enter these two kernels in drizzle (only the
gaussian, lanczos and turbo kernels use it), so there is no such argument here.
Where drizzle refuses a call (a box of one row or column, fewer than two valid
pixel-map rows or columns) this module drizzles what is valid, and returns
empty sums when no pixel-map value is finite. ``bounds`` are taken literally:
drizzle's C code reads ``xmax == 0`` (or ``ymax == 0``) as "to the last column".
The outline (a few vertices per call) is plain Python; the per-row scan and the
kernel are compiled once, for fixed dtypes.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from numba import njit

__all__ = ["DrizzledWindow", "drizzle_window"]

KERNELS = ("square", "point")
_ATOL = 1.0e-12  # two polygon vertices closer than this are one
_TINY = 1.0e3 * 2.2250738585072014e-308  # a cross product below this: collinear
_INV_ERR = 0.03  # accuracy of the inverse pixel map, and the scan's slack (px)
_GOLD = 0.6180339887498948482
_MAXV = 8  # most vertices a clipped outline keeps
_JIT = {"nogil": True, "cache": True, "error_model": "numpy"}


@dataclasses.dataclass
class DrizzledWindow:
    """Sums of one input drizzled onto a window (float64; ``swd / wht`` is drizzle's image).

    Attributes
    ----------
    wht : ndarray (wy, wx), float64
        Sum of the drop weights (overlap / jacobian * weight, drizzle's ``out_wht``).
    swd : ndarray (wy, wx), float64
        Sum of drop weight times data.
    swv : ndarray (k, wy, wx), float64, or None
        Sum of drop weight times each ``sqrt_var`` plane.
    ctx : ndarray (wy, wx), bool, or None
        Where a drop of positive (float32) weight landed.
    dq : ndarray (wy, wx), uint32, or None
        OR of the DQ of the pixels whose drops landed with non-zero weight.
    """

    wht: np.ndarray
    swd: np.ndarray
    swv: np.ndarray | None
    ctx: np.ndarray | None
    dq: np.ndarray | None


# --- small geometry helpers ---------------------------------------------------------------------


@njit(**_JIT)
def _round_half_away(x):
    """C's ``round``: nearest integer, halves away from zero (``x`` finite and moderate)."""
    t = math.trunc(x)
    if abs(x - t) >= 0.5:
        t += math.copysign(1.0, x)
    return int(t)


@njit(**_JIT)
def _bilinear(pixmap, xin, yin):
    """Pixel map at a fractional input position: bilinear in its cell, extrapolated past the edge cells."""
    ny, nx = pixmap.shape[0], pixmap.shape[1]
    i0 = min(max(int(xin), 0), nx - 2)
    j0 = min(max(int(yin), 0), ny - 2)
    x = xin - i0
    y = yin - j0
    x1 = 1.0 - x
    y1 = 1.0 - y
    a = pixmap[j0, i0]
    b = pixmap[j0, i0 + 1]
    c = pixmap[j0 + 1, i0]
    d = pixmap[j0 + 1, i0 + 1]
    ox = a[0] * x1 * y1 + b[0] * x * y1 + c[0] * x1 * y + d[0] * x * y
    oy = a[1] * x1 * y1 + b[1] * x * y1 + c[1] * x1 * y + d[1] * x * y
    return ox, oy


# --- which input pixels drizzle scans -----------------------------------------------------------


@njit(**_JIT)
def _finite_box(pixmap, xmin, xmax, ymin, ymax):
    """Shrink the box to the first/last rows and columns holding a finite pixel-map value.

    Rows are searched from the box's start for their first finite column and from
    its end for their last one, as drizzle does; ``(xmin, xmax, ymin, ymax, ok)``.
    """
    i_lo, j_lo = xmax, ymax
    found = False
    for j in range(ymin, ymax + 1):
        for i in range(xmin, xmax + 1):
            if not (np.isnan(pixmap[j, i, 0]) or np.isnan(pixmap[j, i, 1])):
                i_lo, j_lo = min(i_lo, i), min(j_lo, j)
                found = True
                break
    i_hi, j_hi = i_lo, j_lo
    for j in range(ymax, ymin - 1, -1):
        for i in range(xmax, xmin - 1, -1):
            if not (np.isnan(pixmap[j, i, 0]) or np.isnan(pixmap[j, i, 1])):
                i_hi, j_hi = max(i_hi, i), max(j_hi, j)
                break
    return i_lo, i_hi, j_lo, j_hi, found


# The outline is a handful of vertices per call: plain Python (no compile time), calling the
# compiled _bilinear so the pixel map is interpolated with the kernel's own arithmetic.


def _div(a, b):
    """``a / b`` with IEEE results for a zero ``b`` (inf or NaN), as C and numba give."""
    if b != 0.0:
        return a / b
    if math.isnan(a) or a == 0.0:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


def _make_ccw(v):
    """Reverse the vertex list ``v`` in place unless its first two turn counter-clockwise about their mean."""
    n = len(v)
    if n < 3:
        return
    cx = cy = 0.0
    for x, y in v:
        cx += x
        cy += y
    cx /= n
    cy /= n
    if _cross(v[0][0] - cx, v[0][1] - cy, v[1][0] - cx, v[1][1] - cy) < 0.0:
        v.reverse()


def _push(v, x, y):
    """Append (x, y) to the vertex list unless it repeats the last or the first vertex (or the list is full)."""
    for px, py in (v[-1:] + v[:1]):
        if abs(px - x) < _ATOL and abs(py - y) < _ATOL:
            return
    if len(v) < _MAXV:
        v.append((x, y))


def _drop_collinear(v):
    """The vertices of ``v`` that do not lie on the line through their two neighbours."""
    n = len(v)
    if n < 3:
        return v
    keep = []
    for k in range(n):
        (ax, ay), (bx, by), (cx, cy) = v[k - 1], v[k], v[(k + 1) % n]
        dpx, dpy = cx - ax, cy - ay
        if abs(_cross(dpx, dpy, bx - ax, by - ay)) > _TINY and math.sqrt(dpx * dpx + dpy * dpy) > _ATOL:
            keep.append(v[k])
    return keep


def _left_of(a, b, p):
    """Is p strictly left of the directed line a -> b? (drizzle's arithmetic, for equal ties)."""
    return (_cross(p[0], p[1], a[0], a[1]) - _cross(b[0], b[1], a[0], a[1]) - _cross(p[0], p[1], b[0], b[1])) > 0.0


def _clip_to_rect(poly, rect):
    """Sutherland-Hodgman clip of polygon ``poly`` to the convex 4-gon ``rect`` (both made counter-clockwise).

    Returns the clipped polygon, counter-clockwise, collinear vertices dropped.
    """
    _make_ccw(poly)
    _make_ccw(rect)
    cur = list(poly)
    for k in range(4):
        a, b = rect[k - 1], rect[k]
        dwx, dwy = b[0] - a[0], b[1] - a[1]
        out = []
        for j in range(len(cur)):
            s, e = cur[j - 1], cur[j]
            s_in, e_in = _left_of(a, b, s), _left_of(a, b, e)
            if s_in != e_in:
                dpx, dpy = e[0] - s[0], e[1] - s[1]
                den = _cross(dpx, dpy, dwx, dwy)
                cp, cw = _cross(e[0], e[1], s[0], s[1]), _cross(b[0], b[1], a[0], a[1])
                ix, iy = _div(cp * dwx - cw * dpx, den), _div(cp * dwy - cw * dpy, den)
                if math.isfinite(ix) and math.isfinite(iy):
                    _push(out, ix, iy)
                if e_in:
                    _push(out, *e)
            elif s_in:
                _push(out, *e)
        cur = out
    _make_ccw(cur)
    return _drop_collinear(cur)


def _invert(pixmap, xo, yo, box):
    """Input position whose bilinear pixel map is (xo, yo): golden-section search over ``box`` to 0.03 px.

    ``box`` = (xmin, xmax, ymin, ymax) of input pixels. Returns ``(x, y)``, or
    None when the map is NaN at a probe or 50 steps did not converge.
    """
    x_lo, x_hi = box[0] - 0.5, box[1] + 0.5
    y_lo, y_hi = box[2] - 0.5, box[3] + 0.5
    dx, dy = x_hi - x_lo, y_hi - y_lo
    it = 0
    while (dx > _INV_ERR or dy > _INV_ERR) and it < 50:
        it += 1
        xa, xb = x_hi - _GOLD * dx, x_lo + _GOLD * dx
        ya, yb = y_hi - _GOLD * dy, y_lo + _GOLD * dy
        dist = []
        for px, py in (_bilinear(pixmap, xa, ya), _bilinear(pixmap, xa, yb), _bilinear(pixmap, xb, ya),
                       _bilinear(pixmap, xb, yb)):
            if math.isnan(px) or math.isnan(py):
                return None
            ex, ey = px - xo, py - yo
            dist.append(ex * ex + ey * ey)
        # dist: (xa, ya), (xa, yb), (xb, ya), (xb, yb); keep the quadrant of the strict minimum
        d0, d1, d2, d3 = dist
        if d0 < d1 and d0 < d2 and d0 < d3:
            x_hi, y_hi = xb, yb
        elif d1 < d0 and d1 < d2 and d1 < d3:
            x_hi, y_lo = xb, ya
        elif d2 < d0 and d2 < d1 and d2 < d3:
            x_lo, y_hi = xa, yb
        else:
            x_lo, y_lo = xa, ya
        dx, dy = x_hi - x_lo, y_hi - y_lo
    return (0.5 * (x_lo + x_hi), 0.5 * (y_lo + y_hi)) if it < 50 else None


def _rect(x0, y0, x1, y1):
    """The rectangle x0..x1, y0..y1 as vertices counter-clockwise from (x0, y0)."""
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _scan_outline(pixmap, box, wy, wx):
    """The polygon (input frame) drizzle scans: the box's outline clipped to the window, or the box itself.

    Fewer than 3 vertices: the box misses the window.
    """
    xmin, xmax, ymin, ymax = box
    outline = _rect(xmin - 0.5, ymin - 0.5, xmax + 0.5, ymax + 0.5)
    mapped = []
    for x, y in outline:
        mx, my = _bilinear(pixmap, x, y)
        if math.isnan(mx) or math.isnan(my):
            return outline  # the outline cannot be mapped: scan the whole box
        mapped.append((mx, my))
    clipped = _clip_to_rect(mapped, _rect(-0.5, -0.5, wx - 0.5, wy - 0.5))
    for k, (x, y) in enumerate(clipped):
        back = _invert(pixmap, x, y, box)
        if back is None:
            return outline[:4]  # drizzle keeps the box, with the vertices inverted so far
        if k < 4:
            outline[k] = back
        else:
            outline.append(back)
    outline = outline[:len(clipped)]
    _make_ccw(outline)
    return outline


def _edge(v1, v2, side):
    """An edge as (x1, y1, x2, y2, slope dx/dy, x at y = 0 shifted half a pixel inward)."""
    (x1, y1), (x2, y2) = v1, v2
    slope = _div(x2 - x1, y2 - y1)
    icpt = _div(x1 * y2 - y1 * x2, y2 - y1)
    return (x1, y1, x2, y2, slope, icpt - math.copysign(0.5 + 0.5 * abs(slope), side))


def _edge_chains(v):
    """Left and right edge chains of polygon ``v`` from its bottom to its top, and its y extent.

    An edge's shifted intercept puts a pixel centred on it whole on the inner
    side. Returns ``(left, right, min_y, max_y)``, the chains as (k, 6) arrays.
    """
    n = len(v)
    lo_left = min(range(n), key=lambda k: (v[k][1], k))  # the first lowest vertex
    min_y = v[lo_left][1]
    a, b = (lo_left - 1) % n, (lo_left + 1) % n
    lo_right = a if v[a][1] < v[b][1] else b
    if v[lo_right][1] <= min_y * (1.0 + math.copysign(_ATOL, min_y)):  # flat bottom
        if v[lo_left][0] > v[lo_right][0]:
            lo_left, lo_right = lo_right, lo_left
    else:
        lo_right = lo_left
    hi_right = min(range(n), key=lambda k: (-v[k][1], k))  # the first highest vertex
    max_y = v[hi_right][1]
    a, b = (hi_right - 1) % n, (hi_right + 1) % n
    hi_left = a if v[a][1] > v[b][1] else b
    if v[hi_left][1] >= max_y * (1.0 - math.copysign(_ATOL, max_y)):  # flat top
        if v[hi_left][0] > v[hi_right][0]:
            hi_left, hi_right = hi_right, hi_left
    else:
        hi_left = hi_right
    if hi_left > lo_left:
        lo_left += n
    if hi_right < lo_right:
        hi_right += n
    left = [_edge(v[(lo_left - k) % n], v[(lo_left - k - 1) % n], -1.0) for k in range(lo_left - hi_left)]
    right = [_edge(v[(lo_right + k) % n], v[(lo_right + k + 1) % n], 1.0) for k in range(hi_right - lo_right)]
    return np.array(left, np.float64).reshape(-1, 6), np.array(right, np.float64).reshape(-1, 6), min_y, max_y


@njit(**_JIT)
def _row_limits(left, right, min_y, max_y, xmin, xmax, ymax, lo, hi):
    """First and last input column drizzle scans in each row (``lo``, ``hi`` come as 0, -1: row skipped).

    Walks the edge chains upwards row by row; a row's limits are the inner edge
    lines at its bottom and top (0.03 px of slack), clamped to ``xmin..xmax``,
    rounded half away from zero. The scan ends where a chain does.
    """
    il, ir = 0, 0
    j0 = max(0, int(min_y + 0.5 + 2.0 * _INV_ERR))
    j1 = min(ymax, int(max_y + 2.0 * _INV_ERR))
    for j in range(j0, j1 + 1):
        bottom, top = j - 0.5, j + 0.5
        if top <= min_y or bottom >= max_y + 1:
            continue
        while il < left.shape[0] and bottom > left[il, 3]:
            il += 1
        while ir < right.shape[0] and bottom > right[ir, 3]:
            ir += 1
        if il == left.shape[0] or ir == right.shape[0]:
            return
        xlb = left[il, 4] * j + left[il, 5] - _INV_ERR
        xrb = right[ir, 4] * j + right[ir, 5] + _INV_ERR
        while il < left.shape[0] and top > left[il, 3] + 0.5 + _INV_ERR:
            il += 1
        while ir < right.shape[0] and top > right[ir, 3] + 0.5 + _INV_ERR:
            ir += 1
        if il == left.shape[0] or ir == right.shape[0]:
            return
        xlt = left[il, 4] * j + left[il, 5] - _INV_ERR
        xrt = right[ir, 4] * j + right[ir, 5] + _INV_ERR
        xlb, xlt = max(xlb, float(xmin)), max(xlt, float(xmin))
        xrb, xrt = min(xrb, float(xmax)), min(xrt, float(xmax))
        if xlt >= xrt:
            if xlb >= xrb:
                continue
            a, b = xlb, xrb
        elif xlb >= xrb:
            a, b = xlt, xrt
        else:
            a, b = max(xlb, xlt), min(xrb, xrt)
        lo[j], hi[j] = _round_half_away(a), _round_half_away(b)


def _scan_rows(pixmap, box, wy, wx, lo, hi):
    """Fill ``lo``, ``hi``: the input columns drizzle scans in each row, for ``box`` after :func:`_finite_box`."""
    outline = _scan_outline(pixmap, box, wy, wx)
    lo[:] = 0
    hi[:] = -1
    if len(outline) < 3:
        return
    left, right, min_y, max_y = _edge_chains(outline)
    _row_limits(left, right, float(min_y), float(max_y), box[0], box[1], box[3], lo, hi)


# --- the overlap of a quadrilateral with an output pixel ----------------------------------------


@njit(**_JIT)
def _box_overlap(ii, jj, xo, yo):
    """Signed area the quadrilateral (xo, yo) shares with output pixel (ii, jj) (a unit square centred there).

    Sums, over the quadrilateral's edges, the signed area under each edge inside
    the unit square (positive for an edge running towards +x), in coordinates
    relative to the square's corner. Written as one loop: called for every drop.
    """
    total = 0.0
    for k in range(4):
        m = (k + 1) & 3
        x1, y1 = xo[k] - (ii - 0.5), yo[k] - (jj - 0.5)
        x2, y2 = xo[m] - (ii - 0.5), yo[m] - (jj - 0.5)
        dx = x2 - x1
        dy = y2 - y1
        if dx == 0:
            continue
        if dx < 0:
            sign, xl, xr = -1.0, x2, x1
        else:
            sign, xl, xr = 1.0, x1, x2
        if xl >= 1.0 or xr <= 0.0:
            continue
        xl = max(xl, 0.0)
        xr = min(xr, 1.0)
        slope = dy / dx
        yl = y1 + slope * (xl - x1)
        yr = y1 + slope * (xr - x1)
        if yl <= 0.0 and yr <= 0.0:
            continue  # below the square
        if yl >= 1.0 and yr >= 1.0:
            total += sign * (xr - xl)  # above it: the whole column
            continue
        det = x1 * y2 - y1 * x2  # the line crosses y = 0 at det / dy and y = 1 at (dx + det) / dy
        if yl < 0.0:
            yl = 0.0
            xl = det / dy
        if yr < 0.0:
            yr = 0.0
            xr = det / dy
        if yl <= 1.0 and yr <= 1.0:
            total += sign * 0.5 * (xr - xl) * (yr + yl)
        elif yl <= 1.0:
            x_top = (dx + det) / dy
            total += sign * (0.5 * (x_top - xl) * (1.0 + yl) + xr - x_top)
        else:
            x_top = (dx + det) / dy
            total += sign * (0.5 * (xr - x_top) * (1.0 + yr) + x_top - xl)
    return total


@njit(**_JIT)
def _inside_overlap(xo, yo):
    """The signed overlap :func:`_box_overlap` gives a pixel lying whole inside quadrilateral (xo, yo):
    +1 or -1 by its orientation (+1 clockwise); 0 if the quadrilateral is not strictly convex."""
    pos = neg = False
    for k in range(4):
        a, b = (k + 1) & 3, (k + 2) & 3
        c = (xo[a] - xo[k]) * (yo[b] - yo[a]) - (yo[a] - yo[k]) * (xo[b] - xo[a])
        if c > 0:
            pos = True
        elif c < 0:
            neg = True
        else:
            return 0.0
    if pos and neg:
        return 0.0
    return -1.0 if pos else 1.0


@njit(**_JIT)
def _section(xo, yo, y, lo, hi):
    """``(lo, hi)`` widened by the x extent of quadrilateral (xo, yo) along the line at height ``y``."""
    for k in range(4):
        m = (k + 1) & 3
        y1, y2 = yo[k], yo[m]
        if not (min(y1, y2) <= y <= max(y1, y2)):
            continue
        if y1 == y2:
            lo, hi = min(lo, xo[k], xo[m]), max(hi, xo[k], xo[m])
        else:
            x = xo[k] + (y - y1) * (xo[m] - xo[k]) / (y2 - y1)
            lo, hi = min(lo, x), max(hi, x)
    return lo, hi


@njit(**_JIT)
def _row_columns(xo, yo, jj, ia, ib):
    """Output columns of row ``jj`` that the convex quadrilateral (xo, yo) may reach, ``oa..ob``, and those
    whose pixels lie whole inside it, ``ka..kb`` (``ka > kb``: none).

    The row's strip (``jj - 0.5 <= y <= jj + 0.5``) meets the quadrilateral
    between the x extents of its sections at the strip's bottom and top and of
    its vertices inside the strip; being convex, its section is narrowest at the
    bottom or the top, so a pixel lies inside between the larger left end and the
    smaller right end of those two sections. 1e-9 px of margin either way: the
    pixels on a boundary take the exact overlap (:func:`_box_overlap`).
    """
    bottom, top = jj - 0.5, jj + 0.5
    lb, hb = _section(xo, yo, bottom, np.inf, -np.inf)
    lt, ht = _section(xo, yo, top, np.inf, -np.inf)
    lo, hi = min(lb, lt), max(hb, ht)
    for k in range(4):
        if bottom < yo[k] < top:
            lo, hi = min(lo, xo[k]), max(hi, xo[k])
    oa = max(ia, int(math.floor(lo - 1e-9 + 0.5)))
    ob = min(ib, int(math.ceil(hi + 1e-9 - 0.5)))
    left, right = max(lb, lt) + 1e-9, min(hb, ht) - 1e-9
    if not right - left >= 1.0:
        return oa, ob, ob + 1, ob
    return oa, ob, max(oa, int(math.ceil(left + 0.5))), min(ob, int(math.floor(right - 0.5)))


@njit(**_JIT)
def _corner_sums(pixmap, i, j, c, far, mid, near):
    """Component ``c`` of the four corners of pixel (i, j) from its 3x3 neighbourhood (drizzle's sums)."""
    p = pixmap
    f00, f10, f20 = p[j - 1, i - 1, c] * far, p[j - 1, i, c] * mid, p[j - 1, i + 1, c] * far
    f01, f11, f21 = p[j, i - 1, c] * mid, p[j, i, c] * near, p[j, i + 1, c] * mid
    f02, f12, f22 = p[j + 1, i - 1, c] * far, p[j + 1, i, c] * mid, p[j + 1, i + 1, c] * far
    return (f01 + f11 + f02 + f12, f11 + f21 + f12 + f22, f10 + f20 + f11 + f21, f00 + f10 + f01 + f11)


@njit(**_JIT)
def _corners(pixmap, i, j, h):
    """Output corners ``(xs, ys)`` of input pixel (i, j) shrunk to half-width ``h``, clockwise from (-h, +h).

    Bilinear in the pixel map; inside the map it weights the 3x3 neighbourhood
    at once (the same numbers in drizzle's order of operations), at its border
    it interpolates corner by corner and extrapolates from the edge cells.
    A corner may be NaN (a NaN in the pixel-map values it uses).
    """
    ny, nx = pixmap.shape[0], pixmap.shape[1]
    if 0 < i < nx - 2 and 0 < j < ny - 2:
        far, mid, near = h * h, (1 - h) * h, (1 - h) * (1 - h)
        return _corner_sums(pixmap, i, j, 0, far, mid, near), _corner_sums(pixmap, i, j, 1, far, mid, near)
    x0, y0 = _bilinear(pixmap, i - h, j + h)
    x1, y1 = _bilinear(pixmap, i + h, j + h)
    x2, y2 = _bilinear(pixmap, i + h, j - h)
    x3, y3 = _bilinear(pixmap, i - h, j - h)
    return (x0, x1, x2, x3), (y0, y1, y2, y3)


@njit(**_JIT)
def _any_nan(v):
    return np.isnan(v[0]) or np.isnan(v[1]) or np.isnan(v[2]) or np.isnan(v[3])


@njit(**_JIT)
def _index_range(lo, hi, n):
    """Output pixels ``a..b`` whose centres round from ``lo..hi`` (drizzle's nearest-integer bounds), within 0..n-1."""
    a = max(_round_half_away(min(max(lo, -1.0), float(n))), 0)
    b = min(_round_half_away(min(max(hi, -1.0), float(n))), n - 1)
    return a, b


# --- the kernel ---------------------------------------------------------------------------------


@njit(**_JIT)
def _drizzle_kernel(data, weight, pixmap, sqrt_var, dq, lo, hi, pixfrac, point, use_ctx, use_dq,
                    wy, wx, ky, kx, wht, swd, swv, ctx, odq):
    """Drizzle the scanned pixels (rows ``j``, columns ``lo[j]..hi[j]``) onto a window of ``wy`` x ``wx``
    output pixels, adding into the outputs, which hold the window's box at ``(ky, kx)`` (their shape).

    Square kernel: a drop weight ``overlap / jacobian * weight`` on each output
    pixel the shrunken pixel's quadrilateral overlaps. Point kernel (``point``):
    the plain weight on the output pixel nearest the mapped centre. As drizzle's
    update: a drop whose weight is 0 in float32 adds nothing; the context is set
    where that weight is positive, DQ OR-ed where it is non-zero.
    """
    by, bx = wht.shape
    ky1, kx1 = ky + by - 1, kx + bx - 1
    nvar = sqrt_var.shape[0]
    h = 0.5 * pixfrac
    xo = yo = (0.0, 0.0, 0.0, 0.0)
    for j in range(lo.shape[0]):
        for i in range(lo[j], hi[j] + 1):
            if point:
                x, y = pixmap[j, i, 0], pixmap[j, i, 1]
                # nearest pixel (halves away from zero) in 0..n-1  <=>  -0.5 < x < n - 0.5; NaN fails too
                if not (-0.5 < x < wx - 0.5 and -0.5 < y < wy - 0.5):
                    continue
                ia = ib = _round_half_away(x)
                ja = jb = _round_half_away(y)
                w = np.float64(weight[j, i])
            else:
                xo, yo = _corners(pixmap, i, j, h)
                if _any_nan(xo) or _any_nan(yo):
                    continue
                jaco = 0.5 * ((xo[1] - xo[3]) * (yo[0] - yo[2]) - (xo[0] - xo[2]) * (yo[1] - yo[3]))
                w = weight[j, i] / jaco  # times the overlap: the drop's weight on one output pixel
                ja, jb = _index_range(min(yo[0], yo[1], yo[2], yo[3]), max(yo[0], yo[1], yo[2], yo[3]), wy)
                ia, ib = _index_range(min(xo[0], xo[1], xo[2], xo[3]), max(xo[0], xo[1], xo[2], xo[3]), wx)
            d = np.float64(data[j, i])
            bits = dq[j, i] if use_dq else np.uint32(0)
            # drops spanning 4 or more output rows and columns (a finer output grid): each row visits only the columns the
            # quadrilateral reaches, and the pixels whole inside it have all of it (overlap +-1 by its
            # orientation) without clipping
            whole = 0.0 if point or jb - ja < 3 or ib - ia < 3 else _inside_overlap(xo, yo)
            ja, jb, ia, ib = max(ja, ky), min(jb, ky1), max(ia, kx), min(ib, kx1)  # the box kept
            for jj in range(ja, jb + 1):
                oa, ob, ka, kb = _row_columns(xo, yo, jj, ia, ib) if whole != 0.0 else (ia, ib, ib + 1, ib)
                for ii in range(oa, ob + 1):
                    if point:
                        dow = w
                    elif ka <= ii <= kb:
                        dow = whole * w
                    else:
                        dover = _box_overlap(ii, jj, xo, yo)
                        if dover == 0.0:
                            continue
                        dow = dover * w
                    f = np.float32(dow)
                    if f == 0:
                        continue
                    oj, oi = jj - ky, ii - kx
                    wht[oj, oi] += dow
                    swd[oj, oi] += dow * d
                    for k in range(nvar):
                        swv[k, oj, oi] += dow * sqrt_var[k, j, i]
                    if use_ctx and f > 0:
                        ctx[oj, oi] = True
                    if use_dq:
                        odq[oj, oi] |= bits


# --- the entry point ----------------------------------------------------------------------------


def _checked(name, a, dtype, shape):
    a = np.asarray(a)
    if a.shape != shape:
        msg = f"{name} must have shape {shape} like data; got {a.shape}"
        raise ValueError(msg)
    return np.ascontiguousarray(a, dtype=dtype)


def drizzle_window(data, weight, pixmap, bounds, out_shape, *, kernel="square", pixfrac=1.0,
                   sqrt_var=None, dq=None, want_ctx=True, keep=None, outputs=None) -> DrizzledWindow:
    """Drizzle input pixels ``bounds`` of ``data`` onto a window of shape ``out_shape`` in one pass.

    Parameters
    ----------
    data : ndarray (ny, nx)
        Input image (converted to float32), e.g. in DN/s.
    weight : ndarray (ny, nx)
        Per-pixel drizzle weight (float32); 0 excludes a pixel.
    pixmap : ndarray (ny, nx, 2)
        Output x, y (float64, relative to the window's origin) of the input pixel centres; NaN where unmapped.
    bounds : (xmin, xmax, ymin, ymax)
        Input columns xmin..xmax and rows ymin..ymax (inclusive, 0-based) to drizzle;
        clipped to the input.
    out_shape : (wy, wx)
        Shape of the output window.
    kernel : {"square", "point"}
        Drizzle kernel. Default "square".
    pixfrac : float
        Linear size of the drop in input pixels, > 0. Default 1.0. At or below
        0.001 drizzle switches to the point kernel, and so does this function.
    sqrt_var : ndarray (k, ny, nx) or None
        Planes (float32, k <= 3) drizzled with the same drops as ``data``.
    dq : ndarray (ny, nx) or None
        Input DQ (uint32) OR-ed into the output where a pixel's drop lands.
    want_ctx : bool
        Also return where the input contributed. Default True.
    keep : (y0, y1, x0, x1) or None
        A box of the window (rows y0:y1, columns x0:x1, inside it): the sums cover only the box
        (drizzle still clips the footprint to the whole window). Default None: the whole window.
    outputs : (wht, swd, swv, ctx, dq) or None
        Zeroed arrays to add into (float64 (by, bx), float64 (by, bx), float64 (k, by, bx), bool (by, bx)
        or (0, 0) without context, uint32 (by, bx) or (0, 0) without ``dq``), e.g. views of a reused buffer.
        Default None: new arrays.

    Returns
    -------
    DrizzledWindow
        ``swd / wht`` equals drizzle 2.2's ``out_img``, ``wht`` its ``out_wht``.
    """
    if kernel not in KERNELS:
        msg = f"kernel must be one of {KERNELS} for the one-pass drizzle; got {kernel!r}"
        raise ValueError(msg)
    if not (np.isfinite(pixfrac) and pixfrac > 0):
        msg = f"pixfrac must be positive and finite; got {pixfrac!r}"
        raise ValueError(msg)
    data = np.asarray(data)
    if data.ndim != 2 or min(data.shape) < 2:
        msg = f"data must be 2-D with at least 2 rows and 2 columns; got shape {data.shape}"
        raise ValueError(msg)
    shape = data.shape
    data = np.ascontiguousarray(data, dtype=np.float32)
    weight = _checked("weight", weight, np.float32, shape)
    pixmap = _checked("pixmap", pixmap, np.float64, (*shape, 2))
    if sqrt_var is None:
        var = np.zeros((0, *shape), np.float32)
    else:
        var = np.asarray(sqrt_var)
        if var.ndim != 3 or var.shape[0] > 3:
            msg = f"sqrt_var must be (k, ny, nx) with k <= 3; got shape {var.shape}"
            raise ValueError(msg)
        var = _checked("sqrt_var", var, np.float32, (var.shape[0], *shape))
    in_dq = np.zeros((0, 0), np.uint32) if dq is None else _checked("dq", dq, np.uint32, shape)
    wy, wx = (int(n) for n in out_shape)
    xmin, xmax, ymin, ymax = (int(b) for b in bounds)
    xmin, ymin = max(xmin, 0), max(ymin, 0)
    xmax, ymax = min(xmax, shape[1] - 1), min(ymax, shape[0] - 1)

    ky0, ky1, kx0, kx1 = (0, wy, 0, wx) if keep is None else (int(k) for k in keep)
    if not (0 <= ky0 <= ky1 <= wy and 0 <= kx0 <= kx1 <= wx):
        msg = f"keep must be a box (y0, y1, x0, x1) inside the window {(wy, wx)}; got {keep!r}"
        raise ValueError(msg)
    by, bx = ky1 - ky0, kx1 - kx0
    want = (((by, bx), np.float64), ((by, bx), np.float64), ((var.shape[0], by, bx), np.float64),
            ((by, bx) if want_ctx else (0, 0), np.bool_), ((by, bx) if dq is not None else (0, 0), np.uint32))
    if outputs is None:
        outputs = [np.zeros(shape, dtype) for shape, dtype in want]
    elif len(outputs) != 5 or any(a.shape != shape or a.dtype != dtype or not a.flags.c_contiguous
                                  for a, (shape, dtype) in zip(outputs, want, strict=False)):
        msg = f"outputs must be C-contiguous arrays of {[(s, np.dtype(d).name) for s, d in want]}"
        raise ValueError(msg)
    wht, swd, swv, ctx, odq = outputs
    lo = np.zeros(shape[0], np.int64)
    hi = np.full(shape[0], -1, np.int64)
    if xmin <= xmax and ymin <= ymax and by > 0 and bx > 0:
        *box, found = _finite_box(pixmap, xmin, xmax, ymin, ymax)
        if found:
            _scan_rows(pixmap, box, wy, wx, lo, hi)
    point = kernel == "point" or pixfrac <= 0.001
    _drizzle_kernel(data, weight, pixmap, var, in_dq, lo, hi, float(pixfrac), point, want_ctx, dq is not None,
                    wy, wx, ky0, kx0, wht, swd, swv, ctx, odq)
    return DrizzledWindow(wht, swd, swv if sqrt_var is not None else None, ctx if want_ctx else None,
                          odq if dq is not None else None)
