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
empty sums when no pixel-map value is finite.
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
_JIT = dict(nogil=True, cache=True, error_model="numpy")


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
def _cross(ax, ay, bx, by):
    return ax * by - ay * bx


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


@njit(**_JIT)
def _make_ccw(v, n):
    """Reverse the ``n`` vertices of ``v`` in place unless the first two turn counter-clockwise about their mean."""
    if n < 3:
        return
    cx = 0.0
    cy = 0.0
    for k in range(n):
        cx += v[k, 0]
        cy += v[k, 1]
    cx /= n
    cy /= n
    if _cross(v[0, 0] - cx, v[0, 1] - cy, v[1, 0] - cx, v[1, 1] - cy) >= 0.0:
        return
    for k in range(n // 2):
        for c in range(2):
            v[k, c], v[n - 1 - k, c] = v[n - 1 - k, c], v[k, c]


@njit(**_JIT)
def _push(v, n, x, y):
    """Append (x, y) to the ``n`` vertices of ``v`` unless it repeats the last or first one; new count."""
    if n > 0 and abs(v[n - 1, 0] - x) < _ATOL and abs(v[n - 1, 1] - y) < _ATOL:
        return n
    if n > 0 and abs(v[0, 0] - x) < _ATOL and abs(v[0, 1] - y) < _ATOL:
        return n
    if n >= _MAXV:
        return n
    v[n, 0] = x
    v[n, 1] = y
    return n + 1


@njit(**_JIT)
def _drop_collinear(v, n):
    """Remove vertices lying on the line through their two neighbours; new count."""
    if n < 3:
        return n
    keep = np.empty((_MAXV, 2))
    m = 0
    for k in range(n):
        prev, nxt = (k - 1 + n) % n, (k + 1) % n
        dpx, dpy = v[nxt, 0] - v[prev, 0], v[nxt, 1] - v[prev, 1]
        dqx, dqy = v[k, 0] - v[prev, 0], v[k, 1] - v[prev, 1]
        if abs(_cross(dpx, dpy, dqx, dqy)) > _TINY and math.sqrt(dpx * dpx + dpy * dpy) > _ATOL:
            keep[m] = v[k]
            m += 1
    v[:m] = keep[:m]
    return m


@njit(**_JIT)
def _left_of(ax, ay, bx, by, px, py):
    """Is (px, py) strictly left of the directed line a -> b? (drizzle's arithmetic, for equal ties)."""
    return (_cross(px, py, ax, ay) - _cross(bx, by, ax, ay) - _cross(px, py, bx, by)) > 0.0


@njit(**_JIT)
def _clip_to_rect(poly, n, rect):
    """Sutherland-Hodgman clip of the ``n``-gon ``poly`` (changed in place) to the convex 4-gon ``rect``.

    Returns the clipped polygon (counter-clockwise, collinear vertices dropped) and its vertex count.
    """
    _make_ccw(poly, n)
    _make_ccw(rect, 4)
    cur = poly.copy()
    ncur = n
    nxt = np.empty((_MAXV, 2))
    for k in range(4):
        ax, ay = rect[k - 1, 0], rect[k - 1, 1]  # k - 1 = -1 wraps to the last vertex
        bx, by = rect[k, 0], rect[k, 1]
        dwx, dwy = bx - ax, by - ay
        m = 0
        for j in range(ncur):
            s = j - 1 if j > 0 else ncur - 1
            sx, sy = cur[s, 0], cur[s, 1]
            ex, ey = cur[j, 0], cur[j, 1]
            s_in = _left_of(ax, ay, bx, by, sx, sy)
            e_in = _left_of(ax, ay, bx, by, ex, ey)
            if s_in != e_in:
                dpx, dpy = ex - sx, ey - sy
                den = _cross(dpx, dpy, dwx, dwy)
                cp, cw = _cross(ex, ey, sx, sy), _cross(bx, by, ax, ay)
                ix, iy = (cp * dwx - cw * dpx) / den, (cp * dwy - cw * dpy) / den
                if np.isfinite(ix) and np.isfinite(iy):
                    m = _push(nxt, m, ix, iy)
                if e_in:
                    m = _push(nxt, m, ex, ey)
            elif s_in:
                m = _push(nxt, m, ex, ey)
        cur, nxt = nxt, cur
        ncur = m
    _make_ccw(cur, ncur)
    ncur = _drop_collinear(cur, ncur)
    return cur, ncur


@njit(**_JIT)
def _invert(pixmap, xo, yo, box):
    """Input position whose bilinear pixel map is (xo, yo): golden-section search over ``box`` to 0.03 px.

    ``box`` = (xmin, xmax, ymin, ymax) of input pixels. Returns ``(ok, x, y)``;
    not ok when the map is NaN at a probe or 50 steps did not converge.
    """
    x_lo, x_hi = box[0] - 0.5, box[1] + 0.5
    y_lo, y_hi = box[2] - 0.5, box[3] + 0.5
    dx, dy = x_hi - x_lo, y_hi - y_lo
    dist = np.empty(4)
    it = 0
    while (dx > _INV_ERR or dy > _INV_ERR) and it < 50:
        it += 1
        xa, xb = x_hi - _GOLD * dx, x_lo + _GOLD * dx
        ya, yb = y_hi - _GOLD * dy, y_lo + _GOLD * dy
        for q in range(4):
            px, py = _bilinear(pixmap, xa if q < 2 else xb, ya if q % 2 == 0 else yb)
            if np.isnan(px) or np.isnan(py):
                return False, 0.0, 0.0
            ex, ey = px - xo, py - yo
            dist[q] = ex * ex + ey * ey
        # dist: (xa, ya), (xa, yb), (xb, ya), (xb, yb); keep the quadrant of the strict minimum
        if dist[0] < dist[1] and dist[0] < dist[2] and dist[0] < dist[3]:
            x_hi, y_hi = xb, yb
        elif dist[1] < dist[0] and dist[1] < dist[2] and dist[1] < dist[3]:
            x_hi, y_lo = xb, ya
        elif dist[2] < dist[0] and dist[2] < dist[1] and dist[2] < dist[3]:
            x_lo, y_hi = xa, yb
        else:
            x_lo, y_lo = xa, ya
        dx, dy = x_hi - x_lo, y_hi - y_lo
    return it < 50, 0.5 * (x_lo + x_hi), 0.5 * (y_lo + y_hi)


@njit(**_JIT)
def _scan_outline(pixmap, box, wy, wx):
    """The polygon (input frame) drizzle scans: the box clipped to the window, or the box itself.

    Returns ``(vertices, n)``; ``n < 3`` when the box misses the window.
    """
    xmin, xmax, ymin, ymax = box[0], box[1], box[2], box[3]
    outline = np.empty((_MAXV, 2))
    corners = ((xmin - 0.5, ymin - 0.5), (xmax + 0.5, ymin - 0.5), (xmax + 0.5, ymax + 0.5),
               (xmin - 0.5, ymax + 0.5))
    for k in range(4):
        outline[k, 0], outline[k, 1] = corners[k]
    mapped = np.empty((_MAXV, 2))
    for k in range(4):
        mapped[k, 0], mapped[k, 1] = _bilinear(pixmap, outline[k, 0], outline[k, 1])
        if np.isnan(mapped[k, 0]) or np.isnan(mapped[k, 1]):
            return outline, 4  # the outline cannot be mapped: scan the whole box
    rect = np.array([[-0.5, -0.5], [wx - 0.5, -0.5], [wx - 0.5, wy - 0.5], [-0.5, wy - 0.5]])
    clipped, n = _clip_to_rect(mapped, 4, rect)
    for k in range(n):
        ok, x, y = _invert(pixmap, clipped[k, 0], clipped[k, 1], box)
        if not ok:
            return outline, 4  # drizzle keeps the box, with the vertices inverted so far
        outline[k, 0], outline[k, 1] = x, y
    _make_ccw(outline, n)
    return outline, n


@njit(**_JIT)
def _edge_chains(v, n):
    """Left and right edge chains of a polygon, bottom to top: rows (x1, y1, x2, y2, slope, x-intercept).

    The intercept is shifted by half a pixel (plus the slope's share) inward, so
    a pixel centred on the shifted line lies whole on the inner side.
    Returns ``(left, right, min_y, max_y)``.
    """
    lo = 0
    for k in range(1, n):
        if v[k, 1] < v[lo, 1]:
            lo = k
    lo_left, min_y = lo, v[lo, 1]
    a, b = (lo_left - 1 + n) % n, (lo_left + 1) % n
    lo_right = a if v[a, 1] < v[b, 1] else b
    if v[lo_right, 1] <= min_y * (1.0 + math.copysign(_ATOL, min_y)):  # flat bottom
        if v[lo_left, 0] > v[lo_right, 0]:
            lo_left, lo_right = lo_right, lo_left
    else:
        lo_right = lo_left
    hi = 0
    for k in range(1, n):
        if v[k, 1] > v[hi, 1]:
            hi = k
    hi_right, max_y = hi, v[hi, 1]
    a, b = (hi_right - 1 + n) % n, (hi_right + 1) % n
    hi_left = a if v[a, 1] > v[b, 1] else b
    if v[hi_left, 1] >= max_y * (1.0 - math.copysign(_ATOL, max_y)):  # flat top
        if v[hi_left, 0] > v[hi_right, 0]:
            hi_left, hi_right = hi_right, hi_left
    else:
        hi_left = hi_right
    if hi_left > lo_left:
        lo_left += n
    if hi_right < lo_right:
        hi_right += n
    left = np.empty((lo_left - hi_left, 6))
    for k in range(lo_left - hi_left):  # clockwise from the bottom
        s = (lo_left - k) % n
        _set_edge(left, k, v, s, (s - 1 + n) % n, -1.0)
    right = np.empty((hi_right - lo_right, 6))
    for k in range(hi_right - lo_right):  # counter-clockwise from the bottom
        s = (lo_right + k) % n
        _set_edge(right, k, v, s, (s + 1) % n, 1.0)
    return left, right, min_y, max_y


@njit(**_JIT)
def _set_edge(e, k, v, s, t, side):
    x1, y1, x2, y2 = v[s, 0], v[s, 1], v[t, 0], v[t, 1]
    slope = (x2 - x1) / (y2 - y1)
    icpt = (x1 * y2 - y1 * x2) / (y2 - y1)
    e[k, 0], e[k, 1], e[k, 2], e[k, 3] = x1, y1, x2, y2
    e[k, 4] = slope
    e[k, 5] = icpt - math.copysign(0.5 + 0.5 * abs(slope), side)


@njit(**_JIT)
def _scan_rows(pixmap, box, wy, wx, lo, hi):
    """First and last input column drizzle scans in each row (``lo[j] > hi[j]``: row skipped).

    ``box`` = (xmin, xmax, ymin, ymax) after :func:`_finite_box`. Walks the edge
    chains of :func:`_scan_outline`'s polygon upwards row by row; a row's limits
    are the inner edge lines at its bottom and top (0.03 px of slack), clamped
    to the box, rounded half away from zero.
    """
    lo[:] = 0
    hi[:] = -1
    outline, n = _scan_outline(pixmap, box, wy, wx)
    if n < 3:
        return
    left, right, min_y, max_y = _edge_chains(outline, n)
    xmin, xmax, ymax = box[0], box[1], box[3]
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


# --- the overlap of a quadrilateral with an output pixel ----------------------------------------


@njit(**_JIT)
def _area_under(x1, y1, x2, y2):
    """Signed area under the segment (x1, y1) -> (x2, y2) inside the unit square [0, 1]^2.

    Positive when the segment runs towards +x; summed over a closed polygon's
    edges it gives the polygon's area inside the square (with the polygon's sign).
    """
    dx = x2 - x1
    dy = y2 - y1
    if dx == 0:
        return 0.0
    if dx < 0:
        sign, xl, xr = -1.0, x2, x1
    else:
        sign, xl, xr = 1.0, x1, x2
    if xl >= 1.0 or xr <= 0.0:
        return 0.0
    xl = max(xl, 0.0)
    xr = min(xr, 1.0)
    slope = dy / dx
    yl = y1 + slope * (xl - x1)
    yr = y1 + slope * (xr - x1)
    if yl <= 0.0 and yr <= 0.0:
        return 0.0  # below the square
    if yl >= 1.0 and yr >= 1.0:
        return sign * (xr - xl)  # above it: the whole column
    det = x1 * y2 - y1 * x2  # the line crosses y = 0 at det / dy and y = 1 at (dx + det) / dy
    if yl < 0.0:
        yl = 0.0
        xl = det / dy
    if yr < 0.0:
        yr = 0.0
        xr = det / dy
    if yl <= 1.0:
        if yr <= 1.0:
            return sign * 0.5 * (xr - xl) * (yr + yl)
        x_top = (dx + det) / dy
        return sign * (0.5 * (x_top - xl) * (1.0 + yl) + xr - x_top)
    x_top = (dx + det) / dy
    return sign * (0.5 * (xr - x_top) * (1.0 + yr) + x_top - xl)


@njit(**_JIT)
def _box_overlap(ii, jj, xo, yo):
    """Signed area the quadrilateral (xo, yo) shares with output pixel (ii, jj) (a unit square centred there)."""
    x0 = ii - 0.5
    y0 = jj - 0.5
    total = 0.0
    for k in range(4):
        m = (k + 1) & 3
        total += _area_under(xo[k] - x0, yo[k] - y0, xo[m] - x0, yo[m] - y0)
    return total


@njit(**_JIT)
def _corners(pixmap, i, j, h, xo, yo):
    """Output corners of input pixel (i, j) shrunk to half-width ``h``, clockwise from (-h, +h); False if NaN.

    Bilinear in the pixel map; inside the map it weights the 3x3 neighbourhood
    at once (the same numbers in drizzle's order of operations), at its border
    it interpolates corner by corner and extrapolates from the edge cells.
    """
    ny, nx = pixmap.shape[0], pixmap.shape[1]
    if 0 < i < nx - 2 and 0 < j < ny - 2:
        far, mid, near = h * h, (1 - h) * h, (1 - h) * (1 - h)
        for c in range(2):
            out = xo if c == 0 else yo
            p = pixmap[j - 1:j + 2, i - 1:i + 2, c]  # p[dy, dx]
            f00, f10, f20 = p[0, 0] * far, p[0, 1] * mid, p[0, 2] * far
            f01, f11, f21 = p[1, 0] * mid, p[1, 1] * near, p[1, 2] * mid
            f02, f12, f22 = p[2, 0] * far, p[2, 1] * mid, p[2, 2] * far
            out[0] = f01 + f11 + f02 + f12
            out[1] = f11 + f21 + f12 + f22
            out[2] = f10 + f20 + f11 + f21
            out[3] = f00 + f10 + f01 + f11
    else:
        for k in range(4):
            xin = i - h if k == 0 or k == 3 else i + h
            yin = j + h if k < 2 else j - h
            xo[k], yo[k] = _bilinear(pixmap, xin, yin)
    for k in range(4):
        if np.isnan(xo[k]) or np.isnan(yo[k]):
            return False
    return True


@njit(**_JIT)
def _index_range(lo, hi, n):
    """Output pixels ``a..b`` whose centres round from ``lo..hi`` (drizzle's nearest-integer bounds), within 0..n-1."""
    a = max(_round_half_away(min(max(lo, -1.0), float(n))), 0)
    b = min(_round_half_away(min(max(hi, -1.0), float(n))), n - 1)
    return a, b


# --- the two kernels ----------------------------------------------------------------------------


@njit(**_JIT)
def _add_drop(j, i, jj, ii, dow, data, sqrt_var, dq, wht, swd, swv, ctx, odq, use_ctx, use_dq):
    """Add input pixel (j, i)'s drop of weight ``dow`` on output pixel (jj, ii), as drizzle's update does."""
    f = np.float32(dow)
    if f == 0:
        return
    wht[jj, ii] += dow
    swd[jj, ii] += dow * data[j, i]
    for k in range(sqrt_var.shape[0]):
        swv[k, jj, ii] += dow * sqrt_var[k, j, i]
    if use_ctx and f > 0:
        ctx[jj, ii] = True
    if use_dq:
        odq[jj, ii] |= dq[j, i]


@njit(**_JIT)
def _square_kernel(data, weight, pixmap, sqrt_var, dq, lo, hi, pixfrac, use_ctx, use_dq,
                   wht, swd, swv, ctx, odq):
    """Square kernel over the scanned pixels (rows ``j``, columns ``lo[j]..hi[j]``); adds into the outputs."""
    wy, wx = wht.shape
    h = 0.5 * pixfrac
    xo = np.empty(4)
    yo = np.empty(4)
    for j in range(lo.shape[0]):
        for i in range(lo[j], hi[j] + 1):
            if not _corners(pixmap, i, j, h, xo, yo):
                continue
            jaco = 0.5 * ((xo[1] - xo[3]) * (yo[0] - yo[2]) - (xo[0] - xo[2]) * (yo[1] - yo[3]))
            w = weight[j, i] / jaco  # overlap / jacobian: the fraction of the drop on a pixel
            ja, jb = _index_range(min(yo[0], yo[1], yo[2], yo[3]), max(yo[0], yo[1], yo[2], yo[3]), wy)
            ia, ib = _index_range(min(xo[0], xo[1], xo[2], xo[3]), max(xo[0], xo[1], xo[2], xo[3]), wx)
            for jj in range(ja, jb + 1):
                for ii in range(ia, ib + 1):
                    dover = _box_overlap(ii, jj, xo, yo)
                    if dover != 0.0:
                        _add_drop(j, i, jj, ii, dover * w, data, sqrt_var, dq, wht, swd, swv, ctx, odq,
                                  use_ctx, use_dq)


@njit(**_JIT)
def _point_kernel(data, weight, pixmap, sqrt_var, dq, lo, hi, use_ctx, use_dq, wht, swd, swv, ctx, odq):
    """Point kernel: each scanned pixel's whole weight onto the output pixel nearest its mapped centre."""
    wy, wx = wht.shape
    for j in range(lo.shape[0]):
        for i in range(lo[j], hi[j] + 1):
            x, y = pixmap[j, i, 0], pixmap[j, i, 1]
            # nearest pixel (halves away from zero) inside 0..n-1  <=>  -0.5 < x < n - 0.5; NaN fails too
            if not (-0.5 < x < wx - 0.5 and -0.5 < y < wy - 0.5):
                continue
            _add_drop(j, i, _round_half_away(y), _round_half_away(x), np.float64(weight[j, i]), data,
                      sqrt_var, dq, wht, swd, swv, ctx, odq, use_ctx, use_dq)


# --- the entry point ----------------------------------------------------------------------------


def _checked(name, a, dtype, shape):
    a = np.asarray(a)
    if a.shape != shape:
        msg = f"{name} must have shape {shape} like data; got {a.shape}"
        raise ValueError(msg)
    return np.ascontiguousarray(a, dtype=dtype)


def drizzle_window(data, weight, pixmap, bounds, out_shape, *, kernel="square", pixfrac=1.0,
                   sqrt_var=None, dq=None, want_ctx=True) -> DrizzledWindow:
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

    wht = np.zeros((wy, wx), np.float64)
    swd = np.zeros((wy, wx), np.float64)
    swv = np.zeros((var.shape[0], wy, wx), np.float64)
    ctx = np.zeros((wy, wx) if want_ctx else (0, 0), bool)
    odq = np.zeros((wy, wx) if dq is not None else (0, 0), np.uint32)
    lo = np.zeros(shape[0], np.int64)
    hi = np.full(shape[0], -1, np.int64)
    if xmin <= xmax and ymin <= ymax and wy > 0 and wx > 0:
        *box, found = _finite_box(pixmap, xmin, xmax, ymin, ymax)
        if found:
            _scan_rows(pixmap, np.array(box, np.int64), wy, wx, lo, hi)
    if kernel == "square" and pixfrac > 0.001:
        _square_kernel(data, weight, pixmap, var, in_dq, lo, hi, float(pixfrac), want_ctx, dq is not None,
                       wht, swd, swv, ctx, odq)
    else:
        _point_kernel(data, weight, pixmap, var, in_dq, lo, hi, want_ctx, dq is not None,
                      wht, swd, swv, ctx, odq)
    return DrizzledWindow(wht, swd, swv if sqrt_var is not None else None, ctx if want_ctx else None,
                          odq if dq is not None else None)
