"""Built-in recipes: installed with the package, found by name from any folder, listed by ``daskcal recipes``."""

import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from daskcal.cli import main
from daskcal.cli._run import PIPELINES, builtin_recipes, load_recipe, recipe_path

ROOT = Path(__file__).resolve().parents[2]


def _env():
    """The environment of a ``daskcal`` subprocess that imports this checkout's package."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_every_pipeline_has_a_builtin_recipe_of_its_name():
    recipes = builtin_recipes()
    assert sorted(recipes) == sorted(PIPELINES)
    for name, path in recipes.items():
        assert path.is_file() and path.parent == ROOT / "daskcal" / "graphs"
        assert load_recipe(name)["pipeline"] == name


def test_a_path_wins_over_a_name_and_an_unknown_name_lists_the_builtins(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "detector1"  # a file that happens to have a built-in's name is the file
    mine.write_text('pipeline = "resample"\n')
    assert recipe_path("detector1") == Path("detector1")
    assert load_recipe("detector1")["pipeline"] == "resample"
    assert main(["run", "detector2", "in.zarr", "out"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'detector2'" in err and "built-in recipes: " + ", ".join(sorted(PIPELINES)) in err


def test_run_by_name_and_recipes_list_from_a_folder_outside_the_checkout(tmp_path):
    listing = subprocess.run([sys.executable, "-m", "daskcal", "recipes"], cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[:2] for line in listing] == [[name, name] for name in sorted(PIPELINES)]
    with (ROOT / "daskcal" / "graphs" / "resample.toml").open("rb") as fh:
        described = tomllib.load(fh)["description"]
    assert any(line.split(None, 2)[2] == described for line in listing)
    # the name resolves to the installed file: the run gets as far as the missing input
    run = subprocess.run([sys.executable, "-m", "daskcal", "run", "detector1", "missing.zarr", "out"],
                         cwd=tmp_path, env=_env(), capture_output=True, text=True)
    assert run.returncode == 2
    assert "missing.zarr" in run.stderr and "recipe" not in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_wheel_ships_the_recipes(tmp_path):
    source = tmp_path / "src"  # a copy: building writes build/ and *.egg-info into the source folder
    shutil.copytree(ROOT / "daskcal", source / "daskcal", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(source), "-w", str(tmp_path)],
                           capture_output=True, text=True)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1:]}")
    (wheel,) = tmp_path.glob("daskcal-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"daskcal/graphs/{name}.toml" for name in PIPELINES} <= names
