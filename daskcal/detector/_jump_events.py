"""Large events of jump detection as Dask graphs: snowballs and showers (graph layer).

The blocks are in :mod:`daskcal.detector._jump_large` (snowballs) and
:mod:`daskcal.detector._jump_showers` (showers); :func:`daskcal.detector._jump.detect_jumps`
calls these graphs after the jumps. Both find their regions on whole 2-D group planes (one
task per plane) and return only ellipses, which every chunk then draws into its own group DQ:
the flags do not depend on the chunking, and no task holds more than a few planes.
"""

from __future__ import annotations

import functools
import logging
import operator
from typing import TYPE_CHECKING, NamedTuple

import dask
import dask.array as da
import numpy as np

from daskcal.detector._jump_large import GroupEvents, SnowballSettings, apply_events, group_events
from daskcal.detector._jump_showers import (
    MIN_DIFFS_FOR_SHOWER,
    ShowerSettings,
    apply_showers,
    emission_block,
    plane_showers,
    ring_kernel,
)
from daskcal.dq import DQ

if TYPE_CHECKING:
    from daskcal.detector._jump import JumpParameters

__all__ = ["Flagged", "flag_large_events", "flag_showers", "shower_settings", "snowball_settings"]

log = logging.getLogger("daskcal.detector._jump")  # the step's logger (its warnings are the step's)


class Flagged(NamedTuple):
    """What a large-event search gives: the new group DQ and the events it found.

    Attributes
    ----------
    groupdq : dask.array.Array
        uint8 ``(integration, group, y, x)``, pixel-chunked as the input.
    n_events : dask.array.Array
        int64 ``(integration,)``: the snowballs (or showers) found in each integration, the
        ellipses flagged (stcal 1.20 counts the same: ``len(snowballs)`` of every group in
        ``flag_large_events``, ``len(ellipses)`` in ``find_faint_extended``).
    """

    groupdq: da.Array
    n_events: da.Array


def snowball_settings(params: JumpParameters, group_time: float) -> SnowballSettings:
    """The snowball search's settings from ``params``, set up as the JWST jump step sets up stcal's
    (``sat_expand`` and ``max_extended_radius`` doubled to full axes; the next-integration time
    in whole groups of ``group_time`` s)."""
    _require_skimage("expand_large_events")
    if params.use_ellipses:
        log.warning("use_ellipses is deprecated (stcal, JWST) and has no effect")
    persist = int(params.snowball_time_masked_next_int // group_time) if params.mask_snowball_core_next_int else 0
    return SnowballSettings(
        min_jump_area=float(params.min_jump_area),
        min_sat_area=float(params.min_sat_area),
        expand_factor=float(params.expand_factor),
        sat_required=bool(params.sat_required_snowball),
        min_sat_radius_extend=float(params.min_sat_radius_extend),
        sat_expand=float(2 * params.sat_expand),
        edge_size=int(params.edge_size),
        max_width=float(2 * params.max_extended_radius),
        persist_groups=persist,
    )


def flag_large_events(gdq: da.Array, settings: SnowballSettings) -> Flagged:
    """``gdq`` (uint8, pixel-chunked, jumps flagged) with snowballs flagged, and the snowballs of each
    integration (:class:`Flagged`), as dask arrays.

    One task per (integration, group >= 1) runs :func:`~daskcal.detector._jump_large.group_events`
    on whole planes of the SATURATED and JUMP_DET bits, in group order within an integration
    (each passes on the cores saturated so far); every chunk then draws the events that touch it
    (:func:`~daskcal.detector._jump_large.apply_events`). See :func:`~daskcal.detector._jump.detect_jumps`, Notes.
    """
    nints, ngroups, ny, nx = gdq.shape
    # whole planes gathered by tasks: with a distributed client dask would pick its P2P rechunk, which stages
    # the planes on the workers' disks and logs two warnings per plane set, for a few MB per plane
    bits = (gdq & np.uint8(DQ.SATURATED | DQ.JUMP_DET)).rechunk((1, 1, ny, nx), method="tasks")
    planes = bits.to_delayed(optimize_graph=False)[:, :, 0, 0]
    search = dask.delayed(_search_group, nout=2, pure=True)
    events = []
    for i in range(nints):
        saturated = None
        groups = [GroupEvents()]
        for g in range(1, ngroups):
            nxt = planes[i, g + 1] if g + 1 < ngroups else None
            saturated, found = search(planes[i, g - 1], planes[i, g], nxt, saturated, settings, g == ngroups - 1)
            groups.append(found)
        events.append(groups)
    events = dask.delayed(events, traverse=True)
    draw = functools.partial(_draw_snowballs, chunks=gdq.chunks[2:], persist_groups=settings.persist_groups)
    flagged = da.map_blocks(draw, gdq, events, dtype=np.uint8, meta=np.empty((0, 0, 0, 0), dtype=np.uint8))
    return Flagged(flagged, _event_counts(events, nints, operator.attrgetter("n_snowballs")))


def _event_counts(events, nints: int, size) -> da.Array:
    """int64 ``(nints,)``: ``size`` of every group's events (a delayed list (integration) of lists (group)),
    summed over each integration."""
    count = dask.delayed(_count_events, pure=True)(events, size)
    return da.from_delayed(count, shape=(nints,), dtype=np.int64, meta=np.empty((0,), dtype=np.int64))


def _count_events(events, size) -> np.ndarray:
    return np.array([sum(size(ev) for ev in groups) for groups in events], dtype=np.int64)


def _region(chunks: tuple, block_id: tuple) -> tuple[slice, slice]:
    """Where block ``block_id`` (its last two indices) of an array with ``(y, x)`` ``chunks`` lies."""
    (i, j), (cy, cx) = block_id[-2:], chunks
    return slice(sum(cy[:i]), sum(cy[:i + 1])), slice(sum(cx[:j]), sum(cx[:j + 1]))


def _draw_snowballs(block, found, *, chunks, persist_groups, block_id=None):
    shape = (sum(chunks[0]), sum(chunks[1]))
    return apply_events(block, found, shape=shape, region=_region(chunks, block_id), persist_groups=persist_groups)


def _draw_showers(data, gdq, gain, pdq, found, *, chunks, settings, block_id=None):
    shape = (sum(chunks[0]), sum(chunks[1]))
    return apply_showers(data, gdq, gain, pdq, found, settings=settings, shape=shape, region=_region(chunks, block_id))


def shower_settings(params: JumpParameters, group_time: float, nframes: int, nints: int) -> ShowerSettings:
    """The shower search's settings from ``params``, set up as the JWST jump step sets up stcal's
    (``max_extended_radius`` doubled to a full axis; times in whole groups of ``group_time`` s;
    ``max_shower_amplitude`` per group)."""
    _require_skimage("find_showers")
    return ShowerSettings(
        snr_threshold=float(params.extend_snr_threshold),
        min_area=float(params.extend_min_area),
        inner_radius=float(params.extend_inner_radius),
        outer_radius=float(params.extend_outer_radius),
        expand_ratio=float(params.extend_ellipse_expand_ratio),
        grps_masked=int(params.time_masked_after_shower // group_time),
        max_amplitude=float(params.max_shower_amplitude * group_time),
        max_width=float(2 * params.max_extended_radius),
        sigclip=nints >= params.minimum_sigclip_groups,
        nframes=int(nframes),
    )


def flag_showers(data, gdq, gain, rnoise, pdq, settings: ShowerSettings) -> Flagged:
    """``gdq`` (uint8, pixel-chunked, jumps and snowballs flagged) with showers flagged, and the showers of
    each integration (:class:`Flagged`), as dask arrays.

    ``data`` (DN), ``gain``, ``rnoise`` and ``pdq`` (the step's output pixel DQ) are chunked as
    ``gdq``. Extended emission is found chunk by chunk with a halo of the ring kernel's half-width
    (:func:`~daskcal.detector._jump_showers.emission_block`), its regions on whole group planes (one
    task per plane), and every chunk draws the showers that touch it
    (:func:`~daskcal.detector._jump_showers.apply_showers`).
    """
    nints, ngroups, ny, nx = gdq.shape
    dnu, ref = int(DQ.DO_NOT_USE), int(DQ.REFERENCE_PIXEL)
    unusable = (gdq & dnu) != 0
    all_dnu = unusable.all(axis=(2, 3))
    enough = (nints * (ngroups - 1) - all_dnu.sum()) >= MIN_DIFFS_FOR_SHOWER
    all_dnu_ref = (unusable | (pdq == ref)[None, None]).all(axis=(2, 3))
    first_good = da.argmax(~all_dnu_ref, axis=1)  # 0 when every group is DO_NOT_USE, as stcal
    kernel = ring_kernel(settings)
    n = kernel.shape[0] // 2
    d4, d2 = {0: 0, 1: 0, 2: n, 3: n}, {0: n, 1: n}
    cube = [x for a in (data, gdq) for x in (da.overlap.overlap(a, depth=d4, boundary="none"), "igyx")]
    pix = [x for a in (gain, rnoise, pdq) for x in (da.overlap.overlap(a, depth=d2, boundary="none"), "yx")]
    emission = da.blockwise(
        emission_block, "igyx", *cube, *pix, first_good.rechunk(-1), "a", enough[None].rechunk(-1), "b",
        concatenate=True, dtype=np.uint8, meta=np.empty((0, 0, 0, 0), dtype=np.uint8), settings=settings,
        kernel=kernel,
    )
    emission = da.overlap.trim_internal(emission, d4, boundary="none")
    planes = emission.rechunk((1, 1, ny, nx), method="tasks").to_delayed(optimize_graph=False)[:, :, 0, 0]  # as above
    find = dask.delayed(plane_showers, pure=True)
    showers = dask.delayed([[()] + [find(planes[i, g], settings) for g in range(1, ngroups)]
                            for i in range(nints)], traverse=True)
    draw = functools.partial(_draw_showers, chunks=gdq.chunks[2:], settings=settings)
    flagged = da.map_blocks(draw, data, gdq, gain, pdq, showers, dtype=np.uint8,
                            meta=np.empty((0, 0, 0, 0), dtype=np.uint8))
    return Flagged(flagged, _event_counts(showers, nints, len))


def _require_skimage(option: str) -> None:
    try:
        import skimage.measure  # noqa: F401  (checked here, before any task runs)
    except ImportError as exc:
        msg = f"{option} needs scikit-image: pip install 'daskcal[large-events]'"
        raise ImportError(msg) from exc


def _search_group(prev, cur, nxt, saturated, settings: SnowballSettings, last: bool):
    """:func:`~daskcal.detector._jump_large.group_events` on (1, 1, ny, nx) plane blocks."""
    shape = cur.shape[-2:]
    saturated = np.zeros(shape, dtype=bool) if saturated is None else saturated
    nxt = None if nxt is None else nxt.reshape(shape)
    return group_events(prev.reshape(shape), cur.reshape(shape), nxt, saturated, settings, last)
