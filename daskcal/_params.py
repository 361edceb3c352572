"""One source of truth for each step's parameters: the fields of its frozen parameter dataclass.

A field's default is *the* default; its ``metadata`` (written with :func:`param`) says the rest:

``help``
    One line: what the parameter is.
``unit``
    Its unit, ``""`` for none.
``derived`` (optional)
    What a ``None`` default means, e.g. ``"the first input's"``.
``example`` (optional)
    A value shown, commented out, in the built-in recipes for a ``None`` default.
``section`` (optional)
    A heading comment written before the field in the built-in recipes.
``cli`` (optional)
    How the command-line option differs from ``--name VALUE`` of the field's type: ``flag``
    (its name), ``type``, ``nargs``, ``metavar``, ``choices``, ``help`` (the option's own help,
    for a flag such as ``--no-ctx`` or a value in another unit).
``python_only`` (optional)
    True: a keyword of the Python function only, not a command-line or recipe parameter.

From the fields come the defaults of the commands and recipes (:func:`defaults`), the
command-line options (:func:`add_options`), the step tables of the built-in recipes
(``python -m daskcal._params --write-recipes``; ``tests/test_parameters.py`` checks the
shipped files) and the documentation tables (:func:`markdown_table`, rendered by the
``daskcal-parameters`` directive of ``docs/_ext``). The public functions keep explicit keyword
signatures, checked against the fields by ``tests/test_parameters.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import sys
from pathlib import Path

__all__ = ["STEP_CLASSES", "add_options", "defaults", "markdown_table", "param", "parse_bool", "recipe_text",
           "step_fields"]

#: step -> (module, parameter dataclasses): the steps of the commands and recipes.
STEP_CLASSES = {
    "saturation": ("daskcal.detector._saturation", ("SaturationParameters",)),
    "jump": ("daskcal.detector._jump", ("JumpParameters",)),
    "ramp_fit": ("daskcal.detector._ramp_fit", ("RampFitParameters",)),
    "tweakreg": ("daskcal.image._align", ("AlignParameters",)),
    "skymatch": ("daskcal.image._skymatch", ("SkyMatchParameters",)),
    "outliers": ("daskcal.image._outliers", ("OutlierParameters",)),
    "resample": ("daskcal.image._resample", ("ResampleParams", "ResampleOutputParams")),
}
#: image3's (jwst's) names of steps whose command has another name
ALIASES = {"outlier_detection": "outliers"}
GRAPHS = Path(__file__).resolve().parent / "graphs"
_SKIP_HELP = "true: leave this step out"


def param(default, help: str, unit: str = "", **extra) -> dataclasses.Field:
    """A dataclass field with its default and metadata (``help``, ``unit``, and ``derived``, ``example``,
    ``section``, ``cli``, ``python_only`` as the module docstring describes)."""
    unknown = set(extra) - {"derived", "example", "section", "cli", "python_only"}
    if unknown:
        msg = f"unknown parameter metadata {sorted(unknown)}"
        raise TypeError(msg)
    return dataclasses.field(default=default, metadata={"help": help, "unit": unit, **extra})


def step_classes(step: str) -> tuple[type, ...]:
    """The parameter dataclasses of ``step`` (a name of :data:`STEP_CLASSES` or :data:`ALIASES`)."""
    module, names = STEP_CLASSES[ALIASES.get(step, step)]
    mod = importlib.import_module(module)
    return tuple(getattr(mod, name) for name in names)


def step_fields(*classes: type, python_only: bool = False) -> list[dataclasses.Field]:
    """The documented fields of ``classes``, in order (``python_only``: also the Python-only ones)."""
    out = []
    for cls in classes:
        for f in dataclasses.fields(cls):
            if "help" not in f.metadata:
                msg = f"{cls.__name__}.{f.name} has no help; declare it with daskcal._params.param"
                raise TypeError(msg)
            if python_only or not f.metadata.get("python_only", False):
                out.append(f)
    return out


def defaults(*classes: type) -> dict:
    """``{name: default}`` of the command-line and recipe parameters of ``classes`` (None: derived)."""
    return {f.name: f.default for f in step_fields(*classes)}


def parse_bool(text: str) -> bool:
    """A ``true``/``false`` (``1``/``0``, ``yes``/``no``, ``on``/``off``) command-line value."""
    low = text.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    msg = f"expected true or false; got {text!r}"
    raise argparse.ArgumentTypeError(msg)


def _kind(f: dataclasses.Field) -> type:
    """The command-line type of a field: from its default, else its annotation (str wins: validation parses)."""
    if isinstance(f.default, bool):
        return bool
    words = set(re.findall(r"\w+", str(f.type)))
    for kind in (bool, str, float, int):
        if kind.__name__ in words:
            return kind
    return str


def _show(value) -> str:
    if isinstance(value, tuple | list):
        return " ".join(map(str, value))
    return repr(value)


def _cli_help(f: dataclasses.Field) -> str:
    cli = f.metadata.get("cli", {})
    if "help" in cli:
        text = cli["help"]
    elif f.default is None and "derived" in f.metadata:
        unit = f" [{f.metadata['unit']}]" if f.metadata["unit"] else ""
        text = f"{f.metadata['help']}{unit} (default: {f.metadata['derived']})"
    else:
        unit = f" {f.metadata['unit']}" if f.metadata["unit"] else ""
        text = f"{f.metadata['help']} (default {_show(f.default)}{unit})"
    return text.replace("%", "%%")


def add_options(group, *classes: type, bools: str = "flag", fill_defaults: bool = False, exclude=()) -> None:
    """Add a command-line option per parameter of ``classes`` to ``group`` (an argparse parser or group).

    The option is ``--name-with-dashes`` (or the field's ``cli["flag"]``) with ``dest`` the
    parameter's name and the help ending with the default and unit. ``bools`` says how a
    true/false parameter is given: ``"flag"`` (a flag that sets the other value than the
    default; a parameter whose default is True needs its ``cli["flag"]``, e.g. ``--no-ctx``),
    ``"optional"`` (``--name``/``--no-name``) or ``"value"`` (``--name BOOL``). The options'
    default is None (so a recipe's value shows through) unless ``fill_defaults``.
    """
    for f in step_fields(*classes):
        if f.name in exclude:
            continue
        cli = f.metadata.get("cli", {})
        flag = cli.get("flag", "--" + f.name.replace("_", "-"))
        default = f.default if fill_defaults else None
        kind = _kind(f)
        if kind is bool and bools == "flag":
            if f.default and "flag" not in cli:
                msg = f"{f.name}: a flag for a parameter whose default is True needs its cli['flag'] name"
                raise TypeError(msg)
            group.add_argument(flag, dest=f.name, action="store_const", const=not f.default, default=default,
                               help=cli.get("help", f.metadata["help"]).replace("%", "%%"))
        elif kind is bool and bools == "optional":
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=_cli_help(f))
        elif kind is bool:
            group.add_argument(flag, dest=f.name, type=parse_bool, metavar="BOOL", default=default, help=_cli_help(f))
        else:
            extra = {key: cli[key] for key in ("nargs", "metavar", "choices") if key in cli}
            group.add_argument(flag, dest=f.name, type=cli.get("type", kind), default=default, help=_cli_help(f),
                               **extra)


def _literal(value, where: str) -> str:
    from daskcal.cli._parameters import _literal as literal

    return literal(value, where)


def recipe_lines(step: str, values: dict) -> list[str]:
    """The lines of a recipe's ``[steps.<step>]`` table for the parameters ``values`` (``{name: default}``):
    ``name = value`` with the help and unit as a comment, None values commented out (TOML has no null)."""
    fields = {f.name: f for f in step_fields(*step_classes(step))}
    rows = []  # (section or None, left, comment)
    for name, value in values.items():
        if name == "skip":
            rows.append((None, f"skip = {_literal(value, name)}", _SKIP_HELP))
            continue
        f = fields[name]
        meta = f.metadata
        comment = meta["help"] + (f" [{meta['unit']}]" if meta["unit"] else "")
        if value is None:
            example = meta.get("example")
            left = f"# {name} =" + ("" if example is None else f" {_literal(example, name)}")
            if "derived" in meta:
                comment += f" (default: {meta['derived']})"
        else:
            left = f"{name} = {_literal(value, name)}"
        rows.append((meta.get("section"), left, comment))
    width = max(len(left) for _, left, _ in rows) + 2
    lines = []
    for section, left, comment in rows:
        if section:
            lines.append(f"# {section}")
        lines.append(f"{left:<{width}}# {comment}")
    return lines


def recipe_text(text: str) -> str:
    """A recipe's text with every ``[steps.<step>]`` table written from the parameter fields; the rest
    (comments, ``pipeline``, ``description``, ``[execution]``) is kept as it is."""
    import tomllib

    from daskcal.cli._parameters import pipeline_defaults

    pipeline = tomllib.loads(text)["pipeline"]
    steps = pipeline_defaults(pipeline)
    lines = text.splitlines()
    out: list[str] = []
    k = 0
    while k < len(lines):
        line = lines[k]
        out.append(line)
        k += 1
        match = re.fullmatch(r"\[steps\.(\w+)\]\s*", line)
        if not match:
            continue
        end = k
        while end < len(lines) and not lines[end].startswith("["):
            end += 1
        trailing = end
        while trailing > k and not lines[trailing - 1].strip():
            trailing -= 1
        out += recipe_lines(match.group(1), steps[match.group(1)])
        out += lines[trailing:end]  # the blank lines before the next table
        k = end
    return "\n".join(out) + "\n"


def write_recipes(check: bool = False) -> list[Path]:
    """Rewrite the step tables of the built-in recipes (``daskcal/graphs/*.toml``) from the fields.

    Returns the files that were out of date (with ``check``: without writing them)."""
    stale = []
    for path in sorted(GRAPHS.glob("*.toml")):
        text = path.read_text(encoding="utf-8")
        new = recipe_text(text)
        if new != text:
            stale.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return stale


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def markdown_table(*steps: str) -> str:
    """A Markdown table of the parameters of ``steps``: name, default, unit, description
    (and the step, for several). Python-only keywords are marked so."""
    several = len(steps) > 1
    head = (["step"] if several else []) + ["parameter", "default", "unit", "description"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for step in steps:
        for f in step_fields(*step_classes(step), python_only=True):
            meta = f.metadata
            if f.default is None and "derived" in meta:
                default = _cell(meta["derived"])
            else:
                default = f"`{_cell(repr(f.default))}`"
            text = _cell(meta["help"]) + (" (Python only)" if meta.get("python_only") else "")
            row = ([step] if several else []) + [f"`{f.name}`", default, _cell(meta["unit"]) or "-", text]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daskcal._params", description=__doc__.splitlines()[0])
    parser.add_argument("--write-recipes", action="store_true",
                        help="rewrite the step tables of daskcal/graphs/*.toml from the parameter fields")
    parser.add_argument("--check", action="store_true", help="only list the recipes that are out of date (exit 1)")
    parser.add_argument("--table", nargs="+", metavar="STEP", help="print the Markdown parameter table of STEP(s)")
    args = parser.parse_args(argv)
    if args.table:
        print(markdown_table(*args.table), end="")
    if args.write_recipes or args.check:
        stale = write_recipes(check=args.check)
        for path in stale:
            print(f"{'out of date' if args.check else 'written'}: {path}")
        return 1 if (args.check and stale) else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
