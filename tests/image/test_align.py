"""Alignment: simulated WCS errors, source catalogs as Dask tasks, tweakwcs fits against truth and stcal."""

from __future__ import annotations

import numpy as np
import pytest

import daskcal


def _sky_offset_arcsec(w1, w2, x, y):
    """East, north offset (arcsec) of w2 from w1 at pixel (x, y)."""
    ra1, dec1 = w1(x, y)
    ra2, dec2 = w2(x, y)
    return (ra2 - ra1) * 3600.0 * np.cos(np.radians(dec1)), (dec2 - dec1) * 3600.0


@pytest.mark.parametrize("v2v3", [False, True])
def test_simulated_wcs_errors_move_the_carried_wcs_by_the_injected_shift_and_rotation(v2v3):
    err = [[0.2, -0.1, 0.03], [0.0, 0.0, 0.0]]
    sim = daskcal.simulate_images(2, (64, 80), seed=3, detectors=2, v2v3=v2v3, wcs_errors=err,
                                  sky_offsets=[0.1, 0.2, 0.3, 0.4])
    assert [ds.attrs["group_id"] for ds in sim.images] == ["exp0", "exp0", "exp1", "exp1"]
    assert [ds.attrs["name"] for ds in sim.images] == ["sim000_d1_cal", "sim000_d2_cal", "sim001_d1_cal",
                                                       "sim001_d2_cal"]
    np.testing.assert_array_equal(sim.truth.wcs_errors, err)
    ra_c, dec_c, _ = sim.truth.pointing[0]
    for ds, true_wcs in zip(sim.images[:2], sim.truth.wcs[:2]):
        carried = daskcal.get_wcs(ds)
        # the error maps the true position of each pixel to the carried one: rotation about the
        # exposure centre then shift, in the tangent plane at the centre (small angles)
        x, y = np.array([0.0, 79.0, 40.0]), np.array([0.0, 63.0, 30.0])
        ra, dec = true_wcs(x, y)
        e = (ra - ra_c) * 3600.0 * np.cos(np.radians(dec_c))
        n = (dec - dec_c) * 3600.0
        th = np.radians(0.03)
        # pc(rot) = R(rot) pc(0) with R = [[cos, sin], [-sin, cos]] in (east, north)
        want_e = np.cos(th) * e + np.sin(th) * n + 0.2 - e
        want_n = -np.sin(th) * e + np.cos(th) * n - 0.1 - n
        de, dn = _sky_offset_arcsec(true_wcs, carried, x, y)
        np.testing.assert_allclose(de, want_e, atol=2e-4)
        np.testing.assert_allclose(dn, want_n, atol=2e-4)
        if v2v3:
            assert daskcal.get_wcs(ds).available_frames == ["detector", "v2v3", "world"]
            assert ds.attrs["wcsinfo"]["roll_ref"] == pytest.approx(sim.truth.pointing[0, 2] + 0.03)
    for ds, true_wcs in zip(sim.images[2:], sim.truth.wcs[2:]):
        de, dn = _sky_offset_arcsec(true_wcs, daskcal.get_wcs(ds), np.array([5.0]), np.array([7.0]))
        assert abs(de[0]) < 1e-8 and abs(dn[0]) < 1e-8
    np.testing.assert_array_equal(sim.truth.sky_offsets, [0.1, 0.2, 0.3, 0.4])
    base = daskcal.simulate_images(2, (64, 80), seed=3, detectors=2, v2v3=v2v3)
    for ds, ref, off in zip(sim.images, base.images, [0.1, 0.2, 0.3, 0.4]):
        assert ds.attrs["level"] == pytest.approx(ref.attrs["level"] + off)
        # same noise draws; the noise scales with the (slightly higher) level
        assert np.median(ds["data"].values - ref["data"].values) == pytest.approx(off, abs=0.005)


def test_simulate_defaults_unchanged_by_the_new_keywords():
    a = daskcal.simulate_images(2, (40, 50), seed=11, cosmic_rays=3)
    b = daskcal.simulate_images(2, (40, 50), seed=11, cosmic_rays=3, wcs_errors=[0, 0, 0], sky_offsets=0.0,
                                detectors=1)
    for da, db in zip(a.images, b.images):
        for v in da.data_vars:
            np.testing.assert_array_equal(da[v].values, db[v].values)
        assert da.attrs["name"] == db.attrs["name"]
    np.testing.assert_array_equal(a.truth.cosmic_rays, b.truth.cosmic_rays)
    with pytest.raises(ValueError, match="wcs_errors must have shape"):
        daskcal.simulate_images(2, (40, 50), wcs_errors=[1.0, 2.0])
