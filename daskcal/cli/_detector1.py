"""``daskcal detector1 IN OUT``: saturation, superbias, jumps and ramp fit on a cluster."""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path

from daskcal.cli._common import ClusterStart, add_cluster_options, chunk_option
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
        "(from 'daskcal ingest' or 'daskcal simulate') and write OUT/rate.zarr and OUT/rateints.zarr; "
        "with several inputs, OUT/<input name>/rate.zarr and rateints.zarr for each, one after the other "
        "on one cluster. Every input is opened and checked before anything is computed.",
    )
    p.add_argument("input", nargs="+", metavar="IN", help="ramp Zarr store(s)")
    p.add_argument("output", metavar="OUT", help="output directory (created if missing; products appear in it when complete)")
    p.add_argument("--chunks", type=int, nargs=2, metavar=("CY", "CX"), default=None, help="(y, x) chunk size")
    p.add_argument("--fits", action="store_true", help="also export rate.fits and rateints.fits")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace existing products (only the files this command writes)")
    existing.add_argument("--resume", action="store_true",
                          help="continue an earlier run into the same OUT: skip each exposure whose products it "
                          "completed from the same input and parameters, compute the rest; a product made "
                          "differently is an error")
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
    (:mod:`daskcal.io._resume`); with ``resume``, an exposure whose products an earlier run
    completed from the same input, parameters and chunking is skipped (and if every one is, no
    cluster starts).

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
            OutputSet(_products(out, fits), overwrite=overwrite, inputs=inputs).check()
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


def _products(out, fits: bool) -> list[Path]:
    return [Path(out) / f"{n}.zarr" for n in _NAMES] + ([Path(out) / f"{n}.fits" for n in _NAMES] if fits else [])


def _jobs(pairs, inputs, params, chunks, fits, overwrite, resume) -> tuple[list, dict]:
    """Open and check every input: ``(jobs to run, {input: products} of those done by an earlier run)``."""
    from daskcal.io._outputs import OutputSet
    from daskcal.io._resume import done_before

    jobs, done = [], {}
    for inp, out in pairs:
        products = _products(out, fits)
        outputs = OutputSet(products, overwrite=overwrite, inputs=inputs)
        if not resume:
            outputs.check()  # an existing product is refused before the input is opened
        ramps, result, record = _build(inp, params, chunks)
        if resume:
            if done_before(products, record):  # else none of them exists (or this raised)
                print(f"detector1 {inp}: done by an earlier run, skipped ({out})")
                done[inp] = {n: Path(out) / f"{n}.zarr" for n in _NAMES}
                continue
            outputs.check()
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
    from daskcal.io._ramps import to_fits
    from daskcal.io._resume import RUN_ATTR

    with contextlib.ExitStack() as stack:
        for job in jobs:  # staging folders exist (the outputs are writable) before the cluster starts
            stack.enter_context(job[-1])
        # numba compiles (or loads from its cache) the kernels here while the cluster starts,
        # so the workers find them in the cache instead of each compiling them again
        kernels = precompile(lambda: [compile_kernels(job[2], algorithm) for job in jobs], estimate=COMPILE_SECONDS)
        with cluster.client() as client:
            print(f"dashboard: {client.dashboard_link}")
            kernels.wait()
            for inp, out, ramps, result, record, outputs in jobs:
                t0 = time.perf_counter()
                # The count is known only once every chunk is fitted (worker logs never reach this
                # console): computed with the writes, it takes the planes of the same fit tasks.
                products = {name: getattr(result, name).assign_attrs({RUN_ATTR: record}) for name in _NAMES}
                paths, (n_nonfinite,) = save_products(products, out, progress=not args.no_progress,
                                                      outputs=outputs, also=(result.n_nonfinite,))
                elapsed = time.perf_counter() - t0
                if n_bad := int(n_nonfinite):
                    log.warning("%s: %d pixels have NaN or infinite samples; those groups are DO_NOT_USE "
                                "(a pixel with no other usable group gets a NaN rate and DO_NOT_USE)", inp, n_bad)
                if fits:
                    _export_fits(paths, outputs, to_fits)
                outputs.commit()  # this exposure's products appear together
                n = ramps.sizes
                mpg = n["integration"] * n["group"] * n["y"] * n["x"] / 1e6
                label = "detector1" if single else f"detector1 {inp}"
                print(f"{label}: {mpg:.1f} Mpix*groups in {elapsed:.1f} s ({mpg / elapsed:.1f} Mpix*groups/s)")
                done[inp] = paths


def _export_fits(stores: dict, outputs, to_fits) -> None:
    """Export each staged store to FITS in the same staging folder (committed with the stores)."""
    import xarray as xr

    for name, final in stores.items():
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
