"""Source catalogs for alignment: photutils star finding on one exposure, user catalogs.

The block layer of alignment: :func:`find_sources` takes the NumPy arrays of one
exposure and returns a small table of source positions, as the JWST tweakreg step
does (background from ``Background2D`` with ``bkg_boxsize`` meshes, a threshold of
``snr_threshold`` times the background RMS, then the IRAF, DAO or segmentation
finder). :func:`read_catalog` and :func:`read_reference_catalog` read user tables.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

import numpy as np

__all__ = ["STARFINDERS", "find_sources", "read_catalog", "read_reference_catalog"]

log = logging.getLogger(__name__)

STARFINDERS = ("iraf", "dao", "segmentation")
#: held while photutils runs with its warnings silenced: ``warnings.catch_warnings`` changes process-wide
#: state, so two threads of one worker (threaded scheduler, in-process cluster) each silencing and
#: restoring the filters let a warning through the other's window (seen in CI: "Input data contains
#: invalid values" from Background2D raised as an error under pytest). Catalog tasks of one process
#: therefore run their photutils calls one at a time; worker processes (the CLI's cluster) are unaffected.
_QUIET = threading.RLock()
#: DQ bits the reference excludes from the background and the sources (NON_SCIENCE | DO_NOT_USE)
COVERAGE_BITS = 2**9 | 2**0


def _empty():
    from astropy.table import Table

    return Table(names=("x", "y", "flux"), dtype=(float, float, float))


def _background(data, mask, box_size):
    """Background and background RMS (photutils ``Background2D``: sigma-clipped medians, 3x3 filter).

    Falls back to one mesh over the whole unmasked array when the meshes cannot
    be estimated, as the reference does.
    """
    from astropy.stats import SigmaClip
    from astropy.utils.exceptions import AstropyUserWarning
    from photutils.background import Background2D, MedianBackground

    kw = {"filter_size": (3, 3), "coverage_mask": mask, "sigma_clip": SigmaClip(sigma=3.0),
          "bkg_estimator": MedianBackground()}
    with _QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        try:
            bkg = Background2D(data, int(box_size), **kw)
        except ValueError:
            log.info("background meshes of %d px cannot be estimated; using the whole image", box_size)
            bkg = Background2D(data, data.shape, exclude_percentile=100.0, **kw)
        return bkg.background, bkg.background_rms


def _convolve(data, kernel_fwhm, mask):
    from astropy.convolution import Gaussian2DKernel, convolve
    from astropy.stats import gaussian_fwhm_to_sigma
    from astropy.utils.exceptions import AstropyUserWarning

    kernel = Gaussian2DKernel(kernel_fwhm * gaussian_fwhm_to_sigma)
    with _QUIET, warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        return convolve(data, kernel, mask=mask)


def _run_finder(data, threshold_img, mask, err, p):
    """Sources (an astropy table with centroid and flux columns) from the chosen finder, or None."""
    from photutils import use_future_column_names
    from photutils.detection import DAOStarFinder, IRAFStarFinder

    if p.starfinder == "segmentation":
        from photutils.segmentation import SourceCatalog, SourceFinder

        conv = _convolve(data, p.kernel_fwhm, mask) if p.kernel_fwhm > 0 else data
        finder = SourceFinder(p.npixels, connectivity=p.connectivity, deblend=p.deblend, n_levels=p.nlevels,
                              contrast=p.contrast, mode=p.multithresh_mode, progress_bar=False)
        segm = finder(conv, threshold_img, mask=mask)
        if segm is None:
            return None
        kron = (2.5, 1.4, 0.0) if p.kron_params is None else tuple(p.kron_params)
        with use_future_column_names():
            cat = SourceCatalog(data, segm, mask=mask, convolved_data=conv, error=err,
                                local_bkg_width=p.localbkg_width, aperture_mask_method=p.apermask_method,
                                kron_params=kron)
            return cat.to_table(columns=["x_centroid", "y_centroid", "segment_flux"])
    cls = IRAFStarFinder if p.starfinder == "iraf" else DAOStarFinder
    finder = cls(
        float(np.median(threshold_img)), p.kernel_fwhm,  # a scalar threshold, as the reference
        sigma_radius=p.sigma_radius,
        min_separation=max(2, int(p.minsep_fwhm * p.kernel_fwhm + 0.5)),
        sharpness_range=(p.sharplo, p.sharphi),
        roundness_range=(p.roundlo, p.roundhi),
        peak_max=p.peakmax,
        n_brightest=p.brightest,
    )
    with use_future_column_names():
        return finder(data, mask=mask)


def find_sources(data: np.ndarray, dq: np.ndarray | None, err: np.ndarray | None, params):
    """Point-like sources in one exposure, as the JWST tweakreg step finds them.

    Parameters
    ----------
    data : ndarray (ny, nx)
        Science array (any unit); NaN pixels are ignored.
    dq : ndarray of uint32, optional
        Pixels with ``NON_SCIENCE`` or ``DO_NOT_USE`` are masked.
    err : ndarray, optional
        Total error (used by the segmentation finder's catalog).
    params : AlignParameters
        ``starfinder``, ``snr_threshold``, ``kernel_fwhm`` (px), ``bkg_boxsize`` (px)
        and the finder-specific parameters.

    Returns
    -------
    astropy.table.Table
        Columns ``x``, ``y`` (0-based px) and ``flux``; empty when nothing is found
        or the background cannot be estimated (logged warning).
    """
    from photutils.utils import NoDetectionsWarning

    data = np.asarray(data, dtype=np.float64)
    mask = np.zeros(data.shape, bool) if dq is None else (np.asarray(dq) & COVERAGE_BITS).astype(bool)
    try:
        bkg, rms = _background(data, mask, params.bkg_boxsize)
    except ValueError as exc:
        log.warning("cannot estimate the sky background (%s); no sources", exc)
        return _empty()
    threshold_img = params.snr_threshold * rms
    with _QUIET, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=NoDetectionsWarning)
        sources = _run_finder(data - bkg, threshold_img, mask, None if err is None else np.asarray(err), params)
    if sources is None or len(sources) == 0:
        return _empty()
    from astropy.table import Table

    names = {"x": ("x_centroid", "xcentroid"), "y": ("y_centroid", "ycentroid"), "flux": ("flux", "segment_flux")}
    cols = {}
    for out, candidates in names.items():
        name = next(c for c in candidates if c in sources.colnames)
        cols[out] = np.asarray(getattr(sources[name], "value", sources[name]), dtype=np.float64)
    return Table(cols)


def _read_table(p: Path, what: str):
    from astropy.io.registry import IORegistryError
    from astropy.table import Table

    try:
        try:
            return Table.read(p)
        except IORegistryError:  # format not identified from the name: try plain text
            return Table.read(p, format="ascii")
    except Exception as exc:  # astropy raises many types for an unreadable table
        msg = f"{what} {str(p)!r} cannot be read as a table ({exc})"
        raise ValueError(msg) from exc


def read_catalog(path) -> astropy.table.Table:  # noqa: F821
    """A user source catalog: ``x``/``y`` or ``xcentroid``/``ycentroid`` (0-based px), optional ``weight``.

    Any format ``astropy.table.Table.read`` recognises. Returns a table with ``x``,
    ``y`` (and ``weight`` when given).
    """
    from astropy.table import Table

    p = Path(path)
    if not p.is_file():
        msg = f"source catalog {str(p)!r} does not exist; expected a table file with x/y columns"
        raise FileNotFoundError(msg)
    t = _read_table(p, "source catalog")
    for xname, yname in (("x", "y"), ("xcentroid", "ycentroid"), ("x_centroid", "y_centroid")):
        if xname in t.colnames and yname in t.colnames:
            break
    else:
        msg = (f"source catalog {str(p)!r} has no x/y or xcentroid/ycentroid columns; "
               f"found {', '.join(t.colnames) or 'none'}")
        raise ValueError(msg)
    out = Table({"x": np.asarray(t[xname], dtype=np.float64), "y": np.asarray(t[yname], dtype=np.float64)})
    if "weight" in t.colnames:
        out["weight"] = np.asarray(t["weight"], dtype=np.float64)
    out.meta["name"] = p.name
    return out


def read_reference_catalog(path) -> astropy.table.Table:  # noqa: F821
    """An absolute reference catalog: ``RA``, ``DEC`` (deg; any case) and optional ``weight``."""
    from astropy.table import Table

    p = Path(path)
    if not p.is_file():
        msg = f"abs_refcat {str(p)!r} does not exist; expected a table file with RA and DEC columns (deg)"
        raise FileNotFoundError(msg)
    t = _read_table(p, "abs_refcat")
    upper = {c.upper(): c for c in t.colnames}
    if "RA" not in upper or "DEC" not in upper:
        msg = (f"abs_refcat {str(p)!r} has no RA and DEC columns (any case, deg); "
               f"found {', '.join(t.colnames) or 'none'}")
        raise ValueError(msg)
    out = Table({"RA": np.asarray(t[upper["RA"]], dtype=np.float64),
                 "DEC": np.asarray(t[upper["DEC"]], dtype=np.float64)})
    if "weight" in t.colnames:
        out["weight"] = np.asarray(t["weight"], dtype=np.float64)
    out.meta["name"] = p.name
    return out
