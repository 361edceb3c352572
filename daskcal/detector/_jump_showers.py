"""Large events of jump detection: MIRI showers (block layer).

A shower is faint extended emission around a cosmic ray, below what one pixel shows.
stcal 1.20 (``find_faint_extended``) finds them after the jumps (and snowballs):

1. each pixel's first differences in electrons, without samples flagged exactly
   JUMP_DET, SATURATED, DO_NOT_USE or two of them together, give a signal-to-noise
   ratio ``|diff - median| / sigma``: the median of all the pixel's differences and
   ``sqrt(|median| + (read noise in e-)**2 / nframes)`` or, with
   ``minimum_sigclip_groups`` integrations, sigma-clipped (5 sigma) median and
   standard deviation of each group's difference across integrations;
2. in every group after the integration's first with a usable pixel, the ratio of
   pixels not flagged JUMP_DET, SATURATED or DO_NOT_USE (group or pixel DQ; reference
   pixels count as DO_NOT_USE) is smoothed by a ring kernel (``Ring2DKernel(
   extend_inner_radius, extend_outer_radius)``: the second number is the ring's width
   in astropy), NaN-aware, with zeros beyond the detector's edge;
3. regions (8-connected) of more than ``extend_snr_threshold`` of at least
   ``extend_min_area`` pixels are showers; their ellipses, enlarged by
   ``extend_ellipse_expand_ratio``, get JUMP_DET in that group and the
   ``grps_masked`` following ones, except where (and after) saturated;
4. a pixel whose mean difference over the integration changes by more than
   ``max_amplitude`` (or becomes NaN) through these flags gets its input flags back
   (reference pixels are left DO_NOT_USE in every group otherwise).

Steps 1, 2 and 4 are per pixel, the smoothing needs a halo of the kernel's half-width
(:func:`emission_block`); step 3 needs whole planes (:func:`plane_showers`), so, as
for snowballs, the graph (:mod:`daskcal.detector._jump`) finds regions on whole 2-D
planes of one byte per pixel and every chunk draws the ellipses that touch it
(:func:`apply_showers`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from daskcal.detector._jump_large import Disk, regions, snowball_axes
from daskcal.dq import DQ

__all__ = ["ShowerSettings", "apply_showers", "emission_block", "plane_showers", "ring_kernel"]


_SAT, _JUMP, _DNU = int(DQ.SATURATED), int(DQ.JUMP_DET), int(DQ.DO_NOT_USE)
_REF = int(DQ.REFERENCE_PIXEL)
#: Group DQ values whose samples take no part in the ratios (exact values, as stcal 1.20).
_INVALID = (_JUMP | _DNU, _SAT | _DNU, _SAT, _JUMP, _DNU)
#: Fewest usable differences in the exposure for any shower search (stcal's).
MIN_DIFFS_FOR_SHOWER = 10


@dataclasses.dataclass(frozen=True)
class ShowerSettings:
    """What the shower search needs, as plain values (from :class:`~daskcal.detector._jump.JumpParameters`).

    Attributes
    ----------
    snr_threshold : float
        Smoothed ratio above which a pixel is extended emission.
    min_area : float
        Smallest region of extended emission (pixels, holes filled) that is a shower.
    inner_radius, outer_radius : float
        ``Ring2DKernel``'s two arguments (pixels).
    expand_ratio : float
        A shower's minor axis is flagged times this, its major axis longer by as many pixels.
    grps_masked : int
        Groups after the shower's also flagged.
    max_amplitude : float
        Largest change of a pixel's mean difference (DN/group as stcal compares it with
        differences in electrons) the flags may make.
    max_width : float
        Largest full axis of a flagged ellipse (pixels).
    sigclip : bool
        Statistics by sigma clipping across integrations.
    nframes : int
        Frames per group.
    """

    snr_threshold: float = 1.2
    min_area: float = 90.0
    inner_radius: float = 1.0
    outer_radius: float = 2.6
    expand_ratio: float = 1.1
    grps_masked: int = 0
    max_amplitude: float = 4.0
    max_width: float = 400.0
    sigclip: bool = False
    nframes: int = 1


def ring_kernel(settings: ShowerSettings) -> np.ndarray:
    """The smoothing kernel (astropy's ``Ring2DKernel``, normalised), float64, odd square."""
    from astropy.convolution import Ring2DKernel

    return Ring2DKernel(settings.inner_radius, settings.outer_radius).array


def _nan_median(a: np.ndarray, lead: int) -> np.ndarray:
    """``np.nanmedian`` over the ``lead`` leading axes, NaN where nothing is finite, without its warning."""
    flat = a.reshape(int(np.prod(a.shape[:lead])), -1)
    some = np.isfinite(flat).any(axis=0)
    out = np.full(flat.shape[1], np.nan, dtype=a.dtype)
    out[some] = np.nanmedian(flat[:, some], axis=0)
    return out.reshape(a.shape[lead:])


def _clipped_stats(diffs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and standard deviation of ``diffs`` (nints, ...) clipped at 5 sigma across
    integrations (astropy's ``sigma_clipped_stats``); NaN where nothing is finite."""
    from astropy.stats import sigma_clipped_stats

    nints = diffs.shape[0]
    flat = diffs.reshape(nints, -1)
    some = np.isfinite(flat).any(axis=0)
    median = np.full(flat.shape[1], np.nan, dtype=np.float64)
    std = np.full(flat.shape[1], np.nan, dtype=np.float64)
    if some.any():
        # masked rather than NaN: the same statistics (checked) without astropy's warning about NaN
        # input (warning filters are not thread-safe); columns with nothing finite are left out
        # for the same reason
        cols = flat[:, some]
        finite = np.isfinite(cols)
        _, med, sd = sigma_clipped_stats(np.ma.MaskedArray(np.where(finite, cols, 0), mask=~finite), sigma=5,
                                         axis=0)
        med, sd = np.ma.filled(med, np.nan), np.ma.filled(sd, np.nan)
        median[some], std[some] = med, sd
        median, std = median.astype(med.dtype), std.astype(sd.dtype)
    return median.reshape(diffs.shape[1:]), std.reshape(diffs.shape[1:])


def _smooth(ratio: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """NaN-aware smoothing of a padded plane (its outer ``n`` pixels, ``n`` the kernel's half-width,
    are neighbours or beyond the detector): the smoothed core, NaN where ``ratio`` is."""
    from scipy.signal import oaconvolve

    n = kernel.shape[0] // 2
    good = np.isfinite(ratio)
    values = np.where(good, ratio, 0)
    smoothed = oaconvolve(values, kernel, mode="valid")
    norm = oaconvolve(good.astype(np.float64), kernel, mode="valid")
    core_good = good[n:-n, n:-n] & (norm > 1e-3 * np.mean(kernel))
    with np.errstate(divide="ignore", invalid="ignore"):
        smoothed /= norm
    smoothed[~core_good] = np.nan
    return smoothed


def emission_block(data, gdq, gain, rnoise, pdq, first_good, enough, *, settings: ShowerSettings, kernel):
    """Extended emission (uint8 0/1) of every group of one halo'd chunk.

    Parameters
    ----------
    data : ndarray, shape (nints, ngroups, hy, hx)
        Ramps in DN, with a halo of the kernel's half-width on the sides that are not
        the detector's edge.
    gdq : ndarray, uint8, same shape
        Group DQ after jumps (and snowballs).
    gain, rnoise : ndarray, shape (hy, hx)
        Gain (e-/DN), CDS read noise (DN).
    pdq : ndarray, shape (hy, hx)
        Pixel DQ (with NO_GAIN_VALUE | DO_NOT_USE where the gain is not positive).
    first_good : ndarray of int, shape (nints,)
        Each integration's first group with a pixel lacking DO_NOT_USE (reference pixels
        counted as DO_NOT_USE; detector-wide).
    enough : ndarray of bool, shape (1,)
        Whether the exposure has :data:`MIN_DIFFS_FOR_SHOWER` usable differences (detector-wide);
        False: no emission anywhere.
    settings : ShowerSettings
    kernel : ndarray
        :func:`ring_kernel`.

    Returns
    -------
    ndarray, uint8, shape (nints, ngroups, hy, hx)
        1 at extended emission of group ``g`` (``g`` >= 1); right on the block's core
        (its halo is trimmed by the graph).
    """
    nints, ngroups, hy, hx = data.shape
    out = np.zeros(data.shape, dtype=np.uint8)
    if not bool(np.asarray(enough).reshape(-1)[0]) or ngroups < 2:
        return out
    n = kernel.shape[0] // 2
    e = data * gain
    e[np.isin(gdq, _INVALID)] = np.nan
    diffs = np.diff(e, axis=1)
    if settings.sigclip:
        median, sigma = _clipped_stats(diffs)
    else:
        median = _nan_median(diffs, lead=2)[None]  # of all the pixel's differences
        rn = rnoise * gain
        sigma = np.sqrt(np.abs(median) + rn**2 / settings.nframes)
    masked = ((gdq | pdq) & (_JUMP | _SAT | _DNU)) != 0
    masked |= (pdq == _REF)[None, None]
    # Every side is padded by n: beyond the detector's edge with 0, counted as good (stcal's fill);
    # at inner sides the block's halo holds the neighbours, so the padding there reaches only halo
    # pixels, which are trimmed.
    plane = np.zeros((hy + 2 * n, hx + 2 * n))
    for i in range(nints):
        for g in range(int(first_good[i]) + 1, ngroups):
            k = g - 1 if settings.sigclip else 0
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.abs(diffs[i, g - 1] - median[k]) / sigma[k]
            ratio[masked[i, g]] = np.nan
            plane[n:n + hy, n:n + hx] = ratio
            out[i, g] = _smooth(plane, kernel) > settings.snr_threshold
    return out


def plane_showers(emission: np.ndarray, settings: ShowerSettings) -> tuple[Disk, ...]:
    """The showers of one group plane of extended emission (uint8 0/1, shape (ny, nx)), as
    the ellipses to flag."""
    found = regions(emission.reshape(emission.shape[-2:]) != 0, settings.min_area)
    return tuple(Disk.of(r, *snowball_axes(r, settings.expand_ratio, settings.max_width)) for r in found)


def apply_showers(data, gdq, gain, pdq, showers, *, settings: ShowerSettings, shape, region):
    """The group DQ of one chunk (no halo) with the showers flagged, then reverted where they
    change a pixel's mean difference too much.

    ``showers[i][g]`` holds the ellipses of (integration ``i``, group ``g``) from
    :func:`plane_showers`; ``shape`` is the detector's, ``region`` the chunk's place on it.
    """
    out = np.array(gdq, dtype=np.uint8, copy=True)
    nints, ngroups = out.shape[:2]
    out[:, :, pdq == _REF] = _DNU
    for i, groups in enumerate(showers):
        for g, disks in enumerate(groups):
            for d in disks:
                rows, cols = d.mask(shape, region)
                keep = np.ones(rows.shape, dtype=bool)
                for f in range(g, min(g + settings.grps_masked + 1, ngroups)):
                    keep &= (out[i, f, rows, cols] & _SAT) != _SAT
                    out[i, f, rows[keep], cols[keep]] |= _JUMP
    e = data * gain
    bad = _SAT | _DNU | _JUMP
    for i in range(nints):
        before = _mean_difference(e[i], (gdq[i] & bad) != 0)
        after = _mean_difference(e[i], (out[i] & bad) != 0)
        change = np.abs(before - after)
        revert = ~np.isfinite(change) | (change > settings.max_amplitude)
        out[i][:, revert] = gdq[i][:, revert]
    return out


def _mean_difference(e: np.ndarray, flagged: np.ndarray) -> np.ndarray:
    """``np.nanmean(np.diff(e with NaN where flagged, axis=0), axis=0)`` without its warning."""
    d = np.diff(np.where(flagged, np.nan, e), axis=0)
    finite = ~np.isnan(d)
    total = np.sum(np.where(finite, d, 0), axis=0)
    count = np.sum(finite, axis=0, dtype=np.intp)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(total, count, out=total, casting="unsafe")
