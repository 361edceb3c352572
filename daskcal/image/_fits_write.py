"""JWST-style FITS products that ``stdatamodels`` opens as an ``ImageModel``.

- :func:`write_cal_fits` writes an image dataset as a ``_cal.fits`` file.
- :func:`write_crf_fits` writes an exposure after outlier detection as a ``_crf.fits``
  file: SCI, ERR and VAR_* are NaN wherever a pixel is unusable, as jwst does.
- :func:`to_fits` exports a mosaic that fits in memory as an ``_i2d.fits`` file.
- :func:`read_fits_wcs` reads the gwcs back from any of them.

Every file has the layout ``ImageModel.save`` writes: the arrays in SCI, ERR, DQ,
VAR_POISSON, VAR_RNOISE, VAR_FLAT (and CON, WHT for a mosaic) in the dtypes of the
ImageModel schema; the primary header with ``DATAMODL = 'ImageModel'``, FILENAME,
DATE, the exposure times, the sky, the association and the step completion keywords
(``S_TWKREG``, ``S_SKYMAT``, ``S_OUTLIR``, ``S_RESAMP``, ...); the SCI header with
BUNIT, PIXAR_SR/PIXAR_A2, S_REGION and a FITS WCS (TAN, with SIP polynomials where
the gwcs is distorted, fitted by gwcs's ``to_fits_sip``) that astropy.wcs and DS9
read; and the ``ASDF`` extension holding the same metadata as ``meta.*``, with the
gwcs itself at ``meta.wcs``. The tables below name each keyword's place in
``meta``, as the ImageModel schema does (the tests compare them with the schema).

Step completion comes from the dataset attribute ``cal_step``, a dict such as
``{"tweakreg": "COMPLETE", "skymatch": "COMPLETE"}`` (the pipeline fills it); the
writers add ``outlier_detection`` (``_crf``) and ``resample`` (``_i2d``).
"""

from __future__ import annotations

import datetime
import io
import logging
import math
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from daskcal.dq import DQ
from daskcal.image._asdf import asdf_ready
from daskcal.image._dataset import WCS_ATTR, get_wcs, wcs_from_text, wcs_to_text
from daskcal.io._atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_FITS_EXPORT",
    "EXTRA_KEYWORDS",
    "FITS_EXPORT_CONFIG",
    "I2D_EXTENSIONS",
    "MAX_SIP_ERROR",
    "META_KEYWORDS",
    "NAN_ARRAYS",
    "STEP_STATES",
    "fits_wcs_header",
    "nan_unusable_pixels",
    "read_fits_wcs",
    "to_fits",
    "write_cal_fits",
    "write_crf_fits",
]

#: Dataset variable -> FITS extension of a mosaic (``_i2d``).
I2D_EXTENSIONS = {"data": "SCI", "err": "ERR", "con": "CON", "wht": "WHT", "var_poisson": "VAR_POISSON",
                  "var_rnoise": "VAR_RNOISE", "var_flat": "VAR_FLAT", "dq": "DQ"}
#: FITS dtype of each array, as in the ImageModel schema (the rest are float32).
_DTYPES = {"dq": np.uint32, "con": np.int32}
#: Arrays that jwst sets to NaN where a pixel is unusable (``match_nans_and_flags``).
NAN_ARRAYS = ("data", "err", "var_rnoise", "var_poisson", "var_flat")
FITS_EXPORT_CONFIG = "daskcal.fits-export-memory"
DEFAULT_FITS_EXPORT = "4 GiB"
#: Largest difference (px) between the FITS WCS of the SCI header and the gwcs that
#: the SIP fit aims for (jwst's ``update_fits_wcsinfo`` default), and its degrees.
MAX_SIP_ERROR = 0.01
_SIP_DEGREES = range(1, 6)
_SIP_POINTS = 12
#: States of a step in ``meta.cal_step``.
STEP_STATES = ("COMPLETE", "SKIPPED", "FAILED")

#: ``meta`` path -> (HDU, keyword): the keywords of the ImageModel schema that daskcal writes.
META_KEYWORDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("model_type",): ("PRIMARY", "DATAMODL"),
    ("filename",): ("PRIMARY", "FILENAME"),
    ("date",): ("PRIMARY", "DATE"),
    ("asn", "table_name"): ("PRIMARY", "ASNTABLE"),
    ("asn", "pool_name"): ("PRIMARY", "ASNPOOL"),
    ("exposure", "exposure_time"): ("PRIMARY", "EFFEXPTM"),
    ("exposure", "measurement_time"): ("PRIMARY", "TMEASURE"),
    ("exposure", "duration"): ("PRIMARY", "DURATION"),
    ("exposure", "start_time"): ("PRIMARY", "EXPSTART"),
    ("exposure", "end_time"): ("PRIMARY", "EXPEND"),
    ("background", "level"): ("PRIMARY", "BKGLEVEL"),
    ("background", "subtracted"): ("PRIMARY", "BKGSUB"),
    ("background", "method"): ("PRIMARY", "BKGMETH"),
    ("resample", "pointings"): ("PRIMARY", "NDRIZ"),
    ("resample", "weight_type"): ("PRIMARY", "RESWHT"),
    ("resample", "pixfrac"): ("PRIMARY", "PIXFRAC"),
    ("resample", "pixel_scale_ratio"): ("PRIMARY", "PXSCLRT"),
    ("cal_step", "assign_wcs"): ("PRIMARY", "S_WCS"),
    ("cal_step", "flat_field"): ("PRIMARY", "S_FLAT"),
    ("cal_step", "photom"): ("PRIMARY", "S_PHOTOM"),
    ("cal_step", "tweakreg"): ("PRIMARY", "S_TWKREG"),
    ("cal_step", "skymatch"): ("PRIMARY", "S_SKYMAT"),
    ("cal_step", "outlier_detection"): ("PRIMARY", "S_OUTLIR"),
    ("cal_step", "resample"): ("PRIMARY", "S_RESAMP"),
    ("bunit_data",): ("SCI", "BUNIT"),
    ("bunit_err",): ("ERR", "BUNIT"),
    ("photometry", "pixelarea_steradians"): ("SCI", "PIXAR_SR"),
    ("photometry", "pixelarea_arcsecsq"): ("SCI", "PIXAR_A2"),
    ("wcsinfo", "s_region"): ("SCI", "S_REGION"),
    ("wcsinfo", "ra_ref"): ("SCI", "RA_REF"),
    ("wcsinfo", "dec_ref"): ("SCI", "DEC_REF"),
    ("wcsinfo", "v2_ref"): ("SCI", "V2_REF"),
    ("wcsinfo", "v3_ref"): ("SCI", "V3_REF"),
    ("wcsinfo", "roll_ref"): ("SCI", "ROLL_REF"),
    ("wcsinfo", "v3yangle"): ("SCI", "V3I_YANG"),
    ("wcsinfo", "vparity"): ("SCI", "VPARITY"),
    ("wcsinfo", "siaf_xref_sci"): ("SCI", "XREF_SCI"),
    ("wcsinfo", "siaf_yref_sci"): ("SCI", "YREF_SCI"),
}
#: daskcal's own keywords, outside the ImageModel schema (stdatamodels keeps them in ``extra_fits``).
EXTRA_KEYWORDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("group_id",): ("PRIMARY", "GROUP_ID"),
    ("resample", "kernel"): ("PRIMARY", "KERNEL"),
}
#: FITS WCS keys (lower case, as in ``meta.wcsinfo``) that a new fit replaces: a stale
#: SIP term from an earlier WCS must not survive next to a new one (as jwst deletes them).
_FITS_WCS_KEY = r"^(wcsaxes|crpix\d|crval\d|ctype\d|cunit\d|cdelt\d|pc\d_\d|cd\d_\d|[ab]p?_\d_\d|[ab]p?_order|" \
                r"radesys|equinox|lonpole|latpole|mjdref|dateref|sipmxerr|sipiverr|wcsmxerr|s_region)$"


# ---------------------------------------------------------------- FITS WCS

def _tangent_pixel(wcs):
    """1-based pixel of the gwcs's projection's tangent point, or None when it has none.

    Taking CRPIX there makes the FITS WCS of an undistorted TAN gwcs exact at SIP degree
    1 (about any other point the same projection is not linear in pixels).
    """
    from astropy.modeling.models import RotateNative2Celestial

    rot = [m for m in wcs.forward_transform.traverse_postorder() if isinstance(m, RotateNative2Celestial)]
    if len(rot) != 1:
        return None
    with np.errstate(all="ignore"):
        try:
            x, y = wcs.invert(float(rot[0].lon.value), float(rot[0].lat.value), with_bounding_box=False)
        except Exception:  # noqa: BLE001 - gwcs's inverse raises many types; the fit then picks its own CRPIX
            return None
    if not (np.isfinite(x) and np.isfinite(y)):
        return None
    return [float(x) + 1.0, float(y) + 1.0]


def _sky_separation_px(ra1, dec1, ra2, dec2, scale_deg):
    """Angular distance between two sets of positions (deg), in pixels of ``scale_deg`` (deg/px)."""
    r1, d1, r2, d2 = (np.radians(np.asarray(v, np.float64)) for v in (ra1, dec1, ra2, dec2))
    s = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(s, 0, 1)))) / scale_deg


def fits_wcs_header(wcs, shape: tuple[int, int], *, max_pix_error: float = MAX_SIP_ERROR):
    """A FITS WCS (TAN, with SIP where the gwcs is distorted) approximating ``wcs`` over an image.

    Fitted by gwcs's ``to_fits_sip`` over the whole ``shape`` image (12 x 12 points,
    checked on twice as many), with the lowest SIP degree from 1 to 5 whose largest
    error is under ``max_pix_error`` px (forward and inverse), as jwst's
    ``update_fits_wcsinfo`` does. CRPIX is the tangent point of the gwcs's projection
    when it has one, so an undistorted TAN gwcs is exact without SIP terms. When no
    degree reaches ``max_pix_error`` the degree-5 fit is kept and a warning is logged
    (the gwcs in the ASDF extension stays exact).

    Parameters
    ----------
    wcs : gwcs.WCS
        Pixel (x, y; 0-based) to sky (RA, Dec; deg).
    shape : (int, int)
        ``(ny, nx)`` of the image.
    max_pix_error : float, default 0.01
        Largest error (px) accepted for a degree.

    Returns
    -------
    astropy.io.fits.Header
        CTYPE, CRPIX, CRVAL, CD (or PC/CDELT), RADESYS, SIP ``A_*``, ``B_*``, ``AP_*``,
        ``BP_*`` and ``SIPMXERR``/``SIPIVERR`` (gwcs's fit residuals, px) where
        distorted, and ``WCSMXERR``: the largest distance (px) between the sky
        positions of this FITS WCS (astropy.wcs, SIP included) and of the gwcs, measured
        on a grid of up to 65 x 65 points spanning the image edge to edge.
    """
    import astropy.wcs

    from daskcal.image._grid import pixel_scale_of

    ny, nx = (int(v) for v in shape)
    bbox = ((-0.5, nx - 0.5), (-0.5, ny - 0.5))
    with warnings.catch_warnings(record=True) as caught:
        # gwcs warns (LinAlgWarning, "poorly conditioned") when a degree misses the error; judged below instead
        warnings.simplefilter("always")
        hdr = wcs.to_fits_sip(bounding_box=bbox, max_pix_error=max_pix_error, degree=_SIP_DEGREES,
                              max_inv_pix_error=max_pix_error, inv_degree=_SIP_DEGREES, npoints=_SIP_POINTS,
                              crpix=_tangent_pixel(wcs))
    for w in caught:
        log.debug("to_fits_sip: %s", w.message)
    for key in ("NAXIS", "NAXIS1", "NAXIS2"):
        hdr.remove(key, ignore_missing=True)
    n = max(2, min(65, nx + 1)), max(2, min(65, ny + 1))
    x, y = np.meshgrid(np.linspace(-0.5, nx - 0.5, n[0]), np.linspace(-0.5, ny - 0.5, n[1]))
    ra_g, dec_g = wcs(x, y, with_bounding_box=False)
    ra_f, dec_f = astropy.wcs.WCS(hdr).all_pix2world(x, y, 0)
    err = float(np.max(_sky_separation_px(ra_g, dec_g, ra_f, dec_f, pixel_scale_of(wcs, (ny, nx)))))
    hdr["WCSMXERR"] = (err, "[px] max |FITS WCS - gwcs| over the image")
    worst = max(err, float(hdr.get("SIPIVERR", 0.0)))
    if not worst <= max_pix_error:
        log.warning("the FITS WCS in the SCI header (SIP degree %s) differs from the gwcs by up to %.3g px (forward) "
                    "and %.3g px (inverse), more than %.3g px; the gwcs in the ASDF extension is exact",
                    hdr.get("A_ORDER", 1), err, float(hdr.get("SIPIVERR", 0.0)), max_pix_error)
    return hdr


def _s_region(wcs, shape) -> str:
    """The image's outline (pixel edges) on the sky, as an S_REGION polygon."""
    ny, nx = shape
    x = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    y = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = wcs(x, y, with_bounding_box=False)
    return "POLYGON ICRS  " + " ".join(f"{r % 360:.9f} {d:.9f}" for r, d in zip(ra, dec))


def _wcsinfo(attrs: dict, wcs_header, s_region: str) -> dict:
    """``meta.wcsinfo``: the dataset's own (``attrs["wcsinfo"]``: reference point, V2/V3, ...) with its FITS
    WCS keys (a fit of an earlier WCS) replaced by ``wcs_header``'s, and ``s_region``."""
    import re

    stale = re.compile(_FITS_WCS_KEY)
    given = attrs.get("wcsinfo") or {}
    if not isinstance(given, dict):
        msg = f"attribute 'wcsinfo' must be a dict (stdatamodels' meta.wcsinfo); got {type(given).__name__}"
        raise TypeError(msg)
    info = {str(k): _plain(v) for k, v in given.items() if v is not None and not stale.match(str(k).lower())}
    info.update({k.lower(): v for k, v in wcs_header.items()})
    info["s_region"] = s_region
    return info


# ---------------------------------------------------------------- metadata

def _put(tree: dict, path: tuple[str, ...], value) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


def _get(tree: dict, path: tuple[str, ...]):
    node = tree
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _plain(value):
    """A JSON-like value with numpy scalars made Python ones (as ASDF and FITS headers want them)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _cal_step(attrs: dict, done: str | None) -> dict:
    steps = dict(attrs.get("cal_step") or {})
    if done is not None:
        steps[done] = "COMPLETE"
    bad = {k: v for k, v in steps.items() if v not in STEP_STATES}
    if bad:
        msg = f"attribute 'cal_step' must map step names to one of {STEP_STATES}; got {bad}"
        raise ValueError(msg)
    return steps


def _common_meta(attrs: dict, path, wcs, wcs_header, s_region: str, done: str | None) -> dict:
    times = ("exposure_time", "measurement_time", "duration", "start_time", "end_time")
    bunit = str(attrs.get("bunit_data", "MJy/sr"))
    meta = {
        "model_type": "ImageModel",
        "filename": Path(path).name,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3],
        "bunit_data": bunit,
        "bunit_err": bunit,
        "exposure": {k: float(attrs[k]) for k in times if attrs.get(k) is not None},
        "cal_step": _cal_step(attrs, done),
        "wcsinfo": _wcsinfo(attrs, wcs_header, s_region),
        "wcs": wcs,
    }
    for key in ("level", "subtracted"):
        if attrs.get(key) is not None:
            value = bool(attrs[key]) if key == "subtracted" else float(attrs[key])
            _put(meta, ("background", key), value)
    for key, tree_key in (("asn_table", "table_name"), ("asn_pool", "pool_name")):
        if attrs.get(key):
            _put(meta, ("asn", tree_key), Path(str(attrs[key])).name)
    for key in ("pixelarea_steradians", "pixelarea_arcsecsq"):
        if attrs.get(key) is not None:
            _put(meta, ("photometry", key), float(attrs[key]))
    return meta


def _headers(meta: dict, wcs_header) -> dict:
    """FITS headers (by HDU name) holding the keywords of ``meta`` and the FITS WCS."""
    from astropy.io import fits

    headers = {"PRIMARY": fits.Header(), "SCI": fits.Header(), "ERR": fits.Header()}
    for path, (hdu, keyword) in (META_KEYWORDS | EXTRA_KEYWORDS).items():
        value = _get(meta, path)
        if isinstance(value, (bool, int, float, str, np.generic)):
            headers[hdu][keyword] = _plain(value)
    headers["SCI"].extend(wcs_header, unique=True)
    return headers


def _asdf_hdu(tree: dict):
    """The ``ASDF`` extension holding ``tree`` (as stdatamodels writes it)."""
    import asdf
    from astropy.io import fits

    # imported here: the reading side (daskcal.image._io) imports this module
    from daskcal.image._io import ASDF_COLUMN, ASDF_EXT

    buf = io.BytesIO()
    with asdf_ready():
        asdf.AsdfFile(tree).write_to(buf, all_array_storage="inline")
    raw = np.frombuffer(buf.getvalue(), np.uint8)
    col = fits.Column(name=ASDF_COLUMN, format=f"{raw.size}B", array=raw[None, :])
    return fits.BinTableHDU.from_columns([col], name=ASDF_EXT)


def _write(path, arrays: dict, extensions: dict, meta: dict, wcs_header, overwrite: bool) -> Path:
    from astropy.io import fits

    headers = _headers(meta, wcs_header)
    primary = fits.PrimaryHDU()
    primary.header.extend(headers["PRIMARY"])
    hdus = [primary]
    for var, ext in extensions.items():
        if var in arrays:
            data = np.asarray(arrays[var], dtype=_DTYPES.get(var, np.float32))
            hdus.append(fits.ImageHDU(data, header=headers.get(ext), name=ext))
    hdus.append(_asdf_hdu({"meta": meta}))
    with atomic_path(path, overwrite=overwrite) as tmp:
        fits.HDUList(hdus).writeto(tmp)
    return Path(path)


# ---------------------------------------------------------------- exposures

def _exposure_arrays(ds: xr.Dataset) -> dict:
    """Every array of an exposure that goes to FITS, computed together (one pass over a lazy graph)."""
    import dask

    from daskcal.image._io import CAL_EXTENSIONS

    names = [v for v in CAL_EXTENSIONS if v in ds]
    return dask.compute({v: ds[v].data for v in names})[0]


def _exposure_meta(ds: xr.Dataset, path, wcs_header, done: str | None) -> dict:
    a = ds.attrs
    wcs = get_wcs(ds)
    # the outline of the exposure's own WCS (an S_REGION attribute may predate a WCS correction)
    meta = _common_meta(a, path, wcs, wcs_header, _s_region(wcs, ds["data"].shape), done)
    if a.get("group_id") is not None:
        meta["group_id"] = str(a["group_id"])
    return meta


def _write_exposure(ds: xr.Dataset, path, *, overwrite: bool, nan_unusable: bool) -> Path:
    from daskcal.image._io import CAL_EXTENSIONS

    if "data" not in ds:
        msg = f"image {ds.attrs.get('name', '<unnamed>')!r} has no 'data' variable; expected an image dataset"
        raise ValueError(msg)
    wcs = get_wcs(ds)
    shape = ds["data"].shape
    wcs_header = fits_wcs_header(wcs, shape)
    arrays = _exposure_arrays(ds)
    if nan_unusable:
        arrays = nan_unusable_pixels(arrays)
    meta = _exposure_meta(ds, path, wcs_header, "outlier_detection" if nan_unusable else None)
    return _write(path, arrays, CAL_EXTENSIONS, meta, wcs_header, overwrite)


def nan_unusable_pixels(arrays: dict) -> dict:
    """New arrays with unusable pixels NaN in ``data``, ``err`` and ``var_*`` and DO_NOT_USE in ``dq``.

    A pixel is unusable where ``dq`` has DO_NOT_USE (outliers flagged by
    :func:`daskcal.flag_outliers` get ``OUTLIER | DO_NOT_USE``) or where any of
    ``data``, ``err``, ``var_rnoise``, ``var_poisson``, ``var_flat`` is NaN: the rule of
    jwst 3.0's ``match_nans_and_flags``, which its outlier step applies to every
    exposure it flags (and its flat-field and photom steps before it, so in a jwst
    ``_cal`` file the only pixels newly NaN in ``_crf`` are the new outliers). The
    arrays given are not modified.
    """
    present = [v for v in NAN_ARRAYS if v in arrays]
    bad = np.zeros(np.shape(arrays["data"]), bool)
    for v in present:
        bad |= np.isnan(arrays[v])
    out = dict(arrays)
    if "dq" in arrays:
        dq = np.asarray(arrays["dq"], np.uint32)
        bad |= (dq & np.uint32(DQ.DO_NOT_USE)) != 0
        out["dq"] = dq | np.where(bad, np.uint32(DQ.DO_NOT_USE), np.uint32(0))
    for v in present:
        out[v] = np.where(bad, np.float32(np.nan), np.asarray(arrays[v], np.float32))
    return out


def write_cal_fits(ds: xr.Dataset, path, *, overwrite: bool = False) -> Path:
    """Write an image dataset as a JWST-style ``_cal.fits`` file (computes it).

    Extensions SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE, VAR_FLAT (those present) and
    ASDF (``meta.wcs``, ``meta.wcsinfo``, ``meta.exposure``, ``meta.background``,
    ``meta.cal_step``, ...); see the module's description for the headers. The
    arrays are computed together, once. Written atomically.

    Parameters
    ----------
    ds : xarray.Dataset
        An image dataset (lazy or loaded); not modified.
    path : path-like
        Destination FITS file.
    overwrite : bool, default False
        Replace an existing file.

    Returns
    -------
    Path
        ``path``.
    """
    return _write_exposure(ds, path, overwrite=overwrite, nan_unusable=False)


def write_crf_fits(ds: xr.Dataset, path, *, overwrite: bool = False) -> Path:
    """Write an exposure after outlier detection as a JWST-style ``_crf.fits`` file (computes it).

    As :func:`write_cal_fits`, with what jwst's outlier step does to the arrays it
    writes: SCI, ERR and every VAR_* are NaN at every unusable pixel, that is, where
    DQ has DO_NOT_USE (the outliers :func:`daskcal.flag_outliers` flags get
    ``OUTLIER | DO_NOT_USE``, so every one of them) or where any of those arrays is
    already NaN; such pixels also get DO_NOT_USE in DQ, which otherwise is written
    as it is. ``S_OUTLIR = 'COMPLETE'`` (``meta.cal_step.outlier_detection``).
    The arrays are computed together, once (an exposure fits in memory: 2048 x 2048
    x 6 arrays is 100 MB).

    Parameters
    ----------
    ds : xarray.Dataset
        An image from ``daskcal.flag_outliers(...).images`` (lazy or loaded); not
        modified.
    path : path-like
        Destination FITS file, by convention ``<name>_crf.fits``.
    overwrite : bool, default False
        Replace an existing file.

    Returns
    -------
    Path
        ``path``.
    """
    return _write_exposure(ds, path, overwrite=overwrite, nan_unusable=True)


# ---------------------------------------------------------------- mosaics

def _mosaic_meta(mosaic: xr.Dataset, path, wcs, wcs_header) -> dict:
    a = mosaic.attrs
    shape = mosaic["data"].shape
    attrs = dict(a)
    if attrs.get("pixelarea_steradians") is None:
        from daskcal.image._grid import pixel_scale_of

        scale = pixel_scale_of(wcs, shape)  # deg, at the centre
        attrs["pixelarea_arcsecsq"] = (scale * 3600.0) ** 2
        attrs["pixelarea_steradians"] = math.radians(scale) ** 2
    # resample's S_REGION, else the mosaic's outline
    meta = _common_meta(attrs, path, wcs, wcs_header, str(a.get("s_region") or _s_region(wcs, shape)), "resample")
    pointings = a.get("pointings")
    if pointings is None and a.get("inputs") is not None:
        pointings = len(a["inputs"])
    resample = {"pointings": pointings, "pixfrac": a.get("pixfrac"), "kernel": a.get("kernel"),
                "pixel_scale_ratio": a.get("pixel_scale_ratio"), "fillval": a.get("fillval")}
    if a.get("weight_type") in ("exptime", "ivm"):  # the schema's values; "none" has no keyword
        resample["weight_type"] = a["weight_type"]
    meta["resample"] = {k: _plain(v) for k, v in resample.items() if v is not None}
    skip = {WCS_ATTR, "wcsinfo", "cal_step", "s_region", "bunit_data", "pixelarea_steradians", "pixelarea_arcsecsq",
            "pointings", "pixfrac", "kernel", "pixel_scale_ratio", "fillval", "weight_type", "asn_table", "asn_pool",
            "exposure_time", "measurement_time", "duration", "start_time", "end_time"}
    meta["daskcal"] = {k: _plain(v) for k, v in a.items()
                       if k not in skip and isinstance(v, (int, float, str, bool, list, np.generic))}
    return meta


def to_fits(mosaic: xr.Dataset, path, *, overwrite: bool = False, max_memory=None) -> Path:
    """Export a mosaic from :func:`daskcal.resample` as an ``_i2d.fits`` file.

    The planes are computed into memory, so this is for mosaics that fit; larger
    ones stay in their Zarr store. The file is an ImageModel (SCI, ERR, CON, WHT,
    VAR_*, DQ if present, ASDF): the primary header has ``S_RESAMP = 'COMPLETE'``
    and the other steps of ``attrs["cal_step"]``, PIXFRAC, KERNEL, RESWHT (for
    ``ivm``/``exptime`` weights), PXSCLRT, NDRIZ (the number of exposure groups,
    ``attrs["pointings"]``, as jwst's ``meta.resample.pointings``) and ASNTABLE /
    ASNPOOL from ``attrs["asn_table"]`` / ``attrs["asn_pool"]``; the SCI header has
    BUNIT, PIXAR_SR, PIXAR_A2, S_REGION (``attrs["s_region"]``, else the mosaic's
    outline) and the FITS WCS of :func:`fits_wcs_header`. Other attributes go to
    ``meta.daskcal`` in the ASDF extension.

    Parameters
    ----------
    mosaic : xarray.Dataset
        A (lazy or loaded) mosaic, or a store opened from one; not ``single=True``
        output (select a group with ``mosaic.isel(group=k)``).
    path : path-like
        Destination FITS file, written atomically.
    overwrite : bool, default False
        Replace an existing file.
    max_memory : int or str, optional
        Largest size of the planes to export. Default: Dask config
        ``daskcal.fits-export-memory``, else 4 GiB.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        A mosaic larger than ``max_memory``, one with a ``group`` dimension, or
        without data or WCS.
    """
    import dask
    from dask.utils import format_bytes, parse_bytes

    if "data" not in mosaic or "wht" not in mosaic:
        msg = "to_fits needs a mosaic with 'data' and 'wht' (from daskcal.resample)"
        raise ValueError(msg)
    if "group" in mosaic.dims:
        msg = "to_fits exports one mosaic; select a group of single=True output with mosaic.isel(group=k)"
        raise ValueError(msg)
    wcs = get_wcs(mosaic)
    limit = max_memory if max_memory is not None else dask.config.get(FITS_EXPORT_CONFIG, DEFAULT_FITS_EXPORT)
    limit = parse_bytes(limit) if isinstance(limit, str) else int(limit)
    names = [v for v in I2D_EXTENSIONS if v in mosaic]
    need = sum(int(mosaic[v].nbytes) for v in names)
    if need > limit:
        msg = (f"the mosaic planes need {need} bytes ({format_bytes(need)}) in memory, more than the FITS export "
               f"limit of {limit} bytes ({format_bytes(limit)}); keep the Zarr store, or raise max_memory= / "
               f"Dask config {FITS_EXPORT_CONFIG!r}")
        raise ValueError(msg)
    wcs_header = fits_wcs_header(wcs, mosaic["data"].shape)
    meta = _mosaic_meta(mosaic, path, wcs, wcs_header)
    arrays = dask.compute({v: mosaic[v].data for v in names})[0]
    return _write(path, arrays, I2D_EXTENSIONS, meta, wcs_header, overwrite)


def read_fits_wcs(path):
    """The gwcs of a FITS file written by :func:`to_fits`, :func:`write_cal_fits` or :func:`write_crf_fits`
    (or by stdatamodels: ``meta.wcs`` of its ASDF extension)."""
    from astropy.io import fits

    # imported here: the reading side (daskcal.image._io) imports this module
    from daskcal.image._io import _read_asdf_tree

    with fits.open(path) as hdul, _read_asdf_tree(hdul, path) as af:
        return wcs_from_text(wcs_to_text(af.tree["meta"]["wcs"]))
