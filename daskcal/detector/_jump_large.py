"""Large events of jump detection: NIR snowballs (block layer).

A snowball is a large cosmic-ray event: a saturated core surrounded by a halo of
pixels that jumped. stcal 1.20 (``flag_large_events``) finds them *after* the
two-point search, on whole 2-D DQ planes, one (integration, group) at a time in
group order:

1. regions (8-connected) of ``JUMP_DET`` in the group, of at least ``min_jump_area``
   pixels (holes filled), each described by an ellipse of the same second moments;
2. regions of *newly* saturated pixels (SATURATED here but not in the previous
   group) of at least ``min_sat_area``, in this group and in the next one;
3. a jump region is a snowball when the centre of such a saturated region lies
   inside its ellipse, or (without any saturation) when its centre is within
   ``edge_size`` of the detector's edge;
4. saturated regions whose minor axis exceeds ``min_sat_radius_extend`` are redrawn
   ``sat_expand`` pixels larger and set to exactly SATURATED in this and every
   later group of the integration (what the next groups then see), and their
   unexpanded ellipse is remembered to flag the next integration;
5. the snowballs' ellipses, enlarged by ``expand_factor``, get ``JUMP_DET`` in this
   group except where saturated;
6. at the end, each integration's remembered cores get ``JUMP_DET`` in groups
   ``1 .. persist_groups - 1`` of the next integration.

Every region's shape depends on the whole region, which can be as large as the
detector, so a chunk with a halo cannot decide it. Here the search runs on whole
planes of two bits (SATURATED, JUMP_DET) per pixel and returns only the
ellipses to draw (:class:`Disk`, a few numbers each); :func:`apply_events` then
draws them into any chunk of the group DQ, giving exactly the flags of the
search on the whole detector. The graph is in :mod:`daskcal.detector._jump`.

This is our own code, checked against stcal 1.20; the same library (scikit-image's
``measure.label``/``regionprops`` and ``draw.ellipse``) is used for the regions
and the drawn ellipses, as stcal 1.20 does.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from daskcal.dq import DQ

__all__ = ["Disk", "GroupEvents", "Region", "SnowballSettings", "apply_events", "group_events", "regions",
           "snowball_axes"]

_SAT = np.uint8(DQ.SATURATED)
_JUMP = np.uint8(DQ.JUMP_DET)


@dataclasses.dataclass(frozen=True)
class SnowballSettings:
    """What the snowball search needs, as plain values (from :class:`~daskcal.detector._jump.JumpParameters`).

    Attributes
    ----------
    min_jump_area, min_sat_area : float
        Smallest jump / newly saturated region (pixels, holes filled).
    expand_factor : float
        Factor by which a snowball's minor axis grows; the major axis grows by as many pixels.
    sat_required : bool
        Require a saturated core (``sat_required_snowball``); False: every large jump
        region is a snowball and no core is extended.
    min_sat_radius_extend : float
        Cores whose minor axis (pixels, full length) exceeds this are extended.
    sat_expand : float
        Pixels added to both full axes of an extended core (twice JWST's ``sat_expand``).
    edge_size : int
        Distance (pixels) from the edge within which no core is required.
    max_width : float
        Largest full axis of any drawn ellipse (pixels; twice ``max_extended_radius``).
    persist_groups : int
        Cores flag groups ``1 .. persist_groups - 1`` of the next integration (0: off).
    """

    min_jump_area: float = 5.0
    min_sat_area: float = 1.0
    expand_factor: float = 2.0
    sat_required: bool = True
    min_sat_radius_extend: float = 2.5
    sat_expand: float = 4.0
    edge_size: int = 25
    max_width: float = 400.0
    persist_groups: int = 0


@dataclasses.dataclass(frozen=True)
class Region:
    """A region's equivalent ellipse: centroid ``(x, y)`` (pixels); ``a0``, ``a1`` the minor and
    major axis lengths of the ellipse of the same second moments, each less one pixel (as stcal
    uses them: a one-pixel-wide line has ``a0 = -1``); ``angle`` skimage's orientation in degrees."""

    x: float
    y: float
    a0: float
    a1: float
    angle: float

    def contains_any(self, xs: np.ndarray, ys: np.ndarray) -> bool:
        """Whether any of the points ``(xs, ys)`` lies inside (or on) the ellipse."""
        if xs.size == 0 or np.isnan(self.a0):  # no points, or not measured (see regions)
            return False
        # the trigonometry once, in numpy float64 as stcal; the rest elementwise (the same IEEE
        # operations as stcal's point by point, so the test is exact at the boundary too)
        t = np.radians(180.0 - self.angle)
        cos, sin = np.cos(t), np.sin(t)
        dx, dy = xs - self.x, ys - self.y
        u = dx * cos - dy * sin
        v = dx * sin + dy * cos
        major, minor = np.float64(max(self.a0, self.a1)) * 0.5, np.float64(min(self.a0, self.a1)) * 0.5
        with np.errstate(divide="ignore", invalid="ignore"):  # a one-pixel-wide region has a zero axis
            return bool((u**2 / major**2 + v**2 / minor**2 <= 1).any())


@dataclasses.dataclass(frozen=True)
class Disk:
    """A filled ellipse to draw: centre pixel ``(yc, xc)``, radii ``(ry, rx)`` (whole pixels)
    along the rows and columns before rotation by ``angle`` (degrees)."""

    yc: int
    xc: int
    ry: int
    rx: int
    angle: float

    @classmethod
    def of(cls, region: Region, axis_x: float, axis_y: float) -> Disk:
        """The disk of ``region``'s centre with full axes ``axis_x``, ``axis_y`` (as rounded to radii)."""
        return cls(round(region.y), round(region.x), round(axis_y / 2), round(axis_x / 2), region.angle)

    def pixels(self, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns (detector coordinates) of the disk's pixels within ``shape``.

        The centre is a whole pixel, so the pixels do not depend on the window they are
        computed in (stcal draws in a window around the centre; its pixels are the same).
        """
        from skimage.draw import ellipse

        if self.ry == 0 or self.rx == 0:
            return np.empty(0, np.intp), np.empty(0, np.intp)
        return ellipse(self.yc, self.xc, self.ry, self.rx, shape, np.radians(self.angle))

    def mask(self, shape: tuple[int, int], region: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the disk's pixels inside ``region`` (of a detector of ``shape``),
        relative to the region's corner (nothing is drawn for a disk that cannot reach the region)."""
        ys, xs = region
        reach = max(abs(self.ry), abs(self.rx))  # no pixel lies farther from the centre
        if (self.yc + reach < ys.start or self.yc - reach >= ys.stop
                or self.xc + reach < xs.start or self.xc - reach >= xs.stop):
            return np.empty(0, np.intp), np.empty(0, np.intp)
        rows, cols = self.pixels(shape)
        keep = (rows >= ys.start) & (rows < ys.stop) & (cols >= xs.start) & (cols < xs.stop)
        return rows[keep] - ys.start, cols[keep] - xs.start


@dataclasses.dataclass(frozen=True)
class GroupEvents:
    """What the search found in one (integration, group).

    Attributes
    ----------
    saturate : tuple of Disk
        Extended cores: exactly SATURATED in this and every later group.
    jump : tuple of Disk
        Snowballs: JUMP_DET in this group where not saturated.
    persist : tuple of Disk
        Cores: JUMP_DET in groups ``1 .. persist_groups - 1`` of the next integration.
    """

    saturate: tuple = ()
    jump: tuple = ()
    persist: tuple = ()

    @property
    def n_snowballs(self) -> int:
        return len(self.jump)


def regions(mask: np.ndarray, min_area: float, *, shape_needed=None) -> list[Region]:
    """Ellipses of the 8-connected regions of ``mask`` whose filled area is at least ``min_area``.

    Parameters
    ----------
    mask : ndarray of bool, shape (ny, nx)
    min_area : float
        Smallest filled area (pixels).
    shape_needed : callable, optional
        ``shape_needed(x, y, rows, cols) -> ndarray of bool``: given the kept regions' centroids
        and bounding-box sizes (pixels), which of them need their ellipse. The others are
        returned with ``a0``, ``a1`` and ``angle`` NaN (every comparison with them is False), so a
        caller passes it only with a bound that proves those regions cannot pass its test.
        Default: every region's ellipse.

    Notes
    -----
    scikit-image's ``regionprops`` measures the ellipse one region at a time (about 0.5 ms each:
    4.9 of the 6.0 s of the snowball search on a 1024^2, 10-group cube with 9,772 kept regions
    were spent there). Areas, boxes and centroids are found here for all regions at once, the
    holes are filled only where the area alone does not decide, and ``regionprops`` measures
    only the regions the caller needs. The centroids equal ``regionprops``' (sums of whole pixel
    coordinates are exact in float64); the ellipses are ``regionprops``' own.
    """
    from scipy import ndimage
    from skimage.measure import label, regionprops

    labels = label(mask)
    n = int(labels.max())
    if n == 0:
        return []
    boxes = ndimage.find_objects(labels)
    rows = np.array([b[0].stop - b[0].start for b in boxes], dtype=np.int64)
    cols = np.array([b[1].stop - b[1].start for b in boxes], dtype=np.int64)
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    yy, xx = np.indices(labels.shape, dtype=np.float64)
    cy = np.bincount(flat, weights=yy.ravel(), minlength=n + 1)[1:] / area
    cx = np.bincount(flat, weights=xx.ravel(), minlength=n + 1)[1:] / area
    # the filled area lies between the area and the box's
    keep = rows * cols >= min_area
    for k in np.flatnonzero(keep & (area < min_area)):
        keep[k] = ndimage.binary_fill_holes(labels[boxes[k]] == k + 1).sum() >= min_area
    idx = np.flatnonzero(keep)
    want = (np.ones(idx.size, dtype=bool) if shape_needed is None
            else np.asarray(shape_needed(cx[idx], cy[idx], rows[idx], cols[idx]), dtype=bool))
    out = []
    for k, w in zip(idx, want, strict=True):
        if w:
            # the region alone in its box: regionprops measures it on exactly the image it
            # would cut from the whole label array (the ellipse does not depend on the offset)
            (r,) = regionprops((labels[boxes[k]] == k + 1).astype(np.uint8))
            out.append(Region(float(cx[k]), float(cy[k]), r.axis_minor_length - 1, r.axis_major_length - 1,
                              float(np.degrees(r.orientation))))
        else:
            out.append(Region(float(cx[k]), float(cy[k]), np.nan, np.nan, np.nan))
    return out


def _extendable(min_radius: float):
    """``shape_needed`` for saturated cores: only a core whose box is at least ``m`` pixels on
    its short side can have a minor axis above ``min_radius``. The minor axis (less one, as
    :class:`Region`) is ``4 sqrt(l) - 1`` with ``l`` the inertia tensor's smaller eigenvalue, at
    most its smaller diagonal term, a coordinate variance, at most ``((m - 1) / 2)^2``: so
    ``a0 <= 2 m - 3``; one pixel of margin is kept."""
    def needed(x, y, rows, cols):
        return 2.0 * np.minimum(rows, cols) - 2.0 > min_radius
    return needed


def _may_contain(px: np.ndarray, py: np.ndarray):
    """``shape_needed`` for jump regions: only a region with a point ``(px, py)`` within its box's
    diagonal ``D`` of its centroid can hold it in its ellipse (the semi-major axis, ``(4 sqrt(l) -
    1) / 2`` with ``l`` at most the sum of the two coordinate variances, is below ``D``)."""
    def needed(x, y, rows, cols):
        if px.size == 0:
            return np.zeros(x.shape, dtype=bool)
        from scipy.spatial import cKDTree

        reach = np.hypot(rows - 1.0, cols - 1.0) + 1.0
        counts = cKDTree(np.column_stack([px, py])).query_ball_point(
            np.column_stack([x, y]), reach, return_length=True)
        return np.asarray(counts) > 0
    return needed


def _near_edge(x, y, edge: int, ny: int):
    """Whether centres ``(x, y)`` (scalars or arrays) lie within ``edge`` of the detector's edge; stcal 1.20
    compares both coordinates with the number of rows."""
    high = max(0, ny - edge)
    return (x < edge) | (y < edge) | (x > high) | (y > high)


def snowball_axes(r: Region, factor: float, max_width: float) -> tuple[float, float]:
    """Full axes of a snowball's flagged ellipse: the minor axis times ``factor``, the
    major one longer by as many pixels, each at most ``max_width``."""
    if r.a1 < r.a0:
        a0, a1 = r.a0 + (factor - 1.0) * r.a1, r.a1 * factor
    else:
        a0, a1 = r.a0 * factor, r.a1 + (factor - 1.0) * r.a0
    # drawn with radii round(round(a / 2) * 2 / 2) = round(a / 2): the same
    return min(a0, max_width), min(a1, max_width)


def group_events(prev: np.ndarray, cur: np.ndarray, nxt: np.ndarray | None, saturated: np.ndarray,
                 settings: SnowballSettings, last: bool) -> tuple[np.ndarray, GroupEvents]:
    """The snowball search of one group on whole 2-D planes.

    Parameters
    ----------
    prev, cur, nxt : ndarray, uint8, shape (ny, nx)
        Group DQ (only SATURATED and JUMP_DET are read) of the previous, this and the
        next group after jump detection (``nxt`` None for the last group).
    saturated : ndarray of bool, shape (ny, nx)
        Pixels set to SATURATED by extended cores of earlier groups of this integration.
    settings : SnowballSettings
    last : bool
        This is the last group (the next group's cores are not looked at).

    Returns
    -------
    saturated : ndarray of bool
        ``saturated`` with this group's extended cores added (a new array when any).
    events : GroupEvents
    """
    ny, nx = cur.shape
    sat_prev = ((prev & _SAT) != 0) | saturated
    sat_cur = ((cur & _SAT) != 0) | saturated
    jump_mask = ((cur & _JUMP) != 0) & ~saturated
    if not settings.sat_required:
        jumps = regions(jump_mask, settings.min_jump_area)
        return saturated, GroupEvents(jump=tuple(_snowball_disks(jumps, settings)))

    # the cores first: their centres decide which jump regions' ellipses are needed
    cores = regions(sat_cur & ~sat_prev, settings.min_sat_area,
                    shape_needed=_extendable(settings.min_sat_radius_extend))
    next_cores = []
    if nxt is not None and not last:
        next_cores = regions((((nxt & _SAT) != 0) | saturated) & ~sat_cur, settings.min_sat_area,
                             shape_needed=lambda x, *_: np.zeros(x.shape, dtype=bool))
    cx = np.array([c.x for c in cores + next_cores], dtype=np.float64)
    cy = np.array([c.y for c in cores + next_cores], dtype=np.float64)
    inside = _may_contain(cx, cy)

    def needed(x, y, rows, cols):  # near the edge, or maybe holding a core
        return _near_edge(x, y, settings.edge_size, ny) | inside(x, y, rows, cols)

    jumps = regions(jump_mask, settings.min_jump_area, shape_needed=needed)
    snowballs = [r for r in jumps if _near_edge(r.x, r.y, settings.edge_size, ny) or r.contains_any(cx, cy)]
    saturate, persist = [], []
    for c in cores:
        if min(c.a0, c.a1) > settings.min_sat_radius_extend:
            saturate.append(Disk.of(c, min(c.a0 + settings.sat_expand, settings.max_width),
                                    min(c.a1 + settings.sat_expand, settings.max_width)))
            persist.append(Disk.of(c, c.a0, c.a1))
    if saturate:
        saturated = saturated.copy()
        for d in saturate:
            saturated[d.pixels((ny, nx))] = True
    return saturated, GroupEvents(tuple(saturate), tuple(_snowball_disks(snowballs, settings)), tuple(persist))


def _snowball_disks(snowballs: list[Region], settings: SnowballSettings) -> list[Disk]:
    return [Disk.of(r, *snowball_axes(r, settings.expand_factor, settings.max_width)) for r in snowballs]


def apply_events(gdq: np.ndarray, events: list[list[GroupEvents]], *, shape: tuple[int, int],
                 region: tuple[slice, slice], persist_groups: int) -> np.ndarray:
    """The group DQ of one chunk with the snowball search's events drawn in (a new array).

    Parameters
    ----------
    gdq : ndarray, uint8, shape (nints, ngroups, cy, cx)
        Group DQ of the chunk after jump detection.
    events : list (integration) of list (group) of GroupEvents
        From :func:`group_events` on the whole detector; group 0 has none.
    shape : (int, int)
        The detector's ``(ny, nx)``.
    region : (slice, slice)
        Where the chunk lies on the detector.
    persist_groups : int
        As :attr:`SnowballSettings.persist_groups`.

    Returns
    -------
    ndarray, uint8, same shape
    """
    out = np.array(gdq, dtype=np.uint8, copy=True)
    nints, ngroups = out.shape[:2]
    for i, groups in enumerate(events):
        for g, ev in enumerate(groups):
            for d in ev.saturate:
                out[i, g:][(slice(None), *d.mask(shape, region))] = _SAT
            for d in ev.jump:
                rows, cols = d.mask(shape, region)
                plane = out[i, g]
                free = (plane[rows, cols] & _SAT) == 0
                plane[rows[free], cols[free]] |= _JUMP
    last = min(persist_groups, ngroups)
    if last > 1:
        for i in range(1, nints):
            for ev in events[i - 1]:
                for d in ev.persist:
                    out[i, 1:last][(slice(None), *d.mask(shape, region))] |= _JUMP
    return out
