"""``daskcal run RECIPE IN... OUT``: run a pipeline recipe, a TOML file or a built-in one by name.

The built-in recipes are the TOML files of ``daskcal/graphs/``, installed with the package
(``daskcal recipes`` lists them); ``daskcal run detector1 IN OUT`` runs ``detector1.toml``.
"""

from __future__ import annotations

import argparse
import importlib
import tomllib
from importlib import resources
from pathlib import Path

from daskcal.cli._common import add_cluster_options
from daskcal.cli._parameters import add_save_parameters_option, check_parameters_file, save_parameters

__all__ = ["register", "PIPELINES", "builtin_recipes", "load_recipe", "recipe_path", "single_step_values"]

# pipeline name -> module whose ``run_recipe(inputs, output, steps, execution, args)`` runs it
PIPELINES = {
    "detector1": "daskcal.cli._detector1",
    "outliers": "daskcal.cli._outliers",
    "resample": "daskcal.cli._resample",
    "tweakreg": "daskcal.cli._tweakreg",
    "skymatch": "daskcal.cli._skymatch",
    "image3": "daskcal.cli._image3",
}


def register(sub) -> None:
    p = sub.add_parser(
        "run",
        help="run a pipeline recipe (a built-in one by name, see 'daskcal recipes', or a TOML file)",
        description="Run the pipeline a recipe names with the step parameters it gives. "
        "RECIPE is the name of a built-in recipe ('daskcal recipes' lists them) or a recipe file. "
        "A recipe is TOML: pipeline = 'detector1' and a [steps.<step>] table of parameters per step, "
        "optionally an [execution] table (e.g. chunks = [512, 512]).",
    )
    p.add_argument("recipe", metavar="RECIPE",
                   help="a built-in recipe's name (e.g. detector1; see 'daskcal recipes') or a recipe TOML file")
    p.add_argument("paths", nargs="+", metavar="IN... OUT", help="input(s), then the output")
    p.add_argument("--fits", action="store_true", help="also export FITS products where the pipeline can")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace an existing output (and --save-parameters file)")
    existing.add_argument("--resume", action="store_true",
                          help="continue an earlier run into the same OUT, skipping the exposures (detector1), "
                          "tiles and chunks it completed with the same inputs and parameters")
    add_save_parameters_option(p)
    add_cluster_options(p)
    p.set_defaults(func=_main)


def builtin_recipes() -> dict[str, Path]:
    """The recipes installed with daskcal: ``{name: path}`` (name = file name without ``.toml``), sorted."""
    folder = resources.files("daskcal") / "graphs"
    return {entry.name.removesuffix(".toml"): Path(str(entry))
            for entry in sorted(folder.iterdir(), key=lambda e: e.name) if entry.name.endswith(".toml")}


def recipe_path(recipe: str | Path) -> Path:
    """The recipe file ``recipe`` names: an existing path, else the built-in recipe of that name.

    Raises
    ------
    FileNotFoundError
        Neither a file nor a built-in recipe's name (the message lists the built-in names).
    """
    path = Path(recipe)
    if path.is_file():
        return path
    builtin = builtin_recipes()
    if str(recipe) in builtin:
        return builtin[str(recipe)]
    msg = (f"no recipe file at {str(recipe)!r} and no built-in recipe of that name; "
           f"built-in recipes: {', '.join(builtin)}")
    raise FileNotFoundError(msg)


def load_recipe(path: str | Path) -> dict:
    """Read and check a recipe (a file, or a built-in recipe's name; see :func:`recipe_path`):
    ``{"pipeline": str, "steps": {...}, "execution": {...}}``."""
    path = recipe_path(path)
    with path.open("rb") as fh:
        try:
            recipe = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            msg = f"recipe {str(path)!r} is not valid TOML: {exc}"
            raise ValueError(msg) from exc
    pipeline = recipe.get("pipeline")
    if pipeline not in PIPELINES:
        msg = f"recipe {str(path)!r}: 'pipeline' must be one of {sorted(PIPELINES)}; got {pipeline!r}"
        raise ValueError(msg)
    unknown = set(recipe) - {"pipeline", "steps", "execution", "description"}
    if unknown:
        msg = f"recipe {str(path)!r} has unknown top-level keys {sorted(unknown)}; expected pipeline, steps, execution"
        raise ValueError(msg)
    steps = recipe.get("steps", {})
    if not all(isinstance(v, dict) for v in steps.values()):
        msg = f"recipe {str(path)!r}: every entry of [steps] must be a table of parameters"
        raise ValueError(msg)
    return {"pipeline": pipeline, "steps": steps, "execution": recipe.get("execution", {})}


def step_parameters(args, step: str, defaults: dict) -> dict:
    """A one-step command's parameters: ``defaults``, then its recipe's ``[steps.<step>]`` table
    (``--recipe``, whose ``pipeline`` must be ``step``), then the flags given on the command line."""
    params = dict(defaults)
    path = getattr(args, "recipe", None)
    if path:
        recipe = load_recipe(path)
        if recipe["pipeline"] != step:
            msg = f"recipe {str(path)!r}: pipeline must be {step!r}; got {recipe['pipeline']!r}"
            raise ValueError(msg)
        params.update(single_step_values(recipe["steps"], step, defaults))
    for name in defaults:
        value = getattr(args, name, None)
        if value is not None:
            params[name] = value
    return params


def single_step_values(steps: dict, step: str, defaults: dict) -> dict:
    """The parameters of a one-step pipeline's ``[steps.<step>]`` table, checked by name.

    Parameters
    ----------
    steps : dict
        The recipe's ``steps`` table.
    step : str
        The pipeline's only step (``"resample"``, ``"outliers"``).
    defaults : dict
        The step's parameters and defaults; any other name is an error.
    """
    unknown_steps = set(steps) - {step}
    if unknown_steps:
        msg = f"recipe steps {sorted(unknown_steps)} are unknown; the {step} pipeline has one step, {step!r}"
        raise ValueError(msg)
    values = dict(steps.get(step, {}))
    unknown = set(values) - set(defaults)
    if unknown:
        msg = f"recipe parameters steps.{step}.{sorted(unknown)} are unknown; expected some of {list(defaults)}"
        raise ValueError(msg)
    return values


def _main(args: argparse.Namespace) -> int:
    if len(args.paths) < 2:
        msg = "give at least one input and the output: daskcal run RECIPE IN... OUT"
        raise ValueError(msg)
    recipe = load_recipe(args.recipe)
    if args.resume and recipe["pipeline"] not in ("detector1", "resample", "outliers", "image3"):
        msg = (f"--resume is available for the detector1, resample, outliers and image3 pipelines only; this "
               f"recipe runs {recipe['pipeline']!r}")
        raise ValueError(msg)
    check_parameters_file(args)
    module = importlib.import_module(PIPELINES[recipe["pipeline"]])
    code = module.run_recipe(args.paths[:-1], args.paths[-1], recipe["steps"], recipe["execution"], args)
    save_parameters(args, recipe["pipeline"], recipe["steps"], recipe["execution"])
    return code
