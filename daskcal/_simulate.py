"""Seeded, realistic up-the-ramp exposures with their truth.

The simulation follows how an IR detector builds a ramp: electrons from sky and
sources arrive as a Poisson process frame by frame, every frame is read with read
noise, ``nframes`` frames are averaged into a group and ``groupgap`` frames are
dropped between groups, the bias (superbias) is added, charge stops accumulating
at full well (so bright sources saturate), cosmic rays add a step to every later
frame (snowballs, if asked for: a core that saturates at once and a halo of
smaller steps around it), and the values are digitised to whole DN and clipped to the 16-bit A/D
range. A few dead and hot pixels are marked in ``pixeldq`` as a mask reference
file would.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import xarray as xr

from daskcal.dq import DQ

__all__ = ["Simulation", "simulate"]

ATOD_LIMIT = 65535.0


@dataclasses.dataclass(frozen=True)
class Simulation:
    """A simulated exposure and what went into it.

    Attributes
    ----------
    ramps : xarray.Dataset
        The ramp dataset (raw DN, bias included), as :func:`daskcal.open_ramps` returns.
    truth : xarray.Dataset
        ``rate(y, x)`` true count rate in DN/s (bias excluded); ``jumps(integration,
        group, y, x)`` True at the group whose difference from the previous group
        holds an injected cosmic ray; ``jump_dn`` the same positions' amplitudes
        in DN; ``dead`` and ``hot`` pixel masks; ``saturates(integration, y, x)``
        True where full well is reached within the integration. With ``snowballs``:
        ``snowball(integration, group, y, x)`` True on each injected snowball's
        footprint (core and halo, also in ``jumps``) at the group it hit, and
        ``snowball_core`` on its core alone. With ``showers``: ``shower(integration,
        group, y, x)`` True on each shower's disk at its group (not in ``jumps``).
    """

    ramps: xr.Dataset
    truth: xr.Dataset


def simulate(
    shape: tuple[int, int, int, int] = (1, 10, 256, 256),
    *,
    seed: int = 0,
    group_time: float = 10.737,
    frame_time: float = 10.737,
    nframes: int = 1,
    groupgap: int = 0,
    gain: float = 2.0,
    readnoise: float = 10.0,
    bias: float = 12000.0,
    saturation: float = 60000.0,
    sky_rate: float = 1.0,
    n_sources: int | None = None,
    max_source_rate: float = 2000.0,
    cr_probability: float = 1e-3,
    cr_dn: tuple[float, float] = (30.0, 3000.0),
    bad_pixel_fraction: float = 1e-4,
    snowballs: int = 0,
    snowball_radius: tuple[float, float] = (3.0, 6.0),
    showers: int = 0,
    shower_dn: float = 30.0,
    chunks: tuple[int, int] | None = None,
) -> Simulation:
    """Simulate one up-the-ramp exposure.

    Parameters
    ----------
    shape : (nints, ngroups, ny, nx), default (1, 10, 256, 256)
        Ramp cube shape.
    seed : int, default 0
        Seed of the random generator; equal seeds give equal exposures.
    group_time, frame_time : float, default 10.737 (NIRCam full frame)
        Seconds from one group (frame) to the next. ``group_time`` is written to
        the attributes as given; frames are spaced by ``frame_time``.
    nframes : int, default 1
        Frames averaged into a group.
    groupgap : int, default 0
        Frames dropped between groups.
    gain : float, default 2.0
        Mean gain in e-/DN (per-pixel map varies by 3%).
    readnoise : float, default 10.0
        Mean read noise in DN of a correlated double sample (per-pixel map varies by 5%).
    bias : float, default 12000.0
        Mean superbias level in DN.
    saturation : float, default 60000.0
        Mean saturation threshold in raw DN (bias included).
    sky_rate : float, default 1.0
        Sky count rate in DN/s.
    n_sources : int, optional
        Point sources (Gaussian, sigma 1.2 px); default one per 1000 pixels.
    max_source_rate : float, default 2000.0
        Peak rate of the brightest source in DN/s (bright ones saturate).
    cr_probability : float, default 1e-3
        Probability that a cosmic ray hits a pixel between two groups.
    cr_dn : (float, float), default (30, 3000)
        Range of cosmic-ray amplitudes in DN (log-uniform).
    bad_pixel_fraction : float, default 1e-4
        Fraction of dead and (the same number of) hot pixels.
    snowballs : int, default 0
        Snowballs per integration (large cosmic-ray events of NIR detectors), each at
        a random pixel and group >= 1: a disk of radius drawn from ``snowball_radius``
        whose pixels receive a full well's worth of charge (the core saturates in that
        group), inside a halo twice as wide whose step falls exponentially from
        1500 DN at the core's edge to 15 DN at its own (its outer part is below what
        the two-point method finds in one pixel, as in real snowballs). Drawn from a
        generator of their own, so the rest of the exposure is the same as without them.
    snowball_radius : (float, float), default (3, 6)
        Range (pixels, uniform) of the cores' radii.
    showers : int, default 0
        Showers per integration (faint extended events of MIRI), each a disk of radius 6 to
        12 pixels at a random place and group >= 1 whose pixels all step by ``shower_dn``:
        too faint for the two-point method in one pixel. Their own generator, as snowballs.
    shower_dn : float, default 30
        Step of a shower's pixels in DN.
    chunks : (int, int), optional
        Return dask arrays chunked in pixels with these (y, x) chunk sizes.

    Returns
    -------
    Simulation
    """
    nints, ngroups, ny, nx = (int(n) for n in shape)
    if min(nints, ngroups, ny, nx) < 1:
        msg = f"shape must be four positive sizes (nints, ngroups, ny, nx); got {shape}"
        raise ValueError(msg)
    if not isinstance(snowballs, (int, np.integer)) or isinstance(snowballs, bool) or snowballs < 0:
        msg = f"snowballs must be an integer >= 0 (per integration); got {snowballs!r}"
        raise ValueError(msg)
    if not isinstance(showers, (int, np.integer)) or isinstance(showers, bool) or showers < 0:
        msg = f"showers must be an integer >= 0 (per integration); got {showers!r}"
        raise ValueError(msg)
    lo, hi = (float(r) for r in snowball_radius)
    if not 0 < lo <= hi:
        msg = f"snowball_radius must be (min, max) pixels with 0 < min <= max; got {snowball_radius!r}"
        raise ValueError(msg)
    rng = np.random.default_rng(seed)
    npix = ny * nx

    gain_map = (gain * (1 + 0.03 * rng.standard_normal((ny, nx)))).astype(np.float32)
    rn_map = (readnoise * (1 + 0.05 * rng.standard_normal((ny, nx)))).astype(np.float32)
    bias_map = (bias + 0.03 * bias * rng.standard_normal((ny, nx))).astype(np.float32)
    sat_map = (saturation + 0.01 * saturation * rng.standard_normal((ny, nx))).astype(np.float32)

    rate = np.full((ny, nx), sky_rate, dtype=np.float64)
    rate += _sources(rng, ny, nx, n_sources, max_source_rate)
    nbad = int(round(bad_pixel_fraction * npix))
    flat_idx = rng.choice(npix, size=2 * nbad, replace=False) if nbad else np.empty(0, int)
    dead = np.zeros(npix, bool)
    hot = np.zeros(npix, bool)
    dead[flat_idx[:nbad]] = True
    hot[flat_idx[nbad:]] = True
    dead, hot = dead.reshape(ny, nx), hot.reshape(ny, nx)
    rate[hot] += rng.uniform(20.0, 200.0, size=int(hot.sum()))
    rate[dead] = 0.0

    pixeldq = np.zeros((ny, nx), np.uint32)
    pixeldq[dead] |= np.uint32(DQ.DEAD | DQ.DO_NOT_USE)
    pixeldq[hot] |= np.uint32(DQ.HOT)

    # Full well (in DN above bias) sits a little above the threshold so that a
    # saturating ramp does cross it.
    full_well_dn = sat_map - bias_map + 0.02 * saturation
    frame_rn = rn_map / np.sqrt(2.0)
    data = np.empty((nints, ngroups, ny, nx), np.float32)
    jumps = np.zeros((nints, ngroups, ny, nx), bool)
    jump_dn = np.zeros((nints, ngroups, ny, nx), np.float32)
    saturates = np.zeros((nints, ny, nx), bool)
    electrons_per_frame = rate * gain_map * frame_time
    hits, snowball, core = _snowballs((nints, ngroups, ny, nx), seed, snowballs, (lo, hi), full_well_dn)
    faint, shower = _showers((nints, ngroups, ny, nx), seed, showers, float(shower_dn))
    for i in range(nints):
        charge = np.zeros((ny, nx))  # accumulated DN above bias, noiseless of reads
        cr_total = np.zeros((ny, nx))
        frame = 0
        for g in range(ngroups):
            if g > 0:
                hit = rng.random((ny, nx)) < cr_probability
                amp = np.exp(rng.uniform(*np.log(cr_dn), size=int(hit.sum())))
                cr_total[hit] += amp
                jumps[i, g][hit] = True
                jump_dn[i, g][hit] = amp
                if snowballs:
                    step = hits[i, g]
                    cr_total += step
                    jumps[i, g] |= step > 0
                    jump_dn[i, g] += step
                if showers:
                    cr_total += faint[i, g]
            acc = np.zeros((ny, nx))
            for _ in range(nframes):
                charge += rng.poisson(electrons_per_frame) / gain_map
                signal = np.minimum(charge + cr_total, full_well_dn)
                acc += signal + frame_rn * rng.standard_normal((ny, nx))
                frame += 1
            for _ in range(groupgap):
                charge += rng.poisson(electrons_per_frame) / gain_map
                frame += 1
            saturates[i] |= charge + cr_total >= full_well_dn
            group = bias_map + acc / nframes
            data[i, g] = np.clip(np.rint(group), 0.0, ATOD_LIMIT)

    ramps = xr.Dataset(
        {
            "data": (("integration", "group", "y", "x"), data, {"units": "DN"}),
            "groupdq": (("integration", "group", "y", "x"), np.zeros(data.shape, np.uint8)),
            "pixeldq": (("y", "x"), pixeldq),
            "gain": (("y", "x"), gain_map, {"units": "electron/DN"}),
            "readnoise": (("y", "x"), rn_map, {"units": "DN"}),
            "saturation": (("y", "x"), sat_map, {"units": "DN"}),
            "superbias": (("y", "x"), bias_map, {"units": "DN"}),
        },
        attrs={
            "group_time": float(group_time),
            "frame_time": float(frame_time),
            "nframes": int(nframes),
            "groupgap": int(groupgap),
            "simulated": True,
            "seed": int(seed),
        },
    )
    if chunks is not None:
        from daskcal.detector._common import pixel_chunked

        ramps = pixel_chunked(ramps, tuple(chunks))
    truth = xr.Dataset(
        {
            "rate": (("y", "x"), rate.astype(np.float32), {"units": "DN/s"}),
            "jumps": (("integration", "group", "y", "x"), jumps),
            "jump_dn": (("integration", "group", "y", "x"), jump_dn, {"units": "DN"}),
            "dead": (("y", "x"), dead),
            "hot": (("y", "x"), hot),
            "saturates": (("integration", "y", "x"), saturates),
        }
    )
    if snowballs:
        truth["snowball"] = (("integration", "group", "y", "x"), snowball)
        truth["snowball_core"] = (("integration", "group", "y", "x"), core)
    if showers:
        truth["shower"] = (("integration", "group", "y", "x"), shower)
    return Simulation(ramps=ramps, truth=truth)


def _snowballs(shape, seed: int, n: int, radius: tuple[float, float], full_well_dn: np.ndarray):
    """Steps (DN) of ``n`` snowballs per integration at their (integration, group), with their
    footprints and cores (bool), from a generator of their own."""
    nints, ngroups, ny, nx = shape
    if n == 0 or ngroups < 2:
        return None, None, None
    rng = np.random.default_rng([seed, 0x5B])  # not the exposure's generator
    steps = np.zeros(shape, np.float64)
    footprint = np.zeros(shape, bool)
    core = np.zeros(shape, bool)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for i in range(nints):
        for _ in range(n):
            g = int(rng.integers(1, ngroups))
            y0, x0 = rng.uniform(0, ny), rng.uniform(0, nx)
            r_core = rng.uniform(*radius)
            r = np.hypot(yy - y0, xx - x0)
            inner = r <= r_core
            halo = (r > r_core) & (r <= 2 * r_core)
            steps[i, g][inner] += 2 * full_well_dn[inner]
            steps[i, g][halo] += 1500.0 * 0.01 ** ((r[halo] - r_core) / r_core)  # 1500 DN to 15 DN
            footprint[i, g] |= inner | halo
            core[i, g] |= inner
    return steps, footprint, core


def _sources(rng: np.random.Generator, ny: int, nx: int, n: int | None, peak_max: float) -> np.ndarray:
    """Gaussian point sources (sigma 1.2 px) with a power-law peak distribution."""
    n = max(1, (ny * nx) // 1000) if n is None else int(n)
    img = np.zeros((ny, nx))
    if n == 0:
        return img
    ys = rng.uniform(0, ny, n)
    xs = rng.uniform(0, nx, n)
    peaks = peak_max * rng.uniform(0.0, 1.0, n) ** 4  # many faint, few bright
    sigma, r = 1.2, 5
    for y0, x0, p in zip(ys, xs, peaks, strict=True):
        iy, ix = int(y0), int(x0)
        y1, y2 = max(0, iy - r), min(ny, iy + r + 1)
        x1, x2 = max(0, ix - r), min(nx, ix + r + 1)
        yy, xx = np.mgrid[y1:y2, x1:x2]
        img[y1:y2, x1:x2] += p * np.exp(-((yy - y0) ** 2 + (xx - x0) ** 2) / (2 * sigma**2))
    return img


def _showers(shape, seed: int, n: int, dn: float):
    """Steps (DN) of ``n`` faint disks per integration at their (integration, group), and their
    footprints, from a generator of their own."""
    nints, ngroups, ny, nx = shape
    if n == 0 or ngroups < 2:
        return None, None
    rng = np.random.default_rng([seed, 0x5E])  # not the exposure's generator
    steps = np.zeros(shape, np.float64)
    footprint = np.zeros(shape, bool)
    yy, xx = np.mgrid[0:ny, 0:nx]
    for i in range(nints):
        for _ in range(n):
            g = int(rng.integers(1, ngroups))
            disk = np.hypot(yy - rng.uniform(0, ny), xx - rng.uniform(0, nx)) <= rng.uniform(6.0, 12.0)
            steps[i, g][disk] += dn
            footprint[i, g] |= disk
    return steps, footprint
