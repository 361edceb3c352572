"""From region statistics to sky levels: the bookkeeping of ``stcal.skymatch.skymatch``.

Small, pure Python on numbers that the statistics graph returned. An *item* is
what the reference calls a ``SkyImage`` (one image) or a ``SkyGroup`` (several
images of one exposure group sharing one sky); levels and the data subtraction
follow the reference step by step, with the same scalar types (the reference mixes
Python floats and NumPy float32 values, which decides how a level rounds).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["Layout", "Levels", "compute_levels", "match_deltas", "shifts_after_match"]


@dataclasses.dataclass(frozen=True)
class Layout:
    """Items (tuples of image indices, reference order) and the first sky of each image."""

    items: tuple[tuple[int, ...], ...]
    sky0: tuple[float, ...]
    subtract: bool
    match_down: bool


@dataclasses.dataclass
class Levels:
    """Per image: final sky (``sky``), whether it was computed (``valid``) and the values
    subtracted from its data in order (``steps``, empty unless ``subtract``)."""

    sky: list
    valid: list
    steps: list
    group_sky: list


def _image_sky(stat, sky, delta):
    """``SkyImage.calc_sky``: ``(value, npix, area)`` of one image's region, relative when ``delta``."""
    value, npix, area = stat
    if area == 0.0 or value is None:
        return None, 0, 0.0
    if delta:
        value = value - sky
    return value, npix, area


def _item_overlap_sky(layout, item, other, overlaps, sky, delta):
    """``SkyImage/SkyGroup.calc_sky(overlap=other)`` for item ``item``."""
    members = layout.items[item]
    if len(members) == 1:
        i = members[0]
        return _image_sky(overlaps[(i, other)], sky[i], delta)
    wght, area, wsky = 0, 0.0, 0.0
    for i in members:
        value, npix, area1 = _image_sky(overlaps[(i, other)], sky[i], delta)
        area += area1
        if value is not None and npix > 0:
            wsky += value * npix
            wght += npix
    if wght == 0.0 or area == 0.0:
        return None, wght, area
    return wsky / wght, wght, area


def _item_sky(layout, item, whole, sky, delta):
    """``calc_sky()`` of an item over whole images: a group takes its members' smallest sky."""
    members = layout.items[item]
    if len(members) == 1:
        i = members[0]
        return _image_sky(whole[i], sky[i], delta)[0]
    best = None
    for i in members:
        value = _image_sky(whole[i], sky[i], delta)[0]
        if value is not None and (best is None or best > value):
            best = value
    return best


def match_deltas(layout: Layout, overlaps: dict):
    """Least-squares sky differences between overlapping items (``_find_optimum_sky_deltas``),
    moved to the lowest (``match_down``) or highest one.

    Parameters
    ----------
    overlaps : dict
        ``{(image, other item): (value, npix, area)}`` for every image and every other item.

    Returns
    -------
    deltas : list of float or None
        Per item; None where the item overlaps nothing usable.
    rank : int
        Rank of the system (the reference warns when it is below ``items - 1``).
    """
    ns = len(layout.items)
    sky = list(layout.sky0)
    delta = not layout.subtract
    a = np.zeros((ns, ns), dtype=float)
    w = np.zeros((ns, ns), dtype=float)
    for i in range(ns):
        for j in range(i + 1, ns):
            s1, w1, area1 = _item_overlap_sky(layout, i, j, overlaps, sky, delta)
            s2, w2, area2 = _item_overlap_sky(layout, j, i, overlaps, sky, delta)
            if area1 == 0.0 or area2 == 0.0 or s1 is None or s2 is None:
                continue
            a[j, i], w[j, i], a[i, j], w[i, j] = s1, w1, s2, w2
    pairs = [(i, j) for i in range(ns) for j in range(i + 1, ns) if w[i, j] > 0 and w[j, i] > 0]
    wm = 0.5 * (w + w.T)
    k = np.zeros((len(pairs), ns), dtype=float)
    f = np.zeros(len(pairs), dtype=float)
    invalid = np.ones(ns, dtype=bool)
    for row, (i, j) in enumerate(pairs):
        k[row, i], k[row, j] = wm[i, j], -wm[i, j]
        f[row] = wm[i, j] * (a[j, i] - a[i, j])
        invalid[[i, j]] = False
    try:
        rank = int(np.linalg.matrix_rank(k, 1.0e-12))
    except np.linalg.LinAlgError:
        return [None] * ns, 0
    deltas = np.dot(np.linalg.pinv(k, rcond=1.0e-12), f)
    deltas[invalid] = np.nan
    good = np.isfinite(deltas)
    if good.any():
        deltas[good] -= np.amin(deltas[good]) if layout.match_down else np.amax(deltas[good])
    return [float(d) if np.isfinite(d) else None for d in deltas], rank


def _apply(layout: Layout, lv: Levels, skies, do_global: bool) -> None:
    """``_apply_sky``: add each item's sky to its images (and subtract it from their data)."""
    for item, sky in enumerate(skies):
        members = layout.items[item]
        if do_global:
            valid = lv.valid[members[0]] if sky is None else True
        else:
            valid = sky is not None
            if not valid:
                log.warning("skymatch: no sky value for %s %s", "group" if len(members) > 1 else "image", members)
        if sky is None:
            sky = 0.0
        if layout.subtract:
            for i in members:
                lv.steps[i].append(sky)
        if len(members) == 1:
            lv.sky[members[0]] = lv.sky[members[0]] + sky
        else:  # SkyGroup.sky's setter: members move by the change of the group's own sky
            old = lv.group_sky[item]
            new = old + sky
            lv.group_sky[item] = new
            for i in members:
                lv.sky[i] = lv.sky[i] + (new - old)
        for i in members:
            lv.valid[i] = valid


def _start(layout: Layout) -> Levels:
    n = len(layout.sky0)
    return Levels(sky=list(layout.sky0), valid=[False] * n, steps=[[] for _ in range(n)],
                  group_sky=[0.0] * len(layout.items))


def shifts_after_match(layout: Layout, match) -> list:
    """Per image, the values the reference has subtracted from its data after the match stage."""
    lv = _start(layout)
    _apply(layout, lv, match[0], do_global=False)
    return [tuple(s) for s in lv.steps]


def compute_levels(layout: Layout, method: str, match=None, whole=None) -> Levels:
    """Final levels of every image for ``method`` from the match result and whole-image statistics.

    Parameters
    ----------
    match : (deltas, rank) or None
        :func:`match_deltas` (for "match" and "global+match").
    whole : list of (value, npix, area) or None
        Per image, the statistic over its good pixels: of its data as given, or (with
        ``subtract`` and "global+match") of its data after the match stage's subtraction.
    """
    lv = _start(layout)
    do_match, do_global = "match" in method, "global" in method
    if do_match:
        deltas, rank = match
        ns = len(layout.items)
        if rank < ns - 1:
            log.warning("skymatch: %d sky values to solve for but the overlaps give only %d independent "
                        "equations; skies are matched within each overlapping subset only", ns, rank)
        _apply(layout, lv, deltas, do_global=False)
    if do_global or not do_match:
        delta = not layout.subtract
        skies = [_item_sky(layout, item, whole, lv.sky, delta) for item in range(len(layout.items))]
        if do_global:
            found = [s for s in skies if s is not None]
            minsky = None
            for s in found:
                if minsky is None or s < minsky:
                    minsky = s
            if minsky is None:
                log.warning('skymatch: unable to compute the "global" sky value')
            skies = [minsky] * len(skies)
        _apply(layout, lv, skies, do_global=do_global)
    return lv
