"""Ramp cubes and rate products in and out: Zarr (native), JWST-style FITS (ingest/export)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from daskcal.detector._common import PIX_DIMS, RAMP_DIMS, default_chunk_yx, pixel_chunked, validate_ramps
from daskcal.dq import DQ
from daskcal.io._atomic import atomic_path, save_dataset
from daskcal.io._resume import FITS_KEY, RUN_ATTR
from daskcal.io._zarr_read import ZarrSource, check_store, read_as_dask, read_regions, stored_as_is

__all__ = ["open_ramps", "ingest", "to_fits", "write_uncal"]

# FITS keyword -> ramp attribute (JWST primary-header keywords)
_KEYWORDS = {"TGROUP": "group_time", "TFRAME": "frame_time", "NFRAMES": "nframes", "GROUPGAP": "groupgap"}
# rate-product variable -> FITS extension name
_PRODUCT_EXT = {"data": "SCI", "err": "ERR", "dq": "DQ", "var_poisson": "VAR_POISSON", "var_rnoise": "VAR_RNOISE"}
# FITS keyword -> product attribute whose name is longer than a keyword (JWST's meta.exposure names)
_LONG_KEYWORDS = {"PRIMECRS": "primary_cosmic_rays", "EXTNCRS": "extended_emission_events"}
# fitopt variable -> FITS extension name (stdatamodels' RampFitOutputModel, jwst's _fitopt.fits; float32 each)
_FITOPT_EXT = {"slope": "SLOPE", "sigslope": "SIGSLOPE", "var_poisson": "VAR_POISSON", "var_rnoise": "VAR_RNOISE",
               "yint": "YINT", "sigyint": "SIGYINT", "pedestal": "PEDESTAL", "weights": "WEIGHTS", "crmag": "CRMAG"}


def open_ramps(path: str | os.PathLike, chunks: tuple[int, int] | None = None) -> xr.Dataset:
    """Open a ramp Zarr store lazily, chunked in pixels.

    Parameters
    ----------
    path : path-like
        A Zarr store written by :func:`ingest`, :func:`daskcal.save` or ``daskcal simulate``.
    chunks : (int, int), optional
        ``(y, x)`` chunk size. Default: the store's own chunking. Every integration
        and group of a pixel is always in one chunk.

    Returns
    -------
    xarray.Dataset
        ``data(integration, group, y, x)`` float32 DN, ``groupdq``, ``pixeldq`` and the
        reference arrays, dask-backed.

    Raises
    ------
    daskcal.io._zarr_read.ChunkError
        (a ``ValueError``) A chunk file is missing or lies beyond its array's grid,
        found here by listing the store; a chunk that is missing or corrupt when a
        task reads it raises it in that task.
    """
    path = Path(path)
    if not path.exists():
        msg = f"no ramp store at {str(path)!r}"
        raise FileNotFoundError(msg)
    ds = xr.open_zarr(path, consolidated=False, chunks={})
    validate_ramps(ds)
    check_store(path, ds.variables)
    ds = pixel_chunked(ds, chunks)
    # The pixel-chunked variables again, read by daskcal's own tasks: same values,
    # but a graph can then read a chunk straight into its halo'd block.
    cy, cx = ds["data"].data.chunks[2:]
    for name, var in ds.data_vars.items():
        if var.dims[-2:] == PIX_DIMS and stored_as_is(var):
            lead = tuple((n,) for n in var.shape[:-2])
            arr = read_as_dask(ZarrSource.at(path, name), (*lead, cy, cx))
            ds[name] = (var.dims, arr, var.attrs)
    return ds


def _ext_shape(hdul, name: str) -> tuple[int, ...] | None:
    """Shape of image extension ``name`` from its header (no data read), or None if absent or empty."""
    if name not in hdul or not hdul[name].header.get("NAXIS", 0):
        return None
    return tuple(hdul[name].shape)


#: FITS BITPIX -> the (big-endian) dtype of the stored values.
_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


def _plain_image(hdu) -> tuple[int, np.dtype, float, float] | None:
    """``(data offset, stored dtype, BSCALE, BZERO)`` of an uncompressed image HDU with no BLANK
    value, whose values this module reads itself; None for anything else (compressed, BLANK, ...)."""
    from astropy.io import fits

    header = hdu.header
    if isinstance(hdu, fits.CompImageHDU) or "BLANK" in header or header.get("BITPIX") not in _BITPIX:
        return None
    return (hdu.fileinfo()["datLoc"], np.dtype(_BITPIX[header["BITPIX"]]),
            float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0)))


def _read_fits_region(path: str, ext: str, region: tuple[slice, ...], dtype: str) -> np.ndarray:
    """``region`` of image extension ``ext`` (BSCALE/BZERO applied) as ``dtype``.

    ``region`` takes whole leading axes and a ``(y, x)`` box. For a plain image the rows of
    the box are read one band per plane (``y`` rows of full width: contiguous in the file)
    into one reused buffer, so a task holds its region and one band, whatever the file's
    size; anything else is read through ``ImageHDU.section``.
    """
    from astropy.io import fits

    with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
        hdu = hdul[ext]
        plain = _plain_image(hdu)
        shape = tuple(hdu.shape)
        if plain is None or any(r.indices(n) != (0, n, 1) for r, n in zip(region[:-2], shape[:-2], strict=True)):
            return np.array(hdu.section[region], dtype=dtype, copy=True)
    offset, stored, bscale, bzero = plain
    (y0, y1, _), (x0, x1, _) = region[-2].indices(shape[-2]), region[-1].indices(shape[-1])
    ny, nx = shape[-2:]
    lead = shape[:-2]
    out = np.empty((*lead, y1 - y0, x1 - x0), dtype=dtype)
    band = np.empty((y1 - y0, nx), dtype=stored)
    scaled = bscale != 1.0 or bzero != 0.0
    with open(path, "rb") as f:
        for plane, idx in enumerate(np.ndindex(*lead)):
            f.seek(offset + (plane * ny + y0) * nx * stored.itemsize)
            if f.readinto(memoryview(band).cast("B")) != band.nbytes:
                msg = f"{path!r}: {ext} is shorter than its header says"
                raise ValueError(msg)
            piece = band[:, x0:x1]
            out[idx] = piece * np.float64(bscale) + np.float64(bzero) if scaled else piece
    return out


def _fits_cube(path: Path, ext: str, shape: tuple[int, ...], dtype, chunks_yx: tuple[int, int]):
    """A dask array of a FITS image extension, one task per ``(y, x)`` chunk (leading axes whole).

    Each task reads its region from the file (``ImageHDU.section``), so no task
    holds more than one chunk, whatever the size of the file.
    """
    import dask.array as da
    from dask.base import tokenize

    chunks = da.core.normalize_chunks((*shape[:-2], *chunks_yx), shape)
    st = path.stat()
    name = f"fits-read-{ext.lower()}-" + tokenize(str(path.resolve()), st.st_mtime_ns, st.st_size, ext, chunks, dtype)
    return read_regions(name, chunks, dtype, lambda region: (_read_fits_region, str(path), ext, region,
                                                             np.dtype(dtype).str))


def _read_ext(hdul, names: tuple[str, ...]):
    for name in names:
        if name in hdul and hdul[name].data is not None:
            return hdul[name].data
    return None


def _reference_image(path: str | os.PathLike, what: str, shape: tuple[int, int]):
    from astropy.io import fits

    with fits.open(path) as hdul:
        data = _read_ext(hdul, ("SCI", "PRIMARY"))
        if data is None:
            msg = f"{what} reference {str(path)!r} has no SCI (or primary) image"
            raise ValueError(msg)
        data = np.asarray(data, dtype=np.float32)
        dq = _read_ext(hdul, ("DQ",))
        dq = None if dq is None else np.asarray(dq, dtype=np.uint32)
    if data.shape != shape:
        msg = f"{what} reference {str(path)!r} has shape {data.shape}; the ramps' (y, x) shape is {shape}"
        raise ValueError(msg)
    return data, dq


def ingest(
    uncal: str | os.PathLike,
    *,
    gain: str | os.PathLike,
    readnoise: str | os.PathLike,
    saturation: str | os.PathLike,
    superbias: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    chunks: tuple[int, int] | None = None,
    overwrite: bool = False,
) -> xr.Dataset:
    """Turn a JWST-style ``_uncal.fits`` and reference images into a ramp dataset.

    Parameters
    ----------
    uncal : path-like
        FITS file with a ``SCI`` cube ``(nints, ngroups, ny, nx)`` in DN, optional
        ``GROUPDQ`` (same shape) and ``PIXELDQ`` ``(ny, nx)``, and the keywords
        ``TGROUP``, ``TFRAME`` (s), ``NFRAMES``, ``GROUPGAP`` in the primary header.
    gain, readnoise, saturation : path-like
        Reference images (``SCI`` or primary HDU) of shape ``(ny, nx)``: gain in
        e-/DN, read noise in DN (CDS), saturation threshold in DN. The
        saturation file's ``DQ`` extension, when present, becomes ``saturation_dq`` (the
        saturation step ORs it into ``pixeldq``, as JWST's) and contributes its
        ``NO_SAT_CHECK`` bits to ``pixeldq`` at once. A ``ZEROFRAME`` extension of the
        ``uncal`` file ``(nints, ny, nx)`` becomes ``zeroframe``.
    superbias : path-like, optional
        Superbias image in DN.
    out : path-like, optional
        Write the dataset to this Zarr store (atomically) and return it opened lazily.
    chunks : (int, int), optional
        ``(y, x)`` chunk size of the result (and of the store). Default: sized by
        the cube's samples (:func:`daskcal.detector._common.default_chunk_yx`; 512 x 1024
        for a (1, 10, 2048, 2048) exposure).
    overwrite : bool, default False
        Replace an existing ``out``.

    Returns
    -------
    xarray.Dataset
        The ramp dataset (dask-backed). ``SCI`` and ``GROUPDQ`` are read lazily,
        one ``(y, x)`` chunk of every integration and group per task, so ingesting
        holds a few chunks in memory, not the cube; without ``out`` the dataset
        reads ``uncal`` when computed (keep the file in place).
    """
    import dask.array as da
    from astropy.io import fits

    uncal = Path(uncal)
    with fits.open(uncal, lazy_load_hdus=True) as hdul:  # headers only: the cubes are read chunk by chunk
        shape = _ext_shape(hdul, "SCI")
        if shape is None or len(shape) != 4:
            got = "none" if shape is None else f"{len(shape)} dimensions"
            msg = f"{str(uncal)!r}: SCI must be a 4-D cube (nints, ngroups, ny, nx); got {got}"
            raise ValueError(msg)
        chunks = tuple(chunks) if chunks is not None else default_chunk_yx(shape)
        data = _fits_cube(uncal, "SCI", shape, np.float32, chunks)
        gdq_shape = _ext_shape(hdul, "GROUPDQ")
        if gdq_shape is None:
            gdq = da.zeros(shape, dtype=np.uint8, chunks=data.chunks)
        elif gdq_shape != shape:
            msg = f"{str(uncal)!r}: GROUPDQ has shape {gdq_shape}; expected SCI's {shape}"
            raise ValueError(msg)
        else:
            gdq = _fits_cube(uncal, "GROUPDQ", shape, np.uint8, chunks)
        pdq_shape = _ext_shape(hdul, "PIXELDQ")
        if pdq_shape is not None and pdq_shape != shape[2:]:
            msg = f"{str(uncal)!r}: PIXELDQ has shape {pdq_shape}; expected (ny, nx) = {shape[2:]}"
            raise ValueError(msg)
        pdq = np.zeros(shape[2:], np.uint32) if pdq_shape is None else np.asarray(hdul["PIXELDQ"].data, dtype=np.uint32)
        zf_shape = _ext_shape(hdul, "ZEROFRAME")
        if zf_shape is not None and zf_shape != (shape[0], *shape[2:]):
            msg = f"{str(uncal)!r}: ZEROFRAME has shape {zf_shape}; expected (nints, ny, nx) = {(shape[0], *shape[2:])}"
            raise ValueError(msg)
        zeroframe = None if zf_shape is None else np.asarray(hdul["ZEROFRAME"].data, dtype=np.float32)
        header = hdul[0].header
        attrs = {}
        for key, name in _KEYWORDS.items():
            if key not in header:
                msg = f"{str(uncal)!r}: primary header keyword {key} ({name}) is missing"
                raise ValueError(msg)
            attrs[name] = header[key]
        instrument = header.get("INSTRUME")
    attrs = {
        "group_time": float(attrs["group_time"]),
        "frame_time": float(attrs["frame_time"]),
        "nframes": int(attrs["nframes"]),
        "groupgap": int(attrs["groupgap"]),
        "source": os.path.basename(os.fspath(uncal)),
    }
    if instrument:  # MIRI's leading/trailing DO_NOT_USE groups are left out of the ramp fit (stcal)
        attrs["instrument"] = str(instrument).strip()
    shape = shape[2:]
    variables = {
        "data": (RAMP_DIMS, data, {"units": "DN"}),
        "groupdq": (RAMP_DIMS, gdq),
    }
    refs = {"gain": gain, "readnoise": readnoise, "saturation": saturation, "superbias": superbias}
    units = {"gain": "electron/DN", "readnoise": "DN", "saturation": "DN", "superbias": "DN"}
    for name, ref in refs.items():
        if ref is None:
            continue
        arr, dq = _reference_image(ref, name, shape)
        variables[name] = (PIX_DIMS, arr, {"units": units[name]})
        if name == "saturation" and dq is not None:
            pdq = pdq | (dq & np.uint32(DQ.NO_SAT_CHECK))
            variables["saturation_dq"] = (PIX_DIMS, dq)
    if zeroframe is not None:
        variables["zeroframe"] = (("integration", *PIX_DIMS), zeroframe, {"units": "DN"})
    variables["pixeldq"] = (PIX_DIMS, pdq)
    ds = xr.Dataset(variables, attrs=attrs)
    validate_ramps(ds, require=("gain", "readnoise", "saturation"))
    ds = pixel_chunked(ds, chunks)
    if out is None:
        return ds
    save_dataset(ds, out, overwrite=overwrite)
    return open_ramps(out)


def write_uncal(ramps: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> dict[str, Path]:
    """Write ramps as a JWST-style ``_uncal.fits`` plus reference images beside it.

    The inverse of :func:`ingest` (used by ``daskcal simulate --fits`` and tests).

    Returns
    -------
    dict
        ``{"uncal": path, "gain": ..., "readnoise": ..., "saturation": ..., "superbias": ...}``
        (the reference arrays present in ``ramps``).
    """
    from astropy.io import fits

    validate_ramps(ramps)
    path = Path(path)
    stem = path.name.removesuffix(".fits").removesuffix("_uncal")
    written: dict[str, Path] = {}
    primary = fits.PrimaryHDU()
    for key, name in _KEYWORDS.items():
        primary.header[key] = ramps.attrs[name]
    if ramps.attrs.get("instrument"):
        primary.header["INSTRUME"] = str(ramps.attrs["instrument"])
    hdul = fits.HDUList(
        [
            primary,
            fits.ImageHDU(np.asarray(ramps["data"].values, np.float32), name="SCI"),
            fits.ImageHDU(np.asarray(ramps["groupdq"].values, np.uint8), name="GROUPDQ"),
            fits.ImageHDU(np.asarray(ramps["pixeldq"].values, np.uint32), name="PIXELDQ"),
        ]
    )
    if "zeroframe" in ramps:
        hdul.append(fits.ImageHDU(np.asarray(ramps["zeroframe"].values, np.float32), name="ZEROFRAME"))
    with atomic_path(path, overwrite=overwrite) as tmp:
        hdul.writeto(tmp)
    written["uncal"] = path
    for name in ("gain", "readnoise", "saturation", "superbias"):
        if name not in ramps:
            continue
        ref = path.with_name(f"{stem}_{name}.fits")
        with atomic_path(ref, overwrite=overwrite) as tmp:
            fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.asarray(ramps[name].values), name="SCI")]).writeto(tmp)
        written[name] = ref
    return written


def to_fits(product: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Export a ``rate`` or ``rateints`` product to FITS (SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE).

    The product is computed (it must fit in memory) and written atomically.

    Parameters
    ----------
    product : xarray.Dataset
        ``RampFitResult.rate`` or ``.rateints`` (or a store opened from them).
    path : path-like
        Destination FITS file.
    overwrite : bool, default False
        Replace an existing file.
    """
    from astropy.io import fits

    if product.attrs.get("product") == "fitopt":
        return fitopt_to_fits(product, path, overwrite=overwrite)
    missing = [v for v in _PRODUCT_EXT if v not in product]
    if missing:
        msg = f"product lacks {missing}; expected a rate/rateints dataset with {list(_PRODUCT_EXT)}"
        raise ValueError(msg)
    hdus = [_primary(product)]
    for name, ext in _PRODUCT_EXT.items():
        hdu = fits.ImageHDU(np.asarray(product[name].values), name=ext)
        if name != "dq":
            hdu.header["BUNIT"] = "DN/s" if name in ("data", "err") else "DN^2/s^2"
        hdus.append(hdu)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fits.HDUList(hdus).writeto(tmp)
    return Path(path)


def fitopt_to_fits(product: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Export a ``fitopt`` product (``RampFitResult.fitopt``) as jwst's ``_fitopt.fits``.

    Extensions SLOPE, SIGSLOPE, VAR_POISSON, VAR_RNOISE, YINT, SIGYINT, WEIGHTS
    ``(integration, segment, y, x)``, PEDESTAL ``(integration, y, x)`` and CRMAG
    ``(integration, jump, y, x)``, float32, with ``DATAMODL = 'RampFitOutputModel'``: the file
    ``stdatamodels.jwst.datamodels.RampFitOutputModel`` opens. The axes keep the product's
    lengths (their largest possible, unused slots 0; see :mod:`daskcal.detector._fitopt`);
    with no ``jump`` slot (one group per integration) CRMAG has one slot of zeros, as FITS holds no
    empty axis. The product is computed (it must fit in memory) and written atomically.
    """
    from astropy.io import fits

    missing = [v for v in _FITOPT_EXT if v not in product]
    if missing:
        msg = f"product lacks {missing}; expected a fitopt dataset with {list(_FITOPT_EXT)}"
        raise ValueError(msg)
    primary = _primary(product)
    primary.header["DATAMODL"] = "RampFitOutputModel"
    hdus = [primary]
    for name, ext in _FITOPT_EXT.items():
        values = np.asarray(product[name].values, dtype=np.float32)
        if values.size == 0:
            values = np.zeros((values.shape[0], 1, *values.shape[2:]), np.float32)
        hdu = fits.ImageHDU(values, name=ext)
        if product[name].attrs.get("units"):
            hdu.header["BUNIT"] = product[name].attrs["units"]
        hdus.append(hdu)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fits.HDUList(hdus).writeto(tmp)
    return Path(path)


def _primary(product: xr.Dataset):
    """The primary HDU of an exported product: its short scalar attributes as keywords, and what made it."""
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    for key, value in product.attrs.items():
        if isinstance(value, (int, float, str, bool)) and len(key) <= 8:
            primary.header[key.upper()] = value
    for key, name in _LONG_KEYWORDS.items():
        if isinstance(product.attrs.get(name), (int, float)):
            primary.header[key] = product.attrs[name]
    if isinstance(product.attrs.get(RUN_ATTR), dict):  # what made it (see daskcal.io._resume), a long string
        primary.header[FITS_KEY] = json.dumps(product.attrs[RUN_ATTR], sort_keys=True)
    return primary
