"""``daskcal outliers INPUTS... -o OUTDIR``: flag outliers in calibrated exposures on a cluster."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from daskcal.cli._common import add_cluster_options, open_cluster, print_dashboard
from daskcal.cli._parameters import add_save_parameters_option, check_parameters_file, save_parameters

__all__ = ["register", "execute", "run_recipe", "STEP_DEFAULTS"]

def _defaults() -> dict:
    from daskcal._params import defaults
    from daskcal.image._outliers import OutlierParameters

    return defaults(OutlierParameters)


#: Parameters of the outliers step and their defaults (the reference's), from OutlierParameters
#: (None: derived, as buffer_size and tile_shape).
STEP_DEFAULTS = _defaults()


def register(sub) -> None:
    from daskcal._params import add_options
    from daskcal.image._outliers import OutlierParameters

    p = sub.add_parser(
        "outliers",
        help="flag outliers (cosmic rays) in calibrated exposures by comparison with their median",
        description="Flag outliers in calibrated exposures - Zarr image stores, JWST-style _cal.fits files or an "
        "association JSON (its science members): single-drizzle each exposure group (group_id), "
        "take the median, blot it back and compare. Writes OUTDIR/<name>.zarr per input (dq updated) "
        "and, with --save-median, OUTDIR/median.zarr.",
    )
    p.add_argument("inputs", nargs="+", help="image Zarr stores, _cal.fits files and/or association .json files "
                   "(two exposure groups or more)")
    p.add_argument("-o", "--output", required=True, help="output directory (created if missing; the products appear in it together when complete)")
    p.add_argument("--save-median", action="store_true", help="also write the median mosaic as OUTDIR/median.zarr (variable data, "
                   "WCS in the attribute wcs_asdf, as a resample mosaic)")
    p.add_argument("--recipe", default=None, metavar="RECIPE",
                   help="recipe with a [steps.outliers] table: a TOML file or a built-in recipe's name ('outliers'; see daskcal recipes)")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace existing products (only the stores this command writes)")
    existing.add_argument("--resume", action="store_true",
                          help="continue an earlier run of this command that was stopped (killed, failed, out of "
                          "walltime) into the same OUTDIR: the chunks it completed are verified and kept, the rest "
                          "computed; an earlier run with other inputs or parameters is an error")
    p.add_argument("--allow-outside-asn", action="store_true",
                   help="read association members outside the association's folder (absolute or through ..)")
    g = p.add_argument_group("outliers parameters (default: the recipe's, else the reference defaults)")
    add_options(g, OutlierParameters)
    g.add_argument("--tempdir", default=None, help="parent of the temporary stack (visible to every worker)")
    add_save_parameters_option(p)
    add_cluster_options(p)
    p.set_defaults(func=_main)


def _check_steps(steps: dict) -> dict:
    from daskcal.cli._run import single_step_values

    return single_step_values(steps, "outliers", STEP_DEFAULTS)


def _main(args: argparse.Namespace) -> int:
    from daskcal.cli._run import step_parameters

    params = step_parameters(args, "outliers", STEP_DEFAULTS)
    if args.buffer_size is not None:
        params["buffer_size"] = int(args.buffer_size * 2**20)  # MB on the command line, bytes in a recipe
    check_parameters_file(args)
    execute(args.inputs, args.output, _library_kwargs(params), args, save_median=args.save_median, overwrite=args.overwrite,
            tempdir=args.tempdir, resume=args.resume)
    save_parameters(args, "outliers", {"outliers": params},
                    {"save_median": args.save_median, "tempdir": _absolute(args.tempdir)})
    return 0


def _library_kwargs(params: dict) -> dict:
    """Recipe/command-line values -> keywords of :func:`daskcal.flag_outliers` (``"none"`` weights: None)."""
    kw = dict(params)
    if kw.get("weight_type") in ("none", "None"):
        kw["weight_type"] = None
    if kw.get("tile_shape") is not None:
        kw["tile_shape"] = tuple(kw["tile_shape"])
    return kw


def _absolute(path):
    """``path`` made absolute (a saved recipe reruns from any folder), or None."""
    return None if path is None else str(Path(path).resolve())


#: The products of one outliers run are written in ``OUTDIR/.daskcal-resume-outliers/`` (see
#: :func:`daskcal.io._outputs.resume_folder`) until they are all complete.
RESUME_AS = "outliers"


def execute(inputs, output, params: dict, args, *, save_median=False, overwrite=False, tempdir=None,
            resume=False) -> dict:
    """Open the inputs, build the graph, run it on the chosen cluster and write the products.

    The products are written together in one hidden folder of the output directory
    (:data:`RESUME_AS`), every chunk recorded with its checksums when written and the run recorded
    (inputs, parameters, version; :mod:`daskcal.io._resume`). A run that stops keeps that folder;
    ``resume`` continues it if it was begun by a run recorded alike (its verified chunks are not
    computed again) and refuses it, naming the first difference, otherwise; products that an
    earlier run completed alike are left as they are.
    """
    from daskcal._precompile import precompile
    from daskcal.image._io import expand_inputs, exposure_name, open_images
    from daskcal.image._outliers import flag_outliers
    from daskcal.image._warm_up import OUTLIERS_COMPILE_SECONDS, compile_outlier_kernels
    from daskcal.io._atomic import save_products
    from daskcal.io._journal import ChunkJournal
    from daskcal.io._outputs import OutputSet, resume_folder
    from daskcal.io._resume import RUN_ATTR, check_partial, done_before, run_record

    if resume and overwrite:
        msg = "--resume keeps what an earlier run completed and --overwrite replaces it: give one of them"
        raise ValueError(msg)
    outside = getattr(args, "allow_outside_asn", False)
    members = expand_inputs(inputs, allow_outside_asn=outside)
    images = open_images(inputs, allow_outside_asn=outside)  # as members, with the association's group_ids
    names = []
    for k, (ds, path) in enumerate(zip(images, members)):
        name = str(ds.attrs.get("name") or exposure_name(path))
        names.append(name if name not in names else f"{name}_{k}")
    result = flag_outliers(images, tempdir=tempdir, **params)  # validates before anything runs
    products = {name: ds for name, ds in zip(names, result.images)}
    if save_median:
        products["median"] = result.median.to_dataset(promote_attrs=True)  # variable data, WCS as a mosaic's
    finals = [Path(output) / f"{name}.zarr" for name in products]
    read = list(dict.fromkeys(str(p) for p in [*inputs, *members]))  # association files and their members
    record = run_record("outliers", read, {**params, "save_median": bool(save_median)}, None)
    products = {name: ds.assign_attrs({RUN_ATTR: record}) for name, ds in products.items()}
    if resume:
        if done_before(finals, record):  # (some there and others not: an error naming them)
            result.cleanup()
            print(f"outliers: the products in {output} were completed by an earlier run alike; left as they are")
            return dict(zip(products, finals, strict=True))
        if check_partial(finals[0], record, RESUME_AS):  # refused before any cluster starts
            print(f"outliers: resuming the partial products in {resume_folder(finals[0], RESUME_AS)}")
    outputs = OutputSet(finals, overwrite=overwrite, inputs=read, resumable=finals, resume=resume, resume_as=RESUME_AS)
    folder = resume_folder(finals[0], RESUME_AS)
    journal = ChunkJournal(str(folder / "chunks"), str(folder), json.dumps(record))
    report: dict = {}
    try:
        with outputs:  # checked, and the output folder proven writable, before the cluster starts
            # numba compiles (or loads from its cache) the kernels here while the cluster starts
            kernels = precompile(lambda: compile_outlier_kernels(images, **params), estimate=OUTLIERS_COMPILE_SECONDS)
            with open_cluster(args) as client:
                print_dashboard(client)
                kernels.wait()
                t0 = time.perf_counter()
                paths = save_products(products, output, progress=not args.no_progress, outputs=outputs,
                                      journal=journal, report=report)
                elapsed = time.perf_counter() - t0
                if report.get("kept") or report.get("redone"):
                    print(f"outliers: {report['kept']} of {report['chunks']} chunks were written by the earlier run "
                          f"and verified; {report['chunks'] - report['kept']} computed now")
            outputs.commit()
    finally:
        result.cleanup()
    print(f"outliers: {len(images)} exposures in {elapsed:.1f} s")
    for name, store in paths.items():
        print(f"{name}: {store}")
    return paths


def run_recipe(inputs: list[str], output: str, steps: dict, execution: dict, args) -> int:
    """Run a ``pipeline = "outliers"`` recipe (the built-in recipe outliers or a TOML file) from ``daskcal run``."""
    params = dict(STEP_DEFAULTS)
    params.update(_check_steps(steps))
    execute(inputs, output, _library_kwargs(params), args, save_median=bool(execution.get("save_median", False)),
            overwrite=getattr(args, "overwrite", False), tempdir=execution.get("tempdir"),
            resume=getattr(args, "resume", False))
    return 0
