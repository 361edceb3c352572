"""detector1: saturation -> superbias -> jumps -> ramp fit, as one lazy graph."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import xarray as xr

from daskcal.detector._common import pixel_chunked, validate_ramps
from daskcal.detector._fused import detector1_graph, plane_usable
from daskcal.detector._jump import JumpMethod, JumpParameters, detect_jumps
from daskcal.detector._miri_groups import is_miri
from daskcal.detector._ramp_fit import RampFitResult, fit_ramps, fit_ramps_planes
from daskcal.detector._saturation import (
    SaturationParameters,
    check_saturation_inputs,
    check_superbias,
    flag_saturation,
    needs_separate_graph,
    saturation_graph,
)

__all__ = ["STEPS", "extended_emission_events", "primary_cosmic_rays", "subtract_superbias", "detector1",
           "detector1_steps", "step_parameters"]

log = logging.getLogger(__name__)

# The steps detector1 runs, in order, by the names recipes use.
STEPS = {"saturation": flag_saturation, "jump": detect_jumps, "ramp_fit": fit_ramps}


def subtract_superbias(ramps: xr.Dataset) -> xr.Dataset:
    """Subtract the ``superbias`` reference (DN; ``(y, x)``, or per group ``(integration, group, y, x)``)
    from every group.

    As JWST's superbias step does, NaN superbias values are treated as 0 DN. The
    result is a new lazy dataset with ``data`` in DN above bias and
    ``attrs["superbias_subtracted"] = True``; without a ``superbias`` variable
    the input is returned unchanged (with a logged note).
    """
    if "superbias" not in ramps:
        log.info("no superbias in the ramps; skipping superbias subtraction")
        return ramps
    validate_ramps(ramps)
    check_superbias(ramps)
    bias = ramps["superbias"].fillna(0.0).astype(np.float32)
    out = ramps.copy()
    out["data"] = (ramps["data"] - bias).astype(np.float32).transpose(*ramps["data"].dims)
    out["data"].attrs = dict(ramps["data"].attrs)
    out.attrs["superbias_subtracted"] = True
    return out


def primary_cosmic_rays(n_primary_jumps, usable_planes, group_time: float, npix: int) -> float | None:
    """The primary cosmic-ray rate JWST's jump step records (``meta.exposure.primary_cosmic_rays``, FITS
    keyword PRIMECRS): primary jumps per thousand pixels per second.

    ``1000 * sum(n_primary_jumps) / (group_time * groups * npix)``, where ``groups`` is the number of
    usable (integration, group) planes less one per integration (the group differences of the exposure).

    Parameters
    ----------
    n_primary_jumps : array-like of int, shape (nints,)
        Primary jumps found in each integration (``RampFitResult.n_primary_jumps``, computed).
    usable_planes : array-like of bool, shape (nints, ngroups)
        Which group planes have a pixel that is not DO_NOT_USE (jwst leaves out the planes that are
        DO_NOT_USE in every pixel, such as MIRI's first and last groups).
    group_time : float
        Time between groups, s.
    npix : int
        Pixels of the detector (ny * nx).

    Returns
    -------
    float or None
        The rate (1 / (1000 pixels * s)); None where jwst records none: fewer than 3 groups per integration
        (its jump step is skipped) or no group difference.
    """
    exposure = _pixel_seconds(usable_planes, group_time, npix)
    if exposure is None:
        return None
    return 1000.0 * int(np.sum(np.asarray(n_primary_jumps, dtype=np.int64))) / exposure


def extended_emission_events(n_extended_events, usable_planes, group_time: float, npix: int) -> float | None:
    """The rate of large events JWST's jump step records (``meta.exposure.extended_emission_events``, FITS
    keyword EXTNCRS): snowballs or showers per million pixels per second.

    ``1e6 * sum(n_extended_events) / (group_time * groups * npix)``, ``groups`` as for
    :func:`primary_cosmic_rays` (jwst 3.0's ``JumpStep.process`` divides both counts by the same
    exposure). The count is stcal 1.20's ``number_extended_events``: the snowballs flagged with
    ``expand_large_events``, or, with ``find_showers``, the showers (which replace the snowballs' count,
    even where too few group differences leave the shower search out: 0).

    Parameters
    ----------
    n_extended_events : array-like of int, shape (nints,), or None
        Snowballs or showers found in each integration (``RampFitResult.n_extended_events``, computed);
        None where no large-event search ran: 0 events, the rate jwst then records.
    usable_planes, group_time, npix
        As for :func:`primary_cosmic_rays` (``group_time`` in s).

    Returns
    -------
    float or None
        The rate (1 / (10**6 pixels * s)); 0.0 without a search; None where jwst records none (as
        :func:`primary_cosmic_rays`: fewer than 3 groups per integration, or no group difference).
    """
    exposure = _pixel_seconds(usable_planes, group_time, npix)
    if exposure is None:
        return None
    total = 0 if n_extended_events is None else int(np.sum(np.asarray(n_extended_events, dtype=np.int64)))
    return 1e6 * total / exposure


def _pixel_seconds(usable_planes, group_time: float, npix: int) -> float | None:
    """``group_time * (usable planes - nints) * npix`` (pixel seconds of the group differences jwst's jump step
    divides its counts by), or None where it records no rate."""
    usable = np.asarray(usable_planes, dtype=bool)
    nints, ngroups = usable.shape
    groups = int(usable.sum()) - nints
    if ngroups <= 2 or groups < 1:
        return None
    return float(group_time) * groups * int(npix)


def step_parameters() -> dict[str, dict[str, object]]:
    """``{step: {parameter: default}}`` for the steps detector1 runs, from their parameter dataclasses.

    Python-only arguments (such as ``fit_ramps``' ``dark_current`` array) are not listed:
    recipes and the command line cannot express them.
    """
    from daskcal._params import defaults, step_classes

    return {step: defaults(*step_classes(step)) for step in STEPS}


def _route(params: dict[str, object]) -> dict[str, dict[str, object]]:
    known = step_parameters()
    routed: dict[str, dict[str, object]] = {step: {} for step in known}
    for name, value in params.items():
        owners = [step for step, names in known.items() if name in names]
        if not owners:
            allowed = sorted(n for names in known.values() for n in names)
            msg = f"detector1 got an unknown parameter {name!r}; expected one of {allowed}"
            raise TypeError(msg)
        for step in owners:
            routed[step][name] = value
    return routed


def detector1(ramps: xr.Dataset, *, chunks: tuple[int, int] | None = None, **params) -> RampFitResult:
    """Run saturation flagging, superbias subtraction, jump detection and ramp fitting.

    Parameters
    ----------
    ramps : xarray.Dataset
        Raw ramps (DN, bias included) with ``gain``, ``readnoise``, ``saturation``
        and optionally ``superbias``, ``saturation_dq``, ``zeroframe`` and the attribute
        ``read_pattern`` (see :func:`daskcal.open_ramps` and :func:`flag_saturation`).
    chunks : (int, int), optional
        ``(y, x)`` chunk size; default the input's chunking (numpy input: sized by its samples,
        :func:`daskcal.detector._common.default_chunk_yx`).
    **params
        Parameters of the steps, by name: ``n_pix_grow_sat`` (saturation; default 1),
        ``atod_limit`` (65535 DN), ``use_readpatt`` (True: use ``ramps.attrs["read_pattern"]``, else the
        frames of ``nframes`` as JWST's saturation step numbers them; see :func:`flag_saturation`),
        ``rejection_threshold`` (4.0), ``three_group_rejection_threshold`` (6.0),
        ``four_group_rejection_threshold`` (5.0), ``flag_4_neighbors`` (True),
        ``max_jump_to_flag_neighbors`` (1000), ``min_jump_to_flag_neighbors`` (10),
        ``after_jump_flag_dn1/2`` (0 DN), ``after_jump_flag_time1/2`` (0 s), ``minimum_groups`` (3),
        ``minimum_sigclip_groups`` (100), ``only_use_ints`` (True), ``min_diffs_single_pass`` (10),
        ``expand_large_events`` (False) and the other snowball parameters of :func:`detect_jumps` (jump),
        ``suppress_one_group`` (True), ``save_opt`` (False: no ``fitopt`` product; OLS_C only) and
        ``algorithm`` (``"OLS_C"``, or ``"LIKELY"``: the likelihood fit with its own jump search,
        4 or more groups) (ramp fit). An unknown name is an error.

    Returns
    -------
    RampFitResult
        Lazy ``.rate`` and ``.rateints`` datasets (DN/s), ``.n_primary_jumps``, the
        cosmic rays (primary JUMP_DET samples) found in each integration (JWST's PRIMECRS:
        ``daskcal.detector._pipeline.primary_cosmic_rays``), and with ``expand_large_events``
        or ``find_showers`` ``.n_extended_events``, the snowballs or showers found in each
        integration (JWST's EXTNCRS: ``daskcal.detector._pipeline.extended_emission_events``;
        None without either search). Only small detector-wide
        statistics (gain checks, the median gain, which group planes are usable)
        are computed here; the ramps are read when the caller computes or saves
        the products.

    Notes
    -----
    NaN and infinite samples (corrupt input: digitised ramps never hold them) are
    flagged DO_NOT_USE, and only that, before saturation is checked, so they are
    never fitted and never grow saturation; a pixel left with no usable group gets
    a NaN rate, DO_NOT_USE in ``dq`` and zero variances, as stcal gives any
    unusable pixel. ``result.n_nonfinite`` counts the pixels that had any
    (compute it with the products: ``daskcal detector1`` logs it as a warning).

    The steps run fused, chunk by chunk, with one halo of ``n_pix_grow_sat + 1``
    pixels (see :mod:`daskcal.detector._fused`), except where jump detection may
    use sigma clipping (``minimum_sigclip_groups`` integrations, or groups with
    ``only_use_ints=False``), which needs every chunk's primary jumps before any
    neighbour flags, or where snowballs or showers are flagged (``expand_large_events``,
    ``find_showers``), which needs whole group planes of jump flags, or where the saturation
    step has a read pattern (a halo of ``2 * n_pix_grow_sat``) or per-group thresholds: then
    the steps run as separate graphs. The result equals running
    :func:`flag_saturation`, :func:`subtract_superbias`, :func:`detect_jumps` and
    :func:`fit_ramps` one after another (:func:`detector1_steps`; its saturation
    step flags NaN and infinite samples as above).
    """
    routed = _route(params)
    validate_ramps(ramps, require=("gain", "readnoise"))
    check_saturation_inputs(ramps)
    nints, ngroups = ramps.sizes["integration"], ramps.sizes["group"]
    sat = SaturationParameters(**routed["saturation"])
    jump = JumpParameters(**routed["jump"])
    why = needs_separate_graph(ramps, sat)
    if why:
        log.info("the saturation step uses %s: detector1 runs its steps as separate graphs", why)
        return detector1_steps(ramps, chunks=chunks, **params)
    if JumpMethod.of(jump).may_clip(nints, ngroups):
        log.info("jump detection may use sigma clipping (%d integrations of %d groups), which tests whole group "
                 "planes of primary jumps: detector1 runs its steps as separate graphs", nints, ngroups)
        return detector1_steps(ramps, chunks=chunks, **params)
    if jump.expand_large_events or jump.find_showers:
        log.info("snowballs or showers are searched for on whole group planes after jump detection: detector1 "
                 "runs its steps as separate graphs")
        return detector1_steps(ramps, chunks=chunks, **params)
    return detector1_graph(ramps, routed, chunks)


def detector1_steps(ramps: xr.Dataset, *, chunks: tuple[int, int] | None = None, **params) -> RampFitResult:
    """detector1 as four separate step graphs (the composition :func:`detector1` fuses).

    Same parameters and result as :func:`detector1`; kept to show (and test) that
    the fused graph equals the steps one after another.
    """
    routed = _route(params)
    ramps = pixel_chunked(ramps, chunks)
    # MIRI's dropped group planes, from the raw ramps (the steps add DO_NOT_USE only where plane_usable
    # looks), so that the fit does not compute the jump graph's first chunk to find them
    usable = plane_usable(ramps) if is_miri(ramps.attrs) else None
    all_dnu = None if usable is None else ~usable.any(axis=0)
    ramps = saturation_graph(ramps, SaturationParameters(**routed["saturation"]), nonfinite=True)
    ramps = subtract_superbias(ramps)
    ramps = detect_jumps(ramps, **routed["jump"])
    result = fit_ramps_planes(ramps, **routed["ramp_fit"], all_dnu=all_dnu)
    return result if usable is None else dataclasses.replace(result, usable_planes=usable)
