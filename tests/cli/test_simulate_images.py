"""``daskcal simulate-images``: exposures and their association, written together or not at all."""

import json

import numpy as np
import pytest

import daskcal
from daskcal.cli import main


@pytest.mark.parametrize("fmt", ["zarr", "fits"])
def test_writes_exposures_and_an_association_open_images_reads(tmp_path, fmt, capsys):
    out = tmp_path / "sim"
    argv = ["simulate-images", str(out), "-n", "3", "--shape", "40", "48", "--seed", "4", "--cosmic-rays", "6"]
    assert main([*argv, "--format", fmt]) == 0
    expected = daskcal.simulate_images(3, (40, 48), seed=4, cosmic_rays=6).images
    names = [f"sim{k:03d}_cal.{fmt}" for k in range(3)]
    assert sorted(p.name for p in out.iterdir()) == sorted([*names, "asn.json"])  # no staging folder left
    asn = daskcal.read_association(out / "asn.json")
    assert [m.path.name for m in asn.science] == names
    assert asn.product_name == "sim"
    got = daskcal.open_images(out / "asn.json")
    for ds, exp in zip(got, expected, strict=True):
        for var in ("data", "dq", "var_rnoise", "var_poisson", "var_flat"):
            np.testing.assert_array_equal(ds[var].values, exp[var].values)
        assert ds.attrs["group_id"] == exp.attrs["group_id"]
    assert "association: " in capsys.readouterr().out


def test_refuses_existing_outputs_without_overwrite(tmp_path, capsys):
    out = tmp_path / "sim"
    argv = ["simulate-images", str(out), "-n", "2", "--shape", "16", "16"]
    assert main(argv) == 0
    (out / "asn.json").write_text("mine")
    assert main([*argv, "--seed", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "asn.json").read_text() == "mine"
    assert main([*argv, "--seed", "1", "--overwrite"]) == 0
    assert json.loads((out / "asn.json").read_text())["products"][0]["name"] == "sim"


def test_a_failure_leaves_nothing(tmp_path, monkeypatch, capsys):
    from daskcal.image import _fits_write

    written = []
    real = _fits_write.write_cal_fits

    def fail_on_second(ds, path, **kw):
        if written:
            msg = "disk full (simulated)"
            raise OSError(msg)
        written.append(path)
        return real(ds, path, **kw)

    monkeypatch.setattr(_fits_write, "write_cal_fits", fail_on_second)
    out = tmp_path / "sim"
    assert main(["simulate-images", str(out), "-n", "3", "--shape", "16", "16", "--format", "fits"]) == 2
    assert written  # the first file was written, then removed with the others
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), [("-n", "0"), ("--cosmic-rays", "-1"), ("--shape", "4 4")])
def test_bad_values_are_one_line_errors(tmp_path, option, value, capsys):
    assert main(["simulate-images", str(tmp_path / "sim"), option, *value.split()]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daskcal simulate-images: error:") and err.count("\n") == 1
    assert not (tmp_path / "sim").exists()
