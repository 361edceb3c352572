"""One source of truth per step parameter: the step's dataclass fields (``daskcal._params``).

The public functions keep explicit keyword signatures and numpydoc docstrings, the commands
their options, the built-in recipes their step tables, the docs their tables: each is checked
here against the fields, so a default changed in one place and not the others fails.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from daskcal._params import (
    STEP_CLASSES,
    defaults,
    markdown_table,
    step_classes,
    step_fields,
    write_recipes,
)

ROOT = Path(__file__).resolve().parent.parent

#: step -> its public function (``align`` takes ``**params``: AlignParameters is its signature)
FUNCTIONS = {
    "saturation": ("daskcal.detector._saturation", "flag_saturation"),
    "jump": ("daskcal.detector._jump", "detect_jumps"),
    "ramp_fit": ("daskcal.detector._ramp_fit", "fit_ramps"),
    "skymatch": ("daskcal.image._skymatch", "match_sky"),
    "outliers": ("daskcal.image._outliers", "flag_outliers"),
    "resample": ("daskcal.image._resample", "resample"),
}
#: step -> the command whose STEP_DEFAULTS and options are the step's parameters
COMMANDS = {"tweakreg": "tweakreg", "skymatch": "skymatch", "outliers": "outliers", "resample": "resample"}
DOC_PAGES = {"resample": "resample.md", "outliers": "outliers.md", "skymatch": "skymatch.md",
             "tweakreg": "align.md", "saturation": "detector1.md", "jump": "detector1.md",
             "ramp_fit": "detector1.md"}


def _function(step):
    import importlib

    module, name = FUNCTIONS[step]
    return getattr(importlib.import_module(module), name)


def documented(doc: str) -> dict[str, str]:
    """``{name: type text}`` of the entries of a numpydoc docstring's Parameters and Attributes
    sections (``a, b : float, default 4.0`` gives both names)."""
    lines = inspect.cleandoc(doc or "").splitlines()
    out: dict[str, str] = {}
    section = None
    for k, line in enumerate(lines):
        if k + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[k + 1].strip()):
            section = line.strip()
            continue
        if section not in ("Parameters", "Attributes") or not line or line[0].isspace() or " : " not in line:
            continue
        names, kind = line.split(" : ", 1)
        for name in names.split(","):
            out[name.strip()] = kind.strip()
    return out


def _default_in(kind: str):
    """The default a numpydoc type text gives: ``float, default 1.0`` -> 1.0, ``..., optional`` -> None."""
    if kind.endswith(", optional"):
        return None
    if ", default " not in kind:
        return inspect.Parameter.empty
    return ast.literal_eval(kind.rsplit(", default ", 1)[1].strip())


@pytest.mark.parametrize("step", list(FUNCTIONS))
def test_signature_defaults_are_the_dataclass_defaults(step):
    params = inspect.signature(_function(step)).parameters
    drift = {}
    for f in step_fields(*step_classes(step), python_only=True):
        assert f.name in params, f"{FUNCTIONS[step][1]}() has no keyword {f.name!r} (a field of its parameters)"
        if params[f.name].default != f.default:
            drift[f.name] = (params[f.name].default, f.default)
    assert not drift, f"{FUNCTIONS[step][1]}() signature default != dataclass default: {drift}"


@pytest.mark.parametrize("step", list(FUNCTIONS))
def test_docstring_states_each_default(step):
    doc = documented(_function(step).__doc__)
    wrong = {}
    for f in step_fields(*step_classes(step), python_only=True):
        assert f.name in doc, f"{FUNCTIONS[step][1]}'s docstring does not describe {f.name!r}"
        said = _default_in(doc[f.name])
        if said is inspect.Parameter.empty or said != f.default:
            wrong[f.name] = (doc[f.name], f.default)
    assert not wrong, f"docstring says (numpydoc 'name : type, default X' / 'optional') != default: {wrong}"


@pytest.mark.parametrize("step", list(STEP_CLASSES))
def test_class_docstrings_that_list_defaults_agree(step):
    for cls in step_classes(step):
        doc = documented(cls.__doc__)
        for f in dataclasses.fields(cls):
            if f.name in doc:
                assert _default_in(doc[f.name]) == f.default, f"{cls.__name__} docstring: {f.name}: {doc[f.name]}"


def test_align_takes_its_parameters_by_keyword():
    # align(images, *, catalogs=None, **params): AlignParameters(**params) is its signature and check
    from daskcal.image._align import AlignParameters, align

    kinds = [p.kind for p in inspect.signature(align).parameters.values()]
    assert inspect.Parameter.VAR_KEYWORD in kinds
    assert "AlignParameters" in align.__doc__
    AlignParameters(**defaults(AlignParameters))


@pytest.mark.parametrize("step", list(COMMANDS))
def test_commands_take_every_parameter_with_its_default(step):
    import importlib

    from daskcal.cli._main import build_parser

    module = importlib.import_module(f"daskcal.cli._{COMMANDS[step]}")
    assert module.STEP_DEFAULTS == defaults(*step_classes(step))
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[COMMANDS[step]]
    dests = {a.dest for a in sub._actions}
    assert set(module.STEP_DEFAULTS) <= dests


def test_detector1_command_and_recipe_parameters():
    from daskcal.cli._main import build_parser
    from daskcal.detector._pipeline import step_parameters

    assert step_parameters() == {step: defaults(*step_classes(step)) for step in ("saturation", "jump", "ramp_fit")}
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["detector1"]
    given = {a.dest: a.default for a in sub._actions}
    for values in step_parameters().values():
        for name, default in values.items():
            assert given[name] == default, name


def test_shipped_recipes_are_generated_from_the_fields():
    stale = write_recipes(check=True)
    assert not stale, (f"{[p.name for p in stale]} differ from the parameter fields; "
                       "regenerate with: python -m daskcal._params --write-recipes")


@pytest.mark.parametrize("step", list(STEP_CLASSES))
def test_docs_table_lists_every_field_and_the_page_uses_it(step):
    table = markdown_table(step)
    for f in step_fields(*step_classes(step), python_only=True):
        assert f"| `{f.name}` |" in table
    page = (ROOT / "docs" / DOC_PAGES[step]).read_text()
    assert re.search(r"```\{daskcal-parameters\}[^\n]*\b" + step + r"\b", page), f"docs/{DOC_PAGES[step]}"
