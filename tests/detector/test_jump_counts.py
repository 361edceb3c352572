"""The number of primary jumps per integration (stcal's ``total_primary_crs``, by integration):
detect_jumps and detector1 against stcal 1.20 on every scheduler and chunk grid."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import daskcal
from daskcal.detector._jump import detect_jumps
from daskcal.detector._pipeline import detector1_steps
from daskcal.testing import simulate, stcal_detect_jumps, stcal_flag_saturation, stcal_subtract_superbias

from _reference import DNU, JUMP, SAT, calibrated_ramps, stcal_jumps  # tests/detector on sys.path

#: (y, x) chunks giving grids of 1x1, 2x1, 1x2 and ragged blocks on a 41 x 37 image
GRIDS = {"1x1": None, "2x1": (21, 37), "1x2": (41, 19), "ragged": (13, 11)}


@pytest.fixture(scope="module")
def three_ints():
    r, _ = calibrated_ramps((3, 6, 41, 37), seed=7, cr_probability=0.01)
    gdq = r["groupdq"].values.copy()
    gdq[1, 2, 5, 6] |= JUMP  # flags already there are counted, as stcal counts them
    gdq[2, 3, 7, 8] |= JUMP | DNU  # ... also on a group the clean-up clears
    gdq[0, 4, 9, 9] |= SAT
    r["groupdq"] = (r["groupdq"].dims, gdq)
    return r


@pytest.mark.parametrize("grid", list(GRIDS))
def test_counts_match_stcal(three_ints, grid, scheduler):
    _, _, total, per_int = stcal_jumps(three_ints, counts=True)
    src = three_ints.chunk(dict(zip(("y", "x"), GRIDS[grid], strict=True))) if GRIDS[grid] else three_ints
    out = detect_jumps(src)
    with scheduler():
        counts, gdq = dask.compute(out["n_primary_jumps"].data, out["groupdq"].data)
    assert out["n_primary_jumps"].dims == ("integration",)
    assert counts.dtype == np.int64 and counts.shape == (3,)
    np.testing.assert_array_equal(counts, per_int)
    assert counts.sum() == total > 50
    # neighbours are not counted: the group DQ has more flags than the primary count
    assert ((gdq & JUMP) != 0).sum() > total


@pytest.mark.parametrize("only_use_ints", [True, False])
def test_counts_with_sigma_clipping(only_use_ints):
    r, _ = calibrated_ramps((20, 4, 12, 11), seed=4, cr_probability=0.02)
    kw = {"minimum_sigclip_groups": 20 if only_use_ints else 50, "only_use_ints": only_use_ints,
          "rejection_threshold": 3.0}
    _, _, total, per_int = stcal_jumps(r, counts=True, **kw)
    out = detect_jumps(r.chunk({"y": 5, "x": 7}), **kw)
    counts = out["n_primary_jumps"].values
    np.testing.assert_array_equal(counts, per_int)
    assert counts.sum() == total > 0


def test_skipped_step_counts_the_input_flags(three_ints):
    r = three_ints.copy()
    gdq = r["groupdq"].values.copy()
    gdq[0, :4] |= DNU  # 2 usable groups in integration 0: stcal skips the step (and reports -99)
    r["groupdq"] = (r["groupdq"].dims, gdq)
    _, _, total, per_int = stcal_jumps(r, counts=True)
    assert total == -99 and per_int is None
    counts = detect_jumps(r)["n_primary_jumps"].values
    np.testing.assert_array_equal(counts, ((gdq & JUMP) != 0).sum(axis=(1, 2, 3)))


@pytest.fixture(scope="module")
def sim():
    return simulate((3, 7, 41, 37), seed=5, cr_probability=5e-3, max_source_rate=3000.0)


@pytest.fixture(scope="module")
def stcal_total(sim):
    return stcal_detect_jumps(stcal_subtract_superbias(stcal_flag_saturation(sim.ramps))).attrs["total_primary_crs"]


@pytest.mark.parametrize("grid", list(GRIDS))
def test_detector1_counts_match_stcal(sim, stcal_total, grid, scheduler):
    chunks = GRIDS[grid] or sim.ramps["data"].shape[2:]
    fused = daskcal.detector1(sim.ramps, chunks=chunks)
    steps = detector1_steps(sim.ramps, chunks=chunks)
    with scheduler():
        a, b = dask.compute(fused.n_primary_jumps, steps.n_primary_jumps)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3,) and a.dtype == np.int64
    assert a.sum() == stcal_total > 20


def test_fit_ramps_alone_has_no_count(three_ints):
    from daskcal.detector._ramp_fit import fit_ramps

    assert fit_ramps(three_ints).n_primary_jumps is None
    jumped = detect_jumps(three_ints)
    np.testing.assert_array_equal(fit_ramps(jumped).n_primary_jumps.compute(), jumped["n_primary_jumps"].values)


def test_counts_leave_out_the_flags_of_full_planes():
    # a group plane in which every pixel but one is DO_NOT_USE, and that one jumps: sigma clipping
    # flags it, the plane is then all jumps or DO_NOT_USE and loses the flag, which stcal does not count
    r, _ = calibrated_ramps((20, 4, 12, 11), seed=8, cr_probability=0.0)
    gdq = r["groupdq"].values.copy()
    gdq[0, 2] |= DNU
    gdq[0, 2, 3, 3] &= ~np.uint8(DNU)
    data = r["data"].values.copy()
    data[0, 2:, 3, 3] += 5000.0
    r["groupdq"] = (r["groupdq"].dims, gdq)
    r["data"] = (r["data"].dims, data)
    kw = {"minimum_sigclip_groups": 20, "flag_4_neighbors": False}
    gdq_stcal, _, total, per_int = stcal_jumps(r, counts=True, **kw)
    assert not gdq_stcal[0, 2, 3, 3] & JUMP  # cleared
    out = detect_jumps(r.chunk({"y": 5, "x": 4}), **kw)
    counts = out["n_primary_jumps"].values
    np.testing.assert_array_equal(counts, per_int)
    assert counts.sum() == total
    np.testing.assert_array_equal(out["groupdq"].values, gdq_stcal)


def test_primary_cosmic_rays_leaves_out_unusable_planes(sim):
    """JWST's PRIMECRS from stcal's count and the jump step's own count of planes (a plane DO_NOT_USE in every
    pixel, as MIRI's first group, is left out), and from daskcal's count and usable planes."""
    from daskcal.detector._common import pixel_chunked
    from daskcal.detector._fused import plane_usable
    from daskcal.detector._pipeline import primary_cosmic_rays

    r = sim.ramps.copy()
    gdq = r["groupdq"].values.copy()
    gdq[:, 0] |= DNU
    gdq[1, 6] |= DNU
    r["groupdq"] = (r["groupdq"].dims, gdq)
    jumped = stcal_detect_jumps(stcal_subtract_superbias(stcal_flag_saturation(r)))
    nints, ngroups, ny, nx = r["data"].shape
    flagged = sum(bool(np.all(jumped["groupdq"].values[i, g] & DNU)) for i in range(nints) for g in range(ngroups))
    assert flagged == 4
    want = 1000.0 * jumped.attrs["total_primary_crs"] / (r.attrs["group_time"] * (nints * ngroups - flagged - nints)
                                                         * ny * nx)
    result = daskcal.detector1(r, chunks=(13, 11))
    counts = result.n_primary_jumps.compute()
    got = primary_cosmic_rays(counts, plane_usable(pixel_chunked(r)), r.attrs["group_time"], ny * nx)
    assert got == pytest.approx(want, rel=1e-12) and want > 0
    # the usable planes detector1 found building its graph are those, and the planes jwst counts
    np.testing.assert_array_equal(result.usable_planes, plane_usable(pixel_chunked(r)))
    assert int(result.usable_planes.sum()) == nints * ngroups - flagged
    assert detector1_steps(r, chunks=(13, 11)).usable_planes is None  # not MIRI: the separate graphs find none
    assert primary_cosmic_rays([5], np.ones((1, 2), bool), 10.0, 100) is None  # 2 groups: jwst skips the step
