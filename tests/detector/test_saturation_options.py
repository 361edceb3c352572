"""flag_saturation's stcal options (atod_limit, sat_dq, 4-D thresholds, zframe, read_pattern, bias):
flags and zero frames equal to stcal 1.20's on every chunk grid and scheduler; bad input named."""

from __future__ import annotations

import numpy as np
import pytest

from daskcal._simulate import simulate
from daskcal.detector._saturation import SaturationParameters, flag_saturation
from daskcal.dq import DQ, dq_dict

SAT, DNU, NSC = int(DQ.SATURATED), int(DQ.DO_NOT_USE), int(DQ.NO_SAT_CHECK)
NINTS, NGROUPS, NY, NX = 3, 6, 26, 22
# frames 1-based, 4 frames averaged per group, 1 dropped between groups
PATTERN = [[g * 5 + f + 1 for f in range(4)] for g in range(NGROUPS)]
CHUNKS = {"1x1": None, "2x1": (13, 22), "1x2": (26, 11), "ragged": (9, 5)}


@pytest.fixture(scope="module")
def raw():
    """Three integrations with saturating sources, NaN thresholds, NO_SAT_CHECK pixels, a saturation DQ
    of its own, 0-DN groups, groups saturating within their frames, and a zero frame."""
    r = simulate((NINTS, NGROUPS, NY, NX), seed=3, max_source_rate=20000.0, nframes=4, groupgap=1).ramps
    rng = np.random.default_rng(7)
    data = r["data"].values.copy()
    thr = r["saturation"].values.copy()
    thr[5, 7] = np.nan
    satdq = np.zeros((NY, NX), np.uint32)
    satdq[10, 10] = NSC
    satdq[3, 4] = int(DQ.DEAD)  # a reference bad value: copied into pixeldq
    pdq = r["pixeldq"].values.copy()
    pdq[20, 20] |= NSC  # NO_SAT_CHECK in the pixel DQ only: not a saturation-DQ flag
    data[0, 2:, 10, 10] = 65535.5  # between atod_limit 65535 and its +1
    data[1, 3:, 10, 10] = 66000.0
    data[0, 3, 15, 15] = 0.0  # A/D floor
    data[2, 1, 0, 0] = -3.0
    # groups rising steeply: the average of group g sits between thr * dilution and thr
    for (i, y, x) in [(0, 12, 3), (1, 2, 18), (2, 24, 1), (0, 0, 21)]:
        t = thr[y, x]
        data[i, :, y, x] = np.linspace(0.3, 1.2, NGROUPS) * t
    # group 2 saturating in its last frame: flat group 1, a jump in group 2, saturated group 3
    for (i, y, x) in [(0, 17, 8), (1, 6, 14), (2, 25, 21)]:
        t, b = thr[y, x], r["superbias"].values[y, x]
        data[i, :, y, x] = [b + 500.0, b + 500.0 + 0.4 * (t - b), t + 10, t + 20, t + 30, t + 40]
    data[1, 2, 10, 10] = 60000.0  # unchecked: above 65536 * dilution (0.89) but not scaled (before a SATURATED group)
    # a hidden-saturation mark whose next group is SATURATED only by growth from a pixel n further on,
    # across the x = 11 chunk edge of the 1x2 grid: seen only with a halo of 2n (n = 1 in row 4, 2 in row 20)
    for y, q in ((4, 12), (20, 13)):
        data[0, :, y, 11] = np.array([0.3, 0.4, 0.95, 0.97, 0.98, 0.99]) * thr[y, 11]
        data[0, :, y, q] = np.array([0.3, 0.5, 0.55, 1.1, 1.2, 1.3]) * thr[y, q]
    zf = (data[:, 0] - rng.uniform(50, 200, (NINTS, NY, NX))).astype(np.float32)
    zf[0, 8, 8] = thr[8, 8] + 1.0
    zf[1, 0, 5] = thr[0, 5] + 5.0  # at the edge
    zf[2, 14, 14] = -1.0
    zf[1, 10, 10] = 65535.5  # unchecked pixel: below atod_limit + 1
    return r.assign(
        data=(r["data"].dims, data.astype(np.float32)),
        saturation=(("y", "x"), thr),
        pixeldq=(("y", "x"), pdq),
        saturation_dq=(("y", "x"), satdq),
        zeroframe=(("integration", "y", "x"), zf),
    ).assign_attrs(read_pattern=PATTERN)


def stcal_flags(ramps, n=1, atod_limit=65535, read_pattern=None, bias=True, zframe=True, sat_dq=True):
    """stcal 1.20's flag_saturated_pixels on copies, as JWST's saturation step calls it."""
    from stcal.saturation.saturation import flag_saturated_pixels

    pdq = ramps["pixeldq"].values.copy()
    sdq = ramps["saturation_dq"].values.copy() if sat_dq else pdq.copy()
    if ramps["saturation"].ndim == 4 and sdq.ndim == 2:
        sdq = np.broadcast_to(sdq, ramps["saturation"].shape).copy()
    gdq, pdq, zf = flag_saturated_pixels(
        ramps["data"].values.copy(), ramps["groupdq"].values.copy(), pdq, ramps["saturation"].values.copy(),
        sdq, atod_limit, dq_dict(), n_pix_grow_sat=n,
        zframe=ramps["zeroframe"].values.copy() if zframe else None,
        read_pattern=read_pattern, bias=ramps["superbias"].values.copy() if bias else None)
    if pdq.ndim == 4:
        pdq = np.bitwise_or.reduce(pdq, axis=(0, 1))
    return gdq, pdq, zf


def ours(ramps, chunks, **kw):
    r = ramps.chunk({"y": chunks[0], "x": chunks[1]}) if chunks else ramps
    out = flag_saturation(r, **kw)
    zf = out["zeroframe"].values if "zeroframe" in out else None
    return out["groupdq"].values, out["pixeldq"].values, zf


def assert_same(got, expect):
    np.testing.assert_array_equal(got[0], expect[0], err_msg="groupdq")
    np.testing.assert_array_equal(got[1], expect[1], err_msg="pixeldq")
    if expect[2] is not None:
        np.testing.assert_array_equal(got[2], expect[2], err_msg="zeroframe")


@pytest.mark.parametrize("grid", list(CHUNKS))
def test_all_options_on_every_grid_and_scheduler(raw, grid, scheduler):
    """Read pattern + superbias, saturation DQ, zero frame, n=1 and 2: stcal's flags, whatever the chunks."""
    for n in (1, 2):
        expect = stcal_flags(raw, n, read_pattern=PATTERN)
        with scheduler():
            got = ours(raw, CHUNKS[grid], n_pix_grow_sat=n)
        assert_same(got, expect)
    hidden = (expect[0] & DNU) & ~(stcal_flags(raw, 2)[0] & DNU)
    assert hidden.any() and (hidden[:, 1] != 0).any()  # both read-pattern checks flagged groups here


@pytest.mark.parametrize("n", [0, 1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_read_pattern_with_and_without_bias(raw, n, bias):
    r = raw if bias else raw.drop_vars("superbias")
    assert_same(ours(r, (9, 5), n_pix_grow_sat=n), stcal_flags(raw, n, read_pattern=PATTERN, bias=bias))


def bias_per_group(raw):
    """A per-group superbias (stcal's 4-D ``bias``): the (y, x) one with an offset per integration and group;
    integration 1's first-group bias at (6, 14) so low (0 DN) that group 1 extrapolated to group 3 passes the
    threshold (no group-2 flag there), integration 0's later groups at (17, 8) the same (no effect: only the
    first group's bias counts)."""
    rng = np.random.default_rng(11)
    b2 = raw["superbias"].values
    b4 = (b2 + rng.uniform(-20.0, 20.0, (NINTS, NGROUPS, 1, 1))).astype(np.float32)
    b4[1, 0, 6, 14] = 0.0
    b4[0, 1:, 17, 8] = 0.0
    return raw.assign(superbias=(("integration", "group", "y", "x"), b4))


@pytest.mark.parametrize("grid", ["1x2", "ragged"])
def test_per_group_superbias(raw, grid):
    """A 4-D superbias: each integration's group-2 check uses the bias of its first group, as stcal 1.20."""
    r = bias_per_group(raw)
    for n in (1, 2):
        expect = stcal_flags(r, n, read_pattern=PATTERN)
        assert_same(ours(r, CHUNKS[grid], n_pix_grow_sat=n), expect)
    flat = stcal_flags(raw, 2, read_pattern=PATTERN)[0]
    assert flat[1, 1, 6, 14] & DNU and not expect[0][1, 1, 6, 14] & DNU  # the first group's bias counted
    assert expect[0][0, 1, 17, 8] & DNU and expect[0][2, 1, 25, 21] & DNU  # the later groups' did not


def test_detector1_with_per_group_superbias(raw):
    """detector1 subtracts a 4-D superbias group by group: equal in every group, the (y, x) superbias's products."""
    from daskcal import detector1, subtract_superbias

    r = raw.drop_vars("saturation_dq")
    b4 = np.broadcast_to(r["superbias"].values, (NINTS, NGROUPS, NY, NX)).astype(np.float32)
    r4 = r.assign(superbias=(("integration", "group", "y", "x"), b4))
    got, want = detector1(r4.chunk({"y": 9, "x": 5})).rateints.compute(), detector1(r).rateints.compute()
    for v in got.data_vars:
        np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)
    r4 = bias_per_group(r)
    np.testing.assert_array_equal(subtract_superbias(r4)["data"].values,
                                  r["data"].values - r4["superbias"].values)


def frames_cube(nframes, groupgap, shape=(2, 6, 15, 13), seed=5):
    """Simulated ramps with ``nframes`` and ``groupgap`` attributes and no read_pattern attribute, and bright
    pixels whose frames (numbered as read, from the reset) saturate in group 2: at its third frame in
    integration 0 at (3, 2), its second in integration 1 at (0, 12) (an edge) and (14, 0) (its only frame
    when nframes = 1)."""
    r = simulate(shape, seed=seed, max_source_rate=2000.0, nframes=nframes, groupgap=groupgap).ramps
    data, thr, bias = r["data"].values.copy(), r["saturation"].values, r["superbias"].values
    step = nframes + groupgap
    frames = np.array([[g * step + f + 1 for f in range(nframes)] for g in range(shape[1])], dtype=np.float64)
    for i, y, x, k in ((0, 3, 2, 3), (1, 0, 12, 2), (1, 14, 0, 2)):
        at = step + min(k, nframes)
        well = thr[y, x] - bias[y, x] + 50.0  # the charge stops a little above the threshold
        charge = np.minimum(frames * well / at, well)
        data[i, :, y, x] = bias[y, x] + charge.mean(axis=1)
    assert "read_pattern" not in r.attrs
    return r.assign(data=(r["data"].dims, data.astype(np.float32)))


@pytest.mark.parametrize("grid", [(5, 7), (4, 13)])
def test_read_pattern_from_nframes_as_jwst_numbers_the_frames(grid):
    """No read_pattern attribute: with use_readpatt (the default) the frames of nframes = 4 are the pattern,
    numbered as jwst 3.0's saturation step numbers them (groupgap = 1 not counted); stcal's flags with it."""
    from daskcal.detector._saturation import frames_read_pattern

    r = frames_cube(4, 1)
    pattern = [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16], [17, 18, 19, 20], [21, 22, 23, 24]]
    assert frames_read_pattern(6, 4) == tuple(tuple(float(f) for f in g) for g in pattern)
    as_read = [[1, 2, 3, 4], [6, 7, 8, 9], [11, 12, 13, 14], [16, 17, 18, 19], [21, 22, 23, 24], [26, 27, 28, 29]]
    assert_same(ours(r.assign_attrs(read_pattern=as_read), grid),
                stcal_flags(r, 1, read_pattern=as_read, zframe=False, sat_dq=False))
    for n in (0, 1):
        expect = stcal_flags(r, n, read_pattern=pattern, zframe=False, sat_dq=False)
        assert_same(ours(r, grid, n_pix_grow_sat=n), expect)
    gdq = expect[0]
    # the bright pixels: group 2 (saturated in its last frames) DO_NOT_USE, group 3 on SATURATED
    for i, y, x in ((0, 3, 2), (1, 0, 12), (1, 14, 0)):
        assert gdq[i, 1, y, x] & DNU and not gdq[i, 1, y, x] & SAT and (gdq[i, 2:, y, x] & SAT).all()
    assert not (stcal_flags(r, 1, zframe=False, sat_dq=False)[0][:, 1] & DNU).any()  # none without the pattern
    # an explicit read_pattern, or the ramps' attribute, wins over nframes
    single = [[g + 1.0] for g in range(6)]
    expect = stcal_flags(r, 1, read_pattern=single, zframe=False, sat_dq=False)
    assert_same(ours(r, grid, read_pattern=single), expect)
    assert_same(ours(r.assign_attrs(read_pattern=single), grid), expect)
    assert not (expect[0][:, 1] & DNU).any()


def test_one_frame_per_group_changes_nothing(caplog):
    """nframes = 1: the pattern of nframes flags what no pattern does (stcal with and without it agree, with
    the frames numbered with or without the dropped ones), so none is used and detector1 keeps its fused graph."""
    import logging

    from daskcal import detector1
    from daskcal.detector._pipeline import detector1_steps

    for groupgap in (0, 2):
        r = frames_cube(1, groupgap, seed=6 + groupgap)
        pattern = [[g * (1 + groupgap) + 1.0] for g in range(6)]
        with_rp = stcal_flags(r, 1, read_pattern=pattern, zframe=False, sat_dq=False)
        without = stcal_flags(r, 1, zframe=False, sat_dq=False)
        assert_same(with_rp, without)
        assert (without[0] & SAT).any()
        assert_same(ours(r, (5, 7)), without)
        assert_same(ours(r, (5, 7), read_pattern=pattern), without)
    with caplog.at_level(logging.INFO, logger="daskcal"):
        fused = detector1(r.chunk({"y": 5, "x": 7})).rateints.compute()
    assert "separate graphs" not in caplog.text
    steps = detector1_steps(r.chunk({"y": 5, "x": 7}), use_readpatt=False).rateints.compute()
    for v in fused.data_vars:
        np.testing.assert_array_equal(fused[v].values, steps[v].values, err_msg=v)


def test_detector1_builds_the_read_pattern():
    """detector1's saturation step takes the pattern of nframes (use_readpatt=True by default, jwst's
    numbering): its rates are those of detector1 given stcal's flags with that pattern."""
    from daskcal import detector1

    r = frames_cube(4, 1)
    pattern = [[g * 4 + f + 1 for f in range(4)] for g in range(6)]
    kw = {"n_pix_grow_sat": 0, "rejection_threshold": 1e6, "three_group_rejection_threshold": 1e6,
          "four_group_rejection_threshold": 1e6}
    gdq = stcal_flags(r, 0, read_pattern=pattern, zframe=False, sat_dq=False)[0]
    got = detector1(r.chunk({"y": 5, "x": 7}), **kw).rateints.compute()
    want = detector1(r.assign(groupdq=(r["groupdq"].dims, gdq)), use_readpatt=False, **kw).rateints.compute()
    ignored = detector1(r, use_readpatt=False, **kw).rateints.compute()
    for v in got.data_vars:
        np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)
    assert got["data"].values[0, 3, 2] != ignored["data"].values[0, 3, 2]


@pytest.mark.parametrize("grow", [1, 2])
def test_detector1_runs_a_read_pattern_fused_as_its_steps(grow, caplog):
    """A read pattern keeps detector1's fused graph (one halo of 2 * n_pix_grow_sat + 1): its rates and DQ on
    odd chunks equal those of its steps run one after another (whose saturation is stcal's, above), and the
    read-pattern checks do flag here."""
    import logging

    from daskcal import detector1
    from daskcal.detector._pipeline import detector1_steps

    r = frames_cube(4, 1)
    for grid in [(5, 7), (4, 13)]:
        with caplog.at_level(logging.INFO, logger="daskcal"):
            fused = detector1(r.chunk({"y": grid[0], "x": grid[1]}), n_pix_grow_sat=grow).rateints.compute()
        assert "separate graphs" not in caplog.text
        steps = detector1_steps(r.chunk({"y": grid[0], "x": grid[1]}), n_pix_grow_sat=grow).rateints.compute()
        for v in fused.data_vars:
            np.testing.assert_array_equal(fused[v].values, steps[v].values, err_msg=f"{v} {grid}")
    plain = detector1_steps(r, n_pix_grow_sat=grow, use_readpatt=False).rateints.compute()
    assert (fused["dq"].values != plain["dq"].values).any()  # the pattern's flags change the products


def test_group2_extrapolation_in_float64(raw):
    # stcal extrapolates group 1 in float64 (numpy float64 mean of the frames); in float32 this pixel's
    # extrapolation rounds up to its threshold and group 2 would not be flagged
    r = raw.drop_vars("superbias")
    thr, data = r["saturation"].values.copy(), r["data"].values.copy()
    thr[22, 2] = np.float32(40819.47)
    data[1, :, 22, 2] = [np.float32(7289.1904), 16300.0, 40830.0, 40840.0, 40850.0, 40860.0]
    r = r.assign(saturation=(("y", "x"), thr), data=(r["data"].dims, data))
    expect = stcal_flags(r, read_pattern=PATTERN, bias=False)
    assert expect[0][1, 1, 22, 2] & DNU
    assert_same(ours(r, (9, 5)), expect)


def test_read_pattern_argument_and_use_readpatt(raw):
    plain = raw.drop_attrs() if hasattr(raw, "drop_attrs") else raw.assign_attrs(read_pattern=None)
    plain.attrs.update({k: raw.attrs[k] for k in ("group_time", "frame_time", "nframes", "groupgap")})
    plain.attrs.pop("read_pattern", None)
    with_rp = stcal_flags(raw, read_pattern=PATTERN)
    assert_same(ours(plain, (13, 11), read_pattern=PATTERN), with_rp)
    jwst_pattern = [[g * 4 + f + 1 for f in range(4)] for g in range(NGROUPS)]  # nframes = 4, gaps not counted
    assert_same(ours(plain, (13, 11)), stcal_flags(raw, read_pattern=jwst_pattern))
    without = stcal_flags(raw)
    assert_same(ours(plain, (13, 11), use_readpatt=False), without)
    assert_same(ours(raw, (13, 11), use_readpatt=False), without)
    assert (with_rp[0] != without[0]).any()
    # one frame per group: the dilution is 1, only the group-2 check remains
    single = [[g + 1] for g in range(NGROUPS)]
    assert_same(ours(plain, (9, 5), read_pattern=single), stcal_flags(raw, read_pattern=single))
    # frame times (s) from 0, uneven groups
    times = [[0.0, 10.737, 21.474][: 1 + (g + 1) % 3] for g in range(NGROUPS)]
    times = [[t + 32.2 * g for t in frames] for g, frames in enumerate(times)]
    assert_same(ours(plain, (9, 5), read_pattern=times), stcal_flags(raw, read_pattern=times))


@pytest.mark.parametrize("atod", [65535, 60000.0, 70000])
def test_atod_limit(raw, atod):
    assert_same(ours(raw, (9, 5), atod_limit=atod, use_readpatt=False), stcal_flags(raw, atod_limit=atod))


def test_atod_limit_only_sets_unchecked_thresholds(raw):
    gdq = ours(raw, None, atod_limit=65535, use_readpatt=False, n_pix_grow_sat=0)[0]
    assert not gdq[0, :, 10, 10].any()  # 65535.5 < 65536
    assert (gdq[1, 3:, 10, 10] == SAT).all() and not gdq[1, :3, 10, 10].any()
    gdq = ours(raw, None, atod_limit=65534, use_readpatt=False, n_pix_grow_sat=0)[0]
    assert (gdq[0, 2:, 10, 10] == SAT).all()
    # a checked pixel whose threshold is above the A/D limit is not flagged at the limit (stcal 1.20)
    thr, data = raw["saturation"].values.copy(), raw["data"].values.copy()
    thr[2, 2], data[0, 1:, 2, 2] = 70000.0, 66000.0
    r = raw.assign(saturation=(("y", "x"), thr), data=(raw["data"].dims, data))
    got = ours(r, (9, 5), use_readpatt=False)
    assert_same(got, stcal_flags(r))
    assert not got[0][0, :, 2, 2].any()


def test_saturation_dq_is_the_reference_dq(raw):
    got = ours(raw, (13, 11), use_readpatt=False)
    assert_same(got, stcal_flags(raw))
    assert got[1][3, 4] & int(DQ.DEAD) and got[1][5, 7] & NSC and got[1][10, 10] & NSC
    # pixeldq's own NO_SAT_CHECK does not stop the check once a saturation DQ is given ...
    assert ours(raw, None, n_pix_grow_sat=0)[0][:, :, 20, 20].any() == stcal_flags(raw, 0)[0][:, :, 20, 20].any()
    # ... and without one, pixeldq is the reference DQ (as before)
    nodq = raw.drop_vars("saturation_dq")
    assert_same(ours(nodq, (9, 5), use_readpatt=False), stcal_flags(raw, sat_dq=False))


@pytest.mark.parametrize("grid", ["1x1", "ragged"])
def test_per_group_thresholds(raw, grid):
    rng = np.random.default_rng(2)
    thr4 = np.broadcast_to(raw["saturation"].values, (NINTS, NGROUPS, NY, NX)) * rng.uniform(
        0.9, 1.05, (NINTS, NGROUPS, 1, 1))
    thr4 = thr4.astype(np.float32)
    thr4[1, 2, 4, 4] = np.nan
    sdq4 = np.broadcast_to(raw["saturation_dq"].values, thr4.shape).copy()
    sdq4[2, :, 9, 9] |= NSC
    r = raw.assign(saturation=(("integration", "group", "y", "x"), thr4),
                   saturation_dq=(("integration", "group", "y", "x"), sdq4))
    assert_same(ours(r, CHUNKS[grid]), stcal_flags(r, read_pattern=PATTERN))
    # a (y, x) saturation DQ goes with 4-D thresholds as stcal's broadcast copy of it
    r2 = r.assign(saturation_dq=raw["saturation_dq"])
    assert_same(ours(r2, CHUNKS[grid]), stcal_flags(r2, read_pattern=PATTERN))


def test_zeroframe(raw):
    got = ours(raw, (9, 5), use_readpatt=False)
    expect = stcal_flags(raw)
    assert_same(got, expect)
    zf = got[2]
    assert zf[0, 8, 8] == 0 and zf[0, 7, 9] == 0 and zf[0, 10, 10] != 0  # grown box
    assert zf[2, 14, 14] == 0 and zf[2, 13, 13] != 0 and zf[1, 10, 10] != 0  # floor: not grown
    assert raw["zeroframe"].values[0, 8, 8] != 0  # input untouched


def test_pixeldq_dtype_rule_kept(raw):
    r = raw.drop_vars("saturation_dq").assign(pixeldq=raw["pixeldq"].astype(np.uint16) & 0xFF)
    out = flag_saturation(r)
    assert out["pixeldq"].dtype == np.uint32 and out["pixeldq"].values[5, 7] & NSC


def bad_cases(raw):
    return [
        ({"atod_limit": np.nan}, ValueError, "atod_limit"),
        ({"atod_limit": "65535"}, ValueError, "atod_limit"),
        ({"use_readpatt": "yes"}, TypeError, "use_readpatt"),
        ({"read_pattern": [[1, 2]] * (NGROUPS - 1)}, ValueError, r"read_pattern must have one list"),
        ({"read_pattern": [[1, 2], [], *[[3]] * (NGROUPS - 2)]}, ValueError, r"read_pattern\[1\]"),
        ({"read_pattern": [[0]] * NGROUPS}, ValueError, r"read_pattern\[0\]"),
        ({"read_pattern": [[1, 2], [3, np.nan], *[[5]] * (NGROUPS - 2)]}, ValueError, r"read_pattern\[1\]"),
        ({"read_pattern": "1,2"}, ValueError, "read_pattern"),
        ({"read_pattern": PATTERN, "use_readpatt": False}, ValueError, "use_readpatt"),
    ]


def test_bad_parameters(raw):
    for kw, err, match in bad_cases(raw):
        with pytest.raises(err, match=match) as info:
            flag_saturation(raw, **kw)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(("change", "match"), [
    (lambda r: r.assign(zeroframe=r["zeroframe"].isel(integration=0)), "zeroframe must have dimensions"),
    (lambda r: r.assign(zeroframe=r["zeroframe"].astype(np.int32)), "zeroframe must have a floating"),
    (lambda r: r.assign(saturation_dq=r["saturation_dq"].astype(np.float32)), "saturation_dq must have an? integer"),
    (lambda r: r.assign(saturation_dq=(("integration", "group", "y", "x"),
                                       np.zeros((NINTS, NGROUPS, NY, NX), np.uint32))),
     "saturation_dq must have dimensions"),
    (lambda r: r.assign(saturation=(("integration", "y", "x"), np.ones((NINTS, NY, NX), np.float32))),
     "saturation must have dimensions"),
    (lambda r: r.assign(superbias=(("group", "integration", "y", "x"), np.zeros((NGROUPS, NINTS, NY, NX),
                                                                               np.float32))),
     (r"superbias must have dimensions \('y', 'x'\) \(26, 22\) or \('integration', 'group', 'y', 'x'\) "
      r"\(3, 6, 26, 22\); got \('group', 'integration', 'y', 'x'\) \(6, 3, 26, 22\)")),
    (lambda r: r.assign(superbias=r["superbias"].expand_dims(integration=NINTS)), "superbias must have dimensions"),
    (lambda r: r.assign_attrs(read_pattern=[[1]] * 2), r"ramps.attrs\['read_pattern'\] must have one list"),
    (lambda r: r.assign_attrs(read_pattern=5), r"ramps.attrs\['read_pattern'\]"),
])
def test_bad_variables(raw, change, match):
    with pytest.raises((ValueError, TypeError), match=match) as info:
        flag_saturation(change(raw))
    assert "\n" not in str(info.value)


def test_parameters_dataclass():
    p = SaturationParameters(read_pattern=PATTERN)
    assert p.read_pattern[1] == (6.0, 7.0, 8.0, 9.0) and p.atod_limit == 65535.0 and p.use_readpatt


def test_detector1_runs_the_options(raw):
    """detector1 reaches every option: the fused graph takes atod_limit; a read pattern (or saturation_dq,
    or per-group thresholds) makes it run the steps one after another with stcal's saturation flags."""
    from daskcal import detector1
    from daskcal.detector._pipeline import detector1_steps

    plain = raw.drop_vars(["saturation_dq", "zeroframe"])
    plain.attrs.pop("read_pattern")
    data = plain["data"].values.copy()
    data[:, 3:, 20, 20] = 62000.0  # NO_SAT_CHECK in pixeldq: saturated only with atod_limit < 61999
    plain = plain.assign(data=(plain["data"].dims, data)).chunk({"y": 13, "x": 11})
    fused = detector1(plain, atod_limit=60000, use_readpatt=False).rateints.compute()
    steps = detector1_steps(plain, atod_limit=60000, use_readpatt=False).rateints.compute()
    default = detector1(plain, use_readpatt=False).rateints.compute()
    for v in fused.data_vars:
        np.testing.assert_array_equal(fused[v].values, steps[v].values, err_msg=v)
    assert fused["dq"].values[0, 20, 20] & SAT and not default["dq"].values[0, 20, 20] & SAT

    # with the read pattern, detector1's saturation flags are stcal's (seen through the rates: the same
    # rates as detector1 given stcal's flags and no read pattern; growth 0 so flagging again adds nothing)
    # (no jumps found, so that the steep rises of the read-pattern cases are not flagged anyway)
    kw = {"n_pix_grow_sat": 0, "rejection_threshold": 1e6, "three_group_rejection_threshold": 1e6,
          "four_group_rejection_threshold": 1e6}
    r = raw.drop_vars("saturation_dq")  # the read pattern alone decides how detector1 runs
    gdq = stcal_flags(raw, 0, read_pattern=PATTERN, sat_dq=False)[0]
    got = detector1(r.chunk({"y": 9, "x": 5}), **kw).rateints.compute()
    want = detector1(r.assign(groupdq=(r["groupdq"].dims, gdq)), use_readpatt=False, **kw).rateints.compute()
    ignored = detector1(r, use_readpatt=False, **kw).rateints.compute()
    for v in got.data_vars:
        np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)
    assert not np.array_equal(got["data"].values, ignored["data"].values, equal_nan=True)


def test_command_line_and_store_round_trip(raw, tmp_path):
    """saturation_dq, zeroframe and attrs read_pattern survive a Zarr store; --atod-limit and
    --use-readpatt reach the step from the command line."""
    import xarray as xr

    from daskcal import detector1, open_ramps, save
    from daskcal.cli._main import main

    store = tmp_path / "ramps.zarr"
    save(raw.chunk({"y": 13, "x": 11}), store)
    back = open_ramps(store)
    assert back.attrs["read_pattern"] == PATTERN and set(back.data_vars) >= {"saturation_dq", "zeroframe"}
    assert_same(ours(back, None), stcal_flags(raw, read_pattern=PATTERN))
    out = tmp_path / "out"
    assert main(["detector1", str(store), str(out), "--workers", "1", "--no-progress", "--atod-limit", "60000",
                 "--use-readpatt", "false"]) == 0
    want = detector1(back, atod_limit=60000, use_readpatt=False).rate.compute()
    default = detector1(back).rate.compute()
    assert not np.array_equal(want["dq"].values, default["dq"].values)
    with xr.open_zarr(out / "rate.zarr", consolidated=False) as got:
        for v in want.data_vars:
            np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)


def test_detector1_fused_graph_takes_the_saturation_dq(raw):
    """A (y, x) saturation_dq runs in the fused graph: the same products as the steps one after another."""
    from daskcal import detector1
    from daskcal.detector._pipeline import detector1_steps

    data = raw["data"].values.copy()
    data[:, 3:, 20, 20] = 62000.0  # above its threshold; NO_SAT_CHECK in pixeldq only
    r = raw.drop_vars("zeroframe").assign(data=(raw["data"].dims, data)).chunk({"y": 9, "x": 5})
    r.attrs.pop("read_pattern")
    fused = detector1(r, use_readpatt=False).rateints.compute()
    steps = detector1_steps(r, use_readpatt=False).rateints.compute()
    for v in fused.data_vars:
        np.testing.assert_array_equal(fused[v].values, steps[v].values, err_msg=v)
    assert fused["dq"].values[0, 3, 4] & int(DQ.DEAD)  # a flag of the saturation reference's DQ
    assert (fused["dq"].values[:, 20, 20] & SAT).any()  # pixeldq's NO_SAT_CHECK is not the reference's


def test_detector1_with_per_group_thresholds(raw):
    """4-D thresholds equal in every group give detector1 the products of the (y, x) thresholds."""
    from daskcal import detector1

    thr4 = np.broadcast_to(raw["saturation"].values, (NINTS, NGROUPS, NY, NX)).astype(np.float32)
    r4 = raw.assign(saturation=(("integration", "group", "y", "x"), thr4))
    got, want = detector1(r4).rateints.compute(), detector1(raw).rateints.compute()
    for v in got.data_vars:
        np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)
