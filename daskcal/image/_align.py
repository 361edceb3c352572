"""``daskcal.align``: tweakreg (relative and absolute astrometric alignment) with tweakwcs.

Source catalogs are Dask tasks, one per exposure (reading that exposure's chunks),
computed together in one ``dask.compute``; only the small tables come back. The
fits run on the client with tweakwcs (``XYXYMatch`` + ``align_wcs``), as stcal's
``relative_align``/``absolute_align`` call them, and each exposure's WCS gets the
tangent-plane correction as a ``v2v3corr`` frame (tweakwcs ``JWSTWCSCorrector``).

A WCS without a ``v2v3`` frame (a plain detector -> world gwcs) is first written
as detector -> ``v2v3`` -> world, where ``v2v3`` is a tangent frame (arcsec) whose
origin points at the image centre with roll 0: the same correction model as
JWST's, exactly equivalent to the original WCS before the fit.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from daskcal._params import param
from daskcal.image._catalogs import (
    STARFINDERS,
    find_sources,
    read_catalog,
    read_reference_catalog,
)
from daskcal.image._dataset import get_wcs, keeps_parsed_wcs, wcs_to_text

__all__ = ["WEB_CATALOGS", "AlignParameters", "AlignResult", "align"]

log = logging.getLogger(__name__)

#: Reference catalogs the reference fetches from the web (unsupported offline).
WEB_CATALOGS = ("GAIAREFCAT", "GAIADR1", "GAIADR2", "GAIADR3", "GAIADR3_S3")
FITGEOMETRIES = ("shift", "rshift", "rscale", "general")
#: group_id tweakwcs sees for the absolute fit (all exposures as one), as stcal's 987654
_ABS_GROUP = "__absolute__"


@dataclasses.dataclass(frozen=True)
class AlignParameters:
    """Parameters of :func:`align`; defaults are the JWST tweakreg step's."""

    starfinder: str = param("iraf", "star finder: iraf, dao or segmentation", section="source finding")
    snr_threshold: float = param(10.0, "detection threshold above the background, in background RMS")
    kernel_fwhm: float = param(2.5, "Gaussian kernel FWHM", "px")
    bkg_boxsize: int = param(400, "background mesh box size", "px")
    minsep_fwhm: float = param(0.0, "minimum separation of detected objects (iraf/dao)", "FWHM")
    sigma_radius: float = param(1.5, "truncation radius of the Gaussian kernel (iraf/dao)", "sigma")
    sharplo: float = param(0.5, "lower bound on sharpness (iraf/dao)")
    sharphi: float = param(2.0, "upper bound on sharpness (iraf/dao)")
    roundlo: float = param(0.0, "lower bound on roundness (iraf/dao)")
    roundhi: float = param(0.2, "upper bound on roundness (iraf/dao)")
    brightest: int | None = param(200, "keep the brightest N objects (iraf/dao)")
    peakmax: float | None = param(None, "drop objects with a peak >= peakmax (iraf/dao)", "unit of data")
    npixels: int = param(10, "minimum connected pixels of a source (segmentation)", "px")
    connectivity: int = param(8, "pixel connectivity, 4 or 8 (segmentation)")
    nlevels: int = param(32, "multi-thresholding levels for deblending (segmentation)")
    contrast: float = param(0.001, "flux fraction an object needs to be deblended (segmentation)")
    multithresh_mode: str = param("exponential", "exponential, linear or sinh (segmentation)")
    localbkg_width: int = param(0, "width of the local background annulus (segmentation)", "px")
    apermask_method: str = param("correct", "correct, mask or none (segmentation)")
    kron_params: tuple | None = param(None, "Kron aperture parameters, 2 or 3 values (segmentation; None = 2.5 1.4 0)",
                                      cli={"type": float, "nargs": "+"})
    deblend: bool = param(True, "deblend sources (segmentation)")
    enforce_user_order: bool = param(False, "align exposure groups in the order given", section="relative alignment")
    expand_refcat: bool = param(False, "add unmatched sources of aligned groups to the reference catalog")
    minobj: int = param(15, "minimum matched objects for a fit")
    fitgeometry: str = param("rshift", "shift, rshift, rscale or general")
    nclip: int = param(3, "clipping iterations of the fit")
    sigma: float = param(3.0, "clipping limit", "sigma")
    searchrad: float = param(2.0, "search radius for a match", "arcsec")
    use2dhist: bool = param(True, "find the initial offset with a 2-D histogram")
    separation: float = param(1.0, "minimum object separation (> sqrt(2) tolerance)", "arcsec")
    tolerance: float = param(0.7, "matching tolerance", "arcsec")
    xoffset: float = param(0.0, "initial guess of the x offset", "arcsec")
    yoffset: float = param(0.0, "initial guess of the y offset", "arcsec")
    abs_refcat: str | None = param(
        "", "reference catalog file (RA, DEC in deg, optional weight); '' = none",
        section="absolute alignment ('' = none; a file with RA, DEC columns in deg; web catalogs are not fetched)")
    abs_minobj: int = param(15, "minimum matched objects for the absolute fit")
    abs_fitgeometry: str = param("rshift", "shift, rshift, rscale or general (absolute fit)")
    abs_nclip: int = param(3, "clipping iterations of the absolute fit")
    abs_sigma: float = param(3.0, "clipping limit of the absolute fit", "sigma")
    abs_searchrad: float = param(6.0, "search radius for a match (absolute)", "arcsec")
    abs_use2dhist: bool = param(True, "2-D histogram for the initial offset (absolute)")
    abs_separation: float = param(1.0, "minimum object separation (absolute; > sqrt(2) abs_tolerance)", "arcsec")
    abs_tolerance: float = param(0.7, "matching tolerance (absolute)", "arcsec")

    def __post_init__(self):
        _choice(self.starfinder, STARFINDERS, "starfinder")
        _choice(self.fitgeometry, FITGEOMETRIES, "fitgeometry")
        _choice(self.abs_fitgeometry, FITGEOMETRIES, "abs_fitgeometry")
        _choice(self.multithresh_mode, ("exponential", "linear", "sinh"), "multithresh_mode")
        _choice(self.apermask_method, ("correct", "mask", "none"), "apermask_method")
        _choice(int(self.connectivity), (4, 8), "connectivity")
        for name in ("snr_threshold", "bkg_boxsize", "searchrad", "tolerance", "abs_searchrad", "abs_tolerance",
                     "sigma", "abs_sigma", "npixels", "nlevels"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                msg = f"{name} must be a positive number; got {v!r}"
                raise ValueError(msg)
        for name in ("kernel_fwhm", "minsep_fwhm", "sigma_radius", "contrast", "localbkg_width"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                msg = f"{name} must be a non-negative number; got {v!r}"
                raise ValueError(msg)
        for name in ("minobj", "abs_minobj", "nclip", "abs_nclip"):
            v = getattr(self, name)
            if int(v) != v or v < 0:
                msg = f"{name} must be a non-negative integer; got {v!r}"
                raise ValueError(msg)
        if self.brightest is not None and (int(self.brightest) != self.brightest or self.brightest < 1):
            msg = f"brightest must be a positive integer or None; got {self.brightest!r}"
            raise ValueError(msg)
        if self.kron_params is not None and len(self.kron_params) not in (2, 3):
            msg = f"kron_params must have 2 or 3 values; got {self.kron_params!r}"
            raise ValueError(msg)
        for sep, tol, prefix in ((self.separation, self.tolerance, ""), (self.abs_separation, self.abs_tolerance,
                                                                          "abs_")):
            if sep <= math.sqrt(2.0) * tol:
                msg = (f"{prefix}separation ({sep}) must exceed sqrt(2) times {prefix}tolerance ({tol}) "
                       f"to avoid source confusion")
                raise ValueError(msg)


def _choice(value, allowed, name):
    if value not in allowed:
        msg = f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}"
        raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class AlignResult:
    """Aligned exposures and the fits.

    Attributes
    ----------
    images : list of xarray.Dataset
        New datasets, same order as the input; a WCS that was fit carries the
        correction (``v2v3corr`` frame) and every one an attribute ``tweakreg``.
    fits : dict
        ``{group_id: fit}`` of the relative alignment: ``status`` (tweakwcs's,
        ``SUCCESS``, ``REFERENCE`` or ``FAILED: ...``), ``fitgeom``, ``shift``
        (arcsec), ``rotation`` (deg), ``scale``, ``skew`` (deg), ``rmse``, ``mae``
        (arcsec), ``nmatches``, ``matrix``.
    absolute : dict or None
        The one fit of all exposures to ``abs_refcat`` (same keys), if asked.
    catalogs : dict
        ``{name: astropy.table.Table}`` of the sources used (``x``, ``y`` in px).
    """

    images: list[xr.Dataset]
    fits: dict[str, dict]
    absolute: dict | None
    catalogs: dict


@keeps_parsed_wcs
def align(images: Sequence[xr.Dataset], *, catalogs: Mapping[str, Any] | None = None, **params) -> AlignResult:
    """Align exposures to each other (and to a reference catalog) by fitting source catalogs.

    Parameters
    ----------
    images : sequence of xarray.Dataset
        Calibrated exposures (:func:`daskcal.image_dataset`), grouped by their
        ``group_id`` attribute: one correction per group.
    catalogs : mapping, optional
        ``{exposure name or file name: catalog path}``: user source catalogs
        (``x``/``y`` or ``xcentroid``/``ycentroid`` in 0-based px, optional ``weight``)
        used instead of finding sources in those exposures.
    **params
        :class:`AlignParameters` (the JWST tweakreg step's parameters and defaults).

    Returns
    -------
    AlignResult
        New datasets (inputs untouched), fits per group, the absolute fit.
        A group with too few sources or a failed fit keeps its WCS (logged warning).
    """
    p = AlignParameters(**params)
    images = list(images)
    if not images:
        msg = "images is empty; expected at least one calibrated exposure"
        raise ValueError(msg)
    for k, ds in enumerate(images):
        if not isinstance(ds, xr.Dataset) or "data" not in ds:
            msg = f"images[{k}] must be an xarray.Dataset with a 'data' variable; got {type(ds).__name__}"
            raise TypeError(msg)
    refcat = _reference_catalog(p.abs_refcat)
    if refcat is not None and not p.expand_refcat:
        # as the reference: no duplicate entries when the result goes to an absolute catalog
        p = dataclasses.replace(p, expand_refcat=True)
    names = _names(images)
    user = _user_catalogs(names, catalogs)
    tables = _compute_catalogs(images, user, p)
    groups = [str(ds.attrs.get("group_id") or name) for ds, name in zip(images, names)]
    originals = [get_wcs(ds) for ds in images]
    correctors = [_corrector(w, ds, t, g, n) for w, ds, t, g, n in zip(originals, images, tables, groups, names)]

    n_groups = len(set(groups))
    for name, table in zip(names, tables):
        (log.info if len(table) else log.warning)("%s: %d sources", name, len(table))
    final = list(originals)
    fits: dict[str, dict] = {}
    if n_groups > 1:
        fits, final = _relative(correctors, groups, originals, p)
    else:
        fits = {groups[0]: {"status": "SKIPPED: one exposure group"}}
        if refcat is None:
            log.warning("alignment needs two exposure groups or more (got one) or abs_refcat; WCSs unchanged")
    absolute = None
    if refcat is not None:
        absolute, final = _absolute(final, images, tables, groups, names, refcat, p)

    out = []
    for ds, wcs, orig, table, group in zip(images, final, originals, tables, groups):
        info = {"group_id": group, "n_sources": len(table), **fits.get(group, {}),
                "absolute": absolute}
        attrs = {"tweakreg": _jsonable(info)}
        if wcs is not orig:
            attrs["wcs_asdf"] = wcs_to_text(wcs)
        out.append(ds.assign_attrs(attrs))
    return AlignResult(images=out, fits=fits, absolute=absolute, catalogs=dict(zip(names, tables)))


# -- catalogs -------------------------------------------------------------------------------------

def _names(images) -> list[str]:
    names: list[str] = []
    for k, ds in enumerate(images):
        name = str(ds.attrs.get("name") or f"image{k}")
        names.append(name if name not in names else f"{name}_{k}")
    return names


def _key(name: str) -> str:
    stem = Path(str(name)).name
    for suffix in (".fits", ".zarr", ".asdf"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem.removesuffix("_cal")


def _user_catalogs(names, catalogs) -> list:
    if catalogs is None:
        return [None] * len(names)
    if not isinstance(catalogs, Mapping):
        msg = f"catalogs must be a mapping of exposure name to catalog file; got {type(catalogs).__name__}"
        raise TypeError(msg)
    by_key = {_key(n): i for i, n in enumerate(names)}
    out: list = [None] * len(names)
    for key, path in catalogs.items():
        i = by_key.get(_key(key))
        if i is None:
            msg = f"catalogs: {key!r} names no input exposure; expected one of {', '.join(names)}"
            raise ValueError(msg)
        if path is not None and str(path).strip():
            out[i] = read_catalog(path)
    return out


def _catalog_task(data, dq, err, params):
    """One exposure's sources (a Dask task: the arrays arrive as NumPy or are read here, the table goes back)."""
    from daskcal.io._zarr_read import materialize

    return find_sources(materialize(data), materialize(dq), materialize(err), params)


def _compute_catalogs(images, user, p: AlignParameters) -> list:
    """User catalogs as given; the others found by photutils in one ``dask.compute``."""
    import dask

    from daskcal.io._zarr_read import whole_argument

    todo = [i for i, cat in enumerate(user) if cat is None]
    tasks = []
    for i in todo:
        ds = images[i]
        dq = whole_argument(ds["dq"].data) if "dq" in ds else None
        err = whole_argument(ds["err"].data) if (p.starfinder == "segmentation" and "err" in ds) else None
        tasks.append(dask.delayed(_catalog_task, pure=True)(whole_argument(ds["data"].data), dq, err, p))
    found = dask.compute(*tasks) if tasks else ()
    out = list(user)
    for i, table in zip(todo, found):
        out[i] = table
    return out


# -- WCS correctors -------------------------------------------------------------------------------

def _ref_angles(wcs, wcsinfo) -> dict | None:
    """``v2_ref``, ``v3_ref`` (arcsec), ``roll_ref`` (deg) of a WCS with a ``v2v3`` frame."""
    from astropy.modeling.models import RotationSequence3D

    frames = wcs.available_frames
    if "v2v3corr" in frames:
        frm = "v2v3vacorr" if "v2v3vacorr" in frames else "v2v3"
        v2, nv3, roll = wcs.get_transform(frm, "v2v3corr")["det_to_optic_axis"].angles.value
        return {"v2_ref": 3600.0 * v2, "v3_ref": -3600.0 * nv3, "roll_ref": float(roll)}
    for m in wcs.get_transform(frames[-2], frames[-1]):
        if isinstance(m, RotationSequence3D) and m.parameters.size == 5:
            v2, nv3, roll = m.angles.value[:3]
            return {"v2_ref": 3600.0 * v2, "v3_ref": -3600.0 * nv3, "roll_ref": float(roll)}
    if wcsinfo and all(k in wcsinfo for k in ("v2_ref", "v3_ref", "roll_ref")):
        return {k: float(wcsinfo[k]) for k in ("v2_ref", "v3_ref", "roll_ref")}
    return None


def with_v2v3(wcs, shape):
    """A plain detector -> world gwcs as detector -> ``v2v3`` -> world (same mapping).

    The ``v2v3`` frame is the tangent plane (arcsec) at the image centre, roll 0:
    ``v2v3 -> world`` is the JWST attitude rotation with ``v2_ref = v3_ref = 0``,
    ``roll_ref = 0`` and ``ra_ref, dec_ref`` the centre's sky position. Returns the
    new WCS and its reference angles.
    """
    import gwcs
    from astropy import units as u

    from daskcal.image._simulate import v23_to_sky

    ny, nx = shape
    ra, dec = (float(v) for v in wcs.forward_transform((nx - 1) / 2.0, (ny - 1) / 2.0))
    v23 = v23_to_sky(0.0, 0.0, 0.0, ra, dec)
    v2v3 = gwcs.coordinate_frames.Frame2D(name="v2v3", axes_order=(0, 1), axes_names=("v2", "v3"),
                                          unit=(u.arcsec, u.arcsec))
    fwd = wcs.forward_transform
    to_v2v3 = fwd | v23.inverse
    try:
        to_v2v3.inverse = v23 | fwd.inverse
    except NotImplementedError:
        pass
    w = gwcs.WCS([(wcs.input_frame, to_v2v3), (v2v3, v23), (wcs.output_frame, None)], name=wcs.name)
    w.bounding_box = wcs.bounding_box
    w.pixel_shape = wcs.pixel_shape if wcs.pixel_shape is not None else (nx, ny)
    return w, {"v2_ref": 0.0, "v3_ref": 0.0, "roll_ref": 0.0}


def _filter_bbox(table, bbox):
    if bbox is None or len(table) == 0:
        return table
    (x0, x1), (y0, y1) = bbox
    x, y = table["x"], table["y"]
    return table[(x > x0) & (x < x1) & (y > y0) & (y < y1)]


def _corrector(wcs, ds, table, group, name):
    from tweakwcs.correctors import JWSTWCSCorrector

    if "v2v3" in wcs.available_frames:
        refang = _ref_angles(wcs, ds.attrs.get("wcsinfo"))
        if refang is None:
            msg = (f"{name}: its WCS has a v2v3 frame but no v2_ref/v3_ref/roll_ref (in the v2v3 -> world "
                   f"rotation or a wcsinfo attribute)")
            raise ValueError(msg)
    else:
        wcs, refang = with_v2v3(wcs, ds["data"].shape)
    table = _filter_bbox(table, wcs.bounding_box)
    table.meta["name"] = name
    return JWSTWCSCorrector(wcs=wcs, wcsinfo=refang, meta={"catalog": table, "name": name, "group_id": group})


# -- fits -----------------------------------------------------------------------------------------

def _fit_summary(fit_info: dict | None) -> dict:
    if not fit_info:
        return {"status": "FAILED: not fitted"}
    out = {"status": str(fit_info.get("status", "FAILED: unknown"))}
    keys = {"fitgeom": "fitgeom", "shift": "shift", "<rot>": "rotation", "<scale>": "scale", "skew": "skew",
            "rmse": "rmse", "mae": "mae", "nmatches": "nmatches", "matrix": "matrix"}
    for src, dst in keys.items():
        if src in fit_info:
            out[dst] = fit_info[src]
    return _jsonable(out)


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating | float):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _run_align_wcs(correctors, what: str, **kw) -> bool:
    """tweakwcs ``align_wcs``; False (warning logged) when it cannot align anything."""
    from tweakwcs.imalign import align_wcs

    try:
        align_wcs(correctors, **kw)
    except ValueError as exc:  # tweakwcs NotEnoughCatalogs and friends
        log.warning("%s alignment not performed: %s", what, exc)
        return False
    except RuntimeError as exc:
        log.warning("%s alignment not performed: %s (several sources within tolerance matched one reference "
                    "source; adjust tolerance/separation)", what, exc)
        return False
    return True


def _max_move(corrector) -> float:
    """Largest sky distance (arcsec) the correction moved a footprint corner."""
    from astropy.coordinates import SkyCoord

    a = corrector.wcs.footprint(axis_type="spatial")
    b = corrector.original_wcs.footprint(axis_type="spatial")
    sep = SkyCoord(a[:, 0], a[:, 1], unit="deg").separation(SkyCoord(b[:, 0], b[:, 1], unit="deg"))
    return float(np.max(sep.arcsec))


def _relative(correctors, groups, originals, p: AlignParameters):
    from tweakwcs.matchutils import XYXYMatch

    match = XYXYMatch(searchrad=p.searchrad, separation=p.separation, use2dhist=p.use2dhist,
                      tolerance=p.tolerance, xoffset=p.xoffset, yoffset=p.yoffset)
    ok = _run_align_wcs(correctors, "relative", refcat=None, enforce_user_order=p.enforce_user_order,
                        expand_refcat=p.expand_refcat, minobj=p.minobj, match=match, fitgeom=p.fitgeometry,
                        nclip=p.nclip, sigma=(p.sigma, "rmse"), clip_accum=False)
    fits: dict[str, dict] = {}
    final = list(originals)
    if not ok:
        return {g: {"status": "FAILED: not aligned"} for g in dict.fromkeys(groups)}, final
    # the reference's sanity bound on a correction (stcal _is_wcs_correction_small)
    if p.use2dhist:
        max_corr = 2.0 * (p.searchrad + p.tolerance)
    else:
        max_corr = 2.0 * (max(abs(p.xoffset), abs(p.yoffset)) + p.tolerance)
    too_big = {g for c, g in zip(correctors, groups) if _max_move(c) >= max_corr}
    for c, g, k in zip(correctors, groups, range(len(groups))):
        fit = fits.setdefault(g, _fit_summary(c.meta.get("fit_info")))
        if g in too_big:
            fit["status"] = f"FAILED: correction larger than {max_corr:g} arcsec"
        if fit["status"] == "SUCCESS":
            final[k] = c.wcs
    _log_fits(fits)
    return fits, final


def _log_fits(fits: dict[str, dict]) -> None:
    """One info line per aligned group; the groups left unaligned in one warning, by reason (not one per group)."""
    failed: dict[str, list[str]] = {}
    for g, fit in fits.items():
        if fit["status"] in ("SUCCESS", "REFERENCE"):
            log.info("tweakreg group %s: %s shift %s arcsec, rotation %s deg, scale %s, rmse %s arcsec, "
                     "%s matches", g, fit["status"], fit.get("shift"), fit.get("rotation"), fit.get("scale"),
                     fit.get("rmse"), fit.get("nmatches"))
        else:
            failed.setdefault(fit["status"].removeprefix("FAILED: "), []).append(str(g))
    if failed:
        reasons = "; ".join(f"{reason}: {', '.join(groups)}" for reason, groups in failed.items())
        log.warning("tweakreg: WCS unchanged for %d of %d exposure groups (%s)",
                    sum(map(len, failed.values())), len(fits), reasons)


def _reference_catalog(abs_refcat):
    if abs_refcat is None or not str(abs_refcat).strip():
        return None
    name = str(abs_refcat).strip()
    if name.upper() in WEB_CATALOGS:
        msg = (f"abs_refcat {name!r} is a web catalog, which daskcal does not fetch (it runs offline); "
               f"give a catalog file with RA and DEC columns (deg)")
        raise ValueError(msg)
    return read_reference_catalog(name)


def _absolute(wcss, images, tables, groups, names, refcat, p: AlignParameters):
    """One fit of all exposures (starting from their relatively aligned WCSs) to ``refcat``."""
    from tweakwcs.matchutils import XYXYMatch

    if len(refcat) < p.abs_minobj:
        log.warning("abs_refcat %s has %d sources, fewer than abs_minobj (%d); absolute alignment not performed",
                    refcat.meta.get("name"), len(refcat), p.abs_minobj)
        return {"status": f"FAILED: {len(refcat)} reference sources < abs_minobj"}, wcss
    correctors = [_corrector(w, ds, t, _ABS_GROUP, n) for w, ds, t, n in zip(wcss, images, tables, names)]
    match = XYXYMatch(searchrad=p.abs_searchrad, separation=p.abs_separation, use2dhist=p.abs_use2dhist,
                      tolerance=p.abs_tolerance, xoffset=0.0, yoffset=0.0)
    ok = _run_align_wcs(correctors, "absolute", refcat=refcat, enforce_user_order=True, expand_refcat=False,
                        minobj=p.abs_minobj, match=match, fitgeom=p.abs_fitgeometry, nclip=p.abs_nclip,
                        sigma=(p.abs_sigma, "rmse"), clip_accum=False)
    if not ok:
        return {"status": "FAILED: not aligned"}, wcss
    fit = _fit_summary(correctors[0].meta.get("fit_info"))
    if fit["status"] != "SUCCESS":
        log.warning("absolute alignment to %s failed (%s); WCSs keep the relative alignment",
                    refcat.meta.get("name"), fit["status"])
        return fit, wcss
    log.info("absolute alignment to %s: shift %s arcsec, rotation %s deg, rmse %s arcsec, %s matches",
             refcat.meta.get("name"), fit.get("shift"), fit.get("rotation"), fit.get("rmse"), fit.get("nmatches"))
    out = []
    for c in correctors:
        w = c.wcs
        w.name = f"FIT-LVL3-{refcat.meta.get('name')}"
        out.append(w)
    return fit, out
