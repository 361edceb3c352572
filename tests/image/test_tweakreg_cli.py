"""``daskcal tweakreg`` and ``daskcal run tweakreg``: end to end on a 1-worker cluster, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import daskcal
from daskcal.cli._main import main

RECIPE = Path(__file__).resolve().parents[2] / "daskcal" / "graphs" / "tweakreg.toml"
DENSE = {"searchrad": 1.0, "tolerance": 0.2, "separation": 0.5}

pytestmark = pytest.mark.filterwarnings(
    "ignore:Port .* is already in use:UserWarning",
    "ignore::ResourceWarning",
    "ignore:unclosed:ResourceWarning",
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("in")
    sim = daskcal.simulate_images(2, (192, 192), seed=5, n_stars=60, dither=15.0,
                                  wcs_errors=[[0.0, 0.0, 0.0], [0.2, -0.15, 0.02]])
    return sim, [str(daskcal.save(ds, d / f"{ds.attrs['name']}.zarr")) for ds in sim.images]


def _sky(ds):
    y, x = np.mgrid[0:192:37, 0:192:41].astype(float)
    return np.array(daskcal.get_wcs(ds)(x, y))


def test_cli_end_to_end_equals_the_api(inputs, tmp_path, capsys):
    sim, paths = inputs
    out = tmp_path / "aligned"
    rc = main(["tweakreg", *paths, "-o", str(out), "--searchrad", "1.0", "--tolerance", "0.2", "--separation", "0.5",
               "--enforce-user-order", "--workers", "1", "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "group exp1: SUCCESS" in printed
    ref = daskcal.align(sim.images, enforce_user_order=True, **DENSE)
    got = daskcal.open_images([str(out / f"{ds.attrs['name']}.zarr") for ds in sim.images])
    for g, r in zip(got, ref.images):
        np.testing.assert_array_equal(_sky(g), _sky(r))
        assert g.attrs["tweakreg"] == r.attrs["tweakreg"]
        np.testing.assert_array_equal(g["data"].values, r["data"].values)


def test_recipe_run_and_catfile(inputs, tmp_path):
    from astropy.table import Table

    sim, paths = inputs
    recipe = tmp_path / "tweakreg.toml"
    text = RECIPE.read_text()
    for k, v in DENSE.items():
        text = text.replace(f"\n{k} = ", f"\n{k} = {v}  # was ")
    text = text.replace("\nenforce_user_order = false", "\nenforce_user_order = true")
    recipe.write_text(text)
    # user catalogs for both exposures: exact star positions
    lines = []
    for k, ds in enumerate(sim.images):
        x, y = sim.truth.wcs[k].invert(sim.truth.star_ra, sim.truth.star_dec)
        keep = (x > 0) & (x < 191) & (y > 0) & (y < 191)
        Table({"x": x[keep], "y": y[keep]}).write(tmp_path / f"c{k}.ecsv")
        lines.append(f"{ds.attrs['name']}.fits c{k}.ecsv")
    (tmp_path / "cats.txt").write_text("# exposure catalog\n" + "\n".join(lines) + "\n")
    out = tmp_path / "aligned"
    assert main(["tweakreg", *paths, "-o", str(out), "--recipe", str(recipe), "--catfile", str(tmp_path / "cats.txt"),
                 "--workers", "1", "--no-progress"]) == 0
    ds = daskcal.open_images([str(out / "sim001_cal.zarr")])[0]
    x, y = sim.truth.wcs[1].invert(sim.truth.star_ra, sim.truth.star_dec)
    keep = (x > 0) & (x < 191) & (y > 0) & (y < 191)
    ra, dec = daskcal.get_wcs(ds)(x[keep], y[keep])
    err = np.hypot((ra - sim.truth.star_ra[keep]) * np.cos(np.radians(dec)), dec - sim.truth.star_dec[keep])
    assert err.max() * 3.6e6 < 0.5
    assert ds.attrs["tweakreg"]["status"] == "SUCCESS"
    # daskcal run with the same recipe
    out2 = tmp_path / "run"
    assert main(["run", str(recipe), *paths, str(out2), "--workers", "1", "--no-progress"]) == 0
    assert json.loads(json.dumps(daskcal.open_images([str(out2 / "sim001_cal.zarr")])[0].attrs["tweakreg"]))


def test_association_members_tweakreg_catalog(inputs, tmp_path):
    import shutil

    from astropy.table import Table

    from daskcal.cli._tweakreg import asn_catalogs

    sim, paths = inputs
    members = []
    for k, (ds, path) in enumerate(zip(sim.images, paths)):
        shutil.copytree(path, tmp_path / Path(path).name)
        x, y = sim.truth.wcs[k].invert(sim.truth.star_ra, sim.truth.star_dec)
        keep = (x > 0) & (x < 191) & (y > 0) & (y < 191)
        Table({"xcentroid": x[keep], "ycentroid": y[keep]}).write(tmp_path / f"c{k}.ecsv")
        members.append({"expname": Path(path).name, "exptype": "science", "tweakreg_catalog": f"c{k}.ecsv"})
    asn = tmp_path / "asn.json"
    asn.write_text(json.dumps({"products": [{"name": "mosaic", "members": members}]}))
    assert asn_catalogs([str(asn)]) == {m["expname"]: str(tmp_path / m["tweakreg_catalog"]) for m in members}
    out = tmp_path / "aligned"
    assert main(["tweakreg", str(asn), "-o", str(out), "--enforce-user-order", "--searchrad", "1.0", "--tolerance",
                 "0.2", "--separation", "0.5", "--workers", "1", "--no-progress"]) == 0
    ds = daskcal.open_images([str(out / "sim001_cal.zarr")])[0]
    x, y = sim.truth.wcs[1].invert(sim.truth.star_ra, sim.truth.star_dec)
    keep = (x > 0) & (x < 191) & (y > 0) & (y < 191)
    assert ds.attrs["tweakreg"]["n_sources"] == keep.sum()  # the member's catalog, not found sources
    ra, dec = daskcal.get_wcs(ds)(x[keep], y[keep])
    err = np.hypot((ra - sim.truth.star_ra[keep]) * np.cos(np.radians(dec)), dec - sim.truth.star_dec[keep])
    assert err.max() * 3.6e6 < 0.5


def test_errors_are_one_line(inputs, tmp_path, capsys):
    _, paths = inputs
    bad = tmp_path / "ref.ecsv"
    bad.write_text("# %ECSV 1.0\n# ---\n# datatype:\n# - {name: x, datatype: float64}\nx\n1.0\n")
    for argv, pattern in [
        (["--abs-refcat", str(bad)], "has no RA and DEC columns"),
        (["--abs-refcat", "GAIADR3"], "is a web catalog"),
        (["--starfinder", "nope"], "starfinder must be one of"),
        (["--catfile", str(tmp_path / "none.txt")], "catfile .* does not exist"),
    ]:
        rc = main(["tweakreg", *paths, "-o", str(tmp_path / "o"), "--workers", "1", "--no-progress", *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 2, argv
        assert len(err.splitlines()) == 1 and __import__("re").search(pattern, err), err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").glob("*.zarr"))
