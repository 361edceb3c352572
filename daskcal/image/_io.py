"""Reading calibrated exposures and writing mosaics: Zarr, JWST-style FITS, associations.

- :func:`open_images` opens Zarr stores written by :func:`daskcal.save` of an
  :func:`daskcal.image_dataset`, JWST ``_cal.fits`` files (SCI, ERR, DQ, VAR_*
  extensions, the gwcs in the ``ASDF`` extension at ``meta.wcs``) and association
  JSON files, all lazily (each FITS chunk is read by the task that needs it).
- :func:`write_cal_fits` writes an image dataset as such a FITS file.
- :func:`to_fits` exports a mosaic that fits in memory as an ``_i2d``-like FITS file.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from daskcal.image._dataset import WCS_ATTR, _META_DEFAULTS, check_sky_finite, get_wcs, wcs_from_text, wcs_to_text
from daskcal.image._fits_write import DEFAULT_FITS_EXPORT, FITS_EXPORT_CONFIG, I2D_EXTENSIONS, _asdf_hdu, read_fits_wcs, to_fits, write_cal_fits, write_crf_fits  # noqa: F401 - the writers, moved

__all__ = ["open_images", "expand_inputs", "write_cal_fits", "to_fits", "CAL_EXTENSIONS", "I2D_EXTENSIONS"]

#: Dataset variable -> FITS extension of a calibrated exposure.
CAL_EXTENSIONS = {"data": "SCI", "err": "ERR", "dq": "DQ", "var_poisson": "VAR_POISSON",
                  "var_rnoise": "VAR_RNOISE", "var_flat": "VAR_FLAT"}
#: Attribute -> (primary header keyword, ASDF tree path) of an exposure's times and sky.
_KEYWORDS = {
    "exposure_time": ("EFFEXPTM", ("exposure", "exposure_time")),
    "measurement_time": ("TMEASURE", ("exposure", "measurement_time")),
    "duration": ("DURATION", ("exposure", "duration")),
    "start_time": ("EXPSTART", ("exposure", "start_time")),
    "end_time": ("EXPEND", ("exposure", "end_time")),
    "level": ("BKGLEVEL", ("background", "level")),
    "subtracted": ("BKGSUB", ("background", "subtracted")),
    "group_id": ("GROUP_ID", ("group_id",)),
}
ASDF_EXT = "ASDF"
ASDF_COLUMN = "ASDF_METADATA"
DEFAULT_CHUNKS = (1024, 1024)


# ---------------------------------------------------------------- inputs

def expand_inputs(paths_or_asn, *, allow_outside_asn: bool = False) -> list[Path]:
    """Paths of the exposures named by paths, association JSON files, or both.

    An association (jwst format) contributes ``products[0].members[].expname``,
    relative to the association's directory. Members given as absolute paths, or
    whose ``..`` leads out of that directory, are refused unless ``allow_outside_asn``
    (an association from elsewhere should not make the run read arbitrary files).
    """
    if isinstance(paths_or_asn, (str, os.PathLike)):
        paths_or_asn = [paths_or_asn]
    out: list[Path] = []
    for item in paths_or_asn:
        p = Path(item)
        if not p.exists():
            msg = f"no input at {str(p)!r}"
            raise FileNotFoundError(msg)
        if p.suffix.lower() == ".json":
            out.extend(_asn_members(p, allow_outside_asn))
        else:
            out.append(p)
    if not out:
        msg = "no input images given"
        raise ValueError(msg)
    return out


def _asn_members(path: Path, allow_outside: bool = False) -> list[Path]:
    try:
        asn = json.loads(path.read_text())
        members = asn["products"][0]["members"]
        names = [m["expname"] for m in members]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
        msg = f"association {str(path)!r} is not valid: {exc!r}; expected JSON with products[0].members[].expname"
        raise ValueError(msg) from exc
    if not names:
        msg = f"association {str(path)!r} has no members"
        raise ValueError(msg)
    if not all(isinstance(n, str) and n for n in names):
        msg = f"association {str(path)!r}: every member's expname must be a non-empty string; got {names!r}"
        raise ValueError(msg)
    home = path.parent.resolve()
    outside = [n for n in names if Path(n).is_absolute() or not (home / n).resolve().is_relative_to(home)]
    if outside and not allow_outside:
        msg = (f"association {str(path)!r} names exposures outside its folder {str(home)!r}: {outside}; expected "
               f"paths relative to the association, or pass --allow-outside-asn (allow_outside_asn=True)")
        raise ValueError(msg)
    members = [(path.parent / n) if not Path(n).is_absolute() else Path(n) for n in names]
    missing = [str(m) for m in members if not m.exists()]
    if missing:
        msg = f"association {str(path)!r} names exposures that do not exist: {missing}"
        raise FileNotFoundError(msg)
    return members


def open_images(paths_or_asn, *, chunks: Sequence[int] | None = None,
                allow_outside_asn: bool = False) -> list[xr.Dataset]:
    """Open calibrated exposures lazily.

    Parameters
    ----------
    paths_or_asn : path-like or sequence of path-like
        Zarr stores (from :func:`daskcal.save` of an :func:`daskcal.image_dataset`),
        JWST-style ``_cal.fits`` files, and/or association JSON files.
    chunks : (int, int), optional
        ``(y, x)`` chunk shape (px). Default (1024, 1024). FITS arrays get it as
        given; Zarr stores are read in whole stored chunks, as many per Dask
        chunk as come closest to it (stored chunks of 256 px make Dask chunks of
        1024 px: 16x fewer tasks, each reading 16 stored chunks).
    allow_outside_asn : bool, default False
        Read association members given as absolute paths or outside the
        association's folder (refused by default).

    Returns
    -------
    list of xarray.Dataset
        Dask-backed image datasets, one per exposure, in the given order.

    Raises
    ------
    FileNotFoundError
        A path or association member does not exist.
    ValueError
        A file without SCI data, DQ or a usable WCS, an empty image, extensions of
        different shapes, an unreadable association or one naming files outside its
        folder; a Zarr store missing a chunk file or with chunk files beyond its arrays'
        grids (:class:`daskcal.io._zarr_read.ChunkError`, also raised by the task that
        reads a chunk missing or corrupt by then).
    """
    if chunks is not None:
        chunks = tuple(chunks)
        if len(chunks) != 2 or not all(isinstance(c, (int, np.integer)) and c >= 1 for c in chunks):
            msg = f"chunks must be two positive integers (y, x) in pixels; got {chunks!r}"
            raise ValueError(msg)
    return [_open_one(p, chunks) for p in expand_inputs(paths_or_asn, allow_outside_asn=allow_outside_asn)]


def _open_one(path: Path, chunks) -> xr.Dataset:
    name = path.name.lower()
    if name.endswith((".fits", ".fits.gz", ".fit")):
        return _open_cal_fits(path, chunks or DEFAULT_CHUNKS)
    if path.is_dir():
        return _open_zarr(path, chunks or DEFAULT_CHUNKS)
    msg = f"{str(path)!r} is neither a Zarr store (directory), a .fits file nor an association .json"
    raise ValueError(msg)


def _zarr_chunks(ds: xr.Dataset, target) -> dict | None:
    """Dask chunks per dimension: whole multiples of the stored chunks nearest ``target`` (y, x)."""
    stored = ds["data"].encoding.get("chunks") if "data" in ds else None
    if not stored or len(stored) != 2:
        return None
    out = {}
    for dim, have, want in zip(ds["data"].dims, stored, target):
        if any(have != ds[v].encoding.get("chunks", (have, have))[ds[v].dims.index(dim)]
               for v in ds.data_vars if dim in ds[v].dims):
            return None  # variables stored with different chunks: keep each variable's own
        out[dim] = int(have) * max(1, round(int(want) / int(have)))
    return out


def _open_zarr(path: Path, chunks) -> xr.Dataset:
    try:
        ds = xr.open_zarr(path, consolidated=False)
        dask_chunks = _zarr_chunks(ds, chunks)
        if dask_chunks is not None and dask_chunks != dict(zip(ds["data"].dims, ds["data"].encoding["chunks"])):
            ds = xr.open_zarr(path, consolidated=False, chunks=dask_chunks)
    except Exception as exc:  # zarr raises several types for "not a store"
        msg = f"{str(path)!r} is not a readable Zarr store: {exc}"
        raise ValueError(msg) from exc
    if "data" not in ds:
        msg = f"Zarr store {str(path)!r} has no 'data' variable; expected an image dataset"
        raise ValueError(msg)
    if not ds.attrs.get(WCS_ATTR):
        msg = f"Zarr store {str(path)!r} has no WCS (attribute {WCS_ATTR!r}); write it from daskcal.image_dataset"
        raise ValueError(msg)
    _check_shape(path, "'data'", ds["data"].shape)
    try:
        wcs = wcs_from_text(ds.attrs[WCS_ATTR])
    except Exception as exc:  # asdf/yaml raise several types for unreadable text
        msg = (f"Zarr store {str(path)!r}: attribute {WCS_ATTR!r} is not readable ASDF ({exc}); "
               f"expected a gwcs as ASDF text")
        raise ValueError(msg) from exc
    _check_image_wcs(wcs, path, ds["data"].shape)
    return _read_checked(ds, path)


def _read_checked(ds: xr.Dataset, path: Path) -> xr.Dataset:
    """``ds`` (opened by xarray from the store at ``path``) with its chunk files checked, and its
    variables that Zarr stores as they are read by daskcal's tasks (same chunks, same values), so that a
    chunk missing or corrupt when read is a :class:`~daskcal.io._zarr_read.ChunkError`, not the fill value
    or a codec's exception (:mod:`daskcal.io._zarr_read`)."""
    from daskcal.io._zarr_read import ZarrSource, check_store, read_as_dask, stored_as_is

    check_store(path, ds.variables)
    read = {name: var.copy(data=read_as_dask(ZarrSource.at(path, name), var.data.chunks))
            for name, var in ds.data_vars.items() if stored_as_is(var) and var.chunks is not None}
    return ds.assign(read)


def _check_shape(path: Path, what: str, shape: tuple) -> None:
    if len(shape) != 2 or min(shape) < 1:
        msg = f"{str(path)!r}: {what} has shape {tuple(shape)}; expected a 2-D image with at least one pixel"
        raise ValueError(msg)


def _check_image_wcs(wcs, path: Path, shape: tuple[int, int]) -> None:
    """Refuse a WCS that is not a 2-D gwcs, or that maps the image's corners or centre to non-finite sky."""
    import gwcs

    if not isinstance(wcs, gwcs.WCS):
        msg = f"{str(path)!r}: the WCS is a {type(wcs).__name__}; expected a gwcs.WCS (meta.wcs of a JWST-style file)"
        raise ValueError(msg)
    if wcs.output_frame is None or wcs.output_frame.naxes != 2 or wcs.forward_transform.n_inputs != 2:
        msg = f"{str(path)!r}: the WCS must map 2 pixel axes to 2 sky axes"
        raise ValueError(msg)
    check_sky_finite(wcs, shape, repr(str(path)))


class _FitsSection:
    """Array-like view of one FITS extension that reads only the requested slice."""

    def __init__(self, path: str, ext: str, shape: tuple, dtype: np.dtype):
        self.path, self.ext, self.shape, self.dtype = path, ext, shape, np.dtype(dtype)
        self.ndim = len(shape)

    def __getitem__(self, key):
        from astropy.io import fits

        # raw values (memory-mapped even where BZERO/BSCALE are set, as for uint32 DQ), scaled here
        with fits.open(self.path, memmap=True, lazy_load_hdus=True, do_not_scale_image_data=True) as hdul:
            hdu = hdul[self.ext]
            raw = np.asarray(hdu.section[key])
            bzero, bscale = hdu.header.get("BZERO", 0), hdu.header.get("BSCALE", 1)
        if bzero == 0 and bscale == 1:
            return raw.astype(self.dtype)
        if self.dtype.kind in "ui" and bscale == 1:
            return (raw.astype(np.int64) + int(bzero)).astype(self.dtype)
        return (raw * float(bscale) + float(bzero)).astype(self.dtype)


def _tree_get(tree, keys):
    node = tree
    for k in keys:
        try:
            node = node[k]
        except (KeyError, TypeError, IndexError):
            return None
    return node


def _read_asdf_tree(hdul, path):
    """The ASDF tree of a FITS file's ``ASDF`` extension (as stdatamodels writes it)."""
    import asdf

    if ASDF_EXT not in hdul:
        msg = f"{str(path)!r} has no {ASDF_EXT} extension, so no WCS; expected a JWST-style _cal.fits"
        raise ValueError(msg)
    try:
        raw = hdul[ASDF_EXT].data[ASDF_COLUMN][0].tobytes()
        return asdf.open(io.BytesIO(raw), lazy_load=False, memmap=False)
    except Exception as exc:  # a missing column, bad YAML, not ASDF at all: several types
        msg = (f"{str(path)!r}: the {ASDF_EXT} extension is not readable ASDF ({exc}); expected the "
               f"{ASDF_COLUMN} column of a JWST-style _cal.fits with meta.wcs")
        raise ValueError(msg) from exc


def _open_cal_fits(path: Path, chunks) -> xr.Dataset:
    import dask.array as da
    from astropy.io import fits
    from dask.base import tokenize

    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        if "SCI" not in hdul or hdul["SCI"].header.get("NAXIS", 0) != 2:
            msg = f"{str(path)!r} has no 2-D SCI extension; expected a JWST-style _cal.fits"
            raise ValueError(msg)
        with _read_asdf_tree(hdul, path) as af:
            wcs = _tree_get(af.tree, ("meta", "wcs"))
            if wcs is None:
                msg = f"{str(path)!r}: the ASDF extension has no meta.wcs; the image cannot be resampled"
                raise ValueError(msg)
            shape = (hdul["SCI"].header["NAXIS2"], hdul["SCI"].header["NAXIS1"])
            _check_shape(path, "extension SCI", shape)
            _check_image_wcs(wcs, path, shape)
            text = wcs_to_text(wcs)
            meta_tree = af.tree.get("meta", {})
            attrs = _fits_attrs(hdul[0].header, meta_tree, path)
        if "DQ" not in hdul:
            msg = (f"{str(path)!r} has no DQ extension; expected a JWST-style _cal.fits with SCI and DQ "
                   f"(ERR, VAR_* optional)")
            raise ValueError(msg)
        data_vars = {}
        for var, ext in CAL_EXTENSIONS.items():
            if ext not in hdul:
                continue
            h = hdul[ext].header
            eshape = tuple(h[f"NAXIS{i}"] for i in range(h.get("NAXIS", 0), 0, -1))
            if eshape != shape:
                msg = f"{str(path)!r}: extension {ext} has shape {eshape}; SCI has {shape}"
                raise ValueError(msg)
            dtype = np.uint32 if var == "dq" else np.float32
            arr = _FitsSection(str(path), ext, shape, dtype)
            name = f"fits-{ext.lower()}-" + tokenize(str(path.resolve()), os.path.getmtime(path), ext, tuple(chunks))
            data_vars[var] = (("y", "x"), da.from_array(arr, chunks=tuple(chunks), name=name,
                                                        meta=np.empty((0, 0), dtype)))
        bunit = hdul["SCI"].header.get("BUNIT")
    attrs[WCS_ATTR] = text
    if bunit:
        attrs["bunit_data"] = str(bunit)
    return xr.Dataset(data_vars, attrs=attrs)


def _fits_attrs(header, meta_tree, path: Path) -> dict:
    attrs = dict(_META_DEFAULTS)
    stem = path.name.split(".fits")[0]
    attrs["name"] = stem
    for key, (kw, tree_path) in _KEYWORDS.items():
        value = _tree_get(meta_tree, tree_path)
        if value is None and kw in header:
            value = header[kw]
        if value is not None:
            attrs[key] = value if isinstance(value, (bool, str)) else float(value)
    if attrs["group_id"] is None:
        attrs["group_id"] = stem
    if not float(attrs["exposure_time"]) > 0:
        msg = f"{str(path)!r}: exposure time (EFFEXPTM / meta.exposure.exposure_time) must be positive"
        raise ValueError(msg)
    if attrs["duration"] is None:
        attrs["duration"] = attrs["exposure_time"]
    if attrs["end_time"] is None:
        attrs["end_time"] = float(attrs["start_time"]) + float(attrs["exposure_time"]) / 86400.0
    attrs["subtracted"] = bool(attrs["subtracted"])
    return attrs
