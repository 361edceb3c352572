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


# -- alignment against injected truth and against stcal ------------------------------------------

#: errors (east, north arcsec; deg) of exposures 1.. (exposure 0 is the reference of the relative fit)
ERRORS = [[0.0, 0.0, 0.0], [-0.15, 0.25, -0.02], [0.3, 0.05, 0.05]]
#: matching for a 0.03"/px field of ~100 stars in 7.7": the defaults (1" separation) suit sparser fields
DENSE = {"searchrad": 1.0, "tolerance": 0.2, "separation": 0.5}
ABS_DENSE = {"abs_searchrad": 1.0, "abs_tolerance": 0.2, "abs_separation": 0.5}


def _sim(v2v3=False, errors=ERRORS, **kw):
    kw = {"seed": 5, "n_stars": 100, "dither": 20.0, **kw}
    return daskcal.simulate_images(len(errors), (256, 256), wcs_errors=errors, v2v3=v2v3, **kw)


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "v2v3"])
def sim(request):
    return _sim(v2v3=request.param)


def _star_errors_mas(ds, true_wcs, truth):
    """Distance (mas) between each star's true position and where the image's WCS puts it."""
    ny, nx = ds["data"].shape
    x, y = true_wcs.invert(truth.star_ra, truth.star_dec)
    inside = (x > 0) & (x < nx - 1) & (y > 0) & (y < ny - 1)
    ra, dec = daskcal.get_wcs(ds)(x[inside], y[inside])
    dra = (ra - truth.star_ra[inside]) * np.cos(np.radians(dec))
    return np.hypot(dra, dec - truth.star_dec[inside]) * 3.6e6


def test_relative_alignment_puts_stars_within_5_mas_of_truth(sim):
    res = daskcal.align(sim.images, enforce_user_order=True, **DENSE)
    assert res.fits["exp0"]["status"] == "REFERENCE"
    for k, ds in enumerate(res.images):
        before = _star_errors_mas(sim.images[k], sim.truth.wcs[k], sim.truth)
        after = _star_errors_mas(ds, sim.truth.wcs[k], sim.truth)
        assert len(after) > 40
        assert after.max() < 5.0, (k, after.max())
        if k:
            assert before.min() > 50.0  # the injected error was there
            fit = ds.attrs["tweakreg"]
            assert fit["status"] == "SUCCESS" and fit["nmatches"] >= 15 and fit["rmse"] < 0.01
            # the fit undoes the injected shift (arcsec, in the tangent plane: ~east/north up to sign)
            assert np.hypot(*fit["shift"]) == pytest.approx(np.hypot(*ERRORS[k][:2]), abs=0.01)
            assert "v2v3corr" in daskcal.get_wcs(ds).available_frames
    # inputs untouched
    assert "tweakreg" not in sim.images[1].attrs


def _stcal_correctors(images, catalogs):
    from stcal.tweakreg import tweakreg as twk

    from daskcal.image._align import with_v2v3

    out = []
    for ds in images:
        wcs = daskcal.get_wcs(ds)
        if "v2v3" in wcs.available_frames:
            refang = ds.attrs["wcsinfo"]
        else:
            wcs, refang = with_v2v3(wcs, ds["data"].shape)
        cat = catalogs[ds.attrs["name"]].copy()
        out.append(twk.construct_wcs_corrector(wcs, refang, cat, ds.attrs["group_id"]))
    return out


def _max_sky_diff_arcsec(w1, w2, shape):
    y, x = np.mgrid[0 : shape[0] : 15, 0 : shape[1] : 15].astype(float)
    ra1, dec1 = w1(x, y)
    ra2, dec2 = w2(x, y)
    return float(np.max(np.hypot((ra1 - ra2) * np.cos(np.radians(dec1)), dec1 - dec2)) * 3600.0)


def test_relative_alignment_equals_stcal_relative_align(sim):
    from stcal.tweakreg import tweakreg as twk

    res = daskcal.align(sim.images, enforce_user_order=True, **DENSE)
    correctors = twk.relative_align(_stcal_correctors(sim.images, res.catalogs), enforce_user_order=True, **DENSE)
    for ds, c in zip(res.images, correctors):
        assert _max_sky_diff_arcsec(daskcal.get_wcs(ds), c.wcs, ds["data"].shape) < 1e-6


@pytest.fixture(scope="module")
def refcat(sim, tmp_path_factory):
    from astropy.table import Table

    path = tmp_path_factory.mktemp("refcat") / "stars.ecsv"
    Table({"ra": sim.truth.star_ra, "dec": sim.truth.star_dec}).write(path)
    return path


def test_absolute_alignment_to_a_catalog_file_equals_stcal_and_truth(sim, refcat, tmp_path):
    from stcal.tweakreg import tweakreg as twk

    errors = [[0.1, -0.2, 0.02], *ERRORS[1:]]  # the reference exposure is off too
    s = _sim(v2v3="v2v3" in daskcal.get_wcs(sim.images[0]).available_frames, errors=errors)
    res = daskcal.align(s.images, abs_refcat=str(refcat), enforce_user_order=True, **DENSE, **ABS_DENSE)
    assert res.absolute["status"] == "SUCCESS"
    for k, ds in enumerate(res.images):
        assert _star_errors_mas(ds, s.truth.wcs[k], s.truth).max() < 5.0
        assert ds.attrs["tweakreg"]["absolute"]["status"] == "SUCCESS"
    correctors = twk.relative_align(_stcal_correctors(s.images, res.catalogs), enforce_user_order=True,
                                    expand_refcat=True, **DENSE)
    correctors = twk.absolute_align(correctors, str(refcat), ref_wcs=None, ref_wcsinfo=None, epoch=2026.0,
                                    **ABS_DENSE)
    for ds, c in zip(res.images, correctors):
        assert _max_sky_diff_arcsec(daskcal.get_wcs(ds), c.wcs, ds["data"].shape) < 1e-6


def test_exposure_groups_get_one_correction():
    errors = [[0.0, 0.0, 0.0], [0.2, -0.25, 0.03]]
    s = daskcal.simulate_images(2, (160, 160), seed=8, n_stars=120, dither=15.0, detectors=2, wcs_errors=errors)
    res = daskcal.align(s.images, enforce_user_order=True, **DENSE)
    assert sorted(res.fits) == ["exp0", "exp1"]
    assert res.fits["exp1"]["status"] == "SUCCESS"
    fits = [ds.attrs["tweakreg"] for ds in res.images]
    assert fits[2]["shift"] == fits[3]["shift"] == res.fits["exp1"]["shift"]
    assert fits[2]["nmatches"] == res.fits["exp1"]["nmatches"] > sum(len(res.catalogs[n]) > 0 for n in res.catalogs)
    for k, ds in enumerate(res.images):
        assert _star_errors_mas(ds, s.truth.wcs[k], s.truth).max() < 5.0


def test_too_few_sources_leaves_the_wcs_unchanged_with_a_warning(caplog):
    s = daskcal.simulate_images(2, (96, 96), seed=2, n_stars=6, wcs_errors=[[0, 0, 0], [0.2, 0.1, 0.0]])
    with caplog.at_level("WARNING", logger="daskcal.image._align"):
        res = daskcal.align(s.images)
    assert res.fits["exp1"]["status"].startswith("FAILED")
    assert res.images[1].attrs["wcs_asdf"] == s.images[1].attrs["wcs_asdf"]
    assert res.images[1].attrs["tweakreg"]["status"].startswith("FAILED")
    assert any("WCS unchanged" in r.getMessage() or "not performed" in r.getMessage() for r in caplog.records)
    # one exposure group and no reference catalog: nothing to do
    caplog.clear()
    with caplog.at_level("WARNING", logger="daskcal.image._align"):
        one = daskcal.align(s.images[:1])
    assert one.images[0].attrs["wcs_asdf"] == s.images[0].attrs["wcs_asdf"]
    assert one.images[0].attrs["tweakreg"]["status"] == "SKIPPED: one exposure group"
    assert any("two exposure groups" in r.getMessage() for r in caplog.records)


def test_groups_left_unaligned_are_one_warning(caplog):
    s = daskcal.simulate_images(4, (96, 96), seed=2, n_stars=6)
    with caplog.at_level("WARNING", logger="daskcal.image._align"):
        res = daskcal.align(s.images)
    failed = sorted(g for g, fit in res.fits.items() if fit["status"].startswith("FAILED"))
    assert len(failed) >= 2
    warned = [r.getMessage() for r in caplog.records if r.name == "daskcal.image._align" and "WCS unchanged" in r.getMessage()]
    assert len(warned) == 1, warned  # not one per group
    assert f"{len(failed)} of 4 exposure groups" in warned[0] and all(g in warned[0] for g in failed)


def test_zarr_exposures_are_read_by_their_catalog_tasks(sim, tmp_path_factory, scheduler, compute_graph_keys):
    """An exposure read from Zarr is read by its source-finding task itself (no read tasks whose
    chunks wait on the workers); catalogs and corrections equal those of the exposures in memory."""
    d = tmp_path_factory.mktemp("cat")
    stores = [str(daskcal.save(ds, d / f"{ds.attrs['name']}.zarr")) for ds in sim.images]
    with scheduler():
        got = daskcal.align(daskcal.open_images(stores), enforce_user_order=True, **DENSE)
    assert any("_catalog_task" in k for k in compute_graph_keys)
    assert not [k for k in compute_graph_keys if "zarr-read" in k]
    ref = daskcal.align(sim.images, enforce_user_order=True, **DENSE)
    for name, cat in ref.catalogs.items():
        assert len(cat) > 60
        for col in ("x", "y", "flux"):
            np.testing.assert_array_equal(got.catalogs[name][col], cat[col])
    for a, b in zip(got.images, ref.images, strict=True):
        assert daskcal.get_wcs(a)(10.5, 20.5) == daskcal.get_wcs(b)(10.5, 20.5)


def test_user_catalogs_replace_source_finding(sim, tmp_path):
    from astropy.table import Table

    catalogs = {}
    for k, ds in enumerate(sim.images):
        x, y = sim.truth.wcs[k].invert(sim.truth.star_ra, sim.truth.star_dec)
        keep = (x > 0) & (x < 255) & (y > 0) & (y < 255)
        path = tmp_path / f"cat{k}.ecsv"
        Table({"xcentroid": x[keep], "ycentroid": y[keep]}).write(path)
        catalogs[ds.attrs["name"] + ".fits"] = str(path)  # file names match the exposure name
    res = daskcal.align(sim.images, catalogs=catalogs, enforce_user_order=True, **DENSE)
    for k, ds in enumerate(res.images):
        assert len(res.catalogs[ds.attrs["name"]]) > 60
        assert _star_errors_mas(ds, sim.truth.wcs[k], sim.truth).max() < 0.5  # exact positions
    with pytest.raises(ValueError, match="'nosuch' names no input exposure"):
        daskcal.align(sim.images, catalogs={"nosuch": str(tmp_path / "cat0.ecsv")})
    Table({"a": [1.0], "b": [2.0]}).write(tmp_path / "bad.ecsv")
    with pytest.raises(ValueError, match=r"bad\.ecsv.*no x/y or xcentroid/ycentroid"):
        daskcal.align(sim.images, catalogs={sim.images[0].attrs["name"]: str(tmp_path / "bad.ecsv")})


def test_reference_catalog_errors_are_one_line_and_name_it(sim, tmp_path):
    from astropy.table import Table

    bad = tmp_path / "noradec.ecsv"
    Table({"x": [1.0, 2.0], "y": [3.0, 4.0]}).write(bad)
    for refcat, exc, pattern in [
        (bad, ValueError, r"abs_refcat '.*noradec\.ecsv' has no RA and DEC columns"),
        (tmp_path / "missing.ecsv", FileNotFoundError, r"abs_refcat '.*missing\.ecsv' does not exist"),
        ("GAIADR3", ValueError, "'GAIADR3' is a web catalog"),
    ]:
        with pytest.raises(exc, match=pattern) as info:
            daskcal.align(sim.images, abs_refcat=str(refcat))
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="separation .* must exceed sqrt"):
        daskcal.align(sim.images, separation=0.5)
    with pytest.raises(ValueError, match="starfinder must be one of"):
        daskcal.align(sim.images, starfinder="sextractor")
    with pytest.raises(TypeError):
        daskcal.align(sim.images, serchrad=1.0)


@pytest.mark.parametrize(("starfinder", "extra"), [("dao", {"roundlo": -1.0, "roundhi": 1.0}), ("segmentation", {})])
def test_other_star_finders_align_too(starfinder, extra):
    # DAO roundness is signed: the step's default range (0, 0.2) keeps about half the stars
    s = _sim(errors=ERRORS[:2])
    res = daskcal.align(s.images, starfinder=starfinder, enforce_user_order=True, **DENSE, **extra)
    assert res.fits["exp1"]["status"] == "SUCCESS"
    assert _star_errors_mas(res.images[1], s.truth.wcs[1], s.truth).max() < 5.0
