"""The output grid by jwst's rule (stcal 1.20 ``wcs_from_sregions``, what the jwst resample step calls)
and a mosaic's S_REGION as the union of its inputs' footprints."""

from __future__ import annotations

import math

import numpy as np
import pytest

import daskcal
from daskcal.image._grid import input_footprints, jwst_pc_matrix, output_wcs, pixel_scale_of, s_region_of


def _with_wcsinfo(images, roll_ref=17.0, v3yangle=-0.57, vparity=-1):
    w = daskcal.get_wcs(images[0])
    ny, nx = images[0]["data"].shape
    ra, dec = (float(v) for v in w(0.4 * nx, 0.6 * ny, with_bounding_box=False))  # off-centre, as on a real detector
    info = {"ra_ref": ra, "dec_ref": dec, "roll_ref": roll_ref, "v3yangle": v3yangle, "vparity": vparity,
            "v2_ref": 120.6, "v3_ref": -527.5}
    return [im.assign_attrs(wcsinfo=info) for im in images]


def _stcal_grid(images, **kw):
    from stcal.alignment.util import wcs_from_sregions

    wcss = []
    for im in images:
        w = daskcal.get_wcs(im)
        if w.bounding_box is None:
            ny, nx = im["data"].shape
            w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
        wcss.append(w)
    pscale = kw.get("pixel_scale")
    return wcs_from_sregions([w.footprint() for w in wcss], wcss[0], images[0].attrs["wcsinfo"],
                             pscale_ratio=kw.get("pixel_scale_ratio"), rotation=kw.get("rotation"),
                             pscale=None if pscale is None else pscale / 3600.0)


@pytest.fixture(scope="module")
def sim4():
    return daskcal.simulate_images(4, (90, 110), seed=3, n_stars=5)


@pytest.mark.parametrize("vparity", [-1, 1])
@pytest.mark.parametrize("kw", [{}, {"rotation": 30.0}, {"pixel_scale_ratio": 0.7}, {"pixel_scale": 0.05}])
def test_grid_equals_stcal_wcs_from_sregions(sim4, kw, vparity):
    images = _with_wcsinfo(sim4.images, vparity=vparity)
    ours = output_wcs(images, **kw)
    ref = _stcal_grid(images, **kw)
    assert ours.array_shape == ref.array_shape
    ny, nx = ref.array_shape
    yy, xx = np.mgrid[0:ny:7, 0:nx:9].astype(float)
    ra, dec = ref(xx.ravel(), yy.ravel(), with_bounding_box=False)
    ra2, dec2 = ours(xx.ravel(), yy.ravel(), with_bounding_box=False)
    scale = pixel_scale_of(ref, (ny, nx))
    # same sky at every pixel, in output pixels
    dra = (ra2 - ra) * np.cos(np.radians(dec))
    assert np.max(np.hypot(dra, dec2 - dec)) / scale < 1e-7


def test_jwst_rule_differs_from_centre_rule(sim4):
    """Without wcsinfo the grid is measured at the first input's centre; with it, at ra_ref/dec_ref with the roll."""
    plain = output_wcs(sim4.images)
    jw = output_wcs(_with_wcsinfo(sim4.images, roll_ref=40.0))
    ra, dec = plain(0.0, 0.0, with_bounding_box=False)
    ra2, dec2 = jw(0.0, 0.0, with_bounding_box=False)
    assert abs(ra - ra2) > 1e-6 or abs(dec - dec2) > 1e-6


def test_pc_matrix_is_the_reference_rotation():
    from stcal.alignment.util import calc_rotation_matrix

    for roll, v3y, vp, rot in [(17.0, -0.57, -1, None), (200.0, 1.2, 1, None), (5.0, -0.57, -1, 33.0)]:
        roll_used = roll if rot is None else rot + vp * v3y
        ref = np.reshape(calc_rotation_matrix(math.radians(roll_used), math.radians(v3y), vparity=vp), (2, 2))
        np.testing.assert_allclose(jwst_pc_matrix(roll, v3y, vp, rot), ref, rtol=0, atol=1e-14)


def test_bad_wcsinfo_argument(sim4):
    with pytest.raises(ValueError, match="vparity"):
        output_wcs(sim4.images, wcsinfo={"ra_ref": 1.0, "dec_ref": 2.0, "roll_ref": 0.0, "v3yangle": 0.0,
                                         "vparity": 0})


def test_resample_uses_the_jwst_grid(sim4):
    images = _with_wcsinfo(sim4.images)
    mosaic = daskcal.resample(images)
    ref = _stcal_grid(images)
    assert tuple(mosaic["data"].shape) == tuple(ref.array_shape)
    w = daskcal.get_wcs(mosaic)
    ra, dec = ref(5.0, 7.0, with_bounding_box=False)
    x, y = w.invert(ra, dec, with_bounding_box=False)
    assert abs(x - 5.0) < 1e-7 and abs(y - 7.0) < 1e-7


# ---- S_REGION: union of footprints ----

def _square(ra0, dec0, side):
    return np.array([[ra0, dec0], [ra0 + side, dec0], [ra0 + side, dec0 + side], [ra0, dec0 + side]])


def _poly(s_region):
    vals = np.array([float(v) for v in s_region.split()[2:]])
    return vals.reshape(-1, 2)


def _inside(poly_radec, ra, dec):
    from spherical_geometry.polygon import SphericalPolygon

    r, d = poly_radec[:, 0], poly_radec[:, 1]
    return SphericalPolygon.from_radec(np.append(r, r[0]), np.append(d, d[0]),
                                       center=(r.mean(), d.mean())).contains_radec(ra, dec)


def test_s_region_union_of_overlapping_footprints():
    a, b = _square(10.0, 0.0, 0.01), _square(10.005, 0.005, 0.01)
    s = s_region_of([a, b])
    assert s.startswith("POLYGON ICRS  ")
    poly = _poly(s)
    # the union's outline: 8 vertices, with the two inner corners where the edges cross
    assert len(poly) == 8
    for ra, dec, want in [(10.002, 0.002, True), (10.013, 0.013, True), (10.013, 0.002, False),
                          (10.002, 0.013, False), (10.0075, 0.0075, True), (10.02, 0.02, False)]:
        assert _inside(poly, ra, dec) == want, (ra, dec)


def test_s_region_adjacent_footprints_make_one_rectangle():
    a, b = _square(10.0, 0.0, 0.01), _square(10.01, 0.0, 0.01)
    poly = _poly(s_region_of([a, b]))
    assert _inside(poly, 10.015, 0.005) and _inside(poly, 10.005, 0.005)
    assert not _inside(poly, 10.021, 0.005)
    np.testing.assert_allclose(poly[:, 0].min(), 10.0, atol=1e-9)
    np.testing.assert_allclose(poly[:, 0].max(), 10.02, atol=1e-9)


def test_s_region_disjoint_footprints_are_a_union_of_polygons():
    s = s_region_of([_square(10.0, 0.0, 0.01), _square(10.1, 0.0, 0.01)])
    assert s.startswith("UNION ICRS ( POLYGON ") and s.count("POLYGON") == 2 and s.endswith(" )")


def test_s_region_across_ra_zero():
    s = s_region_of([_square(359.995, 0.0, 0.01)])
    ra = _poly(s)[:, 0]
    assert ((ra >= 0) & (ra < 360)).all() and ra.max() > 359.99 and ra.min() < 0.006


def test_mosaic_s_region_is_the_inputs_union(sim4):
    mosaic = daskcal.resample(sim4.images)
    poly = _poly(mosaic.attrs["s_region"])
    w = daskcal.get_wcs(mosaic)
    ny, nx = mosaic["data"].shape
    # every input's centre is inside; the mosaic's corner (no input there: dithers leave it empty) is outside
    for fp in input_footprints(sim4.images):
        c = fp.mean(axis=0)
        assert _inside(poly, c[0], c[1])
    wht = mosaic["wht"].values
    empty = np.argwhere(wht == 0)
    assert len(empty)
    y, x = empty[len(empty) // 2]
    far = [(yy, xx) for yy, xx in empty if min(yy, ny - 1 - yy) < 2 and min(xx, nx - 1 - xx) < 2]
    y, x = far[0] if far else (y, x)
    ra, dec = w(float(x), float(y), with_bounding_box=False)
    assert not _inside(poly, ra, dec)
