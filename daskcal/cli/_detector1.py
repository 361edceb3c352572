"""``daskcal detector1 IN OUT``: saturation, superbias, jumps and ramp fit on a cluster."""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

from daskcal.cli._common import ClusterStart, add_cluster_options, chunk_option, print_dashboard
from daskcal.cli._parameters import add_save_parameters_option, check_parameters_file, save_parameters

__all__ = ["register", "execute", "run_recipe"]

log = logging.getLogger(__name__)


def register(sub) -> None:
    from daskcal._params import add_options, step_classes
    from daskcal.detector._pipeline import step_parameters

    p = sub.add_parser(
        "detector1",
        help="run saturation, superbias, jump detection and ramp fitting on a ramp Zarr store",
        description="Run detector1 (saturation -> superbias -> jump -> ramp fit) on ramp Zarr stores "
        "(from 'daskcal ingest' or 'daskcal simulate') and write OUT/rate.zarr and OUT/rateints.zarr "
        "(and OUT/fitopt.zarr with --save-opt true); "
        "with several inputs, OUT/<input name>/rate.zarr and rateints.zarr for each, one after the other "
        "on one cluster. Every input is opened and checked before anything is computed.",
    )
    p.add_argument("input", nargs="+", metavar="IN", help="ramp Zarr store(s)")
    p.add_argument("output", metavar="OUT", help="output directory (created if missing; products appear in it when complete)")
    p.add_argument("--chunks", type=int, nargs=2, metavar=("CY", "CX"), default=None, help="(y, x) chunk size")
    p.add_argument("--fits", action="store_true",
                   help="also export rate.fits and rateints.fits (and fitopt.fits, jwst's _fitopt layout, "
                   "with --save-opt true)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace existing products (only the files this command writes)")
    existing.add_argument("--resume", action="store_true",
                          help="continue an earlier run into the same OUT: skip each exposure whose products it "
                          "completed from the same input and parameters, keep the chunks it recorded as written "
                          "of an exposure it left half-written, compute the rest; a product or partial product "
                          "made differently is an error")
    for step in step_parameters():
        add_options(p.add_argument_group(f"{step} parameters"), *step_classes(step), bools="value",
                    fill_defaults=True)
    add_save_parameters_option(p)
    add_cluster_options(p)
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from daskcal.detector._pipeline import step_parameters

    steps = {step: {name: getattr(args, name) for name in names} for step, names in step_parameters().items()}
    params = {name: value for values in steps.values() for name, value in values.items()}
    check_parameters_file(args)
    chunks = chunk_option(args.chunks)
    execute(args.input, args.output, params, args, chunks=chunks, fits=args.fits, overwrite=args.overwrite,
            resume=args.resume)
    save_parameters(args, "detector1", steps, {"chunks": list(chunks) if chunks else None})
    return 0


def execute(input_path, output, params: dict, args, *, chunks=None, fits=False, overwrite=False,
            resume=False) -> dict:
    """Open the input(s), build the detector1 graphs, run them on the chosen cluster, write products.

    ``input_path`` is one ramp store, or a list of them. One store's products go in ``output``;
    several stores' in ``output/<store name without .zarr>``, one exposure after another on
    one cluster, so start-up is paid once. Every input is opened and validated, and every output checked,
    before anything is computed. Each product records the run that made it
    (:mod:`daskcal.io._resume`). An exposure's stores are written in ``<its OUT>/.daskcal-resume-detector1/``
    (:data:`RESUME_AS`), each ``(y, x)`` chunk recorded with its checksums when written
    (:mod:`daskcal.io._journal`); a run that stops keeps that folder. With ``resume``, an exposure whose
    products an earlier run completed from the same input, parameters and chunking is skipped (and if
    every one is, no cluster starts); one it left half-written is continued: its verified chunks are
    kept and only the others computed. A product or partial product made differently is refused,
    naming the first difference, before any cluster starts.

    Returns
    -------
    dict
        One input: ``{"rate": path, "rateints": path}``. Several: input -> that dict.
    """
    from daskcal.detector._pipeline import step_parameters
    from daskcal.io._outputs import OutputSet

    if resume and overwrite:
        msg = "--resume keeps what an earlier run completed and --overwrite replaces it: give one of them"
        raise ValueError(msg)
    params = {**{n: v for values in step_parameters().values() for n, v in values.items()}, **params}
    inputs = [input_path] if isinstance(input_path, (str, os.PathLike)) else list(input_path)
    single = len(inputs) == 1
    pairs = _outputs(inputs, output, single)
    for inp, out in pairs:  # refused before anything starts: a FITS input, an existing product
        if str(inp).endswith(".fits"):
            msg = f"{inp!r} is FITS; convert it first with 'daskcal ingest' (detector1 reads Zarr ramp stores)"
            raise ValueError(msg)
        if not resume:
            OutputSet(_products(out, fits, _names(params)), overwrite=overwrite, inputs=inputs).check()
    # The embedded cluster starts while the inputs are opened and checked (not with --resume: every
    # exposure may be done already, and then no cluster starts)
    with ClusterStart(args, background=not resume) as cluster:
        jobs, done = _jobs(pairs, inputs, params, chunks, fits, overwrite, resume)
        if jobs:
            _run(jobs, cluster, args, fits, single, done, algorithm=params["algorithm"])
    for inp in inputs:
        for name, store in done[inp].items():
            print(f"{name}: {store}")
    return done[inputs[0]] if single else done


_NAMES = ("rate", "rateints")
#: An exposure's stores are written in ``<its OUT>/.daskcal-resume-detector1/`` (see
#: :func:`daskcal.io._outputs.resume_folder`) until both are complete.
RESUME_AS = "detector1"
#: In that folder beside the stores (never committed): each pixel's number of NaN or infinite samples,
#: written by the chunks' write tasks, so a resumed run counts them for the chunks it keeps too.
_NONFINITE = "nonfinite.zarr"
#: Attributes of rate and rateints recorded after their chunks are written, by :func:`_record_jump_rates`
#: (a resumed run may find them in the staged stores of an earlier run that got that far).
_JUMP_RATES = ("primary_cosmic_rays", "extended_emission_events")


def _names(params: dict) -> tuple[str, ...]:
    """The products written: rate and rateints, and fitopt with ``save_opt``."""
    return (*_NAMES, "fitopt") if params.get("save_opt") else _NAMES


def _products(out, fits: bool, names: tuple[str, ...] = _NAMES) -> list[Path]:
    return [Path(out) / f"{n}.zarr" for n in names] + ([Path(out) / f"{n}.fits" for n in names] if fits else [])


def _jobs(pairs, inputs, params, chunks, fits, overwrite, resume) -> tuple[list, dict]:
    """Open and check every input: ``(jobs to run, {input: products} of those done by an earlier run)``."""
    from daskcal.io._outputs import OutputSet, resume_folder
    from daskcal.io._resume import check_partial, done_before

    jobs, done = [], {}
    for inp, out in pairs:
        products = _products(out, fits, _names(params))
        stores = [Path(out) / f"{n}.zarr" for n in _names(params)]
        outputs = OutputSet(products, overwrite=overwrite, inputs=inputs, resumable=stores, resume=resume,
                            resume_as=RESUME_AS)
        if not resume:
            outputs.check()  # an existing product is refused before the input is opened
        ramps, result, record = _build(inp, params, chunks)
        if resume:
            if done_before(products, record):  # else none of them exists (or this raised)
                print(f"detector1 {inp}: done by an earlier run, skipped ({out})")
                done[inp] = {n: Path(out) / f"{n}.zarr" for n in _names(params)}
                continue
            outputs.check()
            try:
                partial = check_partial(stores[0], record, RESUME_AS)  # refused before any cluster starts
            except ValueError as exc:
                if len(pairs) == 1:
                    raise
                folder = resume_folder(stores[0], RESUME_AS)  # without --resume, the done exposures are refused
                raise ValueError(f"{exc}; or remove {folder} to redo only this exposure") from None
            if partial:
                print(f"detector1 {inp}: resuming the partial products in {resume_folder(stores[0], RESUME_AS)}")
        jobs.append((inp, out, ramps, result, record, outputs))
    return jobs, done


def _build(inp, params: dict, chunks) -> tuple:
    """``(ramps, detector1 result, run record)`` of one input, validated before anything is computed."""
    from daskcal.detector._pipeline import detector1
    from daskcal.io._ramps import open_ramps
    from daskcal.io._resume import run_record

    try:
        ramps = open_ramps(inp)
        result = detector1(ramps, chunks=tuple(chunks) if chunks else None, **params)  # validates before computing
    except (ValueError, TypeError) as exc:
        text = str(exc) if str(inp) in str(exc) else f"{inp}: {exc}"  # name the input that failed
        raise (ValueError if isinstance(exc, ValueError) else TypeError)(text) from exc
    y, x = result.rate["data"].chunks[-2:]
    return ramps, result, run_record("detector1", inp, params, (y[0], x[0]))


def _run(jobs: list, cluster: ClusterStart, args, fits: bool, single: bool, done: dict, *,
         algorithm: str = "OLS_C") -> None:
    """Compute and write each job's products on one cluster, committing each exposure's when written."""
    import contextlib

    from daskcal._precompile import precompile
    from daskcal.detector._fused import COMPILE_SECONDS, compile_kernels
    from daskcal.io._atomic import save_products
    from daskcal.io._journal import ChunkJournal
    from daskcal.io._outputs import resume_folder
    from daskcal.io._ramps import to_fits
    from daskcal.io._resume import RUN_ATTR

    with contextlib.ExitStack() as stack:
        for job in jobs:  # staging folders exist (the outputs are writable) before the cluster starts
            stack.enter_context(job[-1])
        # numba compiles (or loads from its cache) the kernels here while the cluster starts,
        # so the workers find them in the cache instead of each compiling them again
        kernels = precompile(lambda: [compile_kernels(job[2], algorithm) for job in jobs], estimate=COMPILE_SECONDS)
        with cluster.client() as client:
            print_dashboard(client)
            kernels.wait()
            for inp, out, ramps, result, record, outputs in jobs:
                t0 = time.perf_counter()
                names = (*_NAMES, "fitopt") if result.fitopt is not None else _NAMES
                products = {name: getattr(result, name).assign_attrs({RUN_ATTR: record}) for name in names}
                folder = resume_folder(Path(out) / "rate.zarr", RESUME_AS)
                journal = ChunkJournal(str(folder / "chunks"), str(folder), json.dumps(record))
                # The count of pixels with NaN samples is known only once every chunk is fitted (worker
                # logs never reach this console): its plane is written by the same write tasks, and kept
                # with the chunks a resumed run keeps.
                side, also = _nonfinite_plane(result, folder)
                # The primary jumps per integration are a sum over every chunk's fit. With side planes (the
                # fused graph) each chunk's counts are written beside the stores, so a resumed run sums those
                # of the chunks it keeps too; else they are computed with the writes of a fresh run only (a
                # resumed run would have to fit its kept chunks again for them).
                jump_planes = bool(side) and result.primary_jump_planes is not None
                count_jumps = (not jump_planes and not getattr(args, "resume", False)
                               and result.n_primary_jumps is not None)
                # The snowballs or showers (only the separate graphs search for them) are counted with the
                # primary jumps, from the searches' few numbers per group plane.
                counted = [result.n_primary_jumps] if count_jumps else []
                if count_jumps and result.n_extended_events is not None:
                    counted.append(result.n_extended_events)
                report: dict = {}
                written = save_products(products, out, progress=not args.no_progress, outputs=outputs,
                                        also=(*also, *counted), journal=journal, report=report, side=side,
                                        late_attrs=_JUMP_RATES)
                paths, values = written if also or counted else (written, [])
                values, counts = values[:len(also)], values[len(also):]
                n_jumps = counts[0] if count_jumps else _count_jumps(folder) if jump_planes else None
                n_events = counts[1] if len(counts) > 1 else None
                elapsed = time.perf_counter() - t0
                if report.get("kept") or report.get("redone"):
                    print(f"detector1 {inp}: {report['kept']} of {report['chunks']} chunks were written by the "
                          f"earlier run and verified; {report['chunks'] - report['kept']} computed now")
                n_bad = int(values[0]) if values else _count_nonfinite(folder)
                if n_bad:
                    log.warning("%s: %d pixels have NaN or infinite samples; those groups are DO_NOT_USE "
                                "(a pixel with no other usable group gets a NaN rate and DO_NOT_USE)", inp, n_bad)
                if n_jumps is not None:
                    log.info("%s: primary jumps (cosmic rays) per integration: %s", inp, list(map(int, n_jumps)))
                    if n_events is not None:
                        log.info("%s: snowballs or showers per integration: %s", inp, list(map(int, n_events)))
                    _record_jump_rates(ramps, result, n_jumps, n_events, paths, outputs)
                if fits:
                    _export_fits(paths, outputs, to_fits)
                outputs.commit()  # this exposure's products appear together
                n = ramps.sizes
                mpg = n["integration"] * n["group"] * n["y"] * n["x"] / 1e6
                label = "detector1" if single else f"detector1 {inp}"
                print(f"{label}: {mpg:.1f} Mpix*groups in {elapsed:.1f} s ({mpg / elapsed:.1f} Mpix*groups/s)")
                done[inp] = paths


def _nonfinite_plane(result, folder: Path) -> tuple[dict, tuple]:
    """``(side, also)`` for :func:`daskcal.io._atomic.save_products`: the plane of each pixel's number of NaN
    or infinite samples, written beside the stores in ``folder`` (counted after the writes by
    :func:`_count_nonfinite`), and the fused graph's per-pixel primary-jump counts (summed by
    :func:`_count_jumps`), when the products are slices of one stacked ramp fit; else the count,
    computed with the writes (then a resumed run counts only the chunks it computes)."""
    import xarray as xr

    from daskcal.detector._ramp_fit import n_planes
    from daskcal.io._zarr_write import slice_of, take_slice

    cut = slice_of(result.rate["data"].data)
    if cut is None:
        return {}, (result.n_nonfinite,)
    # the fit's own plane (no task of its own), counted from the front: planes may follow it (jump counts)
    plane = take_slice(cut.source, n_planes(result.rateints.sizes["integration"]) - 1)
    planes = {"nonfinite": (("y", "x"), plane)}
    if result.primary_jump_planes is not None:  # slices of the same stacked block: the same write tasks
        planes["primary_jumps"] = (("integration", "y", "x"), result.primary_jump_planes)
    return {folder / _NONFINITE: xr.Dataset(planes)}, ()


def _count_nonfinite(folder: Path) -> int:
    """How many pixels of the plane :func:`_nonfinite_plane` wrote have a NaN or infinite sample."""
    import zarr

    return int((zarr.open_array(folder / _NONFINITE / "nonfinite", mode="r")[...] > 0).sum())


def _count_jumps(folder: Path):
    """The primary jumps of each integration (int64), summed from the per-pixel counts :func:`_nonfinite_plane`
    had written."""
    import numpy as np
    import zarr

    planes = zarr.open_array(folder / _NONFINITE / "primary_jumps", mode="r")[...]
    return planes.sum(axis=(1, 2), dtype=np.int64)


def _record_jump_rates(ramps, result, n_jumps, n_events, stores: dict, outputs) -> None:
    """Record JWST's jump-step rates as attributes (:data:`_JUMP_RATES`) of the staged rate and rateints
    stores (their FITS exports get the keywords): ``primary_cosmic_rays`` (PRIMECRS,
    :func:`daskcal.detector._pipeline.primary_cosmic_rays`) and ``extended_emission_events`` (EXTNCRS,
    :func:`daskcal.detector._pipeline.extended_emission_events`, from ``n_events``; 0 where no large-event
    search ran, as in jwst; where ``result``, the exposure's :class:`~daskcal.detector._ramp_fit.RampFitResult`,
    has a count, a search ran and its computed count ``n_events`` is needed: without it no EXTNCRS is
    recorded). The usable group planes are ``result.usable_planes``, which detector1 found building the
    graph, else found here (reading the first input chunk again, or the whole cube)."""
    import zarr

    from daskcal.detector._common import pixel_chunked
    from daskcal.detector._fused import plane_usable
    from daskcal.detector._pipeline import extended_emission_events, primary_cosmic_rays
    from daskcal.io._atomic import consolidate

    n = ramps.sizes
    usable = result.usable_planes if result.usable_planes is not None else plane_usable(pixel_chunked(ramps))
    args = (usable, ramps.attrs["group_time"], n["y"] * n["x"])
    rates = {"primary_cosmic_rays": primary_cosmic_rays(n_jumps, *args)}
    if n_events is not None or result.n_extended_events is None:
        rates["extended_emission_events"] = extended_emission_events(n_events, *args)
    rates = {name: value for name, value in rates.items() if value is not None}
    if not rates:
        return
    log.info("primary cosmic rays: %.6g per 1000 pixels per s (PRIMECRS)", rates["primary_cosmic_rays"])
    if "extended_emission_events" in rates:
        log.info("snowballs or showers: %.6g per 10**6 pixels per s (EXTNCRS)", rates["extended_emission_events"])
    for name in _NAMES:
        store = outputs.path(stores[name])
        zarr.open_group(store, mode="r+", use_consolidated=False).attrs.update(rates)
        consolidate(store)


def _export_fits(stores: dict, outputs, to_fits) -> None:
    """Export each staged store to FITS in the same staging folder (committed with the stores): rate and
    rateints as SCI, ERR, DQ, VAR_POISSON, VAR_RNOISE, fitopt as jwst's ``_fitopt.fits``."""
    import xarray as xr

    for final in stores.values():
        with xr.open_zarr(outputs.path(final), consolidated=False) as ds:
            to_fits(ds, outputs.path(final.with_suffix(".fits")))


def _outputs(inputs: list, output, single: bool) -> list[tuple]:
    """``(input, output directory)`` pairs; several inputs go to ``output/<name>``, names unique."""
    if single:
        return [(inputs[0], Path(output))]
    names = [Path(str(inp).rstrip("/")).name.removesuffix(".zarr") for inp in inputs]
    seen: dict[str, str] = {}
    for inp, name in zip(inputs, names, strict=True):
        if name in seen:
            msg = f"inputs {seen[name]!r} and {inp!r} would both write {str(Path(output) / name)!r}; rename one"
            raise ValueError(msg)
        seen[name] = inp
    return [(inp, Path(output) / name) for inp, name in zip(inputs, names, strict=True)]


def run_recipe(inputs: list[str], output: str, steps: dict, execution: dict, args) -> int:
    """Run a ``pipeline = "detector1"`` recipe (built-in: daskcal/graphs/detector1.toml)."""
    from daskcal.detector._pipeline import step_parameters

    known = step_parameters()
    params = {}
    for step, values in steps.items():
        if step not in known:
            msg = f"recipe step {step!r} is not a detector1 step; expected one of {list(known)}"
            raise ValueError(msg)
        for name, value in values.items():
            if name not in known[step]:
                msg = f"recipe parameter steps.{step}.{name} is unknown; expected one of {list(known[step])}"
                raise ValueError(msg)
            params[name] = value
    chunks = chunk_option(execution.get("chunks"), "recipe execution.chunks")
    execute(inputs, output, params, args, chunks=chunks, fits=args.fits, overwrite=args.overwrite,
            resume=getattr(args, "resume", False))
    return 0
