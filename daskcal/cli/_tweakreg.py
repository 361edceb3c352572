"""``daskcal tweakreg INPUTS... -o OUTDIR``: align calibrated exposures (tweakreg) on a cluster."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from daskcal.cli._common import add_cluster_options, open_cluster, print_dashboard
from daskcal.cli._parameters import add_save_parameters_option, check_parameters_file, save_parameters

__all__ = ["STEP_DEFAULTS", "asn_catalogs", "execute", "read_catfile", "register", "run_recipe"]


def _defaults() -> dict:
    from daskcal._params import defaults
    from daskcal.image._align import AlignParameters

    return defaults(AlignParameters)


#: Parameters of the tweakreg step and their defaults (the JWST step's), from AlignParameters.
STEP_DEFAULTS = _defaults()


def register(sub) -> None:
    from daskcal._params import add_options
    from daskcal.image._align import AlignParameters

    p = sub.add_parser(
        "tweakreg",
        help="align calibrated exposures to each other (and to a reference catalog) by their sources",
        description="Find point sources in each exposure (photutils; one Dask task per exposure), fit "
        "exposure groups to each other (and optionally to a reference catalog file) with tweakwcs, and "
        "write OUTDIR/<name>.zarr per input with the corrected WCS (attribute 'tweakreg' holds the fit).",
    )
    p.add_argument("inputs", nargs="+", help="calibrated image Zarr stores, _cal.fits files or associations")
    p.add_argument("-o", "--output", required=True, help="output directory (created if missing)")
    p.add_argument("--recipe", default=None, metavar="RECIPE",
                   help="recipe with a [steps.tweakreg] table: a TOML file or a built-in recipe's name ('tweakreg'; see daskcal recipes)")
    p.add_argument("--catfile", default=None, help="text file: exposure file name and its source catalog per line "
                   "(catalog paths relative to the catfile's folder)")
    p.add_argument("--overwrite", action="store_true", help="replace existing products (only the stores this command writes)")
    g = p.add_argument_group("tweakreg parameters (default: the recipe's, else the JWST step's)")
    add_options(g, AlignParameters, bools="optional")
    add_save_parameters_option(p)
    add_cluster_options(p)
    p.set_defaults(func=_main)


def _check_steps(steps: dict) -> dict:
    from daskcal.cli._run import single_step_values

    return single_step_values(steps, "tweakreg", STEP_DEFAULTS)


def _main(args: argparse.Namespace) -> int:
    from daskcal.cli._run import step_parameters

    params = step_parameters(args, "tweakreg", STEP_DEFAULTS)
    catalogs = read_catfile(args.catfile) if args.catfile else None
    check_parameters_file(args)
    execute(args.inputs, args.output, params, args, catalogs=catalogs, overwrite=args.overwrite)
    catfile = str(Path(args.catfile).resolve()) if args.catfile else None  # reruns from any folder
    save_parameters(args, "tweakreg", {"tweakreg": params}, {"catfile": catfile})
    return 0


def read_catfile(path) -> dict:
    """``{exposure file name: catalog path or None}`` from a JWST-style catfile.

    One exposure per line: its file name, then (optionally) its catalog, relative
    to the catfile's folder; blank lines and ``#`` comments are skipped.
    """
    p = Path(path)
    if not p.is_file():
        msg = f"catfile {str(p)!r} does not exist"
        raise FileNotFoundError(msg)
    out: dict = {}
    for k, line in enumerate(p.read_text().splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) > 2:
            msg = f"catfile {str(p)!r} line {k}: expected 'exposure [catalog]'; got {line.strip()!r}"
            raise ValueError(msg)
        out[words[0]] = str(p.parent / words[1]) if len(words) == 2 else None
    return out


def asn_catalogs(inputs) -> dict:
    """``{expname: catalog path}`` from the ``tweakreg_catalog`` of association members."""
    out: dict = {}
    for item in inputs:
        p = Path(item)
        if p.suffix.lower() != ".json" or not p.is_file():
            continue
        try:
            members = json.loads(p.read_text())["products"][0]["members"]
        except (json.JSONDecodeError, KeyError, IndexError, TypeError):
            continue  # the image reader reports a malformed association
        for m in members:
            cat = m.get("tweakreg_catalog") if isinstance(m, dict) else None
            if isinstance(cat, str) and cat.strip():
                out[m["expname"]] = str(p.parent / cat)
    return out


def execute(inputs, output, params: dict, args, *, catalogs=None, overwrite=False) -> dict:
    """Open the inputs, align them on the chosen cluster and write the aligned exposures."""
    from daskcal.image._align import AlignParameters, _reference_catalog, align
    from daskcal.image._io import open_images
    from daskcal.io._atomic import save_products
    from daskcal.io._outputs import OutputSet

    params = {k: (tuple(v) if k == "kron_params" and v is not None else v) for k, v in params.items()}
    AlignParameters(**params)  # checked, and the reference catalog read, before anything runs
    _reference_catalog(params.get("abs_refcat"))
    catalogs = {**asn_catalogs(inputs), **(catalogs or {})}
    images = open_images(inputs)
    names = []
    for k, ds in enumerate(images):
        name = str(ds.attrs.get("name") or f"image{k}")
        names.append(name if name not in names else f"{name}_{k}")
    outputs = OutputSet([Path(output) / f"{name}.zarr" for name in names], overwrite=overwrite, inputs=inputs)
    with outputs:  # checked, and the output folder proven writable, before the cluster starts
        with open_cluster(args) as client:
            print_dashboard(client)
            t0 = time.perf_counter()
            result = align(images, catalogs=catalogs or None, **params)
            products = dict(zip(names, result.images))
            paths = save_products(products, output, progress=not args.no_progress, outputs=outputs)
            elapsed = time.perf_counter() - t0
        outputs.commit()
    print(f"tweakreg: {len(images)} exposures in {elapsed:.1f} s")
    for group, fit in result.fits.items():
        print(f"group {group}: {fit['status']} shift {fit.get('shift')} arcsec rotation {fit.get('rotation')} deg "
              f"rmse {fit.get('rmse')} arcsec matches {fit.get('nmatches')}")
    if result.absolute is not None:
        print(f"absolute: {result.absolute['status']} shift {result.absolute.get('shift')} arcsec")
    for name, store in paths.items():
        print(f"{name}: {store}")
    return paths


def run_recipe(inputs: list[str], output: str, steps: dict, execution: dict, args) -> int:
    """Run a ``pipeline = "tweakreg"`` recipe (the built-in recipe tweakreg or a TOML file) from ``daskcal run``."""
    params = dict(STEP_DEFAULTS)
    params.update(_check_steps(steps))
    catalogs = read_catfile(execution["catfile"]) if execution.get("catfile") else None
    execute(inputs, output, params, args, catalogs=catalogs, overwrite=getattr(args, "overwrite", False))
    return 0
