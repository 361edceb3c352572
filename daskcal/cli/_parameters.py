"""``--save-parameters FILE.toml``: a run's effective parameters written as a recipe that reruns it.

The file names every parameter of every step the pipeline runs - the defaults, then the recipe's
values, then the command line's - so ``daskcal run FILE.toml IN... OUT`` (or ``--recipe FILE.toml``)
runs with the same parameters whatever later versions change in the defaults. Parameters whose
value is None (derived from the inputs) are left out, as TOML has no null. The file is written when
the run has succeeded; an existing file is refused before anything runs, unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import tempfile
from pathlib import Path

__all__ = ["add_save_parameters_option", "check_parameters_file", "effective_recipe", "pipeline_defaults",
           "save_parameters", "to_toml"]


def add_save_parameters_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--save-parameters", default=None, metavar="FILE.toml",
        help="when the run succeeds, write its effective parameters (defaults, recipe, options) as a recipe "
        "that reruns it: 'daskcal run FILE.toml IN... OUT'; an existing file is kept unless --overwrite",
    )


def pipeline_defaults(pipeline: str) -> dict[str, dict]:
    """``{step: {parameter: default}}`` of the steps ``pipeline`` runs (None: derived from the inputs)."""
    if pipeline == "detector1":
        from daskcal.detector._pipeline import step_parameters

        return step_parameters()
    if pipeline == "image3":
        from daskcal.cli._image3 import step_defaults

        return step_defaults()
    from daskcal.cli._run import PIPELINES

    return {pipeline: dict(importlib.import_module(PIPELINES[pipeline]).STEP_DEFAULTS)}


def effective_recipe(pipeline: str, steps: dict, execution: dict | None = None) -> dict:
    """The recipe of a run: every step's defaults updated with ``steps``; None values left out."""
    out = {}
    for step, defaults in pipeline_defaults(pipeline).items():
        values = {**defaults, **steps.get(step, {})}
        out[step] = {name: value for name, value in values.items() if value is not None}
    execution = {k: v for k, v in (execution or {}).items() if v is not None and v is not False}
    return {"pipeline": pipeline, "steps": out, "execution": execution}


def _literal(value, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # TOML spells nan, inf and -inf as Python does
    if isinstance(value, str | os.PathLike):
        return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_literal(v, where) for v in value) + "]"
    msg = f"{where} = {value!r} ({type(value).__name__}) cannot be written to a recipe"
    raise TypeError(msg)


def to_toml(recipe: dict, header: str = "") -> str:
    """A recipe ``{"pipeline", "steps", "execution"}`` as TOML text (``header``: comment lines first)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(f"pipeline = {_literal(recipe['pipeline'], 'pipeline')}")
    for step, values in recipe["steps"].items():
        lines += ["", f"[steps.{step}]"]
        lines += [f"{name} = {_literal(v, f'steps.{step}.{name}')}" for name, v in values.items()]
    if recipe.get("execution"):
        lines += ["", "[execution]"]
        lines += [f"{name} = {_literal(v, f'execution.{name}')}" for name, v in recipe["execution"].items()]
    return "\n".join(lines) + "\n"


def check_parameters_file(args: argparse.Namespace) -> Path | None:
    """The ``--save-parameters`` path, refused now if it exists without ``--overwrite`` (None if not asked)."""
    path = getattr(args, "save_parameters", None)
    if path is None:
        return None
    path = Path(path)
    if path.suffix.lower() != ".toml":
        msg = f"--save-parameters writes a TOML recipe; give a file name ending in .toml, not {str(path)!r}"
        raise ValueError(msg)
    if path.is_dir():
        msg = f"--save-parameters: {str(path)!r} is a folder; give a file name"
        raise IsADirectoryError(msg)
    if path.exists() and not getattr(args, "overwrite", False):
        msg = f"--save-parameters: {str(path)!r} exists; give another name or --overwrite"
        raise FileExistsError(msg)
    if not path.parent.is_dir():
        msg = f"--save-parameters: the folder {str(path.parent)!r} of {str(path)!r} does not exist"
        raise FileNotFoundError(msg)
    return path


def save_parameters(args: argparse.Namespace, pipeline: str, steps: dict, execution: dict | None = None) -> Path | None:
    """Write the run's :func:`effective_recipe` to ``--save-parameters`` (if given), atomically: the file
    appears complete or not at all, and an existing one is replaced only with ``--overwrite``."""
    path = check_parameters_file(args)
    if path is None:
        return None
    from daskcal import __version__

    recipe = effective_recipe(pipeline, steps, execution)
    command = getattr(args, "command", pipeline)
    text = to_toml(recipe, header=f"Effective parameters of a 'daskcal {command}' run (daskcal {__version__}).\n"
                                  f"Rerun with: daskcal run {path.name} IN... OUT")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a file the user creates (mkstemp's is private)
        if getattr(args, "overwrite", False):
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile: never replaces it
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    print(f"parameters: {path}")
    return path
