"""Slow references for the detector kernels: plain numpy/Python, and stcal 1.20 called as JWST does."""

from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import ndimage

from daskcal.dq import DQ, dq_dict

SAT, DNU, JUMP = int(DQ.SATURATED), int(DQ.DO_NOT_USE), int(DQ.JUMP_DET)
BAD = SAT | DNU


# ---------------------------------------------------------------- datasets
def make_ramps(shape=(1, 6, 24, 20), *, seed=0, rate=5.0, readnoise=10.0, gain=2.0, cr=(), bias=0.0):
    """Small numpy ramp dataset: bias + rate*t + white noise + cosmic-ray steps.

    ``cr`` is a list of (integration, group, y, x, DN) steps added from that group on.
    """
    _nints, ngroups, ny, nx = shape
    rng = np.random.default_rng(seed)
    t = 10.0 * np.arange(ngroups)[None, :, None, None]
    data = bias + rate * t + (readnoise / np.sqrt(2)) * rng.standard_normal(shape)
    for i, g, y, x, dn in cr:
        data[i, g:, y, x] += dn
    data = data.astype(np.float32)
    pix = ("y", "x")
    return xr.Dataset(
        {
            "data": (("integration", "group", "y", "x"), data),
            "groupdq": (("integration", "group", "y", "x"), np.zeros(shape, np.uint8)),
            "pixeldq": (pix, np.zeros((ny, nx), np.uint32)),
            "gain": (pix, np.full((ny, nx), gain, np.float32)),
            "readnoise": (pix, np.full((ny, nx), readnoise, np.float32)),
            "saturation": (pix, np.full((ny, nx), 60000.0, np.float32)),
            "superbias": (pix, np.full((ny, nx), bias, np.float32)),
        },
        attrs={"group_time": 10.0, "frame_time": 10.0, "nframes": 1, "groupgap": 0},
    )


def calibrated_ramps(shape, seed=0, **kw):
    """Simulated ramps after saturation flagging and superbias subtraction (jump's input), numpy-backed;
    and the simulation's truth."""
    from daskcal._simulate import simulate
    from daskcal.detector._saturation import flag_saturation

    sim = simulate(shape, seed=seed, **kw)
    r = flag_saturation(sim.ramps).compute()
    r["data"] = (r["data"] - r["superbias"]).astype(np.float32)
    return r, sim.truth


def with_groupdq(ramps: xr.Dataset, gdq, **attrs) -> xr.Dataset:
    """A copy of ``ramps`` with the group DQ ``gdq`` (its dims kept) and ``attrs`` added to its attributes."""
    out = ramps.copy()
    out["groupdq"] = (ramps["groupdq"].dims, gdq)
    out.attrs = {**ramps.attrs, **attrs}
    return out


#: Chunk grids of the (41, 37) px ramp cubes of the ramp-fit tests (y, x chunk sizes; None: one chunk).
CUBE_GRIDS = {"1x1": None, "2x1": (21, 37), "1x2": (41, 19), "ragged": (13, 11)}


def chunked(ramps: xr.Dataset, grid: str) -> xr.Dataset:
    """``ramps`` cut into the ``CUBE_GRIDS[grid]`` chunks of y and x (as it is for "1x1")."""
    chunks = CUBE_GRIDS[grid]
    return ramps.chunk(dict(zip(("y", "x"), chunks, strict=True))) if chunks else ramps


# ---------------------------------------------------------------- stcal oracles
def stcal_ramp_data(ramps: xr.Dataset, suppress_one_group=True, dark=None):
    """stcal 1.20's ``RampData`` for OLS_C set up as jwst's ``create_ramp_fit_class`` does (copies of every
    input), with the read noise and gain arrays ``ramp_fit_data`` takes: ``(ramp_data, readnoise, gain)``."""
    from stcal.ramp_fitting.ramp_fit_class import RampData

    data = np.array(ramps["data"].values, np.float32)
    pdq = np.array(ramps["pixeldq"].values, np.uint32)
    rd = RampData()
    dark = np.zeros(pdq.shape, np.float32) if dark is None else np.array(dark, np.float32)
    gdq = np.array(ramps["groupdq"].values, np.uint8)
    # the group DQ before suppression, where any group has CHARGELOSS
    orig = gdq.copy() if (gdq & DQ.CHARGELOSS).any() else None
    rd.set_arrays(data, gdq, pdq, dark, orig_gdq=orig)
    a = ramps.attrs
    rd.set_meta(str(a.get("instrument", "NIRCAM")), float(a["frame_time"]), float(a["group_time"]), int(a["groupgap"]),
                int(a["nframes"]), a.get("drop_frames1"))
    rd.algorithm = "OLS_C"
    rd.set_dqflags(dq_dict())
    rd.start_row, rd.num_rows = 0, data.shape[2]
    # jwst's ramp_fit switches suppression off for one-group data
    rd.suppress_one_group_ramps = bool(suppress_one_group and data.shape[1] > 1)
    return rd, np.array(ramps["readnoise"].values, np.float32), np.array(ramps["gain"].values, np.float32)


def stcal_saturation(ramps: xr.Dataset, n_pix_grow_sat=1):
    """``flag_saturated_pixels`` on copies, with pixeldq as the reference DQ."""
    from stcal.saturation.saturation import flag_saturated_pixels

    pdq = ramps["pixeldq"].values
    gdq, pdq_out, _ = flag_saturated_pixels(
        ramps["data"].values.copy(),
        ramps["groupdq"].values.copy(),
        pdq.copy(),
        ramps["saturation"].values.copy(),
        pdq.copy(),
        65535,
        dq_dict(),
        n_pix_grow_sat=n_pix_grow_sat,
    )
    return gdq, pdq_out


class _KeepMinimumGroups:
    """Mixin for stcal's ``TwoPointParams`` that keeps ``minimum_groups`` as first set.

    stcal 1.20's single-process path (``detect_jumps_data`` with one slice) overwrites
    ``minimum_groups`` with 3 after building the parameters, so a caller's value only
    takes effect with multiprocessing; this keeps it, to compare with ``find_crs``'s meaning.
    """

    def __setattr__(self, name, value):
        if name == "minimum_groups" and "minimum_groups" in self.__dict__:
            return
        super().__setattr__(name, value)


def stcal_jumps(ramps: xr.Dataset, *, keep_minimum_groups=False, counts=False, extended=False, **kw):
    """``detect_jumps_data`` on copies, set up as the JWST jump step does (snowballs and showers included).

    ``keep_minimum_groups``: honour ``minimum_groups`` (see :class:`_KeepMinimumGroups`).
    ``counts``: also return stcal's ``total_primary_crs`` and the JUMP_DET samples of each
    integration of the group DQ it counts them in (captured from ``run_jump_detection``;
    None where stcal skipped the step).
    ``extended``: return ``(gdq, pdq, number_extended_events)`` (stcal's count of snowballs or showers).
    """
    from unittest import mock

    import stcal.jump.jump as stcal_jump
    from stcal.jump.jump import detect_jumps_data
    from stcal.jump.jump_class import JumpData

    nframes = int(ramps.attrs["nframes"])
    gt = float(ramps.attrs["group_time"])
    jd = JumpData(gain2d=ramps["gain"].values.copy(), rnoise2d=ramps["readnoise"].values.copy(), dqflags=dq_dict())
    jd.init_arrays_from_arrays(
        ramps["data"].values.copy(), ramps["groupdq"].values.copy(), ramps["pixeldq"].values.copy()
    )
    jd.nframes = nframes
    jd.dt_group = np.ones(1)
    jd.n_reads_groupdiff = 2 * nframes * np.ones(1)
    jd.max_cores = "none"
    jd.set_detection_settings(
        kw.get("rejection_threshold", 4.0),
        kw.get("three_group_rejection_threshold", 6.0),
        kw.get("four_group_rejection_threshold", 5.0),
        kw.get("max_jump_to_flag_neighbors", 1000.0),
        kw.get("min_jump_to_flag_neighbors", 10.0),
        kw.get("flag_4_neighbors", True),
    )
    jd.set_after_jump(
        kw.get("after_jump_flag_dn1", 0.0),
        int(kw.get("after_jump_flag_time1", 0.0) // gt),
        kw.get("after_jump_flag_dn2", 0.0),
        int(kw.get("after_jump_flag_time2", 0.0) // gt),
    )
    jd.set_sigma_clipping_info(
        kw.get("minimum_groups", 3), kw.get("minimum_sigclip_groups", 100), kw.get("only_use_ints", True)
    )
    jd.min_diffs_single_pass = kw.get("min_diffs_single_pass", 10)
    # snowballs, set up as the JWST jump step does (sat_expand and max_extended_radius doubled,
    # the next-integration time in whole groups)
    jd.set_snowball_info(
        kw.get("expand_large_events", False),
        kw.get("min_jump_area", 5.0),
        kw.get("min_sat_area", 1.0),
        kw.get("expand_factor", 2.0),
        kw.get("sat_required_snowball", True),
        kw.get("min_sat_radius_extend", 2.5),
        kw.get("sat_expand", 2) * 2,
        kw.get("edge_size", 25),
    )
    # showers, as the JWST step sets them up (but max_shower_amplitude as documented: DN/s times the
    # group time; the step hands stcal JumpData's default 6 instead)
    jd.set_shower_info(
        kw.get("find_showers", False),
        kw.get("extend_snr_threshold", 1.2),
        kw.get("extend_min_area", 90),
        kw.get("extend_inner_radius", 1.0),
        kw.get("extend_outer_radius", 2.6),
        kw.get("extend_ellipse_expand_ratio", 1.1),
        kw.get("min_diffs_single_pass", 10),
        kw.get("max_extended_radius", 200) * 2,
    )
    jd.grps_masked_after_shower = int(kw.get("time_masked_after_shower", 15.0) // gt)
    jd.max_shower_amplitude = kw.get("max_shower_amplitude", 4.0) * gt
    jd.mask_persist_grps_next_int = kw.get("mask_snowball_core_next_int", True)
    jd.persist_grps_flagged = int(kw.get("snowball_time_masked_next_int", 4000.0) // gt)
    params = stcal_jump.TwoPointParams
    if keep_minimum_groups:
        params = type("TwoPointParamsKeepingMinimumGroups", (_KeepMinimumGroups, params), {})
    import stcal.jump.twopoint_difference as twopt

    seen = []

    def run_jump_detection(*args, **kwargs):
        out = _run_jump_detection(*args, **kwargs)
        seen.append(((out[0] & JUMP) != 0).sum(axis=(1, 2, 3)))
        return out

    _run_jump_detection = twopt.run_jump_detection
    with mock.patch.object(stcal_jump, "TwoPointParams", params), \
            mock.patch.object(twopt, "run_jump_detection", run_jump_detection):
        gdq, pdq, total, n_extended = detect_jumps_data(jd)
    if extended:
        return gdq, pdq, int(n_extended)
    if counts:
        return gdq, pdq, total, (seen[0] if seen else None)
    return gdq, pdq


# ---------------------------------------------------------------- numpy references
def saturation_reference(data, gdq, thresh, n_pix_grow_sat):
    """Saturation flags from whole-array numpy operations (4-D in, 4-D out)."""
    over = np.logical_or.accumulate(data >= thresh, axis=1)
    out = gdq | np.where(over, SAT, 0).astype(np.uint8)
    out |= np.where(data <= 0, int(DQ.AD_FLOOR | DQ.DO_NOT_USE), 0).astype(np.uint8)
    if n_pix_grow_sat:
        box = np.ones((1, 1, 2 * n_pix_grow_sat + 1, 2 * n_pix_grow_sat + 1), bool)
        grown = ndimage.binary_dilation((out & SAT) != 0, structure=box)
        out |= np.where(grown, SAT, 0).astype(np.uint8)
    return out


def _clipped_median(v):
    v = v[np.isfinite(v)]
    n = v.size
    if n < 2:
        return np.nan, n
    if n == 2:
        return v.min(), n
    if n == 3:
        return np.median(v), n
    rest = v[v != v.max()]
    return (np.median(rest) if rest.size else np.nan), n


def primary_reference(data, gdq, gain, rnoise, nframes, thresholds=(4.0, 5.0, 6.0)):
    """Iterative two-point primary jumps, one pixel at a time in Python (flat 3-D in and out)."""
    _nints, ngroups, npix = data.shape
    out = gdq.copy()
    for p in range(npix):
        e = data[:, :, p] * gain[p]
        d = np.diff(e, axis=1).astype(np.float64)
        d[((gdq[:, 1:, p] | gdq[:, :-1, p]) & BAD) != 0] = np.nan
        a = np.abs(d).ravel()
        var_rn = np.float64((rnoise[p] * gain[p]) ** 2) / nframes
        first = True
        while True:
            med, n = _clipped_median(a)
            if n < 2:
                break
            if not first:
                med = float(np.float32(med))
            sig = np.sqrt(abs(med) + var_rn)
            sig = np.nan if sig == 0 else sig
            ratio = np.abs((a - med).astype(np.float32).astype(np.float64)) / sig
            thr = thresholds[0] if n >= 4 else thresholds[1] if n == 3 else thresholds[2]
            if not np.any(np.isfinite(ratio)) or not np.nanmax(ratio) > thr:
                break
            hit = ratio == np.nanmax(ratio)
            for k in np.flatnonzero(hit):
                out[k // (ngroups - 1), k % (ngroups - 1) + 1, p] |= JUMP
            a[hit] = np.nan
            first = False
    return out
