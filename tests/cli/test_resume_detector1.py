"""``daskcal detector1 a b c OUT --resume``: an exposure an earlier run completed alike is skipped, the
rest computed; a product made differently is refused naming the difference, and nothing is touched."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from _resume_common import CLUSTER_WARNINGS  # tests/cli on sys.path
from astropy.io import fits

import daskcal
from daskcal.cli import main
from daskcal.io._resume import FITS_KEY, RUN_ATTR

pytestmark = pytest.mark.filterwarnings(*CLUSTER_WARNINGS)

RUN = ["--workers", "1", "--no-progress"]


def _save(path: Path, seed: int, overwrite: bool = False) -> Path:
    sim = daskcal.simulate((1, 5, 64, 64), seed=seed, chunks=(32, 32))
    return daskcal.save(sim.ramps, path, overwrite=overwrite)


def _inputs(folder: Path, names: str = "abc") -> list[Path]:
    folder.mkdir()
    return [_save(folder / f"{name}.zarr", seed) for seed, name in enumerate(names)]


def _snapshot(folder: Path) -> dict:
    """Every path under ``folder`` with its modification time and size."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def _contents(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Two inputs and the products of a completed run with --fits: ``(inputs, OUT)``."""
    root = tmp_path_factory.mktemp("finished")
    stores = _inputs(root / "in", "ab")
    out = root / "out"
    assert main(["detector1", *map(str, stores), str(out), "--fits", *RUN]) == 0
    return stores, out


def test_resume_after_a_bad_input_does_only_the_rest(tmp_path, capsys):
    a, b, c = _inputs(tmp_path / "in")
    chunk = b / "data" / "c" / "0" / "0" / "1" / "1"  # the open-time checks pass; reading it fails
    good = chunk.read_bytes()
    chunk.write_bytes(good[:20])
    out = tmp_path / "out"
    assert main(["detector1", str(a), str(b), str(c), str(out), *RUN]) == 2
    err = capsys.readouterr().err
    assert "b.zarr" in err and "c/0/0/1/1" in err
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]  # a finished before b failed; c never started
    assert sorted(p.name for p in (out / "a").iterdir()) == ["rate.zarr", "rateints.zarr"]
    assert [p.name for p in (out / "b").iterdir()] == [".daskcal-resume-detector1"]  # b's partial products
    kept = len(list((out / "b" / ".daskcal-resume-detector1" / "chunks").glob("*.json")))
    assert kept < 4  # the chunk that failed, at least, was not written
    done = _snapshot(out / "a")

    chunk.write_bytes(good)  # the bad chunk restored (a file system back, a copy finished)
    assert main(["detector1", str(a), str(b), str(c), str(out), "--resume", *RUN]) == 0
    printed = capsys.readouterr().out
    assert f"detector1 {a}: done by an earlier run, skipped ({out / 'a'})" in printed
    assert f"detector1 {b}: resuming the partial products in {out / 'b' / '.daskcal-resume-detector1'}" in printed
    if kept:
        assert f"detector1 {b}: {kept} of 4 chunks were written by the earlier run and verified; " in printed
    assert f"detector1 {b}: " in printed and f"detector1 {c}: " in printed
    assert _snapshot(out / "a") == done  # not rewritten

    whole = tmp_path / "whole"  # an uninterrupted run of the same inputs
    assert main(["detector1", str(a), str(b), str(c), str(whole), *RUN]) == 0
    got, want = _contents(out), _contents(whole)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []  # bit-identical, records included


@pytest.mark.parametrize(("options", "difference"), [
    (["--rejection-threshold", "5"], "rate.zarr was made with rejection_threshold=4.0; this run has 5.0"),
    (["--flag-4-neighbors", "false"], "rate.zarr was made with flag_4_neighbors=True; this run has False"),
    (["--chunks", "16", "16"], "rate.zarr was made in chunks of [32, 32]; this run has [16, 16]"),
])
def test_resume_with_other_parameters_is_refused(finished, options, difference, capsys):
    stores, out = finished
    before = _snapshot(out)
    assert main(["detector1", *map(str, stores), str(out), "--fits", "--resume", *options, *RUN]) == 2
    captured = capsys.readouterr()
    assert f"error: {out / 'a'}/{difference}" in captured.err
    assert "--overwrite" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "dashboard" not in captured.out  # refused before any cluster started
    assert _snapshot(out) == before


def test_resume_after_an_input_changed_is_refused(tmp_path, capsys):
    (store,) = _inputs(tmp_path / "in", "a")
    out = tmp_path / "out"
    assert main(["detector1", str(store), str(out), *RUN]) == 0
    _save(store, 0, overwrite=True)  # rewritten (here with the same values: the fingerprint cannot tell)
    before = _snapshot(out)
    capsys.readouterr()
    assert main(["detector1", str(store), str(out), "--resume", *RUN]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'rate.zarr'} was made from {store.resolve()} as it was then (its data changed since" in err
    assert _snapshot(out) == before


@pytest.mark.parametrize("command", [["detector1"], ["run", "detector1"]])
def test_resume_and_overwrite_exclude_each_other(tmp_path, command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, str(tmp_path / "a.zarr"), str(tmp_path / "out"), "--resume", "--overwrite"])
    assert exc.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", [["detector1"], ["run", "detector1"]])
def test_resume_when_everything_is_done_computes_nothing(finished, command, capsys):
    stores, out = finished
    before = _snapshot(out)
    assert main([*command, *map(str, stores), str(out), "--fits", "--resume", *RUN]) == 0
    printed = capsys.readouterr().out
    for store, name in zip(stores, "ab", strict=True):
        assert f"detector1 {store}: done by an earlier run, skipped ({out / name})" in printed
    assert "dashboard" not in printed  # no cluster started
    assert _snapshot(out) == before


def test_products_record_the_run_in_zarr_and_fits(finished):
    stores, out = finished
    record = json.loads((out / "a" / "rate.zarr" / "zarr.json").read_text())["attributes"][RUN_ATTR]
    assert record["command"] == "detector1" and record["input"] == str(stores[0].resolve())
    assert record["parameters"]["rejection_threshold"] == 4.0 and record["chunks"] == [32, 32]
    assert set(record["input_fingerprint"]) >= {"zarr.json", "data", "groupdq", "pixeldq"}
    assert record["daskcal"] == daskcal.__version__
    assert json.loads(fits.getval(out / "a" / "rateints.fits", FITS_KEY, ext=0)) == record


def _strip_record(store: Path) -> None:
    meta = store / "zarr.json"
    text = json.loads(meta.read_text())
    del text["attributes"][RUN_ATTR]
    meta.write_text(json.dumps(text))


@pytest.mark.parametrize(("damage", "message"), [
    (lambda out: (out / "b" / "rateints.fits").unlink(),
     "b/rate.zarr, {out}/b/rateints.zarr, {out}/b/rate.fits exist but not {out}/b/rateints.fits"),
    (lambda out: _strip_record(out / "b" / "rate.zarr"), "b/rate.zarr has no record of the run that made it"),
    (lambda out: (out / "b" / "rate.zarr" / "zarr.json").rename(out / "b" / "rate.zarr" / "zarr.json.incomplete"),
     "b/rate.zarr is incomplete"),
])
def test_resume_refuses_products_it_cannot_vouch_for_and_keeps_them(finished, tmp_path, damage, message, capsys):
    stores, done = finished
    out = tmp_path / "out"
    shutil.copytree(done, out)
    damage(out)
    before = _snapshot(out)
    assert main(["detector1", *map(str, stores), str(out), "--fits", "--resume", *RUN]) == 2
    captured = capsys.readouterr()
    assert f"error: {out}/{message.format(out=out)}" in captured.err
    assert "pass --overwrite instead of --resume" in captured.err and "dashboard" not in captured.out
    assert _snapshot(out) == before


def test_a_run_stopped_after_recording_the_jump_rates_is_resumed(tmp_path, monkeypatch, capsys):
    """A run that recorded PRIMECRS and EXTNCRS in its staged stores and then failed (exporting FITS here) is
    resumed: those attributes, recorded after the chunks, are not a difference of the stores' metadata;
    nothing is computed again and the products equal an uninterrupted run's."""
    from _resume_common import tree_bytes

    from daskcal.cli import _detector1
    from daskcal.io._outputs import resume_folder

    (store,) = _inputs(tmp_path / "in", "a")
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert main(["detector1", str(store), str(whole), "--fits", *RUN]) == 0

    def failing_export(*args, **kwargs):
        msg = "injected failure"
        raise RuntimeError(msg)

    with monkeypatch.context() as patch:
        patch.setattr(_detector1, "_export_fits", failing_export)
        with pytest.raises(RuntimeError, match="injected failure"):
            main(["detector1", str(store), str(out), "--fits", *RUN])
    staged = json.loads((resume_folder(out / "rate.zarr", "detector1") / "rate.zarr" / "zarr.json").read_text())
    assert staged["attributes"]["primary_cosmic_rays"] > 0 and staged["attributes"]["extended_emission_events"] == 0
    capsys.readouterr()
    assert main(["detector1", str(store), str(out), "--fits", "--resume", *RUN]) == 0
    assert f"detector1 {store}: 4 of 4 chunks were written by the earlier run and verified; 0 computed now" in (
        capsys.readouterr().out)
    assert tree_bytes(out) == tree_bytes(whole)
