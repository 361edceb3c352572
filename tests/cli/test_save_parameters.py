"""``--save-parameters FILE.toml``: the effective parameters of a run, as a recipe that reruns it.

The runs are stopped at ``execute`` (what every command hands its parameters to), so these
tests compare the parameters two runs would compute with, without starting a cluster.
"""

import tomllib

import pytest

from daskcal.cli import main
from daskcal.cli._parameters import pipeline_defaults

STEP_COMMANDS = {
    # command -> (module, flags that differ from the defaults)
    "resample": ("daskcal.cli._resample", ["--pixfrac", "0.5", "--kernel", "point", "--no-ctx",
                                           "--crpix", "10", "20", "--tile-shape", "64", "32"]),
    "outliers": ("daskcal.cli._outliers", ["--snr", "6.0 3.0", "--maskpt", "0.5", "--buffer-size", "16",
                                           "--weight-type", "none", "--tile-shape", "128", "128"]),
    "tweakreg": ("daskcal.cli._tweakreg", ["--snr-threshold", "7", "--brightest", "50", "--peakmax", "1e4"]),
    "skymatch": ("daskcal.cli._skymatch", ["--skymethod", "local", "--subtract", "--lower", "-5", "--nclip", "3"]),
}


@pytest.fixture
def calls(monkeypatch):
    """Every command's ``execute`` replaced by a recorder of its arguments."""
    import importlib

    seen = []
    for module in ("daskcal.cli._resample", "daskcal.cli._outliers", "daskcal.cli._tweakreg",
                   "daskcal.cli._skymatch", "daskcal.cli._image3", "daskcal.cli._detector1"):
        monkeypatch.setattr(importlib.import_module(module), "execute",
                            lambda *a, **k: seen.append((a[0], a[1], a[2], k)))
    return seen


@pytest.mark.parametrize("command", list(STEP_COMMANDS))
def test_a_step_command_saves_parameters_that_rerun_it(command, calls, tmp_path):
    _, flags = STEP_COMMANDS[command]
    saved = tmp_path / "mine.toml"
    assert main([command, "a.zarr", "b.zarr", "-o", "out", *flags, "--save-parameters", str(saved)]) == 0
    recipe = tomllib.loads(saved.read_text())
    assert recipe["pipeline"] == command
    defaults = pipeline_defaults(command)[command]
    assert set(recipe["steps"][command]) == {k for k, v in defaults.items() if v is not None} | (
        {"crpix", "tile_shape"} if command == "resample" else {"tile_shape", "buffer_size"} if command == "outliers"
        else {"peakmax"} if command == "tweakreg" else {"lower"})
    # the same parameters, from the saved file: as the step's --recipe and through 'daskcal run'
    assert main([command, "a.zarr", "b.zarr", "-o", "out", "--recipe", str(saved)]) == 0
    assert main(["run", str(saved), "a.zarr", "b.zarr", "out"]) == 0
    first, again, rerun = (c[2] for c in calls)
    assert again == first and rerun == first
    assert any(first[k] != defaults[k] for k in first if k in defaults)  # the flags took effect


def test_outliers_buffer_size_is_saved_in_bytes(calls, tmp_path):
    saved = tmp_path / "o.toml"
    assert main(["outliers", "a.zarr", "b.zarr", "-o", "out", "--buffer-size", "16", "--save-median",
                 "--save-parameters", str(saved)]) == 0
    recipe = tomllib.loads(saved.read_text())
    assert recipe["steps"]["outliers"]["buffer_size"] == 16 * 2**20
    assert recipe["execution"] == {"save_median": True}
    assert main(["run", str(saved), "a.zarr", "b.zarr", "out"]) == 0
    assert calls[1][3]["save_median"] is True


def test_detector1_saves_every_step_and_the_chunks(calls, tmp_path):
    saved = tmp_path / "d1.toml"
    assert main(["detector1", "r.zarr", "out", "--rejection-threshold", "5.5", "--flag-4-neighbors", "false",
                 "--chunks", "16", "32", "--save-parameters", str(saved)]) == 0
    recipe = tomllib.loads(saved.read_text())
    assert recipe["steps"]["jump"]["rejection_threshold"] == 5.5
    assert recipe["steps"]["jump"]["flag_4_neighbors"] is False
    assert recipe["execution"] == {"chunks": [16, 32]}
    assert set(recipe["steps"]) == set(pipeline_defaults("detector1"))
    assert main(["run", str(saved), "r.zarr", "out"]) == 0
    (_, _, first, k1), (_, _, rerun, k2) = calls
    assert rerun == first and k2["chunks"] == k1["chunks"] == (16, 32)


def test_run_saves_the_recipe_with_every_default(calls, tmp_path):
    saved = tmp_path / "r.toml"
    assert main(["run", "resample", "a.zarr", "m.zarr", "--save-parameters", str(saved)]) == 0
    assert main(["run", str(saved), "a.zarr", "m.zarr"]) == 0
    first, rerun = (c[2] for c in calls)
    assert rerun == first
    written = tomllib.loads(saved.read_text())["steps"]["resample"]
    assert written == {k: v for k, v in first.items() if v is not None}


def test_image3_saves_options_over_the_recipe(calls, tmp_path):
    saved = tmp_path / "i3.toml"
    assert main(["image3", "asn.json", "out", "--recipe", "image3", "--steps.resample.pixfrac=0.7",
                 "--steps.tweakreg.skip", "--product-name", "mine", "--save-parameters", str(saved)]) == 0
    recipe = tomllib.loads(saved.read_text())
    assert recipe["steps"]["resample"]["pixfrac"] == 0.7 and recipe["steps"]["tweakreg"]["skip"] is True
    assert recipe["execution"] == {"product_name": "mine"}
    assert main(["run", str(saved), "asn.json", "out"]) == 0
    assert main(["image3", "asn.json", "out", "--recipe", str(saved), "--product-name", "mine"]) == 0
    (_, _, first, k1), (_, _, rerun, k2), (_, _, again, _) = calls
    full = {step: {**pipeline_defaults("image3")[step], **first.get(step, {})} for step in pipeline_defaults("image3")}
    assert {s: {**full[s], **rerun.get(s, {})} for s in full} == full
    assert again == rerun and k2["product_name"] == "mine"


def test_an_existing_file_is_kept_unless_overwrite(calls, tmp_path, capsys):
    saved = tmp_path / "mine.toml"
    saved.write_text("# my notes\n")
    assert main(["resample", "a.zarr", "-o", "m.zarr", "--save-parameters", str(saved)]) == 2
    assert "exists" in capsys.readouterr().err and saved.read_text() == "# my notes\n"
    assert calls == []  # refused before anything ran
    assert main(["resample", "a.zarr", "-o", "m.zarr", "--save-parameters", str(saved), "--overwrite"]) == 0
    assert tomllib.loads(saved.read_text())["pipeline"] == "resample"
    assert main(["resample", "a.zarr", "-o", "m.zarr", "--save-parameters", str(tmp_path / "x.txt")]) == 2
    assert not (tmp_path / "x.txt").exists()


def test_a_failed_run_saves_nothing(monkeypatch, tmp_path):
    import daskcal.cli._skymatch as mod

    def fail(*a, **k):
        raise ValueError("bad input")

    monkeypatch.setattr(mod, "execute", fail)
    saved = tmp_path / "s.toml"
    assert main(["skymatch", "a.zarr", "-o", "out", "--save-parameters", str(saved)]) == 2
    assert not saved.exists() and list(tmp_path.iterdir()) == []
