import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from daskcal.cli import main
from daskcal.cli._main import build_parser
from daskcal.cli._run import load_recipe


def _subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return list(sub.choices)


@pytest.mark.parametrize("command", _subcommands())
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage: daskcal" in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "daskcal.cli._main", "--help"], capture_output=True, text=True, check=True)
    assert "detector1" in out.stdout


def test_shipped_recipes_load():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[2] / "daskcal" / "graphs").glob("*.toml"))
    assert recipes
    for path in recipes:
        recipe = load_recipe(path)
        assert recipe["steps"]


def test_detector1_recipe_names_every_default():
    from pathlib import Path

    from daskcal.detector._pipeline import step_parameters

    recipe = load_recipe(Path(__file__).parents[2] / "daskcal" / "graphs" / "detector1.toml")
    for step, params in step_parameters().items():
        assert recipe["steps"][step] == pytest.approx(params), step


def test_bad_recipe_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('pipeline = "detector2"\n')
    with pytest.raises(ValueError, match="'pipeline' must be one of"):
        load_recipe(bad)
    bad.write_text('pipeline = "detector1"\n[steps.jump]\nrejection_treshold = 3\n')
    assert main(["run", str(bad), str(tmp_path / "in.zarr"), str(tmp_path / "out")]) == 2


def test_simulate_then_detector1_from_the_command_line(tmp_path, capsys):
    ramps = tmp_path / "ramps.zarr"
    assert main(["simulate", str(ramps), "--shape", "1", "5", "48", "40", "--chunks", "20", "20"]) == 0
    out = tmp_path / "out"
    code = main(["run", "detector1", str(ramps), str(out), "--workers", "1", "--no-progress", "--fits"])
    assert code == 0
    text = capsys.readouterr().out
    assert "rate:" in text and "dashboard:" not in text  # no dashboard unless --dashboard-address is given
    rate = xr.open_zarr(out / "rate.zarr", consolidated=False)
    assert rate["data"].shape == (48, 40)
    assert np.isfinite(rate["data"].values).mean() > 0.99
    assert (out / "rate.fits").exists() and (out / "rateints.fits").exists()
    # the output exists now: a second run without --overwrite refuses and keeps it
    assert main(["detector1", str(ramps), str(out), "--workers", "1", "--no-progress"]) == 2
    assert (out / "rate.zarr").exists()


def test_detector1_refuses_fits_input(tmp_path, capsys):
    assert main(["detector1", str(tmp_path / "x_uncal.fits"), str(tmp_path / "o")]) == 2
    assert "daskcal ingest" in capsys.readouterr().err


def test_detector1_runs_several_exposures_on_one_cluster(tmp_path, capsys):
    from daskcal import detector1, open_ramps

    stores = []
    for seed, name in ((1, "expo_a.zarr"), (2, "expo_b")):
        path = tmp_path / name
        assert main(["simulate", str(path), "--shape", "1", "4", "36", "30", "--chunks", "16", "16",
                     "--seed", str(seed)]) == 0
        stores.append(path)
    out = tmp_path / "out"
    assert main(["detector1", *map(str, stores), str(out), "--workers", "1", "--no-progress",
                 "--dashboard-address", ":0"]) == 0
    text = capsys.readouterr().out
    assert text.count("dashboard: http://127.0.0.1:") == 1  # one cluster for both
    for store, name in zip(stores, ("expo_a", "expo_b"), strict=True):
        want = detector1(open_ramps(store)).rate.compute()
        with xr.open_zarr(out / name / "rate.zarr", consolidated=False) as got:
            for v in want.data_vars:
                np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=f"{name}.{v}")
        assert (out / name / "rateints.zarr").exists()
    # the recipe runs several inputs the same way
    assert main(["run", "detector1", *map(str, stores), str(tmp_path / "out2"), "--workers", "1",
                 "--no-progress"]) == 0
    assert (tmp_path / "out2" / "expo_b" / "rate.zarr").exists()


def test_detector1_checks_every_input_before_computing(tmp_path, capsys):
    good = tmp_path / "good.zarr"
    assert main(["simulate", str(good), "--shape", "1", "4", "20", "20"]) == 0
    other = tmp_path / "elsewhere"
    other.mkdir()
    # two inputs with the same name would write the same directory
    assert main(["detector1", str(good), str(other / "good.zarr"), str(tmp_path / "o1"), "--no-progress"]) == 2
    assert "would both write" in capsys.readouterr().err
    # an input that is not a ramp store: refused before the first exposure is computed
    assert main(["detector1", str(good), str(tmp_path / "missing.zarr"), str(tmp_path / "o2"), "--no-progress"]) == 2
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()


def _parsers():
    """``(name, parser)`` of the top-level parser and every subcommand's."""
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return [("daskcal", parser), *sub.choices.items()]


@pytest.mark.parametrize(("name", "parser"), _parsers(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_option_has_help_text(name, parser):
    import argparse

    missing = [a.option_strings[0] for a in parser._actions
               if a.option_strings and a.help != argparse.SUPPRESS and not (a.help or "").strip()]
    assert missing == [], f"{name}: options without help text"


def test_version_and_python_dash_m(tmp_path):
    import os
    from pathlib import Path

    import daskcal

    env = {**os.environ, "PYTHONPATH": str(Path(daskcal.__file__).parents[1])}  # this checkout, from any folder
    for argv in (["-m", "daskcal", "--version"], ["-m", "daskcal.cli._main", "--version"]):
        out = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
        assert out.stdout.strip() == f"daskcal {daskcal.__version__}"
    usage = subprocess.run([sys.executable, "-m", "daskcal", "--help"], capture_output=True, text=True, check=True)
    assert "usage: daskcal" in usage.stdout and "recipes" in usage.stdout


def test_detector1_save_opt_writes_fitopt(tmp_path, capsys, caplog):
    import logging

    import daskcal

    ramps = tmp_path / "ramps.zarr"
    assert main(["simulate", str(ramps), "--shape", "2", "5", "30", "26", "--chunks", "16", "13"]) == 0
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="daskcal.cli._detector1"):
        code = main(["-v", "detector1", str(ramps), str(out), "--workers", "1", "--no-progress", "--save-opt", "true",
                     "--fits"])
    assert code == 0
    assert "fitopt:" in capsys.readouterr().out
    assert "primary jumps (cosmic rays) per integration" in caplog.text
    assert (out / "rate.fits").exists()
    expected = daskcal.detector1(daskcal.open_ramps(str(ramps)), save_opt=True).fitopt.compute()
    with xr.open_zarr(out / "fitopt.zarr", consolidated=False) as fitopt:
        assert fitopt["slope"].dims == ("integration", "segment", "y", "x")
        for name in expected.data_vars:
            np.testing.assert_array_equal(fitopt[name].values, expected[name].values)
    # --fits with --save-opt also writes jwst's _fitopt.fits layout, which stdatamodels opens (warnings are errors)
    from stdatamodels.jwst.datamodels import RampFitOutputModel

    with RampFitOutputModel(str(out / "fitopt.fits")) as model:
        for name in expected.data_vars:
            got = getattr(model, name)
            assert got.dtype.name == "float32", name
            np.testing.assert_array_equal(got, expected[name].values, err_msg=name)


def test_detector1_likely_from_the_command_line(tmp_path, capsys):
    from daskcal import detector1, open_ramps

    ramps = tmp_path / "ramps.zarr"
    assert main(["simulate", str(ramps), "--shape", "1", "5", "30", "26", "--chunks", "16", "16"]) == 0
    out = tmp_path / "out"
    assert main(["detector1", str(ramps), str(out), "--algorithm", "LIKELY", "--workers", "1", "--no-progress"]) == 0
    want = detector1(open_ramps(ramps), algorithm="LIKELY").rate.compute()
    with xr.open_zarr(out / "rate.zarr", consolidated=False) as got:
        for v in want.data_vars:
            np.testing.assert_array_equal(got[v].values, want[v].values, err_msg=v)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["detector1", str(ramps), str(tmp_path / "o2"), "--algorithm", "MLE"])
    err = capsys.readouterr().err
    assert "--algorithm" in err and "'MLE'" in err and "OLS_C" in err


def test_detector1_records_primecrs(tmp_path, monkeypatch):
    """rate and rateints (Zarr attrs primary_cosmic_rays, FITS keyword PRIMECRS) record JWST's jump-step
    rate of primary cosmic rays: 1000 * stcal 1.20's total_primary_crs / (group time * group differences
    * pixels). The usable group planes are found once, building the graph (not again for the rates)."""
    from astropy.io import fits

    import daskcal
    from daskcal.detector import _fused
    from daskcal.testing import simulate, stcal_detect_jumps, stcal_flag_saturation, stcal_subtract_superbias

    sim = simulate((3, 7, 41, 37), seed=5, cr_probability=5e-3, max_source_rate=3000.0).ramps
    store = tmp_path / "ramps.zarr"
    daskcal.save(sim.chunk({"y": 13, "x": 11}), store)
    out = tmp_path / "out"
    found = []
    plane_usable = _fused.plane_usable
    monkeypatch.setattr(_fused, "plane_usable", lambda ds: found.append(ds.sizes) or plane_usable(ds))
    assert main(["detector1", str(store), str(out), "--workers", "1", "--no-progress", "--fits"]) == 0
    assert len(found) == 1
    total = stcal_detect_jumps(stcal_subtract_superbias(stcal_flag_saturation(sim))).attrs["total_primary_crs"]
    assert total > 20
    want = 1000.0 * total / (sim.attrs["group_time"] * 3 * (7 - 1) * 41 * 37)
    for name in ("rate", "rateints"):
        with xr.open_zarr(out / f"{name}.zarr") as product:  # consolidated metadata kept up to date
            assert product.attrs["primary_cosmic_rays"] == pytest.approx(want, rel=1e-12)
            assert product.attrs["extended_emission_events"] == 0.0  # no large-event search: jwst records 0
        header = fits.getheader(out / f"{name}.fits")
        assert header["PRIMECRS"] == pytest.approx(want, rel=1e-12) and header["EXTNCRS"] == 0.0
    from stdatamodels.jwst.datamodels import ImageModel

    with ImageModel(str(out / "rate.fits")) as model:  # JWST's datamodel reads it as its own
        assert model.meta.exposure.primary_cosmic_rays == pytest.approx(want, rel=1e-12)
        assert model.meta.exposure.extended_emission_events == 0.0


def test_detector1_records_extncrs(tmp_path):
    """With the snowball search, rate and rateints (Zarr attrs extended_emission_events, FITS keyword EXTNCRS)
    record JWST's jump-step rate of extended events: 1e6 * stcal 1.20's number_extended_events / (group time *
    group differences * pixels), jwst 3.0's formula; PRIMECRS beside it."""
    from astropy.io import fits
    from stdatamodels.jwst.datamodels import ImageModel

    import daskcal
    from daskcal.testing import simulate, stcal_detect_jumps, stcal_flag_saturation, stcal_subtract_superbias

    sim = simulate((2, 6, 60, 70), seed=21, snowballs=3, cr_probability=5e-4).ramps
    store = tmp_path / "ramps.zarr"
    daskcal.save(sim.chunk({"y": 17, "x": 23}), store)
    out = tmp_path / "out"
    assert main(["detector1", str(store), str(out), "--workers", "1", "--no-progress", "--fits",
                 "--expand-large-events", "true"]) == 0
    jumped = stcal_detect_jumps(stcal_subtract_superbias(stcal_flag_saturation(sim)), expand_large_events=True)
    n_events, total = jumped.attrs["number_extended_events"], jumped.attrs["total_primary_crs"]
    assert n_events >= 6 and total > 0
    exposure = sim.attrs["group_time"] * 2 * (6 - 1) * 60 * 70
    want = {"extended_emission_events": 1e6 * n_events / exposure, "primary_cosmic_rays": 1000.0 * total / exposure}
    for name in ("rate", "rateints"):
        with xr.open_zarr(out / f"{name}.zarr") as product:
            for attr, value in want.items():
                assert product.attrs[attr] == pytest.approx(value, rel=1e-12), attr
        header = fits.getheader(out / f"{name}.fits")
        assert header["EXTNCRS"] == pytest.approx(want["extended_emission_events"], rel=1e-12)
    with ImageModel(str(out / "rate.fits")) as model:
        assert model.meta.exposure.extended_emission_events == pytest.approx(want["extended_emission_events"],
                                                                               rel=1e-12)


def test_commands_on_the_in_process_cluster(tmp_path, capsys):
    """--cluster threads (one in-process worker of --workers x --threads threads): detector1's rate and resample's
    mosaic equal the library's on the threaded scheduler, and no worker process is started."""
    import dask
    import psutil

    import daskcal

    ramps = tmp_path / "ramps.zarr"
    assert main(["simulate", str(ramps), "--shape", "1", "6", "40", "36", "--chunks", "20", "16"]) == 0
    sim = tmp_path / "sim"
    assert main(["simulate-images", "-n", "3", "--shape", "64", "72", str(sim)]) == 0
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    out = tmp_path / "out"
    assert main(["detector1", str(ramps), str(out), "--cluster", "threads", "--workers", "2", "--no-progress"]) == 0
    mosaic = tmp_path / "m.zarr"
    assert main(["resample", str(sim / "asn.json"), "-o", str(mosaic), "--cluster", "threads", "--no-progress"]) == 0
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before
    capsys.readouterr()

    with dask.config.set(scheduler="threads"):
        want = daskcal.detector1(daskcal.open_ramps(ramps)).rate.compute()
        images = daskcal.open_images(sim / "asn.json")
        want_mosaic = daskcal.resample(images).compute()
    got = xr.open_zarr(out / "rate.zarr", consolidated=False).compute()
    for name in ("data", "dq", "err"):
        np.testing.assert_array_equal(got[name].values, want[name].values, err_msg=name)
    got_mosaic = xr.open_zarr(mosaic, consolidated=False).compute()
    for name in ("data", "wht", "con"):
        np.testing.assert_array_equal(got_mosaic[name].values, want_mosaic[name].values, err_msg=name)
