"""Sky statistics of image regions, computed chunk by chunk in rounds (the blocks of skymatch).

The reference (``stcal.skymatch.SkyStats`` over ``stsci.imagestats.ImageStats``)
takes the selected pixels of one region as a single float32 array and runs, in
order: ``nclip + 1`` passes of a clipped mean (each a count/sum/min/max pass and a
second pass for the standard deviation about that mean, both in its C code's
float32/float64 mix), then the statistic: the mean of the last pass, the NumPy
median of the values within the last clip limits, or a histogram of bin width
``binwidth * stddev`` for the mode and ``midpt``.

Here each of those passes is one *round*: every chunk of an image reports small
partial results for every region (target) of that image, and :func:`advance`
merges them into the state the next round needs. The median is found exactly by
a radix select on the float32 bit patterns: four rounds of 256-bin counts. So
every number is the reference's, computed out of core; the only difference is the
order in which float64 sums are added, which changes results by ~1e-16.

Nothing here imports dask: :mod:`daskcal.image._skymatch` puts the rounds in a graph.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

log = logging.getLogger(__name__)

__all__ = [
    "SKYSTATS",
    "SkyStatSpec",
    "TargetState",
    "advance",
    "chunk_partials",
    "initial_state",
    "result",
    "run_local",
    "runs_mask",
    "schedule",
]

SKYSTATS = ("mean", "median", "mode", "midpt")
_MINFLOAT = 10.0 * float(np.finfo(np.float32).eps)
_DIGIT_BITS = 8  # radix select: 4 rounds of 256 bins over a 32-bit key
_ROUNDS_RADIX = ("R0", "R1", "R2", "R3")
_NO_LOWER, _NO_UPPER = np.float32(-np.inf), np.float32(np.inf)


@dataclasses.dataclass(frozen=True)
class SkyStatSpec:
    """Sky statistic and clipping (the ``SkyStats`` parameters; validated by the caller)."""

    skystat: str = "mode"
    lower: float | None = None
    upper: float | None = None
    nclip: int = 5
    lsigma: float = 4.0
    usigma: float = 4.0
    binwidth: float = 0.1


@dataclasses.dataclass(frozen=True)
class TargetState:
    """What one target's statistic has reached after a round (small; travels between tasks)."""

    dead: bool = False
    iteration: int = 0
    lo: np.float32 = _NO_LOWER  # clip limits (float32) of the current (or last) count/sum pass
    hi: np.float32 = _NO_UPPER
    first: float | None = None  # the region's first selected pixel (C order): a quirk of the C min/max
    n_all: int = 0
    npix: int = 0
    mean: float = 0.0
    vmin: float = 0.0
    vmax: float = 0.0
    std: float = 0.0
    ranks: tuple = ()  # radix select: (prefix, remaining rank) per wanted order statistic
    hist: tuple = ()  # (nbins, bin width f32, origin f32, hwidth)
    value: object = None


def schedule(spec: SkyStatSpec) -> tuple[str, ...]:
    """The rounds the statistic needs: "A" count/sum, "B" deviation, radix "R0".."R3", histogram "H"."""
    rounds = []
    hist = spec.skystat in ("mode", "midpt")
    for k in range(spec.nclip + 1):
        rounds.append("A")
        if k < spec.nclip or hist:
            rounds.append("B")
    if spec.skystat == "median":
        rounds.extend(_ROUNDS_RADIX)
    elif hist:
        rounds.append("H")
    return tuple(rounds)


def initial_state(spec: SkyStatSpec) -> TargetState:
    lo = -np.inf if spec.lower is None else spec.lower
    hi = np.inf if spec.upper is None else spec.upper
    return TargetState(lo=np.float32(lo), hi=np.float32(hi))


# -- one chunk ---------------------------------------------------------------------
def runs_mask(runs, y0: int, x0: int, shape: tuple[int, int]) -> np.ndarray:
    """Boolean mask of a chunk at ``(y0, x0)`` from row runs ``(row, start, stop)`` in image pixels."""
    h, w = shape
    mask = np.zeros((h, w + 1), np.int32)
    if len(runs):
        runs = np.asarray(runs)
        r = runs[:, 0] - y0
        a = np.clip(runs[:, 1] - x0, 0, w)
        b = np.clip(runs[:, 2] - x0, 0, w)
        keep = (r >= 0) & (r < h) & (a < b)
        np.add.at(mask, (r[keep], a[keep]), 1)
        np.add.at(mask, (r[keep], b[keep]), -1)
    return np.cumsum(mask, axis=1)[:, :w] > 0


def _key(v: np.ndarray) -> np.ndarray:
    """Unsigned 32-bit keys that sort like the float32 values ``v``."""
    bits = v.view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def _from_key(key: int) -> np.float32:
    key = np.uint32(key)
    bits = key & np.uint32(0x7FFFFFFF) if key & np.uint32(0x80000000) else ~key
    return np.array([bits], np.uint32).view(np.float32)[0]


def _partial(kind: str, st: TargetState, v: np.ndarray, first: int | None):
    """Partial result of one round for one target's values ``v`` (float32, 1-D) in one chunk.

    ``first``: in the first round, the image-wide C-order index of ``v[0]``.
    """
    if kind == "A":
        sel = (v >= st.lo) & (v <= st.hi)
        good = v[sel]
        out = {"n": int(good.size), "sum": float(good.sum(dtype=np.float64)), "n_all": int(v.size)}
        if good.size:
            out["min"], out["max"] = float(good.min()), float(good.max())
        if first is not None:
            out["first"] = (first, float(v[0]))
        return out
    if kind == "B":
        sel = (v >= np.float32(st.vmin)) & (v <= np.float32(st.vmax))
        d = v[sel] - np.float32(st.mean)
        return float((d * d).sum(dtype=np.float64))
    if kind.startswith("R"):
        sel = v[(v <= st.hi) & (v >= st.lo)]
        keys = _key(np.ascontiguousarray(sel))
        level = int(kind[1])
        shift = 32 - _DIGIT_BITS * (level + 1)
        out = []
        for prefix, _ in st.ranks:
            k = keys if level == 0 else keys[(keys >> np.uint32(shift + _DIGIT_BITS)) == np.uint32(prefix)]
            digit = (k >> np.uint32(shift)) & np.uint32(2**_DIGIT_BITS - 1)
            out.append(np.bincount(digit, minlength=2**_DIGIT_BITS))
        return out
    if kind == "H":
        nbins, width, origin, _ = st.hist
        top = origin + width * np.float32(nbins)
        sel = v[(v >= origin) & (v < top)]
        with np.errstate(all="ignore"):  # a zero-width single bin selects nothing
            idx = (np.float32(1.0) / width * (sel - origin)).astype(np.int64)
        idx = idx[idx < nbins]  # the C code's one spare bin, dropped
        counts = np.bincount(idx, minlength=0)
        nz = np.flatnonzero(counts)
        return nz, counts[nz]
    msg = f"unknown round {kind!r}"
    raise ValueError(msg)


def _shifted_and_good(block, dq, ignore_bits, shift):
    """``(values, good)``: the data minus the sky values already subtracted (float32 steps, in order),
    and where they are finite with DQ good."""
    from astropy.nddata.bitmask import bitfield_to_boolean_mask

    block = np.asarray(block)
    for s in shift:
        block = block - np.float32(s)
    block = block.astype(np.float32, copy=False)
    good = np.isfinite(block)
    if dq is not None and ignore_bits is not None:
        good &= bitfield_to_boolean_mask(np.asarray(dq), ignore_bits, good_mask_value=True, dtype=bool)
    return block, good


def chunk_partials(kind, states, block, dq, offset, width, regions, ignore_bits, shift):
    """Partials of round ``kind`` for every target of one image chunk.

    Parameters
    ----------
    kind : str
        Round name (see :func:`schedule`).
    states : list of TargetState
        One per target; dead targets get None.
    block, dq : ndarray
        The chunk's data and DQ (``dq`` may be None).
    offset : (int, int)
        ``(y0, x0)`` of the chunk in the image; ``width`` the image's columns.
    regions : list
        Per target: None (every good pixel) or row runs ``(row, start, stop)``.
    ignore_bits : int or None
        DQ bits that do not make a pixel bad (astropy bitmask ``ignore_flags``).
    shift : sequence of float
        Sky values already subtracted from this image (float32 steps, reference order).
    """
    block, good = _shifted_and_good(block, dq, ignore_bits, shift)
    y0, x0 = offset
    h, w = block.shape
    out = []
    for st, region in zip(states, regions, strict=True):
        if st.dead:
            out.append(None)
            continue
        m = good if region is None else good & runs_mask(region, y0, x0, (h, w))
        first = None
        if kind == "A" and st.iteration == 0:  # the image-wide C-order index of the first value
            rows, cols = np.nonzero(m)
            first = (int(rows[0] + y0) * width + int(cols[0] + x0)) if rows.size else None
        out.append(_partial(kind, st, block[m], first))
    return out


def whole_image_results(spec, block, dq, regions, ignore_bits, shift):
    """The statistic ``[(value, npix), ...]`` over each region of a whole image held in memory.

    The same rounds as the chunked graph (:func:`chunk_partials`, :func:`advance`) on one
    "chunk" that is the whole image, with each region's good values selected once instead of
    once per round (the chunked graph re-reads every chunk in each of its ~13 rounds).
    """
    block, good = _shifted_and_good(block, dq, ignore_bits, shift)
    h, w = block.shape
    values, firsts = [], []
    for region in regions:
        m = good if region is None else good & runs_mask(region, 0, 0, (h, w))
        flat = np.flatnonzero(m)
        firsts.append(int(flat[0]) if flat.size else None)
        values.append(block.reshape(-1)[flat])
    del block, good
    states = [initial_state(spec)] * len(regions)
    for kind in schedule(spec):
        parts = [[None if st.dead else _partial(kind, st, v, f if (kind == "A" and st.iteration == 0) else None)
                  for st, v, f in zip(states, values, firsts, strict=True)]]
        states = advance(kind, spec, states, parts)
    return [result(spec, st) for st in states]


# -- merging a round -----------------------------------------------------------------
def advance(kind: str, spec: SkyStatSpec, states, parts):
    """Merge the partials of round ``kind`` from every chunk into the next state of every target."""
    new = []
    for t, st in enumerate(states):
        if st.dead:
            new.append(st)
            continue
        pieces = [p[t] for p in parts]
        if kind == "A":
            st = _advance_a(st, pieces)
            if spec.skystat == "median" and st.iteration == spec.nclip:
                st = _start_radix(spec, st)
        elif kind == "B":
            st = _advance_b(spec, st, sum(pieces))
        elif kind.startswith("R"):
            st = _advance_radix(st, pieces)
        else:
            st = _advance_hist(spec, st, pieces)
        new.append(st)
    return new


def _advance_a(st: TargetState, pieces) -> TargetState:
    n = sum(p["n"] for p in pieces)
    n_all = st.n_all if st.iteration else sum(p["n_all"] for p in pieces)
    first = st.first
    if st.iteration == 0:
        firsts = [p["first"] for p in pieces if "first" in p]
        first = min(firsts)[1] if firsts else None
    if n <= 0:  # ImageStats raises "Not enough data points": no sky from this region
        return dataclasses.replace(st, dead=True, n_all=n_all, first=first)
    s = math.fsum(p["sum"] for p in pieces)
    lo, hi = float(st.lo), float(st.hi)
    # the C code starts its min/max at the first pixel of the array, bounded by the limits
    vmin = min([max(first, lo)] + [p["min"] for p in pieces if p["n"]])
    vmax = max([min(first, hi)] + [p["max"] for p in pieces if p["n"]])
    mean = float(np.float32(s / n))
    return dataclasses.replace(st, npix=n, n_all=n_all, first=first, mean=mean, vmin=float(np.float32(vmin)),
                               vmax=float(np.float32(vmax)))


def _advance_b(spec: SkyStatSpec, st: TargetState, sumdiff: float) -> TargetState:
    if st.npix > 1:
        std = float(np.float32(math.sqrt(sumdiff / (st.npix - 1))))
    else:  # the C code divides by zero: 0/0
        std = math.nan if sumdiff == 0 else math.inf
    st = dataclasses.replace(st, std=std)
    if st.iteration < spec.nclip:
        lower = -math.inf if spec.lower is None else spec.lower
        upper = math.inf if spec.upper is None else spec.upper
        lo = max(lower, st.mean - spec.lsigma * std)
        hi = min(upper, st.mean + spec.usigma * std)
        with np.errstate(over="ignore"):  # as C's (float) of a double beyond float32's range
            lo, hi = np.float32(lo), np.float32(hi)
        return dataclasses.replace(st, lo=lo, hi=hi, iteration=st.iteration + 1)
    if spec.skystat in ("mode", "midpt"):
        return _plan_hist(spec, st)
    return st


def _plan_hist(spec: SkyStatSpec, st: TargetState) -> TargetState:
    hwidth = spec.binwidth * st.std
    drange = st.vmax - st.vmin
    if hwidth < _MINFLOAT or abs(drange) < _MINFLOAT or hwidth > drange:
        log.info("sky statistic: the clipped data fall within one histogram bin")
        nbins, dz = 1, drange
    elif not math.isfinite(drange / hwidth):  # ImageStats fails (int of NaN): no sky from this region
        return dataclasses.replace(st, dead=True)
    else:
        nbins = int((st.vmax - st.vmin) / hwidth) + 1
        dz = float(st.vmax - st.vmin) / float(nbins - 1)
    return dataclasses.replace(st, hist=(nbins, np.float32(dz), np.float32(st.vmin), hwidth))


def _advance_radix(st: TargetState, pieces) -> TargetState:
    ranks = []
    for r, (prefix, rank) in enumerate(st.ranks):
        counts = np.sum([p[r] for p in pieces], axis=0)
        cum = np.cumsum(counts)
        digit = int(np.searchsorted(cum, rank, side="right"))
        below = int(cum[digit - 1]) if digit else 0
        ranks.append(((prefix << _DIGIT_BITS) | digit, rank - below))
    return dataclasses.replace(st, ranks=tuple(ranks))


def _advance_hist(spec: SkyStatSpec, st: TargetState, pieces) -> TargetState:
    nbins, _, _, hwidth = st.hist
    bins = np.zeros(nbins, np.uint32)
    for idx, counts in pieces:
        bins[idx] += counts.astype(np.uint32)
    vmin = st.vmin
    value = _mode(bins, nbins, vmin, hwidth) if spec.skystat == "mode" else _midpt(bins, vmin, hwidth)
    return dataclasses.replace(st, value=value)


def _mode(bins, nbins, vmin, hwidth):
    """The reference's mode: the histogram peak refined by a parabola through its neighbours."""
    if nbins == 1:
        return vmin + 0.5 * hwidth
    if nbins == 2:
        if bins[0] > bins[1]:
            return vmin + 0.5 * hwidth
        if bins[0] < bins[1]:
            return vmin + 1.5 * hwidth
        return vmin + hwidth
    peak = int(np.flatnonzero(bins == bins.max())[0])
    if peak == 0:
        return vmin + 0.5 * hwidth
    if peak == nbins - 1:
        return vmin + (nbins - 0.5) * hwidth
    dh1 = bins[peak] - bins[peak - 1]
    dh2 = bins[peak] - bins[peak + 1]
    denom = dh1 + dh2
    if denom == 0:
        return vmin + (peak + 0.5) * hwidth
    mode = peak + 1 + (0.5 * (int(dh1) - int(dh2)) / denom)
    return vmin + ((mode - 0.5) * hwidth)


def _midpt(bins, vmin, hwidth):
    """The reference's ``midpt``: the histogram's half-count point, interpolated within its bin."""
    if bins.size <= 1:
        return bins[0]  # the reference returns the count of its single bin here
    cum = np.cumsum(bins).astype(np.float32)
    cum = cum / cum[-1]
    lo = np.flatnonzero(cum >= 0.5)[0]  # an np.int64, so h1 is np.float64 as in the reference
    h1 = vmin + lo * hwidth
    hdiff = cum[lo] if lo == 0 else cum[lo] - cum[lo - 1]
    if hdiff == 0:
        return h1
    if lo == 0:
        return h1 + 0.5 / hdiff * hwidth
    return h1 + ((0.5 - cum[lo - 1]) / hdiff * hwidth)


def _start_radix(spec: SkyStatSpec, st: TargetState) -> TargetState:
    """Ranks of the median's order statistics among the values the reference's median uses:
    those within the last clip limits, or every value when ``nclip`` is 0."""
    if st.dead:
        return st
    if spec.nclip == 0:
        st = dataclasses.replace(st, lo=np.float32(-np.inf), hi=np.float32(np.inf))
    n = st.npix if spec.nclip > 0 else st.n_all
    ranks = (n // 2,) if n % 2 else (n // 2 - 1, n // 2)
    return dataclasses.replace(st, ranks=tuple((0, r) for r in ranks))


def result(spec: SkyStatSpec, st: TargetState):
    """``(sky, npix)`` as ``SkyStats.calc_sky`` returns them, or ``(None, 0)`` when it fails."""
    if st.dead:
        return None, 0
    if spec.skystat == "mean":
        value = st.mean
    elif spec.skystat == "median":
        vals = np.array([_from_key(prefix) for prefix, _ in st.ranks], np.float32)
        value = np.median(vals)
    else:
        value = st.value
    if not np.isfinite(value):
        return None, 0
    return value, st.npix


def run_local(spec: SkyStatSpec, data, dq=None, regions=(None,), ignore_bits=None, chunks=None, shift=()):
    """Every round over NumPy chunks of ``chunks`` (rows, columns), in this process: the twin of the
    dask graph, for tests. Returns ``[(sky, npix), ...]`` per region."""
    data = np.asarray(data)
    ny, nx = data.shape
    cy, cx = chunks or data.shape
    cuts = [(y, x) for y in range(0, ny, cy) for x in range(0, nx, cx)]
    states = [initial_state(spec) for _ in regions]
    for kind in schedule(spec):
        parts = [chunk_partials(kind, states, data[y:y + cy, x:x + cx], None if dq is None else dq[y:y + cy, x:x + cx],
                                (y, x), nx, list(regions), ignore_bits, shift) for y, x in cuts]
        states = advance(kind, spec, states, parts)
    return [result(spec, st) for st in states]
