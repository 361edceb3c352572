"""Test helpers: simulated data and the reference implementation (stcal) as an oracle.

The ``stcal_*`` functions call stcal 1.20 the way the JWST pipeline calls it, on
in-memory copies of a ramp dataset (stcal changes several of its inputs in
place), and return plain numpy results. They import stcal lazily: it is a test
dependency (``pip install "daskcal[test]"``), not a runtime one.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from daskcal._simulate import Simulation, simulate
from daskcal.dq import DQ, dq_dict

__all__ = [
    "Simulation",
    "simulate",
    "ATOD_LIMIT",
    "stcal_flag_saturation",
    "stcal_subtract_superbias",
    "stcal_detect_jumps",
    "stcal_fit_ramps",
    "stcal_detector1",
]

ATOD_LIMIT = 65535.0


def _arrays(ramps: xr.Dataset):
    return (
        np.array(ramps["data"].values, dtype=np.float32),
        np.array(ramps["groupdq"].values, dtype=np.uint8),
        np.array(ramps["pixeldq"].values, dtype=np.uint32),
    )


def _with(ramps: xr.Dataset, **arrays) -> xr.Dataset:
    out = ramps.copy()
    for name, arr in arrays.items():
        out[name] = (ramps[name].dims, arr)
    return out


def stcal_flag_saturation(ramps: xr.Dataset, n_pix_grow_sat: int = 1) -> xr.Dataset:
    """``stcal.saturation.flag_saturated_pixels`` on ``ramps``; ``sat_dq`` is pixeldq's NO_SAT_CHECK bits."""
    from stcal.saturation.saturation import flag_saturated_pixels

    data, gdq, pdq = _arrays(ramps)
    sat = np.array(ramps["saturation"].values, dtype=np.float32)
    sat_dq = pdq & np.uint32(DQ.NO_SAT_CHECK)
    gdq, pdq, _ = flag_saturated_pixels(
        data, gdq, pdq, sat, sat_dq, ATOD_LIMIT, dq_dict(), n_pix_grow_sat=n_pix_grow_sat
    )
    return _with(ramps, groupdq=gdq, pixeldq=pdq)


def stcal_subtract_superbias(ramps: xr.Dataset) -> xr.Dataset:
    """JWST's superbias step: subtract the superbias, NaN treated as 0."""
    bias = np.nan_to_num(np.array(ramps["superbias"].values, dtype=np.float32), nan=0.0)
    return _with(ramps, data=(np.array(ramps["data"].values, dtype=np.float32) - bias).astype(np.float32))


def stcal_detect_jumps(
    ramps: xr.Dataset,
    rejection_threshold: float = 4.0,
    three_group_rejection_threshold: float = 6.0,
    four_group_rejection_threshold: float = 5.0,
    flag_4_neighbors: bool = True,
    max_jump_to_flag_neighbors: float = 1000,
    min_jump_to_flag_neighbors: float = 10,
    after_jump_flag_dn1: float = 0.0,
    after_jump_flag_time1: float = 0.0,
    after_jump_flag_dn2: float = 0.0,
    after_jump_flag_time2: float = 0.0,
    *,
    expand_large_events: bool = False,
) -> xr.Dataset:
    """``stcal.jump.jump.detect_jumps_data``, two-point difference (and with ``expand_large_events`` the
    snowball search, JWST's default snowball parameters), as JWST's jump step calls it.

    The result's ``attrs["total_primary_crs"]`` is stcal's count of primary jumps (-99 where it
    skipped the step), ``attrs["number_extended_events"]`` its count of snowballs (0 without the search).
    """
    from stcal.jump.jump import detect_jumps_data
    from stcal.jump.jump_class import JumpData

    data, gdq, pdq = _arrays(ramps)
    gain = np.array(ramps["gain"].values, dtype=np.float32)
    rn = np.array(ramps["readnoise"].values, dtype=np.float32)
    jd = JumpData(gain2d=gain, rnoise2d=rn, dqflags=dq_dict())
    jd.init_arrays_from_arrays(data, gdq, pdq)
    nframes = int(ramps.attrs["nframes"])
    jd.nframes = nframes
    jd.dt_group = np.ones(1)
    jd.n_reads_groupdiff = 2 * nframes * np.ones(1)
    jd.max_cores = "none"
    jd.set_detection_settings(
        rejection_threshold,
        three_group_rejection_threshold,
        four_group_rejection_threshold,
        max_jump_to_flag_neighbors,
        min_jump_to_flag_neighbors,
        flag_4_neighbors,
    )
    gtime = float(ramps.attrs["group_time"])
    jd.set_after_jump(
        after_jump_flag_dn1, int(after_jump_flag_time1 // gtime), after_jump_flag_dn2, int(after_jump_flag_time2 // gtime)
    )
    if expand_large_events:
        # as the JWST jump step sets them up from its defaults: sat_expand (2) and max_extended_radius
        # (200) doubled, the next integration's masked time (4000 s) in whole groups
        jd.set_snowball_info(True, 5.0, 1.0, 2.0, True, 2.5, 2 * 2, 25)
        jd.max_extended_width = 2 * 200
        jd.mask_persist_grps_next_int = True
        jd.persist_grps_flagged = int(4000.0 // gtime)
    gdq, pdq, total_primary_crs, number_extended_events = detect_jumps_data(jd)
    out = _with(ramps, groupdq=gdq, pixeldq=pdq)
    out.attrs["total_primary_crs"] = int(total_primary_crs)
    out.attrs["number_extended_events"] = int(number_extended_events)
    return out


def stcal_fit_ramps(ramps: xr.Dataset, suppress_one_group: bool = True, algorithm: str = "OLS_C",
                    dark=None) -> tuple[dict, dict]:
    """``stcal.ramp_fitting.ramp_fit.ramp_fit_data`` with ``algorithm`` (OLS_C: optimal weighting;
    LIKELY: the likelihood fit, which stcal replaces by OLS_C below 4 groups) and ``dark``
    (DN/s, ``(y, x)``; default 0).

    Returns
    -------
    rate, rateints : dict
        ``{"data", "dq", "var_poisson", "var_rnoise", "err"}`` numpy arrays.
    """
    from stcal.ramp_fitting.ramp_fit import ramp_fit_data
    from stcal.ramp_fitting.ramp_fit_class import RampData

    data, gdq, pdq = _arrays(ramps)
    rd = RampData()
    # as jwst's create_ramp_fit_class: the group DQ before suppression, where any group has CHARGELOSS
    orig = gdq.copy() if (gdq & int(DQ.CHARGELOSS)).any() else None
    dark = np.zeros(pdq.shape, np.float32) if dark is None else np.array(dark, dtype=np.float32)
    rd.set_arrays(data, gdq, pdq, dark, orig_gdq=orig)
    a = ramps.attrs
    rd.set_meta(str(a.get("instrument", "NIRCAM")), float(a["frame_time"]), float(a["group_time"]), int(a["groupgap"]),
                int(a["nframes"]))
    rd.algorithm = algorithm
    rd.set_dqflags(dq_dict())
    # jwst's ramp_fit turns suppression off for single-group exposures
    rd.suppress_one_group_ramps = suppress_one_group and ramps.sizes["group"] > 1
    rn = np.array(ramps["readnoise"].values, dtype=np.float32)
    gain = np.array(ramps["gain"].values, dtype=np.float32)
    image, integ, _ = ramp_fit_data(rd, False, rn, gain, algorithm, "optimal", "none")
    return _named(image), _named(integ)


def _named(info) -> dict:
    if isinstance(info, dict):
        names = {"slope": "data", "dq": "dq", "var_poisson": "var_poisson", "var_rnoise": "var_rnoise", "err": "err"}
        return {ours: np.asarray(info[theirs]) for theirs, ours in names.items()}
    data, dq, var_poisson, var_rnoise, err = info[:5]
    return {"data": data, "dq": dq, "var_poisson": var_poisson, "var_rnoise": var_rnoise, "err": err}


def stcal_detector1(ramps: xr.Dataset, *, n_pix_grow_sat: int = 1, suppress_one_group: bool = True,
                    algorithm: str = "OLS_C", **jump_params):
    """The reference chain: saturation -> superbias -> jump -> ramp fit (``algorithm``; ``(rate, rateints)`` dicts)."""
    ramps = stcal_flag_saturation(ramps, n_pix_grow_sat)
    if "superbias" in ramps:
        ramps = stcal_subtract_superbias(ramps)
    ramps = stcal_detect_jumps(ramps, **jump_params)
    return stcal_fit_ramps(ramps, suppress_one_group, algorithm)
