"""detect_jumps with many integrations or groups: stcal's sigma-clipping method and its choice.

stcal 1.20 (``detect_jumps_data`` on the whole detector, one process) is the oracle
of every case, on chunk grids 1x1, 2x1, 1x2 and ragged, on the synchronous, threaded
and distributed schedulers; the injected cosmic rays of the simulation are the truth.
"""

from __future__ import annotations

import logging

import dask
import numpy as np
import pytest
from _reference import BAD, DNU, JUMP, SAT, calibrated_ramps, stcal_jumps  # tests/detector on sys.path

import daskcal
from daskcal._simulate import simulate
from daskcal.detector._jump import JumpParameters, detect_jumps, jump_mode
from daskcal.detector._pipeline import detector1, detector1_steps, step_parameters
from daskcal.detector._saturation import flag_saturation

#: (y, x) chunks of a 40 x 50 detector: grids 1x1, 2x1, 1x2 and ragged 3x3
GRIDS = {"1x1": (40, 50), "2x1": (20, 50), "1x2": (40, 25), "ragged": (17, 23)}


def _ours(ramps, chunks=None, **kw):
    src = ramps.chunk({"y": chunks[0], "x": chunks[1]}) if chunks else ramps
    out = detect_jumps(src, **kw)
    return out["groupdq"].values, out["pixeldq"].values


def _assert_equal(got, expect, what="group DQ"):
    ndiff = int((got != expect).sum())
    assert ndiff == 0, f"{ndiff} {what} values differ from stcal"


def _assert_parity(ramps, chunks=None, keep_minimum_groups=False, **kw):
    expect_gdq, expect_pdq = stcal_jumps(ramps, keep_minimum_groups=keep_minimum_groups, **kw)
    gdq, pdq = _ours(ramps, chunks, **kw)
    np.testing.assert_array_equal(pdq, expect_pdq)
    _assert_equal(gdq, expect_gdq)
    return gdq


@pytest.fixture(scope="module")
def many_ints():
    """105 integrations of 5 groups (sigma clipping across integrations), with stcal's flags
    for both ``only_use_ints`` values."""
    r, truth = calibrated_ramps((105, 5, 40, 50), seed=4, cr_probability=2e-3)
    g = r["gain"].values.copy()
    g[3, 3] = np.nan  # NO_GAIN_VALUE | DO_NOT_USE in pixeldq
    r["gain"] = (("y", "x"), g)
    expect = {ints: stcal_jumps(r, only_use_ints=ints) for ints in (True, False)}
    return r, truth, expect


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("only_use_ints", [True, False])
def test_parity_many_integrations(many_ints, scheduler, grid, only_use_ints):
    r, _, expect = many_ints
    with scheduler():
        gdq, pdq = _ours(r, GRIDS[grid], only_use_ints=only_use_ints)
    _assert_equal(gdq, expect[only_use_ints][0])
    np.testing.assert_array_equal(pdq, expect[only_use_ints][1])
    assert ((gdq & JUMP) != 0).sum() > 500


def test_the_two_clipping_axes_differ(many_ints):
    _, _, expect = many_ints
    assert (expect[True][0] != expect[False][0]).any()


@pytest.mark.parametrize("chunks", [None, (17, 23)])
def test_parity_total_groups_select_sigma_clipping(chunks):
    # 30 x 5 = 150 groups >= minimum_sigclip_groups with only_use_ints=False: sigma clipping over
    # all differences of a pixel; with only_use_ints=True, 30 < 100 integrations: two-point
    r, _ = calibrated_ramps((30, 5, 40, 50), seed=8, cr_probability=2e-3)
    clipped = _assert_parity(r, chunks, only_use_ints=False)
    twopoint = _assert_parity(r, chunks, only_use_ints=True)
    assert (clipped != twopoint).any()
    assert jump_mode(np.ones((30, 5), bool), minimum_sigclip_groups=100, only_use_ints=False) == "sigclip"
    assert jump_mode(np.ones((30, 5), bool), minimum_sigclip_groups=100, only_use_ints=True) == "iterative"
    assert jump_mode(np.ones((30, 5), bool), minimum_sigclip_groups=30, only_use_ints=True) == "sigclip"


def test_parity_minimum_sigclip_groups():
    r, _ = calibrated_ramps((12, 6, 32, 30), seed=12, cr_probability=2e-3)
    _assert_parity(r, (15, 11), minimum_sigclip_groups=12)  # 12 integrations are enough
    _assert_parity(r, (15, 11), minimum_sigclip_groups=60, only_use_ints=False)  # 72 groups are


def test_parity_all_dnu_planes_decide_the_method():
    # only_use_ints=False counts the groups with a usable pixel: 21 x 5 = 105, minus 6 whole
    # DO_NOT_USE planes = 99 < 100, so two-point (iterative, as some integration has 4 usable
    # groups); with one such plane fewer, 100: sigma clipping
    r, _ = calibrated_ramps((21, 5, 24, 28), seed=13, cr_probability=2e-3)
    gdq = r["groupdq"].values.copy()
    for i in range(6):
        gdq[i, 4 - i % 2] |= DNU
    r6 = r.assign(groupdq=(r["groupdq"].dims, gdq))
    usable = (gdq & DNU == 0).any(axis=(2, 3))
    assert jump_mode(usable, only_use_ints=False) == "iterative"
    usable[0, 4] = True
    assert jump_mode(usable, only_use_ints=False) == "sigclip"
    a = _assert_parity(r6, (11, 13), only_use_ints=False)
    gdq[0, 4] = r["groupdq"].values[0, 4]
    r5 = r.assign(groupdq=(r["groupdq"].dims, gdq))
    b = _assert_parity(r5, (11, 13), only_use_ints=False)
    assert (a[1:] != b[1:]).any()


def test_parity_min_diffs_single_pass():
    r, _ = calibrated_ramps((3, 6, 32, 32), seed=14, cr_probability=3e-3)
    single = _assert_parity(r, (15, 20), min_diffs_single_pass=5)
    iterative = _assert_parity(r, (15, 20), min_diffs_single_pass=6)
    assert (single != iterative).any()
    assert jump_mode(np.ones((3, 6), bool), min_diffs_single_pass=5) == "single"


def test_parity_flagged_groups_nan_and_after_jump_flags():
    r, _ = calibrated_ramps((101, 4, 30, 36), seed=15, cr_probability=2e-3, max_source_rate=20000.0)
    rng = np.random.default_rng(1)
    gdq = r["groupdq"].values.copy()
    gdq[rng.random(gdq.shape) < 0.05] |= DNU
    gdq[:, :, 10, 10] |= SAT
    gdq[5, 2, 12, 12] |= JUMP | SAT  # an earlier JUMP on a flagged group is removed
    gdq[7, 2, 13, 13] |= JUMP  # an earlier JUMP stays
    data = r["data"].values.copy()
    data[rng.random(data.shape) < 0.01] = np.nan
    r = r.assign(groupdq=(r["groupdq"].dims, gdq), data=(r["data"].dims, data))
    assert (gdq & SAT).any()
    kw = {"after_jump_flag_dn1": 50.0, "after_jump_flag_time1": 25.0, "min_jump_to_flag_neighbors": 5.0}
    for only_use_ints in (True, False):
        out = _assert_parity(r, (13, 17), only_use_ints=only_use_ints, **kw)
        assert out[5, 2, 12, 12] & (JUMP | SAT) == SAT and out[7, 2, 13, 13] & JUMP
    _assert_parity(r, (13, 17), flag_4_neighbors=False)


def test_parity_a_whole_plane_of_jumps_is_cleared():
    # stcal clears the JUMP_DET of a group plane in which every pixel is a jump or DO_NOT_USE
    # (a common offset, not cosmic rays): a detector-wide test of the primary flags, here
    # across chunks. Pixels flagged JUMP alone lose it; those with other flags keep theirs.
    r, _ = calibrated_ramps((102, 4, 24, 30), seed=16, cr_probability=2e-3, n_sources=0, bad_pixel_fraction=0.0)
    data = r["data"].values.copy()
    data[40, 2:] += 5000.0  # every pixel jumps at group 2 of integration 40
    data[41, 3:] += 5000.0
    data[41, 3:, 0, 0] -= 5000.0  # ... and all but one at group 3 of integration 41
    gdq = r["groupdq"].values.copy()
    gdq[40, 2, 5:8, 5:8] |= DNU
    r = r.assign(groupdq=(r["groupdq"].dims, gdq), data=(r["data"].dims, data))
    for chunks in (None, (7, 11)):
        out = _assert_parity(r, chunks, flag_4_neighbors=False)
        assert not (out[40, 2] & JUMP).any()
        assert ((out[41, 3] & JUMP) != 0).sum() >= 24 * 30 - 2
    _assert_parity(r, (7, 11))


@pytest.mark.parametrize(
    ("shape", "minimum_groups", "dnu_plane"),
    [((1, 3, 32, 32), 4, None), ((2, 4, 32, 32), 4, (1, 0)), ((3, 3, 32, 32), 2, (0, 2)), ((1, 5, 32, 32), 5, None)],
    ids=["3<4", "3-usable<4", "2-usable>=2", "5>=5"],
)
def test_parity_minimum_groups(shape, minimum_groups, dnu_plane):
    r, _ = calibrated_ramps(shape, seed=sum(shape), cr_probability=5e-3)
    if dnu_plane is not None:
        gdq = r["groupdq"].values.copy()
        gdq[dnu_plane] |= DNU
        r = r.assign(groupdq=(r["groupdq"].dims, gdq))
    out = _assert_parity(r, (15, 20), keep_minimum_groups=True, minimum_groups=minimum_groups)
    ngroups = shape[1] - (dnu_plane is not None)
    assert (out & JUMP).any() == (ngroups >= minimum_groups)
    assert JumpParameters().minimum_groups == 3


def test_minimum_groups_warning(caplog):
    r, _ = calibrated_ramps((1, 4, 8, 8), seed=1)
    with caplog.at_level(logging.WARNING, logger="daskcal.detector._jump"):
        detect_jumps(r, minimum_groups=5)
    assert "needs 5 groups" in caplog.text


def test_truth_recall_like_stcal(many_ints):
    r, truth, expect = many_ints
    t = truth["jumps"].values
    usable = (r["groupdq"].values & BAD) == 0
    t = t & usable & np.roll(usable, 1, axis=1)
    assert t.sum() > 500
    for only_use_ints in (True, False):
        ours = _ours(r, (17, 23), only_use_ints=only_use_ints)[0] & JUMP != 0
        theirs = expect[only_use_ints][0] & JUMP != 0
        recall = (ours & t).sum() / t.sum()
        assert recall == (theirs & t).sum() / t.sum()
        assert recall > 0.8, recall


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("minimum_groups", 0),
        ("minimum_groups", 3.0),
        ("minimum_sigclip_groups", -1),
        ("minimum_sigclip_groups", True),
        ("min_diffs_single_pass", "10"),
        ("only_use_ints", 1),
    ],
)
def test_bad_sigclip_parameters(name, value):
    with pytest.raises(ValueError, match=name):
        JumpParameters(**{name: value})


def test_defaults_are_documented_ones():
    p = JumpParameters()
    assert (p.minimum_groups, p.minimum_sigclip_groups, p.only_use_ints, p.min_diffs_single_pass) == (3, 100, True, 10)
    jump = step_parameters()["jump"]
    assert {k: jump[k] for k in ("minimum_groups", "minimum_sigclip_groups", "only_use_ints",
                                 "min_diffs_single_pass")} == {"minimum_groups": 3, "minimum_sigclip_groups": 100,
                                                                "only_use_ints": True, "min_diffs_single_pass": 10}


def test_detector1_with_sigma_clipping_equals_its_steps(caplog):
    sim = simulate((101, 4, 24, 20), seed=5, cr_probability=2e-3)
    with caplog.at_level(logging.INFO, logger="daskcal.detector._pipeline"):
        fused = detector1(sim.ramps, chunks=(11, 13))
    assert "separate graphs" in caplog.text
    steps = detector1_steps(sim.ramps, chunks=(11, 13))
    for name in ("rate", "rateints"):
        a, b = getattr(fused, name).compute(), getattr(steps, name).compute()
        for v in b.data_vars:
            np.testing.assert_array_equal(a[v].values, b[v].values, err_msg=f"{name}.{v}")
    assert daskcal.detect_jumps is detect_jumps


def test_command_line_and_recipe_options():
    from pathlib import Path

    from daskcal.cli._main import build_parser
    from daskcal.cli._run import load_recipe

    args = build_parser().parse_args(["detector1", "in.zarr", "out", "--minimum-groups", "4", "--minimum-sigclip-groups",
                                      "20", "--only-use-ints", "false", "--min-diffs-single-pass", "6"])
    assert (args.minimum_groups, args.minimum_sigclip_groups, args.only_use_ints, args.min_diffs_single_pass) == (
        4, 20, False, 6)
    recipe = load_recipe(Path(daskcal.__file__).parent / "graphs" / "detector1.toml")
    assert recipe["steps"]["jump"]["only_use_ints"] is True and recipe["steps"]["jump"]["minimum_sigclip_groups"] == 100


def test_jump_block_on_the_whole_detector_in_place():
    # the block alone judges whole jump planes on its own pixels: exact for the whole detector
    from daskcal.detector._jump import jump_block, jump_block_arguments

    r, _ = calibrated_ramps((100, 4, 12, 14), seed=17, n_sources=0, bad_pixel_fraction=0.0)
    data = r["data"].values.copy()
    data[30, 2:] += 3000.0
    r = r.assign(data=(r["data"].dims, data))
    kw = jump_block_arguments(JumpParameters(after_jump_flag_dn1=10.0, after_jump_flag_time1=20.0), r)
    args = (r["data"].values, r["groupdq"].values, r["gain"].values, r["readnoise"].values, np.ones((100, 4), bool))
    copied = jump_block(*args, **kw)
    gdq = args[1].copy()
    in_place = jump_block(args[0], gdq, *args[2:], **kw, in_place=True)
    assert np.shares_memory(in_place, gdq)
    np.testing.assert_array_equal(in_place, copied)
    kw = {"after_jump_flag_dn1": 10.0, "after_jump_flag_time1": 20.0}
    _assert_equal(copied, stcal_jumps(r, **kw)[0])
    assert not (copied[30, 2] & JUMP).any() and (copied & JUMP).any()
