"""Reading calibrated exposures and writing mosaics: Zarr, JWST-style FITS, associations.

- :func:`open_images` opens Zarr stores written by :func:`daskcal.save` of an
  :func:`daskcal.image_dataset`, JWST ``_cal.fits`` files (SCI, ERR, DQ, VAR_*
  extensions, the gwcs in the ``ASDF`` extension at ``meta.wcs``) and association
  JSON files, all lazily (each FITS chunk is read by the task that needs it).
- :func:`write_cal_fits` writes an image dataset as such a FITS file.
- :func:`to_fits` exports a mosaic that fits in memory as an ``_i2d``-like FITS file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections import UserList
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from daskcal.image._asdf import asdf_ready
from daskcal.image._dataset import WCS_ATTR, _META_DEFAULTS, check_sky_finite, get_wcs, wcs_from_text, wcs_to_text
from daskcal.image._fits_write import DEFAULT_FITS_EXPORT, FITS_EXPORT_CONFIG, I2D_EXTENSIONS, _asdf_hdu, read_fits_wcs, to_fits, write_cal_fits, write_crf_fits  # noqa: F401 - the writers, moved

__all__ = ["open_images", "expand_inputs", "read_association", "Association", "Member", "exposure_name",
           "write_cal_fits", "to_fits", "CAL_EXTENSIONS", "I2D_EXTENSIONS"]

log = logging.getLogger(__name__)

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
#: ``meta`` entries copied as JSON-able dicts into attributes of the same name.
_META_DICTS = ("wcsinfo", "observation", "instrument")
#: ``meta.observation`` field -> primary header keyword: what jwst forms an exposure's ``group_id`` from.
_OBSERVATION_KEYS = (("program_number", "PROGRAM"), ("observation_number", "OBSERVTN"), ("visit_number", "VISIT"),
                     ("visit_group", "VISITGRP"), ("sequence_id", "SEQ_ID"), ("activity_id", "ACT_ID"),
                     ("exposure_number", "EXPOSURE"))
#: File-name suffixes that are not part of the exposure's name.
_NAME_SUFFIXES = ("_cal", "_crf")
#: Association ``exptype`` of the exposures to combine.
SCIENCE = "science"
_SKIP = object()
ASDF_EXT = "ASDF"
ASDF_COLUMN = "ASDF_METADATA"
DEFAULT_CHUNKS = (1024, 1024)


# ---------------------------------------------------------------- inputs

@dataclass(frozen=True)
class Member:
    """One exposure of an association: its file, its ``exptype`` and its ``group_id`` if the association sets one."""

    path: Path
    exptype: str
    group_id: str | None = None

    @property
    def is_science(self) -> bool:
        return self.exptype.lower() == SCIENCE


@dataclass(frozen=True)
class Association:
    """An association JSON file (jwst format) as daskcal reads it: the first product's name and members."""

    path: Path
    product_name: str | None
    members: tuple[Member, ...]

    @property
    def science(self) -> tuple[Member, ...]:
        """The members that are exposures to combine (``exptype`` "science")."""
        return tuple(m for m in self.members if m.is_science)


def read_association(path, *, allow_outside_asn: bool = False) -> Association:
    """Read an association JSON file (jwst format).

    Only the first product is read, as jwst's ModelLibrary does: its ``name`` and its
    ``members[]`` (``expname``, relative to the association's folder; ``exptype``,
    default "science"; optional ``group_id``, which overrides the exposure's own).
    The science members must exist and lie inside the association's folder (their
    resolved paths; absolute or through ``..``): others are refused unless
    ``allow_outside_asn`` (an association from elsewhere should not make the run read
    arbitrary files). Other members (e.g. "background") are listed but not checked.

    Parameters
    ----------
    path : path-like
        The association JSON file.
    allow_outside_asn : bool, default False
        Accept science members outside the association's folder.

    Returns
    -------
    Association
        ``product_name`` (None when the product has no name), ``members`` (every member,
        in order) and ``science`` (the members to combine).

    Raises
    ------
    FileNotFoundError
        The association, or a science member, does not exist.
    ValueError
        Not JSON of that form, no science member, or science members outside the folder.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"no association file at {str(path)!r}"
        raise FileNotFoundError(msg)
    try:
        asn = json.loads(path.read_text())
        product = asn["products"][0]
        raw = product["members"]
        members = tuple(_member(path, m) for m in raw)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        msg = (f"association {str(path)!r} is not valid: {exc!r}; expected JSON with products[0].members[] "
               f"holding a non-empty 'expname' string, optionally 'exptype' and 'group_id' strings")
        raise ValueError(msg) from exc
    name = product.get("name")
    out = Association(path, str(name) if name not in (None, "") else None, members)
    science = out.science
    if not science:
        msg = (f"association {str(path)!r} has no science members (exptype 'science'); got "
               f"{[m.exptype for m in members]}")
        raise ValueError(msg)
    home = path.parent.resolve()
    outside = [str(m.path) for m in science if not m.path.resolve().is_relative_to(home)]
    if outside and not allow_outside_asn:
        msg = (f"association {str(path)!r} names exposures outside its folder {str(home)!r}: {outside}; expected "
               f"paths relative to the association, or pass --allow-outside-asn (allow_outside_asn=True)")
        raise ValueError(msg)
    missing = [str(m.path) for m in science if not m.path.exists()]
    if missing:
        msg = f"association {str(path)!r} names exposures that do not exist: {missing}"
        raise FileNotFoundError(msg)
    return out


def _member(asn_path: Path, m) -> Member:
    expname = m["expname"]
    if not isinstance(expname, str) or not expname:
        msg = f"a member's expname must be a non-empty string; got {expname!r}"
        raise ValueError(msg)
    exptype = m.get("exptype", SCIENCE)
    group_id = m.get("group_id")
    for key, value in (("exptype", exptype), ("group_id", group_id)):
        if value is not None and not (isinstance(value, str) and value):
            msg = f"member {expname!r}: {key} must be a non-empty string; got {value!r}"
            raise ValueError(msg)
    p = Path(expname)
    return Member(p if p.is_absolute() else asn_path.parent / p, exptype, group_id)


def _expand(paths_or_asn, allow_outside_asn: bool) -> list[tuple[Path, str | None]]:
    """(path, group_id override or None) of every exposure named by paths and association files."""
    if isinstance(paths_or_asn, (str, os.PathLike)):
        paths_or_asn = [paths_or_asn]
    out: list[tuple[Path, str | None]] = []
    for item in paths_or_asn:
        p = Path(item)
        if not p.exists():
            msg = f"no input at {str(p)!r}"
            raise FileNotFoundError(msg)
        if p.suffix.lower() != ".json":
            out.append((p, None))
            continue
        asn = read_association(p, allow_outside_asn=allow_outside_asn)
        for m in asn.members:
            if not m.is_science:
                log.info("association %s: member %s has exptype %r; skipped (only science exposures are combined)",
                         p, m.path.name, m.exptype)
        out.extend((m.path, m.group_id) for m in asn.science)
    if not out:
        msg = "no input images given"
        raise ValueError(msg)
    return out


def expand_inputs(paths_or_asn, *, allow_outside_asn: bool = False) -> list[Path]:
    """Paths of the exposures named by paths, association JSON files, or both.

    An association contributes its science members (:func:`read_association`);
    other members are skipped with a logged info line.
    """
    return [p for p, _ in _expand(paths_or_asn, allow_outside_asn)]


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
        Read association members outside the association's folder (refused by
        default).

    Returns
    -------
    list of xarray.Dataset
        Dask-backed image datasets, one per exposure, in the given order (an
        association's science members in its order; other members are skipped).
        Attributes: ``name``, ``group_id`` (an association member's, else the file's
        ``meta.group_id``, else jwst's exposure id from ``meta.observation`` - every
        detector of one exposure shares it - else ``name``), times, sky, and from a
        ``_cal.fits`` the JSON dicts ``wcsinfo``, ``observation``, ``instrument``
        (``docs/inputs.md``).

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
    images = []
    for path, group_id in _expand(paths_or_asn, allow_outside_asn):
        ds = _open_one(path, chunks)
        images.append(ds.assign_attrs(group_id=group_id) if group_id is not None else ds)
    return images


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


def _check_image_wcs(wcs, path: Path, shape: tuple[int, int], unread: Sequence[str] = ()) -> None:
    """Refuse a WCS that is not a 2-D gwcs, or that maps the image's corners or centre to non-finite sky.

    ``unread``: what asdf said about nodes of the WCS it could not convert, for the message.
    """
    import gwcs

    if not isinstance(wcs, gwcs.WCS):
        why = ""
        if unread:
            why = (f" (asdf could not convert it: {unread[0]}; JWST's own transforms need stdatamodels "
                   f"installed)")
        msg = (f"{str(path)!r}: the WCS is a {type(wcs).__name__}{why}; expected a gwcs.WCS "
               f"(meta.wcs of a JWST-style file)")
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


@contextlib.contextmanager
def _read_asdf_tree(hdul, path):
    """The ASDF file in a FITS file's ``ASDF`` extension (as stdatamodels writes it), opened lazily, for a
    ``with`` block that holds :data:`daskcal.image._asdf.ASDF_LOCK` (:func:`daskcal.image._asdf.asdf_ready`).

    Its tree's nodes are converted when read, its arrays loaded when used: read what is needed
    before the ``with`` block ends.
    """
    import asdf

    if ASDF_EXT not in hdul:
        msg = f"{str(path)!r} has no {ASDF_EXT} extension, so no WCS; expected a JWST-style _cal.fits"
        raise ValueError(msg)
    with asdf_ready():
        try:
            raw = hdul[ASDF_EXT].data[ASDF_COLUMN][0].tobytes()
            # lazy: only the nodes read (meta.*) are converted; stdatamodels' array references
            # ("source: fits:SCI,1", resolvable only by stdatamodels) are never followed
            af = asdf.open(io.BytesIO(raw), lazy_load=True, lazy_tree=True, memmap=False)
        except Exception as exc:  # a missing column, bad YAML, not ASDF at all: several types
            msg = (f"{str(path)!r}: the {ASDF_EXT} extension is not readable ASDF ({exc}); expected the "
                   f"{ASDF_COLUMN} column of a JWST-style _cal.fits with meta.wcs")
            raise ValueError(msg) from exc
        with af:
            yield af


def _convert_wcs(af):
    """``meta.wcs`` of a lazily opened ASDF file (None when absent), and asdf's messages about nodes it
    could not convert (tags of extensions not installed), which otherwise are only warnings."""
    from asdf.exceptions import AsdfConversionWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AsdfConversionWarning)
        wcs = _tree_get(af.tree, ("meta", "wcs"))
    unread = [str(w.message) for w in caught if issubclass(w.category, AsdfConversionWarning)]
    for w in caught:
        if not issubclass(w.category, AsdfConversionWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return wcs, unread


def _open_cal_fits(path: Path, chunks) -> xr.Dataset:
    import dask.array as da
    from astropy.io import fits
    from dask.base import tokenize

    with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
        if "SCI" not in hdul or hdul["SCI"].header.get("NAXIS", 0) != 2:
            msg = f"{str(path)!r} has no 2-D SCI extension; expected a JWST-style _cal.fits"
            raise ValueError(msg)
        with _read_asdf_tree(hdul, path) as af:
            wcs, unread = _convert_wcs(af)
            if wcs is None:
                msg = f"{str(path)!r}: the ASDF extension has no meta.wcs; the image cannot be resampled"
                raise ValueError(msg)
            shape = (hdul["SCI"].header["NAXIS2"], hdul["SCI"].header["NAXIS1"])
            _check_shape(path, "extension SCI", shape)
            _check_image_wcs(wcs, path, shape, unread)
            for message in unread:  # a gwcs all the same: what it left out
                log.warning("%s: meta.wcs: %s", path, message)
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


def exposure_name(path) -> str:
    """The exposure's name from its file name: ``jw..._nrca1_cal.fits`` -> ``jw..._nrca1``."""
    stem = Path(path).name.split(".fits")[0]
    if stem.lower().endswith(".zarr"):
        stem = stem[: -len(".zarr")]
    for suffix in _NAME_SUFFIXES:
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _plain(node):
    """A JSON-able copy of an ASDF metadata node (dicts, lists, numbers, strings); other values left out."""
    if isinstance(node, Mapping):
        out = {}
        for k, v in node.items():
            v = _plain(v)
            if v is not _SKIP:
                out[str(k)] = v
        return out
    if isinstance(node, (list, tuple, UserList)):
        return [v for v in map(_plain, node) if v is not _SKIP]
    if isinstance(node, np.generic):
        node = node.item()
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    return _SKIP


def _observation_group_id(observation: dict, header) -> str | None:
    """jwst's exposure ``group_id`` (every detector of one exposure shares it) from ``meta.observation``
    or the primary header keywords, or None when any of its seven values is missing."""
    values = []
    for field, keyword in _OBSERVATION_KEYS:
        value = observation.get(field)
        if value is None:
            value = header.get(keyword)
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        values.append(str(value).strip())
    program, obs, visit, visit_group, sequence, activity, exposure = values
    return f"jw{program}{obs}{visit}_{visit_group}{sequence}{activity}_{exposure}"


def _fits_attrs(header, meta_tree, path: Path) -> dict:
    attrs = dict(_META_DEFAULTS)
    name = exposure_name(path)
    attrs["name"] = name
    for key, (kw, tree_path) in _KEYWORDS.items():
        value = _tree_get(meta_tree, tree_path)
        if value is None and kw in header:
            value = header[kw]
        if value is not None:
            attrs[key] = value if isinstance(value, (bool, str)) else float(value)
    for key in _META_DICTS:
        value = _plain(_tree_get(meta_tree, (key,)))
        if isinstance(value, dict) and value:
            attrs[key] = value
    if attrs["group_id"] is None:
        attrs["group_id"] = _observation_group_id(attrs.get("observation", {}), header) or name
    attrs["group_id"] = str(attrs["group_id"])
    if not float(attrs["exposure_time"]) > 0:
        msg = f"{str(path)!r}: exposure time (EFFEXPTM / meta.exposure.exposure_time) must be positive"
        raise ValueError(msg)
    if attrs["duration"] is None:
        attrs["duration"] = attrs["exposure_time"]
    if attrs["end_time"] is None:
        attrs["end_time"] = float(attrs["start_time"]) + float(attrs["exposure_time"]) / 86400.0
    attrs["subtracted"] = bool(attrs["subtracted"])
    return attrs
