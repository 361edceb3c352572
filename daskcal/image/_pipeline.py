"""The image3 pipeline: tweakreg -> skymatch -> outlier detection -> resample, as calwebb_image3 runs them.

:func:`image3` chains the public steps. Alignment (source catalogs) and sky matching
(sky statistics) compute small results and run when it is called, on the current
``distributed`` client or Dask's threaded scheduler; outlier detection and resample
stay lazy, so the flagged exposures (``_crf``) and the mosaic (``_i2d``) are written
by one computation that shares their tasks (:mod:`daskcal.cli._image3` does that).

Every step takes its parameters as a mapping of the keyword arguments of its public
function (:func:`daskcal.align`, :func:`daskcal.match_sky`, :func:`daskcal.flag_outliers`,
:func:`daskcal.resample`); ``{"skip": True}`` skips it, as ``--steps.<step>.skip``
does in jwst's ``strun``. Defaults are each step's documented defaults.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import dask
import numpy as np
import xarray as xr

from daskcal.image._dataset import keeps_parsed_wcs

__all__ = ["STEP_NAMES", "Image3Result", "image3", "nan_outliers"]

log = logging.getLogger("daskcal.image3")

#: The steps of image3, in the order they run (jwst's step names).
STEP_NAMES = ("tweakreg", "skymatch", "outlier_detection", "resample")


@dataclasses.dataclass
class Image3Result:
    """What :func:`image3` returns.

    Attributes
    ----------
    mosaic : xarray.Dataset
        The lazy mosaic (:func:`daskcal.resample` output) with ``cal_step`` and the
        association's product name (``name``) in its attributes.
    images : list of xarray.Dataset
        The exposures as the pipeline leaves them (jwst's ``_crf``): aligned WCS,
        sky level (``level``/``subtracted``), outlier flags in ``dq`` with ``data``,
        ``err`` and ``var_*`` set to NaN where this run flagged an outlier. Lazy.
    alignment, sky, outliers : step results or None
        :class:`daskcal.image._align.AlignResult`, :class:`daskcal.image._skymatch.SkyMatchResult`,
        :class:`daskcal.OutlierResult`; None for a skipped step.
    product_name : str
        Name of the product (the association's ``products[0].name``, else ``product_name=``).
    """

    mosaic: xr.Dataset | None
    images: list
    alignment: Any = None
    sky: Any = None
    outliers: Any = None
    product_name: str = "image3"
    cal_step: dict = dataclasses.field(default_factory=dict)
    #: wall seconds of each step's call: tweakreg and skymatch compute (catalogs, sky statistics);
    #: outlier_detection and resample only build their lazy graphs here
    seconds: dict = dataclasses.field(default_factory=dict)

    def cleanup(self) -> None:
        """Remove the outlier step's temporary stack (compute or save the products first)."""
        if self.outliers is not None:
            self.outliers.cleanup()


def _step_params(name: str, value) -> tuple[bool, dict]:
    """(skip, keyword arguments) of one step from ``None`` (defaults), ``False`` (skip) or a mapping."""
    if value is None or value is True:
        return False, {}
    if value is False:
        return True, {}
    if not isinstance(value, Mapping):
        msg = f"image3: {name}= must be a mapping of parameters, True/None (defaults) or False (skip); got {value!r}"
        raise TypeError(msg)
    params = dict(value)
    skip = params.pop("skip", False)
    if not isinstance(skip, (bool, np.bool_)):
        msg = f"image3: {name}.skip must be true or false; got {skip!r}"
        raise ValueError(msg)
    return bool(skip), params


#: keyword arguments of :func:`daskcal.resample` that go to :func:`daskcal.output_wcs`
_WCS_ARGS = ("pixel_scale", "pixel_scale_ratio", "rotation", "crpix", "crval", "output_shape")


def check_parameters(*, tweakreg=None, skymatch=None, outlier_detection=None, resample=None) -> None:
    """Refuse bad step parameters of :func:`image3` (``ValueError``/``TypeError``) without computing anything."""
    steps = {"tweakreg": tweakreg, "skymatch": skymatch, "outlier_detection": outlier_detection,
             "resample": resample}
    _check_all({name: _step_params(name, value) for name, value in steps.items()})


def _check_all(parsed: dict) -> None:
    """Check every step's parameters (names and values) before any step computes anything."""
    import inspect

    from daskcal.image import _align, _outliers, _resample, _skymatch

    checks = {
        "tweakreg": (_align.align, _align.AlignParameters, {"catalogs"}),
        "skymatch": (_skymatch.match_sky, _skymatch.SkyMatchParameters, set()),
        "outlier_detection": (_outliers.flag_outliers, _outliers.OutlierParameters, {"tempdir", "output_wcs"}),
        "resample": (_resample.resample, _resample.ResampleParams,
                     {"output_wcs", "tile_shape", "block_shape", "max_output_memory", "check_inputs", *_WCS_ARGS}),
    }
    for step, (skip, params) in parsed.items():
        if skip:
            continue
        fn, cls, other = checks[step]
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - fields - other)
        if unknown:
            msg = (f"image3: unknown {step} parameters {unknown}; expected some of "
                   f"{sorted(fields | other)}")
            raise ValueError(msg)
        defaults = {n: p.default for n, p in inspect.signature(fn).parameters.items()
                    if p.default is not inspect.Parameter.empty and n in fields}
        values = {**defaults, **{k: v for k, v in params.items() if k in fields}}
        if step == "outlier_detection" and values.get("buffer_size") is None:
            values["buffer_size"] = _outliers.DEFAULT_BUFFER_SIZE
        if step == "outlier_detection" and values.get("tile_shape") is None:
            values.pop("tile_shape", None)
        try:
            cls(**{k: v for k, v in values.items() if k in fields})
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"image3: {step}: {exc}") from exc


def _asn_file(paths) -> str | None:
    """File name of the first association among ``paths`` (jwst's ``meta.asn.table_name``), if any."""
    from pathlib import Path

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    for p in paths:
        if isinstance(p, (str, os.PathLike)) and Path(p).suffix.lower() == ".json":
            return Path(p).name
    return None


def _open(images, allow_outside_asn: bool) -> tuple[list[xr.Dataset], str | None]:
    """Image datasets and the association's product name from datasets, paths or association files."""
    from daskcal.image._io import open_images

    if isinstance(images, xr.Dataset):
        msg = "image3 needs a sequence of exposures (datasets or paths), not one dataset"
        raise TypeError(msg)
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    images = list(images)
    if not images:
        msg = "image3 needs at least one input exposure"
        raise ValueError(msg)
    if all(isinstance(im, xr.Dataset) for im in images):
        return images, None
    if any(isinstance(im, xr.Dataset) for im in images):
        msg = "image3: give either datasets or paths, not both"
        raise TypeError(msg)
    return open_images(images, allow_outside_asn=allow_outside_asn), _product_name(images)


def _product_name(paths) -> str | None:
    """``products[0].name`` of the first association among ``paths``, if any."""
    from pathlib import Path

    from daskcal.image._io import read_association

    for p in paths:
        if isinstance(p, (str, os.PathLike)) and Path(p).suffix.lower() == ".json":
            return read_association(p, allow_outside_asn=True).product_name or None
    return None


def nan_outliers(before: xr.Dataset, after: xr.Dataset) -> xr.Dataset:
    """``after`` with ``data``, ``err`` and ``var_*`` set to NaN where the outlier step newly set OUTLIER.

    As jwst's outlier detection does to the exposures it writes (``_crf``): the pixels
    it flags lose their values, not only their weight. Pixels already flagged
    OUTLIER before the step are left as they were. Lazy.
    """
    import dask.array as da

    from daskcal.dq import DQ
    from daskcal.io._zarr_read import zarr_source

    bit = np.uint32(DQ.OUTLIER)
    new = ((after["dq"] & bit) != 0) & ((before["dq"] & bit) == 0)
    masks = {}  # (y, x) chunks -> the mask of new outliers on them, computed once for every variable
    out = {}
    for name in ("data", "err", "var_poisson", "var_rnoise", "var_flat", "var_sky"):
        if name not in after:
            continue
        var = after[name]
        source = zarr_source(var.data) if isinstance(var.data, da.Array) else None
        if source is None or not isinstance(after["dq"].data, da.Array):
            out[name] = var.where(~new, var.dtype.type(np.nan))
            continue
        # A variable as read from Zarr is read by the task that NaNs it, once the flags are known: as a read
        # task it ran long before (nothing else waits for it) and was held until the flags of its exposure,
        # after the median of every exposure (image3 of 32 x 2048^2: ~57 chunks of each variable per worker).
        chunks = var.data.chunks
        if chunks not in masks:
            masks[chunks] = _new_outliers_mask(before["dq"].data, after["dq"].data, chunks, bit)
        mask = masks[chunks]
        data = da.map_blocks(_nan_where, mask, source=source, dtype=var.dtype,
                             meta=np.empty((0,) * var.ndim, var.dtype),
                             name=f"nan-outliers-{name}-" + dask.base.tokenize(var.data, mask))
        out[name] = (var.dims, data, var.attrs)
    return after.assign(out)


def _new_outliers_mask(before_dq, after_dq, chunks, bit):
    """Lazy boolean mask, chunked as ``chunks``, of the pixels whose ``after_dq`` newly has ``bit``; a
    ``before_dq`` as read from Zarr is read inside its tasks."""
    import dask.array as da

    from daskcal.io._zarr_read import zarr_source

    before_source = zarr_source(before_dq) if isinstance(before_dq, da.Array) else None
    args = [after_dq.rechunk(chunks)]
    if before_source is None:
        args.append(da.asarray(before_dq).rechunk(chunks))
    return da.map_blocks(_new_outliers, *args, before_source=before_source, bit=bit, dtype=bool,
                         meta=np.empty((0, 0), bool),
                         name="new-outliers-" + dask.base.tokenize(*args, before_source, bit))


def _new_outliers(after_dq, *before, before_source, bit, block_info=None):
    """Block: where ``after_dq`` has ``bit`` and the DQ before (given, or read from ``before_source``) had not."""
    if before_source is not None:
        before = (before_source.read(tuple(slice(a, b) for a, b in block_info[0]["array-location"])),)
    return ((after_dq & bit) != 0) & ((before[0] & bit) == 0)


def _nan_where(mask, source, block_info=None):
    """Block: the variable's block read from ``source``, NaN where ``mask``."""
    block = source.read(tuple(slice(a, b) for a, b in block_info[0]["array-location"]))
    block[mask] = np.nan
    return block


@keeps_parsed_wcs
def image3(
    images,
    *,
    tweakreg: Mapping | bool | None = None,
    skymatch: Mapping | bool | None = None,
    outlier_detection: Mapping | bool | None = None,
    resample: Mapping | bool | None = None,
    product_name: str | None = None,
    allow_outside_asn: bool = False,
) -> Image3Result:
    """Run calwebb_image3's steps on exposures: align, match sky, flag outliers, resample.

    Parameters
    ----------
    images : sequence of xarray.Dataset, or paths
        Calibrated exposures (:func:`daskcal.open_images` datasets), or paths of
        ``_cal.fits`` files, image Zarr stores and/or a JWST level-3 association JSON
        (only its ``science`` members are combined; a member's ``group_id`` overrides).
        Not modified.
    tweakreg, skymatch, outlier_detection, resample : mapping, True/None or False
        Keyword arguments of :func:`daskcal.align`, :func:`daskcal.match_sky`,
        :func:`daskcal.flag_outliers` and :func:`daskcal.resample`; ``None`` runs the
        step with its defaults, ``False`` or ``{"skip": True}`` skips it.
    product_name : str, optional
        Product name (the ``_i2d`` prefix). Default: the association's
        ``products[0].name``, else ``"image3"``.
    allow_outside_asn : bool, default False
        Read association members outside the association's folder.

    Returns
    -------
    Image3Result
        The lazy mosaic and exposures, and each step's result. Call
        :meth:`Image3Result.cleanup` after saving to remove the outlier step's
        temporary stack.

    Raises
    ------
    ValueError, TypeError
        Bad inputs or parameters, reported by the step that owns them before any
        of that step's computation runs.
    """
    steps = {"tweakreg": tweakreg, "skymatch": skymatch, "outlier_detection": outlier_detection,
             "resample": resample}
    parsed = {name: _step_params(name, value) for name, value in steps.items()}
    _check_all(parsed)  # a bad parameter of a later step is found before an earlier one computes
    if not isinstance(images, (str, os.PathLike, xr.Dataset)):
        images = list(images)
    ds_list, asn_name = _open(images, allow_outside_asn)
    asn_table = None if isinstance(images, xr.Dataset) else _asn_file(images)
    name = product_name or asn_name or "image3"
    cal_step: dict[str, str] = {}
    seconds: dict[str, float] = {}
    current = list(ds_list)

    def mark(images_: Sequence[xr.Dataset]) -> list[xr.Dataset]:
        return [im.assign_attrs(cal_step=dict(im.attrs.get("cal_step") or {}) | dict(cal_step)) for im in images_]

    alignment = sky = outliers = None
    skip, params = parsed["tweakreg"]
    if skip:
        cal_step["tweakreg"] = "SKIPPED"
    else:
        from daskcal.image._align import align

        t0 = time.perf_counter()
        alignment = align(current, **params)
        seconds["tweakreg"] = time.perf_counter() - t0
        current = list(alignment.images)
        cal_step["tweakreg"] = "COMPLETE"
        log.info("tweakreg: %d exposures aligned", len(current))
    skip, params = parsed["skymatch"]
    if skip:
        cal_step["skymatch"] = "SKIPPED"
    else:
        from daskcal.image._skymatch import match_sky

        t0 = time.perf_counter()
        sky = match_sky(current, **params)
        seconds["skymatch"] = time.perf_counter() - t0
        current = list(sky.images)
        cal_step["skymatch"] = "COMPLETE"
    skip, params = parsed["outlier_detection"]
    if skip:
        cal_step["outlier_detection"] = "SKIPPED"
    else:
        from daskcal.image._outliers import flag_outliers

        t0 = time.perf_counter()
        outliers = flag_outliers(current, **params)
        seconds["outlier_detection"] = time.perf_counter() - t0
        current = [nan_outliers(b, a) for b, a in zip(current, outliers.images)]
        cal_step["outlier_detection"] = "COMPLETE"
    # Resample drizzles the flagged exposures, not their NaN'd products: the pixels NaN'd are flagged, so their
    # weight is 0 either way and the mosaic is identical (tested), but these are the inputs as read from Zarr,
    # which resample's tile tasks read themselves; the NaN'd chunks would be held from the crf writes until
    # the last tile that needs them (~80 chunks of each variable per worker on 32 exposures of 2048^2).
    to_drizzle = mark(current if outliers is None else outliers.images)
    current = mark(current)  # the exposures' own steps (jwst's _crf records these, not resample)
    skip, params = parsed["resample"]
    mosaic = None
    try:
        if skip:
            cal_step["resample"] = "SKIPPED"
        else:
            from daskcal.image._resample import resample as drizzle

            t0 = time.perf_counter()
            if outliers is not None:  # flag_outliers checked these exposures; checking the flags would compute them
                params.setdefault("check_inputs", False)
            mosaic = drizzle(to_drizzle, **params)
            seconds["resample"] = time.perf_counter() - t0
            cal_step["resample"] = "COMPLETE"
            extra = {"asn_table": asn_table} if asn_table else {}
            mosaic = mosaic.assign_attrs(name=name, cal_step=dict(cal_step), **extra)
    except BaseException:
        if outliers is not None:
            outliers.cleanup()
        raise
    return Image3Result(mosaic=mosaic, images=current, alignment=alignment, sky=sky, outliers=outliers,
                        product_name=name, cal_step=dict(cal_step), seconds=seconds)
