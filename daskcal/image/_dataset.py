"""The calibrated-exposure dataset: arrays on ``(y, x)`` plus a gwcs WCS.

The WCS is kept as ASDF text in the ``wcs_asdf`` attribute so that it survives a
Zarr (or netCDF) round trip unchanged; :func:`get_wcs` deserialises it once and
caches the object by the text.
"""

from __future__ import annotations

import contextvars
import functools
import io
from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr

from daskcal.image._asdf import asdf_ready

__all__ = ["image_dataset", "get_wcs", "wcs_to_text", "wcs_from_text", "check_sky_finite", "ARRAY_NAMES",
           "VARIANCE_NAMES"]

#: Variance arrays, in the order the reference resamples them.
VARIANCE_NAMES = ("var_rnoise", "var_flat", "var_poisson")
#: Every per-pixel array a calibrated exposure may carry.
ARRAY_NAMES = ("data", "err", "dq", "var_rnoise", "var_poisson", "var_flat", "var_sky")

WCS_ATTR = "wcs_asdf"

_META_DEFAULTS: dict[str, Any] = {
    "exposure_time": 1.0,
    "measurement_time": None,
    "start_time": 0.0,
    "end_time": None,
    "duration": None,
    "group_id": None,
    "name": "image",
    "level": 0.0,
    "subtracted": False,
    "bunit_data": "MJy/sr",
}


def wcs_to_text(wcs) -> str:
    """Serialise a gwcs WCS to ASDF text (arrays stored inline, so it is plain text).

    The same WCS gives the same text in every process: asdf lists the extensions it used
    (``history: extensions:``) in the order of a set, which changes with Python's hash seed,
    so the entries are sorted here. Products are then bit-identical from run to run (a
    resumed mosaic to an uninterrupted one), and graphs that take the text have the same names.
    """
    import asdf

    buf = io.BytesIO()
    with asdf_ready():
        asdf.AsdfFile({"wcs": wcs}).write_to(buf, all_array_storage="inline")
    return _sorted_history(buf.getvalue().decode("utf-8"))


def _sorted_history(text: str) -> str:
    """ASDF text with the entries of its ``history: extensions:`` list in sorted order."""
    head, sep, rest = text.partition("\nhistory:\n  extensions:\n")
    if not sep:
        return text
    lines = rest.split("\n")
    end = next((k for k, line in enumerate(lines) if line and not line.startswith("  ")), len(lines))
    entries, current = [], None
    for line in lines[:end]:
        if line.startswith("  - "):
            current = [line]
            entries.append(current)
        elif current is not None:
            current.append(line)
        else:  # not the layout asdf writes: leave the text as it is
            return text
    body = "\n".join("\n".join(e) for e in sorted(entries, key=lambda e: "\n".join(e)))
    return head + sep + body + "\n" + "\n".join(lines[end:])


@functools.lru_cache(maxsize=256)
def wcs_from_text(text: str):
    """Deserialise ASDF text written by :func:`wcs_to_text` (cached by the text)."""
    import asdf

    with asdf_ready():
        with asdf.open(io.BytesIO(text.encode("utf-8")), lazy_load=False, memmap=False) as af:
            return af.tree["wcs"]


def _check_wcs(wcs) -> None:
    import gwcs

    if not isinstance(wcs, gwcs.WCS):
        msg = f"wcs must be a gwcs.WCS; got {type(wcs).__name__}"
        raise TypeError(msg)
    if wcs.output_frame is None or wcs.output_frame.naxes != 2:
        msg = "wcs must map 2 pixel axes to 2 celestial axes"
        raise ValueError(msg)


def check_sky_finite(wcs, shape: tuple[int, int], where: str) -> None:
    """Refuse a WCS that maps the corners or centre of a ``shape`` image to non-finite sky.

    ``where`` names the image in the message (a file name, or the argument).
    """
    ny, nx = shape
    x = np.array([0.0, nx - 1.0, 0.0, nx - 1.0, (nx - 1) / 2.0])
    y = np.array([0.0, 0.0, ny - 1.0, ny - 1.0, (ny - 1) / 2.0])
    with np.errstate(all="ignore"):
        try:
            sky = np.asarray(wcs.forward_transform(x, y), dtype=np.float64)
        except Exception as exc:  # a model that cannot be evaluated raises whatever its code raises
            msg = f"{where}: the WCS cannot be evaluated at the image corners ({exc}); expected a usable gwcs"
            raise ValueError(msg) from exc
    if not np.isfinite(sky).all():
        msg = (f"{where}: the WCS gives non-finite sky coordinates at the image corners or centre "
               f"(NaN or infinite WCS parameters?); expected finite RA, Dec for every pixel")
        raise ValueError(msg)


def image_dataset(
    data,
    wcs,
    *,
    err=None,
    dq=None,
    var_rnoise=None,
    var_poisson=None,
    var_flat=None,
    var_sky=None,
    **meta,
) -> xr.Dataset:
    """Build a calibrated-exposure dataset from arrays and a WCS.

    Parameters
    ----------
    data : array-like, shape (ny, nx)
        Science array (e.g. MJy/sr or DN/s). NumPy or Dask.
    wcs : gwcs.WCS
        Pixel (x, y; 0-based) to sky (RA, Dec; deg) transform.
    err : array-like, optional
        Total error, same unit as ``data``. Default: the square root of the sum of
        the variances given, or absent when none is given.
    dq : array-like of uint32, optional
        Data-quality bits (:class:`daskcal.DQ`). Default: all zero.
    var_rnoise, var_poisson, var_flat, var_sky : array-like, optional
        Variances (unit of ``data`` squared). Arrays not given are left out, as the
        reference skips variances a model does not have.
    **meta
        Attributes: ``exposure_time`` (s, default 1.0), ``measurement_time`` (s,
        optional), ``start_time`` / ``end_time`` (MJD), ``duration`` (s; default the
        exposure time), ``group_id`` (default ``name``), ``name`` (default
        ``"image"``), sky ``level`` (unit of ``data``, default 0) and ``subtracted``
        (default False). Other JSON-serialisable attributes are kept as they are.

    Returns
    -------
    xarray.Dataset
        Variables on ``(y, x)``; the WCS as ASDF text in ``attrs["wcs_asdf"]``.
    """
    _check_wcs(wcs)
    if np.ndim(data) != 2:
        msg = f"data must be 2-D (y, x); got shape {np.shape(data)}"
        raise ValueError(msg)
    shape = tuple(np.shape(data))
    if min(shape) < 1:
        msg = f"data has shape {shape}; expected an image with at least one pixel"
        raise ValueError(msg)
    check_sky_finite(wcs, shape, "wcs")
    arrays: dict[str, Any] = {"data": data}
    variances = {"var_rnoise": var_rnoise, "var_poisson": var_poisson, "var_flat": var_flat, "var_sky": var_sky}
    if err is None:
        given = [v for k, v in variances.items() if v is not None and k != "var_sky"]
        if given:
            err = np.sqrt(sum(np.asarray(v, dtype=np.float64) for v in given)).astype(np.float32)
    arrays["err"] = err
    arrays["dq"] = np.zeros(shape, np.uint32) if dq is None else dq
    arrays.update(variances)
    data_vars = {}
    for name, arr in arrays.items():
        if arr is None:
            continue
        if tuple(np.shape(arr)) != shape:
            msg = f"{name} has shape {tuple(np.shape(arr))}; expected the shape of data {shape}"
            raise ValueError(msg)
        if name == "dq":
            arr = arr.astype(np.uint32) if getattr(arr, "dtype", None) != np.uint32 else arr
        data_vars[name] = (("y", "x"), arr)
    attrs = dict(_META_DEFAULTS)
    attrs.update(meta)
    if attrs["group_id"] is None:
        attrs["group_id"] = attrs["name"]
    attrs["exposure_time"] = float(attrs["exposure_time"])
    if not attrs["exposure_time"] > 0:
        msg = f"exposure_time must be a positive number of seconds; got {attrs['exposure_time']}"
        raise ValueError(msg)
    if attrs["duration"] is None:
        attrs["duration"] = attrs["exposure_time"]
    if attrs["end_time"] is None:
        attrs["end_time"] = float(attrs["start_time"]) + attrs["exposure_time"] / 86400.0
    attrs[WCS_ATTR] = wcs_to_text(wcs)
    return xr.Dataset(data_vars, attrs=attrs)


def get_wcs(ds: xr.Dataset | Mapping):
    """Return the gwcs WCS of an image or mosaic dataset.

    Parameters
    ----------
    ds : xarray.Dataset
        A dataset made by :func:`image_dataset`, :func:`daskcal.open_images` or
        :func:`daskcal.resample` (or read back from their Zarr stores).

    Returns
    -------
    gwcs.WCS
        Deserialised once per distinct WCS and cached; treat it as read-only.

    Raises
    ------
    ValueError
        When the dataset carries no WCS.
    """
    attrs = ds.attrs if hasattr(ds, "attrs") else ds
    text = attrs.get(WCS_ATTR)
    if not text:
        name = attrs.get("name", "<unnamed>")
        msg = f"image {name!r} has no WCS (attribute {WCS_ATTR!r} missing); build it with daskcal.image_dataset"
        raise ValueError(msg)
    pinned = _PINNED.get()
    if pinned is None:
        return wcs_from_text(text)
    wcs = pinned.get(text)
    if wcs is None:
        wcs = pinned[text] = wcs_from_text(text)
    return wcs


#: The WCSs :func:`get_wcs` has deserialised in the current :func:`keeps_parsed_wcs` call, by text (None outside one).
_PINNED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("daskcal_pinned_wcs", default=None)


def keeps_parsed_wcs(func):
    """Decorator: while ``func`` runs, :func:`get_wcs` deserialises each distinct WCS once, however many.

    :func:`wcs_from_text`'s cache holds 256 WCSs (~320 KiB each for a JWST-like gwcs): a step of more inputs
    that goes over them twice (resample: its inputs, then the output grid) parsed every one again each time, at
    ~30 ms each. 400 exposures of 256^2 in a 20x20 grid: resample built its graph in 17.0 s, 25 s of 34 under a
    profiler being 800 parses. The WCSs kept are released when the outermost such call returns; tasks (other
    threads or processes) use the cache alone.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        if _PINNED.get() is not None:
            return func(*args, **kwargs)
        token = _PINNED.set({})
        try:
            return func(*args, **kwargs)
        finally:
            _PINNED.reset(token)

    return wrapper
