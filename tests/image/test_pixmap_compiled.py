"""Compiled pixel maps (``daskcal.image._pixmap``) against gwcs itself.

Oracle: ``wcs_out.invert(*wcs_in(x, y, with_bounding_box=False), with_bounding_box=False)``.
Both sides round differently (gwcs goes through RA/Dec in degrees), so the
agreement is ~1e-9 px, and every test asserts < 1e-8 px.
"""

from __future__ import annotations

import logging
import pickle

import gwcs
import numpy as np
import pytest
from astropy import coordinates as coord
from astropy import units as u
from astropy.modeling import Model, Parameter, models

import daskcal
from daskcal.image import _pixmap_kernels
from daskcal.image._pixmap import PixelMapProgram, compile_pixel_map
from daskcal.image._simulate import DEC0, RA0, V2_REF, V3_REF, distorted_wcs, v2v3_wcs

SHAPE = (2048, 2048)
TOL = 1e-8  # px
# the simulator fits a degree-5 inverse distortion over +-1229 px: astropy warns about its conditioning
pytestmark = pytest.mark.filterwarnings("ignore:The fit may be poorly conditioned")


def gwcs_map(wcs_in, wcs_out, x, y):
    ra, dec = wcs_in(x, y, with_bounding_box=False)
    return wcs_out.invert(ra, dec, with_bounding_box=False)


def sample(n=40_000, seed=0, shape=SHAPE, margin=100):
    """Random pixel positions over an image and a margin around it."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    return rng.uniform(-margin, nx + margin, n), rng.uniform(-margin, ny + margin, n)


def assert_matches_gwcs(wcs_in, wcs_out, x, y):
    prog = compile_pixel_map(wcs_in, wcs_out)
    assert isinstance(prog, PixelMapProgram)
    ox, oy = prog(x, y)
    gx, gy = gwcs_map(wcs_in, wcs_out, x, y)
    np.testing.assert_array_equal(np.isnan(ox), np.isnan(gx))
    np.testing.assert_array_equal(np.isnan(oy), np.isnan(gy))
    ok = np.isfinite(gx) & np.isfinite(gy)
    assert ok.any()
    err = max(np.max(np.abs(ox[ok] - gx[ok])), np.max(np.abs(oy[ok] - gy[ok])))
    assert err < TOL, err
    return prog


def jwst_like(shape=SHAPE, *, ra=RA0, dec=DEC0, roll=20.0, va_scale=1.00004, v2=V2_REF, v3=V3_REF,
              distortion=2.0):
    """detector -> v2v3 -> v2v3vacorr -> world as jwst's imaging WCS: the velocity-aberration stage between.

    The stage is jwst's ``dva_corr_model``: ``Scale(s) & Scale(s) | Shift((1 - s) v2_ref) & Shift((1 - s) v3_ref)``.
    """
    info = {"v2_ref": v2, "v3_ref": v3, "roll_ref": roll, "ra_ref": ra, "dec_ref": dec}
    base = v2v3_wcs(shape, info, v2_det=v2 + 3.0, v3_det=v3 - 2.0, distortion=distortion)
    va = (models.Scale(va_scale, name="dva_scale_v2") & models.Scale(va_scale, name="dva_scale_v3")
          | models.Shift((1 - va_scale) * v2, name="dva_v2_shift") & models.Shift((1 - va_scale) * v3,
                                                                                  name="dva_v3_shift"))
    va.name = "DVA_Correction"
    v2v3 = gwcs.coordinate_frames.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"),
                                          unit=(u.arcsec, u.arcsec))
    vacorr = gwcs.coordinate_frames.Frame2D(name="v2v3vacorr", axes_order=(0, 1), axes_names=("v2", "v3"),
                                            unit=(u.arcsec, u.arcsec))
    w = gwcs.WCS([(base.input_frame, base.get_transform("detector", "v2v3")), (v2v3, va),
                  (vacorr, base.get_transform("v2v3", "world")), (base.output_frame, None)], name="jwst-like")
    w.bounding_box = base.bounding_box
    w.pixel_shape = base.pixel_shape
    return w, info


def tan_wcs(ra=RA0 + 0.001, dec=DEC0 + 0.002, rotation=11.0, pixel_scale=0.03):
    """A plain TAN WCS (a mosaic's: no distortion) through daskcal's own builder."""
    return daskcal.output_wcs([distorted_wcs(SHAPE, ra, dec, rotation=rotation, distortion=0.5)],
                              pixel_scale=pixel_scale, rotation=rotation)


# ---------------------------------------------------------------- exactness


def test_tan_to_tan_is_one_projective_map():
    w_in = tan_wcs(RA0, DEC0, rotation=3.0, pixel_scale=0.04)
    w_out = tan_wcs()
    x, y = sample()
    prog = assert_matches_gwcs(w_in, w_out, x, y)
    ops = prog.code[:, _pixmap_kernels.OP].tolist()
    assert ops == [_pixmap_kernels.PROJ]


def test_distorted_to_distorted():
    w_in = distorted_wcs(SHAPE, RA0, DEC0, rotation=10.0, distortion=3.0)
    w_out = distorted_wcs(SHAPE, RA0 + 0.001, DEC0 - 0.001, rotation=-4.0, distortion=1.5)
    assert_matches_gwcs(w_in, w_out, *sample(seed=1))


def test_jwst_like_with_velocity_aberration_to_tan_full_grid():
    w_in, _ = jwst_like()
    w_out = tan_wcs()
    prog = compile_pixel_map(w_in, w_out)
    got = prog.grid(0, SHAPE[0], 0, SHAPE[1])
    y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float64)
    gx, gy = gwcs_map(w_in, w_out, x, y)
    assert np.isfinite(gx).all()
    assert np.max(np.abs(got[..., 0] - gx)) < TOL
    assert np.max(np.abs(got[..., 1] - gy)) < TOL


@pytest.mark.parametrize("ra, dec", [(RA0, DEC0), (0.02, -30.0), (359.98, 60.0), (45.0, 89.9)])
def test_jwst_like_both_ways_and_between_exposures(ra, dec):
    w_a, _ = jwst_like(ra=ra, dec=dec)
    w_b, _ = jwst_like(ra=ra, dec=dec, roll=21.0, va_scale=0.99997, distortion=1.0)
    w_t = tan_wcs(ra, dec)
    x, y = sample(seed=2)
    assert_matches_gwcs(w_a, w_t, x, y)  # resample: JWST in, TAN out
    assert_matches_gwcs(w_t, w_a, x, y)  # blot: TAN in, JWST out
    assert_matches_gwcs(w_a, w_b, x, y)  # between two exposures


def test_tweakwcs_aligned_wcs():
    """The ``v2v3corr`` frame tweakwcs's JWSTWCSCorrector adds (TPCorr: an arithmetic compound model)."""
    from tweakwcs.correctors import JWSTWCSCorrector

    w, info = jwst_like()
    th = np.deg2rad(0.01)
    c = JWSTWCSCorrector(wcs=w, wcsinfo=info)
    c.set_correction(matrix=1.00001 * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]),
                     shift=[0.05, -0.08])
    aligned = c.wcs
    assert "v2v3corr" in aligned.available_frames
    x, y = sample(seed=3)
    resample = assert_matches_gwcs(aligned, tan_wcs(), x, y)
    blot = assert_matches_gwcs(tan_wcs(), aligned, x, y)
    # the spherical round trips between the stages are gone: one trigonometric step each way
    ops = [sorted(p.code[:, _pixmap_kernels.OP].tolist()) for p in (resample, blot)]
    k = _pixmap_kernels
    assert [[op for op in o if op in (k.S2V, k.V2S, k.NORM)] for o in ops] == [[k.S2V], [k.V2S]]
    # it moved the sky: the comparison is not trivially against the unaligned map
    assert np.max(np.abs(np.subtract(gwcs_map(aligned, w, x, y), (x, y)))) > 0.5


def test_daskcal_align_on_simulated_images():
    sim = daskcal.simulate_images(n=2, shape=(400, 420), seed=4, v2v3=True, n_stars=120,
                                  wcs_errors=[[0.1, -0.05, 0.02], [0, 0, 0]])
    result = daskcal.align(sim.images)
    aligned = [daskcal.get_wcs(ds) for ds in result.images]
    assert "v2v3corr" in aligned[1].available_frames
    x, y = sample(seed=5, shape=(400, 420), margin=20)
    assert_matches_gwcs(aligned[0], aligned[1], x, y)
    assert_matches_gwcs(aligned[1], daskcal.output_wcs(aligned), x, y)
    assert_matches_gwcs(daskcal.output_wcs(aligned), aligned[1], x, y)


def test_stdatamodels_written_cal_fits(tmp_path):
    datamodels = pytest.importorskip("stdatamodels.jwst.datamodels")
    sim = daskcal.simulate_images(n=1, shape=(64, 80), seed=6, v2v3=True)
    ds = sim.images[0]
    model = datamodels.ImageModel(data=np.asarray(ds["data"].values), dq=np.asarray(ds["dq"].values),
                                  err=np.asarray(ds["err"].values))
    model.meta.wcs, _ = jwst_like((64, 80))
    model.meta.wcsinfo = {"v2_ref": V2_REF, "v3_ref": V3_REF, "roll_ref": 20.0, "ra_ref": RA0, "dec_ref": DEC0}
    model.meta.exposure.exposure_time = 100.0
    model.meta.instrument.name = "NIRCAM"
    model.meta.instrument.detector = "NRCA1"
    path = tmp_path / "jw01234001001_01101_00001_nrca1_cal.fits"
    model.save(path)
    model.close()
    (read,) = daskcal.open_images([path])
    w = daskcal.get_wcs(read)
    assert "v2v3vacorr" in w.available_frames
    x, y = sample(seed=7, shape=(64, 80), margin=10)
    tan = daskcal.output_wcs([w])  # around the detector: its inverse polynomial is not extrapolated far
    assert_matches_gwcs(w, tan, x, y)
    assert_matches_gwcs(tan, w, x, y)


def test_grid_equals_call_and_writes_out():
    w_in, _ = jwst_like()
    prog = compile_pixel_map(w_in, tan_wcs())
    out = np.full((37, 41, 2), -1.0)
    got = prog.grid(100, 137, 1900, 1941, out=out)
    assert got is out
    y, x = np.mgrid[100:137, 1900:1941].astype(np.float64)
    ox, oy = prog(x, y)
    np.testing.assert_array_equal(out[..., 0], ox)
    np.testing.assert_array_equal(out[..., 1], oy)
    with pytest.raises(ValueError, match="out must be"):
        prog.grid(0, 3, 0, 4, out=np.empty((4, 3, 2)))
    assert prog.grid(5, 5, 0, 10).shape == (0, 10, 2)


def test_scalar_and_broadcast_inputs():
    prog = compile_pixel_map(jwst_like()[0], tan_wcs())
    ox, oy = prog(3.0, np.arange(4.0))
    assert ox.shape == oy.shape == (4,)
    sx, sy = prog(3.0, 2.0)
    assert sx.shape == () and sx == ox[2] and sy == oy[2]


# ---------------------------------------------------------------- NaN


def test_points_behind_the_output_horizon_are_nan():
    # 0.5 deg/px: the input covers most of a hemisphere; the output looks 90 deg away
    w_in = distorted_wcs((400, 400), 10.0, 0.0, pixel_scale=1800.0, distortion=0.5)
    w_out = daskcal.output_wcs([distorted_wcs((400, 400), 100.0, 0.0, pixel_scale=1800.0)], pixel_scale=1800.0)
    x, y = sample(seed=8, shape=(400, 400), margin=0)
    ox, oy = compile_pixel_map(w_in, w_out)(x, y)
    gx, gy = gwcs_map(w_in, w_out, x, y)
    assert 0.2 < np.isnan(gx).mean() < 0.8
    np.testing.assert_array_equal(np.isnan(ox), np.isnan(gx))
    np.testing.assert_array_equal(np.isnan(oy), np.isnan(gy))
    # near the horizon the projection magnifies without bound: absolute agreement where the output is near
    near = np.hypot(gx, gy) < 1e3
    assert near.sum() > 100
    assert max(np.max(np.abs(ox - gx)[near]), np.max(np.abs(oy - gy)[near])) < TOL
    ok = np.isfinite(gx)
    np.testing.assert_allclose(ox[ok], gx[ok], rtol=1e-11, atol=TOL)
    np.testing.assert_allclose(oy[ok], gy[ok], rtol=1e-11, atol=TOL)


def test_nan_inputs_give_nan():
    prog = compile_pixel_map(jwst_like()[0], tan_wcs())
    ox, oy = prog(np.array([np.nan, 5.0, 7.0]), np.array([3.0, np.nan, 9.0]))
    assert np.isnan(ox[:2]).all() and np.isnan(oy[:2]).all()
    assert np.isfinite(ox[2]) and np.isfinite(oy[2])


# ---------------------------------------------------------------- what it does not compile


def _frames():
    det = gwcs.coordinate_frames.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = gwcs.coordinate_frames.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    return det, world


def test_tabular_model_falls_back_with_one_log_line(caplog):
    w = distorted_wcs((50, 60), RA0, DEC0, distortion=0.5)
    lut = models.Tabular2D(points=(np.arange(3.0), np.arange(3.0)), lookup_table=np.zeros((3, 3)))
    det, world = _frames()
    side = models.Mapping((0, 1, 0, 1)) | (models.Identity(2) & lut) | models.Mapping((0, 1), n_inputs=3)
    bad = gwcs.WCS([(det, side | w.forward_transform), (world, None)], name="lut")
    with caplog.at_level(logging.INFO, logger="daskcal.image._pixmap"):
        assert compile_pixel_map(bad, w) is None
    lines = [r.getMessage() for r in caplog.records if r.name == "daskcal.image._pixmap"]
    assert lines == ["pixel map: gwcs fallback: no compiled form for Tabular2D in input WCS 'lut'"]


class Twist(Model):
    """A custom model: unknown to the compiler."""

    n_inputs = 2
    n_outputs = 2
    k = Parameter(default=0.0)

    @staticmethod
    def evaluate(x, y, k):
        return x + k * y * y, y

    @property
    def inverse(self):
        return TwistBack(self.k)


class TwistBack(Twist):
    @staticmethod
    def evaluate(x, y, k):
        return x - k * y * y, y


def test_custom_model_in_the_output_falls_back(caplog):
    w = distorted_wcs((50, 60), RA0, DEC0, distortion=0.5)
    det, world = _frames()
    custom = gwcs.WCS([(det, Twist(1e-6) | w.forward_transform), (world, None)], name="twisted")
    with caplog.at_level(logging.INFO, logger="daskcal.image._pixmap"):
        assert compile_pixel_map(w, custom) is None
    assert [r.getMessage() for r in caplog.records] == [
        "pixel map: gwcs fallback: no compiled form for TwistBack in the inverse of output WCS 'twisted'"]


def test_output_without_analytic_inverse_falls_back(caplog):
    w = distorted_wcs((50, 60), RA0, DEC0, distortion=0.5)
    det, world = _frames()
    poly = models.Mapping((0, 1, 0, 1)) | models.Polynomial2D(2, c1_0=1, c2_0=1e-6) & models.Polynomial2D(2, c0_1=1)
    no_inverse = gwcs.WCS([(det, poly | w.forward_transform), (world, None)], name="noinv")
    with caplog.at_level(logging.INFO, logger="daskcal.image._pixmap"):
        assert compile_pixel_map(w, no_inverse) is None
        assert compile_pixel_map(no_inverse, w) is not None  # the forward direction is fine
    assert [r.getMessage() for r in caplog.records] == [
        "pixel map: gwcs fallback: no analytic inverse of output WCS 'noinv'"]


# ---------------------------------------------------------------- the program itself


def test_program_pickles():
    prog = compile_pixel_map(jwst_like()[0], tan_wcs())
    back = pickle.loads(pickle.dumps(prog))
    x, y = sample(n=1000, seed=9)
    np.testing.assert_array_equal(np.array(back(x, y)), np.array(prog(x, y)))
    assert all(isinstance(getattr(back, f), np.ndarray) for f in ("code", "params", "io"))


def test_compilation_is_cached_per_pair():
    w_in, w_out = jwst_like()[0], tan_wcs()
    assert compile_pixel_map(w_in, w_out) is compile_pixel_map(w_in, w_out)
    assert compile_pixel_map(w_in, tan_wcs()) is not compile_pixel_map(w_in, w_out)


def test_arithmetic_fix_inputs_and_rotations():
    """Operators, fix_inputs, Rotation2D, Multiply, Polynomial1D, Const1D."""
    w = distorted_wcs(SHAPE, RA0, DEC0, distortion=0.5)
    det, world = _frames()
    # each side stays near the identity: the inverse distortion is not extrapolated far
    xpart = (models.Polynomial1D(2, c0=3.0, c1=1.0, c2=1e-6) + models.Const1D(0.5)) * models.Const1D(1.0)
    xpart = xpart | models.Multiply(0.999)
    ypart = (models.Scale(2.0) / models.Const1D(2.0) + models.Shift(1.0) ** models.Const1D(1.0)) * models.Const1D(0.5)
    ypart = ypart - models.Const1D(0.5)
    mix = models.fix_inputs(models.Polynomial2D(1, c0_0=1.0, c1_0=1e-3, c0_1=1.0), {"x": 5.0})
    fwd = (xpart & ypart) | (models.Identity(1) & mix) | models.Rotation2D(0.3) | w.forward_transform
    odd = gwcs.WCS([(det, fwd), (world, None)], name="odd")
    assert_matches_gwcs(odd, w, *sample(seed=10))


def test_parameters_with_units_fall_back(caplog):
    w = distorted_wcs((50, 60), RA0, DEC0, distortion=0.5)
    det, world = _frames()
    shifted = gwcs.WCS([(det, models.Shift(1.0 * u.pix) & models.Shift(2.0 * u.pix) | w.forward_transform),
                        (world, None)], name="units")
    with caplog.at_level(logging.INFO, logger="daskcal.image._pixmap"):
        assert compile_pixel_map(shifted, w) is None
    assert [r.getMessage() for r in caplog.records] == [
        "pixel map: gwcs fallback: no compiled form for Shift (parameter offset with unit pix) in input WCS 'units'"]


# ---------------------------------------------------------------- absolute accuracy


def _tan_parts(wcs):
    """(shifts, scales, matrix, translation, (lon, lat, lon_pole)) of a daskcal.output_wcs TAN WCS, as long double."""
    fwd = wcs.forward_transform
    sub = [fwd[i] for i in range(fwd.n_submodels)]
    assert [type(m).__name__ for m in sub] == ["Shift", "Shift", "Scale", "Scale", "AffineTransformation2D",
                                              "Pix2Sky_Gnomonic", "RotateNative2Celestial"]
    ld = np.longdouble
    rot = sub[6]
    return (ld([sub[0].offset.value, sub[1].offset.value]), ld([sub[2].factor.value, sub[3].factor.value]),
            np.asarray(sub[4].matrix.value, ld), np.asarray(sub[4].translation.value, ld),
            ld([rot.lon.value, rot.lat.value, rot.lon_pole.value]) * np.pi / ld(180))


def _native_to_celestial(lon, lat, lon_pole):
    """Calabretta & Greisen's rotation Rz(lon) Ry(90 deg - lat) Rz(180 deg - lon_pole) (radians), long double."""
    ld = np.longdouble

    def rz(a):
        c, s = np.cos(a), np.sin(a)
        return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=ld)

    def ry(a):
        c, s = np.cos(a), np.sin(a)
        return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]], dtype=ld)

    return rz(lon) @ ry(ld(np.pi) / 2 - lat) @ rz(ld(np.pi) - lon_pole)


def _tan_to_tan_long_double(w_in, w_out, x, y):
    """The TAN formulas (x = R0 cot(theta) sin(phi), y = -R0 cot(theta) cos(phi)) in 80-bit long double."""
    ld = np.longdouble
    r0 = 180 / ld(np.pi)
    shift, scale, mat, t, rot = _tan_parts(w_in)
    u = (np.asarray(x, ld) + shift[0]) * scale[0]
    v = (np.asarray(y, ld) + shift[1]) * scale[1]
    px, py = mat[0, 0] * u + mat[0, 1] * v + t[0], mat[1, 0] * u + mat[1, 1] * v + t[1]
    phi, theta = np.arctan2(px, -py), np.arctan2(r0, np.hypot(px, py))
    native = np.array([np.cos(theta) * np.cos(phi), np.cos(theta) * np.sin(phi), np.sin(theta)])
    sky = np.tensordot(_native_to_celestial(*rot), native, 1)
    shift, scale, mat, t, rot = _tan_parts(w_out)
    n0, n1, n2 = np.tensordot(_native_to_celestial(*rot).T, sky, 1)
    px, py = r0 * n1 / n2 - t[0], -r0 * n0 / n2 - t[1]
    det = mat[0, 0] * mat[1, 1] - mat[0, 1] * mat[1, 0]
    u = (mat[1, 1] * px - mat[0, 1] * py) / det
    v = (-mat[1, 0] * px + mat[0, 0] * py) / det
    return u / scale[0] - shift[0], v / scale[1] - shift[1]


@pytest.mark.skipif(np.finfo(np.longdouble).eps > 1e-18, reason="long double is not 80-bit here")
def test_tan_to_tan_is_exact_to_long_double_and_closer_than_gwcs():
    w_in = tan_wcs(RA0, DEC0, rotation=3.0, pixel_scale=0.04)
    w_out = tan_wcs(pixel_scale=0.01)
    x, y = sample(n=20_000, seed=11)
    tx, ty = _tan_to_tan_long_double(w_in, w_out, x, y)
    ox, oy = compile_pixel_map(w_in, w_out)(x, y)
    gx, gy = gwcs_map(w_in, w_out, x, y)
    ours = max(np.max(np.abs(ox - tx)), np.max(np.abs(oy - ty)))
    theirs = max(np.max(np.abs(gx - tx)), np.max(np.abs(gy - ty)))
    # 0.01 arcsec/px: 5e-9 px is 2.4e-16 rad, a unit vector's rounding; gwcs rounds RA/Dec in degrees
    assert ours < 5e-9, ours
    assert 3 * ours < theirs, (ours, theirs)


def test_other_rotations_projections_and_polynomial_domains():
    """SphericalRotationSequence, EulerAngleRotation, RotationSequence3D with gwcs's conversions, polynomial
    domains and windows."""
    det, world = _frames()
    plane = (models.Polynomial2D(1, c1_0=1.0, x_domain=(0, 2048), x_window=(-1, 1), y_domain=(0, 2048),
                                 y_window=(0, 2)) & models.Polynomial1D(1, c1=1.0, domain=(0, 2048), window=(-1, 1)))
    plane = models.Mapping((0, 1, 1)) | plane | models.Scale(0.0085) & models.Scale(0.0085)  # ~0.03 arcsec/px
    sky = (models.Pix2Sky_TAN() | models.SphericalRotationSequence([10.0, -20.0, 5.0], "zyx")
           | models.EulerAngleRotation(3.0, -4.0, 7.0, "zxz"))
    from gwcs.geometry import CartesianToSpherical, SphericalToCartesian

    sky = sky | SphericalToCartesian(wrap_lon_at=180) | models.RotationSequence3D([140.0, -2.0], "zy") \
        | CartesianToSpherical(wrap_lon_at=360)
    exotic = gwcs.WCS([(det, plane | sky), (world, None)], name="exotic")
    exotic.bounding_box = ((-0.5, 2047.5), (-0.5, 2047.5))
    exotic.pixel_shape = (2048, 2048)
    w = daskcal.output_wcs([exotic])  # where it lands: far from a TAN's centre its pixels grow without bound
    x, y = sample(seed=12)
    assert_matches_gwcs(exotic, w, x, y)
    # without the polynomials (no analytic inverse) as the output
    linear = models.Shift(-1024.0) & models.Shift(-1024.0) | models.Scale(8.3e-6) & models.Scale(8.3e-6)
    invertible = gwcs.WCS([(det, linear | sky), (world, None)], name="invertible")
    assert_matches_gwcs(w, invertible, x, y)


def test_jwst_ideal_to_v2v3_frames():
    jm = pytest.importorskip("stdatamodels.jwst.transforms.models")
    w, _ = jwst_like()
    det, world = _frames()
    to_ideal = (models.Shift(-1023.5) & models.Shift(-1023.5) | models.Scale(0.031) & models.Scale(0.0305)
                | jm.IdealToV2V3(v3idlyangle=-0.55, v2ref=V2_REF, v3ref=V3_REF, vparity=-1))
    ideal = gwcs.WCS([(det, to_ideal | w.get_transform("v2v3", "world")), (world, None)], name="ideal")
    x, y = sample(seed=13)
    assert_matches_gwcs(ideal, tan_wcs(), x, y)
    assert_matches_gwcs(tan_wcs(), ideal, x, y)


def test_different_world_axes_fall_back(caplog):
    w = distorted_wcs((50, 60), RA0, DEC0, distortion=0.5)
    det, _ = _frames()
    three = gwcs.WCS([(det, w.forward_transform | models.Mapping((0, 1, 0))),
                      (gwcs.coordinate_frames.CoordinateFrame(naxes=3, axes_type=("SPATIAL",) * 3,
                                                              axes_order=(0, 1, 2), name="xyz"), None)],
                     name="cube")
    with caplog.at_level(logging.INFO, logger="daskcal.image._pixmap"):
        assert compile_pixel_map(three, w) is None
    assert [r.getMessage() for r in caplog.records] == [
        "pixel map: gwcs fallback: input WCS 'cube' has 3 world axes, output WCS 2"]
