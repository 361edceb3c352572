"""``daskcal resample INPUTS... -o OUT.zarr``: drizzle calibrated exposures into a mosaic on a cluster."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import time
from pathlib import Path

from daskcal.cli._common import ClusterStart, add_cluster_options, print_dashboard
from daskcal.cli._parameters import add_save_parameters_option, check_parameters_file, save_parameters

__all__ = ["register", "execute", "run_recipe", "STEP_DEFAULTS"]

def _defaults() -> dict:
    from daskcal._params import defaults
    from daskcal.image._resample import ResampleOutputParams, ResampleParams

    return defaults(ResampleParams, ResampleOutputParams)


#: Parameters of :func:`daskcal.resample` and their defaults (the reference step's), from its parameter
#: dataclasses. ``None`` means "derived from the inputs" (TOML recipes leave those keys out).
STEP_DEFAULTS = _defaults()
_WCS_ARGS = ("pixel_scale", "pixel_scale_ratio", "rotation", "crpix", "crval", "output_shape")


def register(sub) -> None:
    from daskcal._params import add_options
    from daskcal.image._resample import ResampleOutputParams, ResampleParams

    p = sub.add_parser(
        "resample",
        help="drizzle calibrated exposures into a mosaic (Zarr, optionally FITS)",
        description="Resample (drizzle) calibrated exposures - Zarr image stores, JWST-style _cal.fits files or an "
        "association JSON - onto one output grid, tile by tile, and write OUT.zarr atomically.",
    )
    p.add_argument("inputs", nargs="+", help="image Zarr stores, _cal.fits files and/or association .json files")
    p.add_argument("-o", "--output", required=True, help="output mosaic Zarr store (written atomically)")
    p.add_argument("--fits", action="store_true", help="also export OUT_i2d.fits (mosaic must fit in memory)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true", help="replace an existing output")
    existing.add_argument("--resume", action="store_true",
                          help="continue an earlier run of this command that was stopped (killed, failed, out of "
                          "walltime) into the same OUT: the tiles it completed are verified and kept, the rest "
                          "computed; an earlier run with other inputs or parameters is an error")
    p.add_argument("--add", action="store_true",
                   help="add INPUTS to the existing mosaic OUT (made by daskcal resample) on its grid, with its "
                   "parameters: only the tiles they reach are computed and rewritten, and OUT is replaced whole "
                   "when they are written (an interrupted --add leaves OUT as it was; --resume continues it). An "
                   "exposure OUT already holds, or one outside its grid, is an error before anything runs")
    p.add_argument("--allow-outside-asn", action="store_true",
                   help="read association members outside the association's folder (absolute or through ..)")
    p.add_argument("--recipe", default=None, metavar="RECIPE",
                   help="recipe with a [steps.resample] table: a TOML file or a built-in recipe's name ('resample'; see daskcal recipes)")
    g = p.add_argument_group("resample parameters (default: the recipe's, else the reference step's)")
    add_options(g, ResampleParams, ResampleOutputParams)
    add_save_parameters_option(p)
    add_cluster_options(p)
    p.set_defaults(func=_main)


def _check_steps(steps: dict) -> dict:
    from daskcal.cli._run import single_step_values

    return single_step_values(steps, "resample", STEP_DEFAULTS)


def _main(args: argparse.Namespace) -> int:
    from daskcal.cli._run import step_parameters

    params = step_parameters(args, "resample", STEP_DEFAULTS)
    check_parameters_file(args)
    if getattr(args, "add", False):
        from daskcal.cli._resample_add import execute_add

        execute_add(args.inputs, args.output, params, args, fits=args.fits, overwrite=args.overwrite,
                    resume=args.resume)
        save_parameters(args, "resample", {"resample": params})
        return 0
    execute(args.inputs, args.output, params, args, fits=args.fits, overwrite=args.overwrite, resume=args.resume)
    save_parameters(args, "resample", {"resample": params})
    return 0


def _library_kwargs(params: dict) -> dict:
    kw = dict(params)
    for name in ("weight_type", "compute_err"):
        if kw.get(name) in ("none", "None"):
            kw[name] = None
    for name in ("crpix", "crval", "output_shape", "tile_shape"):
        if kw.get(name) is not None:
            kw[name] = tuple(kw[name])
    for name in _WCS_ARGS:
        if kw.get(name) is None:
            kw.pop(name, None)
    return kw


def fits_path(output) -> Path:
    """Where ``--fits`` puts the FITS export of ``OUT.zarr``: ``OUT_i2d.fits`` beside it."""
    out = Path(output)
    stem = out.name[: -len(".zarr")] if out.name.endswith(".zarr") else out.name
    return out.with_name(f"{stem}_i2d.fits")


def execute(inputs, output, params: dict, args, *, fits: bool = False, overwrite: bool = False,
            resume: bool = False) -> Path:
    """Open the inputs, connect, build the mosaic graph (validating everything; tiles sized for the workers),
    run it and write OUT atomically.

    The mosaic is written in its own hidden folder beside OUT (:func:`daskcal.io._outputs.resume_folder`),
    each tile recorded with its checksums when written (:mod:`daskcal.io._journal`), with the record of the
    run (:mod:`daskcal.io._resume`: inputs, parameters, tile shape, version). A run that stops keeps that
    folder; ``resume`` continues it (its verified tiles are not computed again) if it was begun by a run
    recorded alike, and refuses it, naming the first difference, otherwise. Without a tile shape given,
    ``resume`` takes the earlier run's. A mosaic an earlier run completed alike is left as it is.
    """
    from daskcal._precompile import precompile
    from daskcal.image._checks import INPUT_CHECKS_LOGGER
    from daskcal.image._io import expand_inputs, open_images
    from daskcal.image._resample import resample
    from daskcal.image._warm_up import (
        RESAMPLE_COMPILE_SECONDS,
        compile_resample_kernels,
    )
    from daskcal.io._atomic import write_zarr
    from daskcal.io._outputs import OutputSet
    from daskcal.io._resume import check_partial, done_before

    if resume and overwrite:
        msg = "--resume keeps what an earlier run completed and --overwrite replaces it: give one of them"
        raise ValueError(msg)
    output = Path(output)
    members = expand_inputs(inputs, allow_outside_asn=getattr(args, "allow_outside_asn", False))
    read = list(dict.fromkeys(str(p) for p in [*inputs, *members]))  # association files and their members
    products = [output, fits_path(output)] if fits else [output]
    recorded_checks = None  # the input checks' warnings, as recorded by the run a resume continues
    if resume:
        params = _earlier_tile_shape(output, params)
        if params.get("tile_shape") is not None:  # else known once the cluster is up
            record = _record(read, params, params["tile_shape"])
            if done_before([output], record):  # (the mosaic's FITS export carries no record)
                if fits and not fits_path(output).exists():
                    msg = (f"{output} exists but not {fits_path(output)} (an earlier run without --fits?): resume "
                           f"needs both or neither; pass --overwrite instead of --resume to redo them")
                    raise ValueError(msg)
                print(f"resample: {output} was completed by an earlier run alike; left as it is")
                return output
            if check_partial(output, record):  # refused before any cluster starts
                recorded_checks = _recorded_checks(output, record)
    outputs = OutputSet(products, overwrite=overwrite, inputs=read, resumable=[output], resume=resume)
    outputs.check()
    # the embedded cluster starts while the inputs are opened and checked (a resume first checks the partial)
    with ClusterStart(args, background=not resume) as cluster:
        images = open_images(inputs, allow_outside_asn=getattr(args, "allow_outside_asn", False))  # group_id overrides
        mpix = sum(im["data"].size for im in images) / 1e6
        with outputs:  # the output folder is proven writable before computing
            # numba compiles (or loads from its cache) the kernels here while the cluster starts
            kernels = precompile(lambda: compile_resample_kernels(images, **_library_kwargs(params)),
                                 estimate=RESAMPLE_COMPILE_SECONDS)
            with cluster.client() as client:
                kernels.wait()
                # built with the cluster up, so tiles fit its workers' memory; every check runs here, before writing
                if recorded_checks is None:
                    with _captured(INPUT_CHECKS_LOGGER) as checks:
                        mosaic = resample(images, **_library_kwargs(params))
                else:  # repeat the warnings of the checks the interrupted run made, instead of reading the inputs again
                    for message in recorded_checks:
                        logging.getLogger(INPUT_CHECKS_LOGGER).warning("%s (as the interrupted run found)", message)
                    checks = recorded_checks
                    mosaic = resample(images, **_library_kwargs(params), check_inputs=False)
                mosaic.attrs.update(_asn_attrs(inputs))
                if fits:
                    _check_fits_export(mosaic)
                print(f"resample: {len(images)} inputs ({mpix:.1f} Mpix) -> mosaic {dict(mosaic.sizes)}, "
                      f"tiles {mosaic.attrs['tile_shape']}")
                tile_shape = list(mosaic.attrs["tile_shape"])
                record = _record(read, {**params, "tile_shape": tile_shape}, tile_shape)
                journal = _journal(mosaic, output, record, client, resume=resume, command="resample", partial="mosaic")
                _record_checks(output, record, checks)
                t0 = time.perf_counter()
                report: dict = {}
                write_zarr(mosaic, outputs.path(output), progress=not args.no_progress, journal=journal,
                           report=report)
                elapsed = time.perf_counter() - t0
                if report.get("kept") or report.get("redone"):
                    print(f"resample: {report['kept']} of {report['chunks']} tiles were written by the earlier run "
                          f"and verified; {report['chunks'] - report['kept']} computed now")
            if fits:
                import xarray as xr

                from daskcal.image._fits_write import to_fits

                with xr.open_zarr(outputs.path(output), consolidated=False) as ds:
                    to_fits(ds, outputs.path(fits_path(output)))
            outputs.commit()  # the mosaic and its FITS export appear together
    print(f"resample: {mpix:.1f} input Mpix in {elapsed:.1f} s ({mpix / elapsed:.2f} input Mpix/s)")
    print(f"mosaic: {output}")
    if fits:
        print(f"fits: {fits_path(output)}")
    return output


def _journal(mosaic, output: Path, record: dict, client, *, resume: bool, command: str, partial: str):
    """Ready ``mosaic`` to be written to ``output`` as the run ``record`` (resample and resample --add): with
    ``resume``, check the partial run in ``output``'s resume folder and print "``command``: resuming the partial
    ``partial`` in FOLDER" if there is one; put the record in the mosaic's attributes; print the dashboard link;
    return the :class:`daskcal.io._journal.ChunkJournal` of the resume folder, which records each tile written."""
    from daskcal.io._journal import ChunkJournal
    from daskcal.io._outputs import resume_folder
    from daskcal.io._resume import RUN_ATTR, check_partial

    folder = resume_folder(output)
    if resume and check_partial(output, record):
        print(f"{command}: resuming the partial {partial} in {folder}")
    mosaic.attrs[RUN_ATTR] = record
    print_dashboard(client, flush=True)
    return ChunkJournal(str(folder / "chunks"), str(folder), json.dumps(record))


#: In a resample's resume folder: the warnings of its input checks (``warn_unusable_inputs``) with the run's
#: record, so that a resume repeats them instead of reading every input's DQ and variance again (1-1.5 CPU s of
#: ~18 for 16 x 2048^2, paid before the first tile).
CHECKS_FILE = "input-checks.json"


@contextlib.contextmanager
def _captured(logger: str):
    """The messages of the warnings ``logger`` logs in the block (a list, filled as they come)."""
    messages: list[str] = []

    class _Keep(logging.Handler):
        def emit(self, rec):
            if rec.levelno >= logging.WARNING:
                messages.append(rec.getMessage())

    handler = _Keep()
    log = logging.getLogger(logger)
    log.addHandler(handler)
    try:
        yield messages
    finally:
        log.removeHandler(handler)


def _record_checks(output: Path, record: dict, messages: list[str]) -> None:
    """Keep the input checks' warnings in ``output``'s resume folder, for the run ``record`` (written whole)."""
    from daskcal.io._outputs import resume_folder

    path = resume_folder(output) / CHECKS_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"record": record, "warnings": list(messages)}))
    os.replace(tmp, path)


def _recorded_checks(output: Path, record: dict) -> list[str] | None:
    """The input checks' warnings the interrupted run recorded for ``record``, or None (not recorded,
    unreadable, or made for another record: the checks then run again)."""
    from daskcal.io._outputs import resume_folder

    path = resume_folder(output) / CHECKS_FILE
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(kept, dict) or kept.get("record") != record or not isinstance(kept.get("warnings"), list):
        return None
    return [str(m) for m in kept["warnings"]]


def _record(read: list, params: dict, tile_shape) -> dict:
    """The run's record (:func:`daskcal.io._resume.run_record`): its inputs, parameters and the Dask
    configuration that can change a mosaic's values (the block memory sets how a tile's input region is cut
    into drizzled blocks: float rounding)."""
    import dask

    from daskcal.image._resample import BLOCK_CONFIG
    from daskcal.io._resume import run_record

    return run_record("resample", read, {**params, BLOCK_CONFIG: dask.config.get(BLOCK_CONFIG, None)}, tile_shape)


def _earlier_tile_shape(output: Path, params: dict) -> dict:
    """``params`` with the tile shape of the earlier run that ``--resume`` continues (its partial mosaic, else
    its finished one) when none is given: the default depends on the workers' memory, which can differ."""
    from daskcal.io._resume import partial_record, read_record

    if params.get("tile_shape") is not None:
        return params
    earlier = partial_record(output)
    if earlier is None and output.exists():
        earlier = read_record(output)
    shape = ((earlier or {}).get("parameters") or {}).get("tile_shape")
    if shape is None:
        return params
    print(f"resample: tiles of {shape[0]}x{shape[1]} px, as the earlier run's (--resume)")
    return {**params, "tile_shape": list(shape)}


def _asn_attrs(inputs) -> dict:
    """``asn_table``: the association the inputs came from (ASNTABLE of the ``_i2d`` file), if one."""
    tables = [Path(p).name for p in inputs if str(p).lower().endswith(".json")]
    return {"asn_table": tables[0]} if tables else {}


def _check_fits_export(mosaic) -> None:
    import dask
    from dask.utils import format_bytes, parse_bytes

    from daskcal.image._fits_write import DEFAULT_FITS_EXPORT, FITS_EXPORT_CONFIG

    if "group" in mosaic.dims:
        msg = "--fits exports one mosaic; it cannot be combined with --single"
        raise ValueError(msg)
    limit = dask.config.get(FITS_EXPORT_CONFIG, DEFAULT_FITS_EXPORT)
    limit = parse_bytes(limit) if isinstance(limit, str) else int(limit)
    need = int(mosaic.nbytes)
    if need > limit:
        msg = (f"--fits: the mosaic needs {format_bytes(need)} in memory, more than the FITS export limit "
               f"{format_bytes(limit)} (Dask config {FITS_EXPORT_CONFIG!r}); write Zarr only")
        raise ValueError(msg)


def run_recipe(inputs: list[str], output: str, steps: dict, execution: dict, args) -> int:
    """Run a ``pipeline = "resample"`` recipe (the built-in recipe resample or a TOML file) from ``daskcal run``."""
    params = dict(STEP_DEFAULTS)
    params.update(_check_steps(steps))
    if execution.get("tile_shape") is not None and params.get("tile_shape") is None:
        params["tile_shape"] = execution["tile_shape"]
    execute(inputs, output, params, args, fits=getattr(args, "fits", False), overwrite=getattr(args, "overwrite", False),
            resume=getattr(args, "resume", False))
    return 0
