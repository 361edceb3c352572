"""Warnings about exposures that add nothing, or less than they seem, to a mosaic.

The reference drops such pixels silently: a pixel whose DQ fails ``good_bits`` and, with
``weight_type="ivm"``, a pixel whose ``var_rnoise`` is NaN, infinite or 0 (its inverse is
not finite) get weight 0. An exposure where that is every pixel, or one whose footprint
misses the output grid, contributes nothing. :func:`warn_unusable_inputs` says so, naming
the exposure, before the graph runs.
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["INPUT_CHECKS_LOGGER", "warn_no_overlap", "warn_unusable_inputs"]

log = logging.getLogger(__name__)
#: The logger of :func:`warn_unusable_inputs` (what a resumed command line run repeats from its record).
INPUT_CHECKS_LOGGER = f"{__name__}.inputs"
_inputs_log = logging.getLogger(INPUT_CHECKS_LOGGER)

#: Variance array whose inverse is the weight, by weight type (as the reference's build_driz_weight).
_WEIGHT_VARIANCE = {"ivm": "var_rnoise", "ivm-sky": "var_sky"}


def _name(ds, k: int) -> str:
    return str(ds.attrs.get("name") or f"input {k}")


def _kept(dq, good_bits):
    """1 where ``dq`` passes ``good_bits`` (astropy's bitmask, as the drizzle weight uses it)."""
    from astropy.nddata.bitmask import bitfield_to_boolean_mask

    from daskcal.dq import dq_dict

    return bitfield_to_boolean_mask(dq, good_bits, good_mask_value=1, dtype=np.uint8, flag_name_map=dq_dict())


def _counts(ds, good_bits, variance: str | None):
    """Lazy ``[pixels kept by good_bits, kept pixels whose weight variance gives no finite inverse]`` (int64).

    One task per chunk reads its ``dq`` (and variance) and returns the two counts, so the check reads each
    array once and holds nothing but numbers."""
    import dask.array as da

    def lazy(name):
        a = ds[name].data
        return a if isinstance(a, da.Array) else da.from_array(np.asarray(a), chunks="auto")

    base = lazy("dq") if "dq" in ds else lazy("data")
    arrays = [base]
    if variance is not None and variance in ds:
        var = lazy(variance)
        arrays.append(var if var.chunks == base.chunks else var.rechunk(base.chunks))
    ny, nx = base.numblocks
    per_chunk = da.map_blocks(_chunk_counts, *arrays, good_bits=good_bits, with_dq="dq" in ds,
                              new_axis=2, chunks=((1,) * ny, (1,) * nx, (2,)), dtype=np.int64,
                              meta=np.empty((0, 0, 0), np.int64))
    return per_chunk.sum(axis=(0, 1))


def _chunk_counts(dq, var=None, *, good_bits, with_dq: bool):
    """``[[[kept, kept with a weight variance whose inverse is not finite]]]`` of one chunk (int64)."""
    kept = _kept(dq, good_bits) > 0 if with_dq else np.ones(dq.shape, bool)
    n_zero = 0
    if var is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            n_zero = np.count_nonzero(~np.isfinite(1.0 / var) & kept)
    return np.array([[[np.count_nonzero(kept), n_zero]]], np.int64)


def warn_unusable_inputs(images, *, good_bits, weight_type: str | None, product: str = "the mosaic") -> list[str]:
    """Log a warning for each exposure that contributes nothing or has zero-weight pixels.

    Reads every exposure's ``dq`` and, for ``weight_type`` "ivm" ("ivm-sky"), its
    ``var_rnoise`` (``var_sky``) once: small reductions, computed now.

    Parameters
    ----------
    images : sequence of xarray.Dataset
        The exposures (each named by ``attrs["name"]``).
    good_bits : int, str or None
        DQ bits that count as good, as the drizzle weight takes them.
    weight_type : str or None
        The drizzle weight type.
    product : str
        What the exposures are combined into, for the messages.

    Returns
    -------
    list of str
        Names of the exposures that contribute nothing.
    """
    import dask

    variance = _WEIGHT_VARIANCE.get(weight_type)
    counts = dask.compute(*[_counts(ds, good_bits, variance) for ds in images])
    empty = []
    for k, (ds, (n_kept, n_zero)) in enumerate(zip(images, counts, strict=True)):
        name, n_kept, n_zero = _name(ds, k), int(n_kept), int(n_zero)
        if n_kept == 0:
            _inputs_log.warning("exposure %r: no pixel passes good_bits=%r (every pixel is flagged, such as "
                                "DO_NOT_USE); it contributes nothing to %s", name, good_bits, product)
            empty.append(name)
        elif n_zero == n_kept:
            _inputs_log.warning("exposure %r: %s is NaN, infinite or 0 at every usable pixel, so with "
                                "weight_type=%r every weight is 0; it contributes nothing to %s",
                                name, variance, weight_type, product)
            empty.append(name)
        elif n_zero:
            _inputs_log.warning("exposure %r: %s is NaN, infinite or 0 at %d of its %d usable pixels; with "
                                "weight_type=%r they get weight 0", name, variance, n_zero, n_kept, weight_type)
    return empty


def warn_no_overlap(names: list[str], product: str = "the mosaic") -> None:
    """Log a warning for each named exposure whose footprint misses the output grid."""
    for name in names:
        log.warning("exposure %r does not overlap the output grid; it contributes nothing to %s", name, product)
