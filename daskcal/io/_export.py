"""``daskcal.to_fits``: FITS export of any daskcal product that fits in memory."""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

__all__ = ["to_fits"]


def to_fits(product: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False, **kwargs) -> Path:
    """Export a product to FITS, written atomically.

    - a mosaic from :func:`daskcal.resample` (it has ``wht``) becomes an ``_i2d``-like
      file (SCI, ERR, CON, WHT, VAR_*, the WCS in an ASDF extension);
      ``max_memory`` (bytes) may be passed on;
    - a ``rate`` / ``rateints`` product from :func:`daskcal.fit_ramps` or
      :func:`daskcal.detector1` becomes SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE;
    - a ``fitopt`` product (``save_opt=True``) becomes jwst's ``_fitopt.fits`` (SLOPE, SIGSLOPE,
      VAR_POISSON, VAR_RNOISE, YINT, SIGYINT, PEDESTAL, WEIGHTS, CRMAG), which
      ``stdatamodels.jwst.datamodels.RampFitOutputModel`` opens.

    Parameters
    ----------
    product : xarray.Dataset
        The product (lazy or loaded); it is computed into memory.
    path : path-like
        Destination FITS file.
    overwrite : bool, default False
        Replace an existing file.
    """
    if "wht" in product:
        from daskcal.image._fits_write import to_fits as mosaic_to_fits

        return mosaic_to_fits(product, path, overwrite=overwrite, **kwargs)
    from daskcal.io._ramps import to_fits as rate_to_fits

    if kwargs:
        msg = f"to_fits of a rate product takes no {sorted(kwargs)}"
        raise TypeError(msg)
    return rate_to_fits(product, path, overwrite=overwrite)
