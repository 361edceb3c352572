"""Seeded, dithered calibrated exposures with a distorted gwcs WCS.

Each exposure sees the same field of point sources (positions and fluxes kept in
the truth), a flat sky, Gaussian noise whose variance is split the way JWST
splits it (read noise, Poisson, flat) and, optionally, single-pixel cosmic rays
at recorded places. The WCS is TAN with a cubic polynomial distortion of
``distortion`` pixels at the corners, with an inverse fitted to 1e-4 px so the
WCS can be inverted (as blotting needs).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import xarray as xr

from daskcal.dq import DQ
from daskcal.image._dataset import image_dataset

__all__ = ["simulate_images", "SimulatedImages", "SimulationTruth", "distorted_wcs"]

RA0, DEC0 = 150.1, 2.2  # deg; the field centre
PSF_SIGMA = 1.2  # px


@dataclasses.dataclass(frozen=True)
class SimulationTruth:
    """What was put into the simulated exposures.

    Attributes
    ----------
    star_ra, star_dec : ndarray
        Star positions (deg, ICRS).
    star_flux : ndarray
        Star fluxes: the sum over the star in an undistorted image at the nominal
        pixel scale, in the unit of ``data`` (DN/s) times pixels.
    cosmic_rays : ndarray
        Structured array with fields ``image`` (index in ``images``), ``y``, ``x``
        (pixel) and ``amplitude`` (unit of ``data``) of every injected cosmic ray.
    sky_level : ndarray
        Sky level of each exposure (unit of ``data``), also its ``level`` attribute.
    pointing : ndarray
        ``(n, 3)``: RA, Dec (deg) of each exposure's reference pixel and its
        rotation (deg) (with several detectors: the centre of the exposure).
    wcs_errors : ndarray
        ``(n, 3)``: the error put into the WCS each exposure group carries:
        shift east and north (arcsec) and rotation (deg); zeros by default.
    sky_offsets : ndarray
        Constant (unit of ``data``) added to each image, included in ``sky_level``;
        zeros by default.
    wcs : list of gwcs.WCS
        The true WCS of each image (the one its stars were rendered with); equal
        to the WCS the image carries when ``wcs_errors`` is zero.
    """

    star_ra: np.ndarray
    star_dec: np.ndarray
    star_flux: np.ndarray
    cosmic_rays: np.ndarray
    sky_level: np.ndarray
    pointing: np.ndarray
    wcs_errors: np.ndarray | None = None
    sky_offsets: np.ndarray | None = None
    wcs: list | None = None


@dataclasses.dataclass(frozen=True)
class SimulatedImages:
    """Simulated exposures (``images``) and what went into them (``truth``)."""

    images: list[xr.Dataset]
    truth: SimulationTruth


def _distortion_model(shape, distortion, *, fit_inverse: bool = True):
    """Cubic distortion (px) about the array centre and an inverse: fitted, or (``fit_inverse=False``) the
    first-order series (the distortion's terms negated, in error by ~distortion^2 / half-size px: for tiny
    distortions, without the fit's cost)."""
    from astropy.modeling import fitting, models

    ny, nx = shape
    cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    r = max(nx, ny) / 2.0
    d = float(distortion)

    def pair(s):
        return (models.Polynomial2D(3, c1_0=1.0, c2_0=s * 0.5 * d / r**2, c1_2=s * 0.5 * d / r**3)
                & models.Polynomial2D(3, c0_1=1.0, c0_2=s * 0.5 * d / r**2, c2_1=s * 0.5 * d / r**3))

    fwd = models.Mapping((0, 1, 0, 1)) | pair(1.0)
    shift = models.Shift(-cx) & models.Shift(-cy)
    if not fit_inverse:
        fwd.inverse = models.Mapping((0, 1, 0, 1)) | pair(-1.0)
        return shift | fwd
    # fit the inverse on a grid covering the array and a margin, in units of r: coordinates of
    # order 1 keep the degree-5 least squares well conditioned (in pixels, its columns span r**5)
    g = np.linspace(-1.2 * r, 1.2 * r, 49)
    u, v = np.meshgrid(g, g)
    up, vp = fwd(u, v)
    fitter = fitting.LinearLSQFitter()
    ix = fitter(models.Polynomial2D(5), up / r, vp / r, u / r)
    iy = fitter(models.Polynomial2D(5), up / r, vp / r, v / r)
    to_unit, from_unit = models.Scale(1 / r) & models.Scale(1 / r), models.Scale(r) & models.Scale(r)
    fwd.inverse = to_unit | models.Mapping((0, 1, 0, 1)) | ix & iy | from_unit
    return shift | fwd


def distorted_wcs(shape, ra, dec, *, pixel_scale=0.03, rotation=0.0, distortion=2.0, fit_inverse=True):
    """A gwcs WCS: cubic distortion then TAN, reference pixel at the array centre.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    ra, dec : float
        Sky position (deg) of the array centre.
    pixel_scale : float, default 0.03
        Nominal pixel scale (arcsec/px).
    rotation : float, default 0.0
        Angle (deg) of the +y axis east of north.
    distortion : float, default 2.0
        Distortion (px) at the corners.
    fit_inverse : bool, default True
        Fit the distortion's inverse (a degree-5 polynomial; ~0.5 s); False: its first-order
        series, in error by ~distortion^2 / half-size px (for tiny distortions only).

    Returns
    -------
    gwcs.WCS
        With ``bounding_box`` and ``pixel_shape`` set.
    """
    import gwcs
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models

    dist = _distortion_model(shape, distortion, fit_inverse=fit_inverse)
    th = math.radians(rotation)
    # x grows to the west (RA decreases), y to the north, rotated by `rotation`
    pc = np.array([[-math.cos(th), math.sin(th)], [math.sin(th), math.cos(th)]])
    scale = pixel_scale / 3600.0
    sky = (
        models.Scale(scale) & models.Scale(scale)
        | models.AffineTransformation2D(matrix=pc)
        | models.Pix2Sky_TAN()
        | models.RotateNative2Celestial(ra, dec, 180.0)
    )
    det = gwcs.coordinate_frames.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    world = gwcs.coordinate_frames.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    w = gwcs.WCS([(det, dist | sky), (world, None)])
    ny, nx = shape
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    w.pixel_shape = (nx, ny)
    return w


#: V2, V3 (arcsec) of the reference point of a ``v2v3=True`` exposure (NIRCam-like values).
V2_REF, V3_REF = 120.0, -520.0


def v23_to_sky(v2_ref, v3_ref, roll_ref, ra_ref, dec_ref):
    """V2, V3 (arcsec) to RA, Dec (deg): the attitude rotation JWST WCSs carry.

    ``(v2_ref, v3_ref)`` (arcsec) points at ``(ra_ref, dec_ref)`` (deg) with roll
    ``roll_ref`` (deg); the rotation is a ``RotationSequence3D`` of the angles
    ``[v2_ref, -v3_ref, roll_ref, dec_ref, -ra_ref]`` (deg) about ``zyxyz``, the form
    tweakwcs and stcal read the reference angles from.
    """
    from astropy.modeling import models
    from gwcs.geometry import CartesianToSpherical, SphericalToCartesian

    angles = [v2_ref / 3600.0, -v3_ref / 3600.0, roll_ref, dec_ref, -ra_ref]
    m = (
        models.Scale(1.0 / 3600.0) & models.Scale(1.0 / 3600.0)
        | SphericalToCartesian(wrap_lon_at=180)
        | models.RotationSequence3D(angles, axes_order="zyxyz")
        | CartesianToSpherical(wrap_lon_at=360)
    )
    m.name = "v23tosky"
    return m


def v2v3_wcs(shape, wcsinfo, *, v2_det, v3_det, pixel_scale=0.03, distortion=2.0):
    """A JWST-like gwcs: detector -> ``v2v3`` -> world.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    wcsinfo : dict
        ``v2_ref``, ``v3_ref`` (arcsec), ``roll_ref``, ``ra_ref``, ``dec_ref`` (deg).
    v2_det, v3_det : float
        V2, V3 (arcsec) of the array centre.
    pixel_scale : float, default 0.03
        Nominal pixel scale (arcsec/px); detector x runs along -V2, y along +V3.
    distortion : float, default 2.0
        Distortion (px) at the corners.
    """
    import gwcs
    from astropy import coordinates as coord
    from astropy import units as u
    from astropy.modeling import models

    to_v2v3 = (
        _distortion_model(shape, distortion)
        | models.Scale(-pixel_scale) & models.Scale(pixel_scale)
        | models.Shift(v2_det) & models.Shift(v3_det)
    )
    sky = v23_to_sky(wcsinfo["v2_ref"], wcsinfo["v3_ref"], wcsinfo["roll_ref"], wcsinfo["ra_ref"],
                     wcsinfo["dec_ref"])
    det = gwcs.coordinate_frames.Frame2D(name="detector", axes_order=(0, 1), unit=(u.pix, u.pix))
    v2v3 = gwcs.coordinate_frames.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"),
                                          unit=(u.arcsec, u.arcsec))
    world = gwcs.coordinate_frames.CelestialFrame(reference_frame=coord.ICRS(), name="world", unit=(u.deg, u.deg))
    w = gwcs.WCS([(det, to_v2v3), (v2v3, sky), (world, None)])
    ny, nx = shape
    w.bounding_box = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    w.pixel_shape = (nx, ny)
    return w


def _render_stars(shape, xs, ys, counts):
    """Pixel-integrated Gaussian stars (sum = counts, up to the array edge)."""
    from scipy.special import erf

    img = np.zeros(shape, np.float64)
    ny, nx = shape
    h = int(math.ceil(6 * PSF_SIGMA))
    s2 = math.sqrt(2.0) * PSF_SIGMA
    for x, y, c in zip(xs, ys, counts):
        x0, x1 = max(int(x) - h, 0), min(int(x) + h + 2, nx)
        y0, y1 = max(int(y) - h, 0), min(int(y) + h + 2, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        ex = np.arange(x0, x1 + 1) - 0.5 - x
        ey = np.arange(y0, y1 + 1) - 0.5 - y
        fx = np.diff(0.5 * erf(ex / s2))
        fy = np.diff(0.5 * erf(ey / s2))
        img[y0:y1, x0:x1] += c * np.outer(fy, fx)
    return img


def _pixel_area_ratio(dist, x, y):
    """Local pixel area / nominal area of the distortion at (x, y) (finite differences)."""
    e = 0.5
    xa, ya = dist(x + e, y)
    xb, yb = dist(x - e, y)
    xc, yc = dist(x, y + e)
    xd, yd = dist(x, y - e)
    return np.abs((xa - xb) * (yc - yd) - (ya - yb) * (xc - xd))


def simulate_images(
    n: int = 8,
    shape: tuple[int, int] = (512, 512),
    *,
    seed: int = 0,
    distortion: float = 2.0,
    pixel_scale: float = 0.03,
    dither: float | None = None,
    rotation: float = 0.5,
    n_stars: int | None = None,
    cosmic_rays: int = 0,
    exposure_time: float = 100.0,
    sky: float = 1.0,
    bad_fraction: float = 0.002,
    detectors: int = 1,
    wcs_errors=None,
    sky_offsets=None,
    v2v3: bool = False,
) -> SimulatedImages:
    """Simulate ``n`` dithered calibrated exposures of one star field.

    Parameters
    ----------
    n : int, default 8
        Number of exposures (each its own exposure group ``"exp{i}"``).
    shape : tuple of int, default (512, 512)
        ``(ny, nx)`` of each image.
    seed : int, default 0
        Seed of everything random.
    distortion : float, default 2.0
        Polynomial distortion (px) at the corners.
    pixel_scale : float, default 0.03
        Nominal pixel scale (arcsec/px).
    dither : float, optional
        Largest pointing offset (px) along each axis; default 15% of the larger
        image side. Offsets are uniform in ``[-dither, dither]`` with sub-pixel parts.
    rotation : float, default 0.5
        Largest roll (deg) of an exposure about its centre.
    n_stars : int, optional
        Stars in the field; default one per 4000 px of one exposure (all detectors).
    cosmic_rays : int, default 0
        Single-pixel cosmic rays injected into each image (recorded in truth).
    exposure_time : float, default 100.0
        Exposure time (s) of each exposure; the measurement time is 95% of it.
    sky : float, default 1.0
        Mean sky level (DN/s); each image's level varies by up to 20%.
    bad_fraction : float, default 0.002
        Fraction of pixels flagged ``DO_NOT_USE`` (their data set to 1e4).
    detectors : int, default 1
        Images per exposure: detectors side by side along x (gap of 1/16 of the
        width), sharing the exposure's pointing and ``group_id``; with more than
        one they are named ``sim{i:03d}_d{k}_cal`` (k from 1).
    wcs_errors : array-like, optional
        ``(n, 3)`` (or ``(3,)`` for every exposure): error of the WCS each exposure
        carries (all its detectors alike): shift east and north (arcsec) and
        rotation (deg) about the exposure centre. The stars are rendered with the
        true WCS (``truth.wcs``). Default: no error.
    sky_offsets : array-like, optional
        Constant (unit of ``data``) added to each image (``n * detectors`` values, or
        one for all); included in the ``level`` attribute and ``truth.sky_level``.
    v2v3 : bool, default False
        Give each image a JWST-like WCS, detector -> ``v2v3`` -> world
        (:func:`v2v3_wcs`), and a ``wcsinfo`` attribute (``v2_ref``, ``v3_ref``,
        ``roll_ref``, ``ra_ref``, ``dec_ref``, ``v3yangle``, ``vparity``) instead of the
        plain distorted TAN WCS.

    Returns
    -------
    SimulatedImages
        ``images`` (list of :func:`daskcal.image_dataset`, exposure-major) and ``truth``.
    """
    if n < 1:
        msg = f"n must be at least 1; got {n}"
        raise ValueError(msg)
    ny, nx = (int(s) for s in shape)
    if ny < 8 or nx < 8:
        msg = f"shape must be at least (8, 8); got {shape}"
        raise ValueError(msg)
    if int(detectors) != detectors or detectors < 1:
        msg = f"detectors must be a positive integer; got {detectors!r}"
        raise ValueError(msg)
    detectors = int(detectors)
    errors = _per_item(wcs_errors, (n, 3), "wcs_errors")
    offsets = _per_item(sky_offsets, (n * detectors,), "sky_offsets")
    rng = np.random.default_rng(seed)
    if dither is None:
        dither = 0.15 * max(ny, nx)
    gap = max(nx // 16, 1)
    width = detectors * nx + (detectors - 1) * gap
    if n_stars is None:
        n_stars = max(1, ny * width // 4000)

    # pointings: offsets (px) in the tangent plane of the field centre
    offs = rng.uniform(-dither, dither, size=(n, 2)) if n > 1 else np.zeros((1, 2))
    rots = rng.uniform(-rotation, rotation, size=n) if rotation else np.zeros(n)
    from astropy.modeling import models

    tan = models.Pix2Sky_TAN() | models.RotateNative2Celestial(RA0, DEC0, 180.0)
    deg = pixel_scale / 3600.0
    p_ra, p_dec = tan(-offs[:, 0] * deg, offs[:, 1] * deg)

    # stars uniform over the area the exposures cover
    half = np.array([width, ny]) / 2.0 + dither
    sx = rng.uniform(-half[0], half[0], n_stars)
    sy = rng.uniform(-half[1], half[1], n_stars)
    s_ra, s_dec = tan(-sx * deg, sy * deg)
    s_flux = 10 ** rng.uniform(2.0, 4.0, n_stars)

    layout = _Layout(shape=(ny, nx), detectors=detectors, gap=gap, pixel_scale=pixel_scale,
                     distortion=distortion, v2v3=v2v3)
    images, crs, levels, true_wcs = [], [], [], []
    for i in range(n):
        pointing = (float(p_ra[i]), float(p_dec[i]), float(rots[i]))
        for k in range(detectors):
            m = i * detectors + k
            wcs, info = layout.wcs(pointing, k)
            carried, carried_info = (wcs, info) if errors is None else layout.wcs(pointing, k, errors[i])
            true_wcs.append(wcs)
            x, y = wcs.invert(s_ra, s_dec, with_bounding_box=False)
            inside = (x > -10) & (x < nx + 10) & (y > -10) & (y < ny + 10)
            area = _pixel_area_ratio(_distortion_model((ny, nx), distortion), x[inside], y[inside])
            signal = _render_stars((ny, nx), x[inside], y[inside], s_flux[inside] / area)
            level = sky * (1.0 + rng.uniform(-0.2, 0.2))
            if offsets is not None:
                level += float(offsets[m])
            levels.append(level)
            rn_var = (0.05**2) * rng.uniform(0.8, 1.2, (ny, nx))
            total = signal + level
            var_poisson = np.maximum(total, 0.0) / exposure_time
            var_flat = (0.002 * total) ** 2
            var = rn_var + var_poisson + var_flat
            data = total + rng.standard_normal((ny, nx)) * np.sqrt(var)
            dq = np.zeros((ny, nx), np.uint32)
            bad = rng.random((ny, nx)) < bad_fraction
            dq[bad] = DQ.DO_NOT_USE
            data[bad] = 1.0e4
            jump = rng.random((ny, nx)) < bad_fraction
            dq[jump] |= np.uint32(DQ.JUMP_DET)
            if cosmic_rays:
                cy = rng.integers(0, ny, cosmic_rays)
                cx = rng.integers(0, nx, cosmic_rays)
                amp = rng.uniform(50.0, 500.0, cosmic_rays) * np.sqrt(var[cy, cx])
                np.add.at(data, (cy, cx), amp)
                crs.extend(zip([m] * cosmic_rays, cy, cx, amp))
            start = 60000.0 + i * 0.01
            extra = {} if carried_info is None else {"wcsinfo": carried_info}
            images.append(
                image_dataset(
                    data.astype(np.float32),
                    carried,
                    dq=dq,
                    var_rnoise=rn_var.astype(np.float32),
                    var_poisson=var_poisson.astype(np.float32),
                    var_flat=var_flat.astype(np.float32),
                    exposure_time=exposure_time,
                    measurement_time=0.95 * exposure_time,
                    start_time=start,
                    end_time=start + exposure_time / 86400.0,
                    duration=exposure_time,
                    group_id=f"exp{i}",
                    name=f"sim{i:03d}_cal" if detectors == 1 else f"sim{i:03d}_d{k + 1}_cal",
                    level=float(level),
                    subtracted=False,
                    bunit_data="DN/s",
                    **extra,
                )
            )
    cr_dtype = [("image", "i4"), ("y", "i4"), ("x", "i4"), ("amplitude", "f8")]
    truth = SimulationTruth(
        star_ra=np.asarray(s_ra),
        star_dec=np.asarray(s_dec),
        star_flux=s_flux,
        cosmic_rays=np.array(crs, dtype=cr_dtype),
        sky_level=np.array(levels),
        pointing=np.column_stack([p_ra, p_dec, rots]),
        wcs_errors=np.zeros((n, 3)) if errors is None else errors,
        sky_offsets=np.zeros(n * detectors) if offsets is None else offsets,
        wcs=true_wcs,
    )
    return SimulatedImages(images=images, truth=truth)


def _per_item(value, shape, name):
    """``value`` broadcast to ``shape`` as float64 (None stays None)."""
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.float64)
    try:
        out = np.array(np.broadcast_to(arr, shape))
    except ValueError:
        msg = f"{name} must have shape {shape} (or broadcast to it); got shape {arr.shape}"
        raise ValueError(msg) from None
    if not np.isfinite(out).all():
        msg = f"{name} must be finite; got {value!r}"
        raise ValueError(msg)
    return out


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each detector of an exposure points, with or without a WCS error."""

    shape: tuple[int, int]
    detectors: int
    gap: int
    pixel_scale: float
    distortion: float
    v2v3: bool

    def _offset(self, k):
        """Offset (px) of detector ``k``'s centre from the exposure centre along x."""
        return (k - (self.detectors - 1) / 2.0) * (self.shape[1] + self.gap)

    def wcs(self, pointing, k, error=None):
        """WCS (and ``wcsinfo`` or None) of detector ``k``; ``error`` = (east, north arcsec, deg)."""
        from astropy.modeling import models

        ra, dec, rot = pointing
        if error is not None:
            # the exposure centre moves in its own tangent plane and the roll changes
            tan_c = models.Pix2Sky_TAN() | models.RotateNative2Celestial(ra, dec, 180.0)
            ra, dec = (float(v) for v in tan_c(error[0] / 3600.0, error[1] / 3600.0))
            rot = rot + float(error[2])
        if self.v2v3:
            info = {"v2_ref": V2_REF, "v3_ref": V3_REF, "roll_ref": rot, "ra_ref": ra, "dec_ref": dec,
                    "v3yangle": 0.0, "vparity": -1}
            u = self._offset(k) * self.pixel_scale
            w = v2v3_wcs(self.shape, info, v2_det=V2_REF - u, v3_det=V3_REF, pixel_scale=self.pixel_scale,
                         distortion=self.distortion)
            return w, info
        if self.detectors > 1:
            th = math.radians(rot)
            pc = np.array([[-math.cos(th), math.sin(th)], [math.sin(th), math.cos(th)]])
            xi, eta = pc @ np.array([self._offset(k) * self.pixel_scale / 3600.0, 0.0])
            tan_c = models.Pix2Sky_TAN() | models.RotateNative2Celestial(ra, dec, 180.0)
            ra, dec = (float(v) for v in tan_c(xi, eta))
        w = distorted_wcs(self.shape, ra, dec, pixel_scale=self.pixel_scale, rotation=rot,
                          distortion=self.distortion)
        return w, None
