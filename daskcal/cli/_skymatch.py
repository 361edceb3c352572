"""``daskcal skymatch INPUTS... -o OUTDIR``: sky levels of calibrated exposures on a cluster."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from daskcal.cli._common import add_cluster_options, open_cluster, print_dashboard
from daskcal.cli._parameters import add_save_parameters_option, check_parameters_file, save_parameters

__all__ = ["STEP_DEFAULTS", "execute", "register", "run_recipe"]


def _defaults() -> dict:
    from daskcal._params import defaults
    from daskcal.image._skymatch import SkyMatchParameters

    return defaults(SkyMatchParameters)


#: Parameters of the skymatch step and their defaults (JWST's skymatch step).
STEP_DEFAULTS = _defaults()


def register(sub) -> None:
    from daskcal._params import add_options
    from daskcal.image._skymatch import SkyMatchParameters

    p = sub.add_parser(
        "skymatch",
        help="compute (and optionally subtract) the sky levels of calibrated exposures",
        description="Sky levels of calibrated exposures, per image or matched in their overlaps "
        "(JWST's skymatch step). Writes OUTDIR/<name>.zarr per input with the level in its attributes "
        "(and the data minus the level with --subtract) and prints the levels.",
    )
    p.add_argument("inputs", nargs="+", help="calibrated images: Zarr stores, _cal.fits files or association JSON")
    p.add_argument("-o", "--output", required=True, help="output directory (created if missing; the products appear in it together when complete)")
    p.add_argument("--recipe", default=None, metavar="RECIPE",
                   help="recipe with a [steps.skymatch] table: a TOML file or a built-in recipe's name ('skymatch'; see daskcal recipes)")
    p.add_argument("--overwrite", action="store_true", help="replace existing products (only the stores this command writes)")
    g = p.add_argument_group("skymatch parameters (default: the recipe's, else the reference defaults)")
    add_options(g, SkyMatchParameters)
    add_save_parameters_option(p)
    add_cluster_options(p)
    p.set_defaults(func=_main)


def _check_steps(steps: dict) -> dict:
    from daskcal.cli._run import single_step_values

    return single_step_values(steps, "skymatch", STEP_DEFAULTS)


def load_steps(path) -> dict:
    """The ``[steps.skymatch]`` table of a recipe, checked against :data:`STEP_DEFAULTS`."""
    from daskcal.cli._run import load_recipe

    recipe = load_recipe(path)
    if recipe["pipeline"] != "skymatch":
        msg = f"recipe {str(path)!r}: pipeline must be 'skymatch'; got {recipe['pipeline']!r}"
        raise ValueError(msg)
    return _check_steps(recipe["steps"])


def _main(args: argparse.Namespace) -> int:
    from daskcal.cli._run import step_parameters

    params = step_parameters(args, "skymatch", STEP_DEFAULTS)
    check_parameters_file(args)
    execute(args.inputs, args.output, params, args, overwrite=args.overwrite)
    save_parameters(args, "skymatch", {"skymatch": params})
    return 0


def execute(inputs, output, params: dict, args, *, overwrite=False) -> dict:
    """Check the parameters and inputs, compute the levels on the chosen cluster, write the products."""
    from daskcal.image._io import open_images
    from daskcal.image._skymatch import SkyMatchParameters, match_sky
    from daskcal.io._atomic import save_products
    from daskcal.io._outputs import OutputSet

    SkyMatchParameters(**params)  # every parameter checked before the cluster starts
    images = open_images([str(p) for p in inputs])  # Zarr stores, _cal.fits files, associations
    names = []
    for k, ds in enumerate(images):
        name = str(ds.attrs.get("name") or f"image{k}")
        names.append(name if name not in names else f"{name}_{k}")
    outputs = OutputSet([Path(output) / f"{name}.zarr" for name in names], overwrite=overwrite, inputs=inputs)
    with outputs:  # checked, and the output folder proven writable, before the cluster starts
        with open_cluster(args) as client:
            print_dashboard(client)
            t0 = time.perf_counter()
            result = match_sky(images, **params)
            products = dict(zip(names, result.images, strict=True))
            paths = save_products(products, output, progress=not args.no_progress, outputs=outputs)
            elapsed = time.perf_counter() - t0
        outputs.commit()
    print(f"skymatch ({result.images[0].attrs['skymatch']['method']}, {params['skystat']}): "
          f"{len(images)} exposures in {elapsed:.1f} s")
    width = max(len(n) for n in names)
    print(f"{'exposure':<{width}}  {'group':<8}  level")
    for name, ds in zip(names, result.images, strict=True):
        level = ds.attrs["skymatch"]["level"]
        shown = "skipped" if level is None else f"{level:.7g}"
        print(f"{name:<{width}}  {ds.attrs.get('group_id', '')!s:<8}  {shown}")
    return paths


def run_recipe(inputs: list[str], output: str, steps: dict, execution: dict, args) -> int:
    """Run a ``pipeline = "skymatch"`` recipe (the built-in recipe skymatch or a TOML file) from ``daskcal run``."""
    params = dict(STEP_DEFAULTS)
    params.update(_check_steps(steps))
    execute(inputs, output, params, args, overwrite=getattr(args, "overwrite", False))
    return 0
