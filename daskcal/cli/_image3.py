"""``daskcal image3 INPUTS... OUTDIR``: calwebb_image3 on a cluster (tweakreg, skymatch, outliers, resample).

Products in OUTDIR: ``<product>_i2d.zarr`` (the mosaic) and ``<exposure>_crf.zarr`` per
input exposure (aligned WCS, sky level, outlier flags with NaN values where flagged),
and with ``--fits`` the same as ``.fits``. They appear together when all are complete.

Step parameters: a recipe (``daskcal/graphs/image3.toml``, ``--recipe image3``) with ``[steps.<step>]`` tables, then
``--steps.<step>.<parameter>=VALUE`` options (jwst ``strun`` style; values are TOML
literals: ``0.8``, ``true``, ``"square"``, ``[1, 2]``; a bare string is taken as it is),
and ``--steps.<step>.skip`` to skip a step.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import time
import tomllib
from pathlib import Path

from daskcal.cli._common import add_cluster_options, open_cluster, print_dashboard
from daskcal.cli._parameters import add_save_parameters_option, check_parameters_file, save_parameters

__all__ = ["STEP_MODULES", "execute", "normalise_step_flags", "parse_value", "register", "run_recipe", "step_defaults"]

#: image3 step -> CLI module whose ``STEP_DEFAULTS`` lists its parameters.
STEP_MODULES = {
    "tweakreg": "daskcal.cli._tweakreg",
    "skymatch": "daskcal.cli._skymatch",
    "outlier_detection": "daskcal.cli._outliers",
    "resample": "daskcal.cli._resample",
}
#: resample parameters image3 decides itself.
_NOT_IN_IMAGE3 = {"resample": {"single"}}


def step_defaults() -> dict[str, dict]:
    """Each step's parameters and documented defaults (``skip`` added)."""
    out = {}
    for step, mod in STEP_MODULES.items():
        defaults = dict(importlib.import_module(mod).STEP_DEFAULTS)
        for name in _NOT_IN_IMAGE3.get(step, ()):
            defaults.pop(name, None)
        out[step] = {"skip": False, **defaults}
    return out


def normalise_step_flags(argv: list[str]) -> list[str]:
    """``--steps.STEP.FLAG`` (a true/false parameter given bare) -> ``--steps.STEP.FLAG=true``.

    So that a bare flag never takes the next word (an input path) as its value.
    """
    flags = {f"--steps.{step}.{name}" for step, params in step_defaults().items()
             for name, default in params.items() if isinstance(default, bool)}
    return [f"{a}=true" if a in flags else a for a in argv]


def parse_value(text):
    """A command-line value as a TOML literal (number, bool, list, quoted string), else the text itself."""
    if not isinstance(text, str):
        return text
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def register(sub) -> None:
    p = sub.add_parser(
        "image3",
        help="align, sky-match, flag outliers and resample exposures into a mosaic (calwebb_image3)",
        description="Run calwebb_image3's steps - tweakreg, skymatch, outlier_detection, resample - on a JWST "
        "level-3 association, _cal.fits files or image Zarr stores, as one Dask run. Writes "
        "OUTDIR/<product>_i2d.zarr and OUTDIR/<exposure>_crf.zarr (with --fits also .fits).",
        epilog="Step parameters: --steps.STEP.PARAM=VALUE (VALUE a TOML literal), --steps.STEP.skip. "
        "Steps: " + ", ".join(STEP_MODULES) + ". Parameters and defaults: the step's own command "
        "(daskcal tweakreg/skymatch/outliers/resample --help) and the built-in recipe (daskcal/graphs/image3.toml).",
    )
    p.add_argument("inputs", nargs="+", metavar="IN", help="association .json, _cal.fits files or image Zarr stores")
    p.add_argument("output", metavar="OUTDIR", help="output folder (created if missing)")
    p.add_argument("--fits", action="store_true", help="also write <product>_i2d.fits and <exposure>_crf.fits")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace existing products (only those this run writes)")
    existing.add_argument("--resume", action="store_true",
                          help="continue an earlier run of this command that was stopped (killed, failed, out of "
                          "walltime) into the same OUTDIR: alignment and sky matching run again, the chunks and "
                          "tiles it wrote are verified and kept, the rest computed; an earlier run with other inputs "
                          "or parameters is an error")
    p.add_argument("--allow-outside-asn", action="store_true",
                   help="read association members given as absolute paths or outside the association's folder")
    p.add_argument("--recipe", default=None, metavar="RECIPE",
                   help="recipe with [steps.<step>] tables: a TOML file or a built-in recipe's name ('image3'; see daskcal recipes)")
    p.add_argument("--product-name", default=None, help="product name (default: the association's, else image3)")
    p.add_argument("--tempdir", default=None, help="parent of the outlier step's temporary stack (visible to workers)")
    g = p.add_argument_group("step parameters (--steps.STEP.PARAM=VALUE; default: the recipe's, else the step's)")
    for step, params in step_defaults().items():
        for name in params:
            g.add_argument(f"--steps.{step}.{name}", dest=f"steps.{step}.{name}", default=None, metavar="VALUE",
                           help=argparse.SUPPRESS if name != "skip" else f"skip {step} (--steps.{step}.skip)")
    add_save_parameters_option(p)
    add_cluster_options(p)
    p.set_defaults(func=_main)


def check_steps(steps: dict, where: str) -> dict:
    """``{step: {param: value}}`` checked against :func:`step_defaults` (unknown names are errors)."""
    known = step_defaults()
    out = {}
    for step, values in steps.items():
        if step not in known:
            msg = f"{where}: unknown step {step!r}; image3's steps are {list(known)}"
            raise ValueError(msg)
        if not isinstance(values, dict):
            msg = f"{where}: steps.{step} must be a table of parameters"
            raise ValueError(msg)
        unknown = set(values) - set(known[step])
        if unknown:
            msg = f"{where}: unknown parameters steps.{step}.{sorted(unknown)}; expected some of {list(known[step])}"
            raise ValueError(msg)
        out[step] = dict(values)
    return out


def _cli_steps(args: argparse.Namespace) -> dict:
    steps: dict = {}
    for key, value in vars(args).items():
        if key.startswith("steps.") and value is not None:
            _, step, name = key.split(".", 2)
            steps.setdefault(step, {})[name] = parse_value(value)
    return steps


def _library_kwargs(step: str, values: dict) -> dict:
    """Recipe/CLI values -> keyword arguments of the step's public function (None = derived, left out)."""
    kw = {k: v for k, v in values.items() if v is not None}
    if step == "resample":
        from daskcal.cli._resample import _library_kwargs as convert

        return convert(kw)
    if step == "outlier_detection":
        from daskcal.cli._outliers import _library_kwargs as convert

        return convert(kw)
    convert = getattr(importlib.import_module(STEP_MODULES[step]), "_library_kwargs", None)
    return convert(kw) if convert is not None else kw


def _main(args: argparse.Namespace) -> int:
    steps: dict = {}
    if args.recipe:
        from daskcal.cli._run import load_recipe

        recipe = load_recipe(args.recipe)
        if recipe["pipeline"] != "image3":
            msg = f"recipe {args.recipe!r} is for pipeline {recipe['pipeline']!r}; expected 'image3'"
            raise ValueError(msg)
        steps = check_steps(recipe["steps"], f"recipe {args.recipe!r}")
    for step, values in _cli_steps(args).items():
        steps.setdefault(step, {}).update(values)
    check_parameters_file(args)
    execute(args.inputs, args.output, steps, args, fits=args.fits, overwrite=args.overwrite,
            product_name=args.product_name, tempdir=args.tempdir, resume=args.resume)
    tempdir = str(Path(args.tempdir).resolve()) if args.tempdir else None  # reruns from any folder
    save_parameters(args, "image3", steps, {"product_name": args.product_name, "tempdir": tempdir})
    return 0


#: The stores of one image3 run are written in ``OUTDIR/.daskcal-resume-image3/`` (see
#: :func:`daskcal.io._outputs.resume_folder`) until they are all complete.
RESUME_AS = "image3"


def execute(inputs, output, steps: dict, args, *, fits: bool = False, overwrite: bool = False,
            product_name: str | None = None, tempdir=None, resume: bool = False) -> dict:
    """Open the inputs, check every product path, connect, run image3 and write the products together.

    The Zarr stores are written together in one hidden folder of the output folder (:data:`RESUME_AS`),
    every chunk and tile recorded when written, with the record of the run (inputs, every step's
    parameters, the mosaic's tile shape, version; :mod:`daskcal.io._resume`). A run that stops keeps that
    folder; ``resume`` runs alignment and sky matching again and continues it (its verified chunks are not
    computed again) if it was begun by a run recorded alike, and refuses it, naming the first difference,
    otherwise. Without a resample tile shape given, ``resume`` takes the earlier run's.
    """
    from daskcal._precompile import precompile
    from daskcal.image._io import expand_inputs, exposure_name, open_images
    from daskcal.image._pipeline import _product_name, image3
    from daskcal.image._warm_up import (
        OUTLIERS_COMPILE_SECONDS,
        RESAMPLE_COMPILE_SECONDS,
    )
    from daskcal.io._atomic import save_products
    from daskcal.io._journal import ChunkJournal
    from daskcal.io._outputs import OutputSet, resume_folder
    from daskcal.io._resume import RUN_ATTR, check_partial, done_before, partial_record

    if resume and overwrite:
        msg = "--resume keeps what an earlier run completed and --overwrite replaces it: give one of them"
        raise ValueError(msg)
    steps = check_steps(steps, "image3")
    allow = getattr(args, "allow_outside_asn", False)
    members = expand_inputs(inputs, allow_outside_asn=allow)
    images = open_images(inputs, allow_outside_asn=allow)
    product = product_name or _product_name(inputs) or "image3"
    names: list[str] = []
    if len(members) != len(images):
        msg = f"image3: {len(members)} input exposures named but {len(images)} opened"
        raise ValueError(msg)
    for k, path in enumerate(members):
        name = exposure_name(path)
        if name in names:
            msg = (f"two input exposures would both write {name}_crf: {str(members[names.index(name)])!r} and "
                   f"{str(path)!r}; rename one")
            raise ValueError(msg)
        names.append(name)
    if f"{product}_i2d" in {f"{n}_crf" for n in names}:
        msg = f"product name {product!r} collides with an exposure's name"
        raise ValueError(msg)
    out = Path(output)
    skip_resample = bool(steps.get("resample", {}).get("skip", False))
    stores = {f"{n}_crf": out / f"{n}_crf.zarr" for n in names}
    if not skip_resample:
        stores[f"{product}_i2d"] = out / f"{product}_i2d.zarr"
    fits_files = {k: v.with_suffix(".fits") for k, v in stores.items()} if fits else {}
    read = list(dict.fromkeys(str(p) for p in [*inputs, *members]))
    first = next(iter(stores.values()))
    if resume and not skip_resample and steps.get("resample", {}).get("tile_shape") is None:
        earlier = (partial_record(first, RESUME_AS) or {}).get("parameters", {}).get("resample.tile_shape")
        if earlier is not None:  # the default depends on the workers' memory, which can differ
            print(f"image3: resample tiles of {earlier[0]}x{earlier[1]} px, as the earlier run's (--resume)")
            steps = {**steps, "resample": {**steps.get("resample", {}), "tile_shape": list(earlier)}}
    record = _record(read, steps, product)
    if resume:
        if done_before(list(stores.values()), record):  # (some there and others not: an error naming them)
            print(f"image3: the products in {out} were completed by an earlier run alike; left as they are")
            return {**stores, **{f"{k}.fits": v for k, v in fits_files.items()}}
        if check_partial(first, record, RESUME_AS):  # refused before any cluster starts
            print(f"image3: resuming the partial products in {resume_folder(first, RESUME_AS)}")
    outputs = OutputSet([*stores.values(), *fits_files.values()], overwrite=overwrite, inputs=read,
                        resumable=list(stores.values()), resume=resume, resume_as=RESUME_AS)
    outputs.check()
    kwargs = {step: (False if values.get("skip") else _library_kwargs(step, {k: v for k, v in values.items()
                                                                           if k != "skip"}))
              for step, values in steps.items()}
    if "outlier_detection" in kwargs and kwargs["outlier_detection"] is not False and tempdir is not None:
        kwargs["outlier_detection"]["tempdir"] = tempdir
    elif tempdir is not None and "outlier_detection" not in kwargs:
        kwargs["outlier_detection"] = {"tempdir": tempdir}
    from daskcal.image._pipeline import check_parameters

    check_parameters(**kwargs)  # a bad parameter is one line, before anything compiles or starts
    result = None
    try:
        with outputs:  # the output folder is proven writable before the cluster starts
            # numba compiles (or loads from its cache) the kernels here while the cluster starts
            kernels = precompile(functools.partial(_compile_kernels, images, kwargs),
                                 estimate=OUTLIERS_COMPILE_SECONDS + RESAMPLE_COMPILE_SECONDS)
            with open_cluster(args) as client:
                print_dashboard(client, flush=True)
                kernels.wait()
                t0 = time.perf_counter()
                result = image3(images, product_name=product, **kwargs)  # alignment and sky run here
                _report(result)
                products = {f"{n}_crf": ds for n, ds in zip(names, result.images)}
                if result.mosaic is not None:
                    products[f"{product}_i2d"] = result.mosaic
                    tiles = list(result.mosaic.attrs["tile_shape"])
                    record = _record(read, {**steps, "resample": {**steps.get("resample", {}), "tile_shape": tiles}},
                                     product)
                    if resume:
                        check_partial(first, record, RESUME_AS)
                products = {name: ds.assign_attrs({RUN_ATTR: record}) for name, ds in products.items()}
                folder = resume_folder(first, RESUME_AS)
                journal = ChunkJournal(str(folder / "chunks"), str(folder), json.dumps(record))
                report: dict = {}
                t1 = time.perf_counter()
                save_products(products, out, progress=not args.no_progress, outputs=outputs, journal=journal,
                              report=report)
                if report.get("kept") or report.get("redone"):
                    print(f"image3: {report['kept']} of {report['chunks']} chunks and tiles were written by the "
                          f"earlier run and verified; {report['chunks'] - report['kept']} computed now")
                elapsed = time.perf_counter() - t0
                steps_s = ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items())
                print(f"image3: steps {steps_s} (outlier_detection and resample: graph building); "
                      f"computing and writing the products {time.perf_counter() - t1:.1f} s", flush=True)
            if fits:
                _export_fits(stores, fits_files, outputs)
            outputs.commit()  # every product appears together
    finally:
        if result is not None:
            result.cleanup()
    print(f"image3: {len(images)} exposures in {elapsed:.1f} s")
    for key, store in stores.items():
        print(f"{key}: {store}" + (f" (+ {fits_files[key].name})" if fits else ""))
    return {**stores, **{f"{k}.fits": v for k, v in fits_files.items()}}


def _record(read: list, steps: dict, product: str) -> dict:
    """The run's record (:func:`daskcal.io._resume.run_record`): its inputs, every step's parameters
    (``step.name``), the product name and the Dask configuration that can change a mosaic's values."""
    import dask

    from daskcal.image._resample import BLOCK_CONFIG
    from daskcal.io._resume import run_record

    flat = {f"{step}.{name}": value for step, values in step_defaults().items() for name, value in values.items()}
    flat.update({f"{step}.{name}": value for step, values in steps.items() for name, value in values.items()})
    return run_record("image3", read, {**flat, "product_name": product,
                                       BLOCK_CONFIG: dask.config.get(BLOCK_CONFIG, None)}, None)


def _compile_kernels(images, kwargs: dict) -> None:
    """The warm-ups of the outlier and resample steps that run (see :mod:`daskcal._precompile`)."""
    from daskcal.image._warm_up import compile_outlier_kernels, compile_resample_kernels

    if kwargs.get("outlier_detection", {}) is not False:
        compile_outlier_kernels(images, **kwargs.get("outlier_detection", {}))
    if kwargs.get("resample", {}) is not False:
        compile_resample_kernels(images, **kwargs.get("resample", {}))


def _report(result) -> None:
    if result.alignment is not None:
        for group, fit in (getattr(result.alignment, "fits", None) or {}).items():
            print(f"tweakreg: group {group}: {fit}")
    if result.sky is not None:
        for name, level in (getattr(result.sky, "levels", None) or {}).items():
            print(f"skymatch: {name}: level {level}")


def _export_fits(stores: dict, fits_files: dict, outputs) -> None:
    import xarray as xr

    from daskcal.image import _io

    for key, store in stores.items():
        staged, target = outputs.path(store), outputs.path(fits_files[key])
        if key.endswith("_i2d"):
            with xr.open_zarr(staged, consolidated=False) as ds:
                _io.to_fits(ds, target)
        else:
            writer = getattr(_io, "write_crf_fits", None) or _io.write_cal_fits
            with xr.open_zarr(staged, consolidated=False) as ds:
                writer(ds, target)


def run_recipe(inputs: list[str], output: str, steps: dict, execution: dict, args) -> int:
    """Run a ``pipeline = "image3"`` recipe (the built-in recipe image3 or a TOML file) from ``daskcal run``."""
    steps = check_steps(steps, "recipe")
    execute(inputs, output, steps, args, fits=getattr(args, "fits", False),
            overwrite=getattr(args, "overwrite", False), product_name=execution.get("product_name"),
            tempdir=execution.get("tempdir"), resume=getattr(args, "resume", False))
    return 0
