"""The command line never destroys what it did not write and never leaves a half-written product.

Signals and concurrent runs are tested on real ``daskcal`` processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import daskcal
from daskcal.cli import main
from daskcal.io._outputs import RESUME_PREFIX, STAGE_PREFIX

pytestmark = pytest.mark.filterwarnings(
    "ignore:Port .* is already in use:UserWarning",
    "ignore::ResourceWarning",
)


def _ramps(path, shape=(1, 5, 48, 40), seed=1, chunks=None):
    sim = daskcal.simulate(shape, seed=seed, chunks=chunks)
    return daskcal.save(sim.ramps, path)


def _stages(folder, prefix=STAGE_PREFIX):
    try:
        return [p for p in Path(folder).iterdir() if p.name.startswith(prefix)]
    except FileNotFoundError:
        return []


def _kept_for_resume(out: Path) -> None:
    """``out`` holds nothing but detector1's resume folder (the partial stores and the run's record)."""
    assert [p.name for p in out.iterdir()] == [f"{RESUME_PREFIX}detector1"]


def test_overwrite_keeps_the_folder_the_inputs_and_other_files(tmp_path, capsys):
    data = tmp_path / "mydata"
    data.mkdir()
    raw = _ramps(data / "raw_a.zarr")
    (data / "notes.txt").write_text("my notes")
    before = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*"))
    assert main(["detector1", str(raw), str(data), "--workers", "1", "--no-progress"]) == 0
    assert main(["detector1", str(raw), str(data), "--workers", "1", "--no-progress", "--overwrite"]) == 0
    assert (data / "notes.txt").read_text() == "my notes"
    assert sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*")) == before
    assert sorted(p.name for p in data.iterdir()) == ["notes.txt", "rate.zarr", "rateints.zarr", "raw_a.zarr"]
    want = daskcal.detector1(daskcal.open_ramps(raw)).rate.compute(scheduler="sync")
    with xr.open_zarr(data / "rate.zarr", consolidated=False) as got:
        np.testing.assert_array_equal(got["data"].values, want["data"].values)


def test_an_output_that_is_an_input_is_refused_before_running(tmp_path, capsys):
    sim = daskcal.simulate_images(n=2, shape=(32, 32), seed=3, n_stars=3)
    # outliers names its products after the exposures: here, the input stores themselves
    stores = [daskcal.save(ds, tmp_path / f"{ds.attrs.get('name', f'img{k}')}.zarr") for k, ds in enumerate(sim.images)]
    listing = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert main(["resample", str(stores[0]), str(stores[1]), "-o", str(stores[0]), "--overwrite"]) == 2
    err = capsys.readouterr()
    assert "is the input" in err.err and "dashboard" not in err.out
    assert main(["outliers", str(stores[0]), str(stores[1]), "-o", str(tmp_path), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    asn = tmp_path / "asn.json"  # a member of an association is an input too
    asn.write_text(json.dumps({"products": [{"members": [{"expname": s.name} for s in stores]}]}))
    listing = sorted([*listing, "asn.json"])
    assert main(["resample", str(asn), "-o", str(stores[1]), "--overwrite"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == listing


def test_a_failed_fits_export_leaves_no_product(tmp_path, monkeypatch, capsys):
    import errno

    import daskcal.io._ramps as ramps_io

    raw = _ramps(tmp_path / "raw.zarr")

    def full_disk(ds, path, **kw):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(ramps_io, "to_fits", full_disk)
    out = tmp_path / "out"
    assert main(["detector1", str(raw), str(out), "--workers", "1", "--no-progress", "--fits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0] and "rate.fits" in err[0]
    _kept_for_resume(out)  # no product; the stores, written, are kept for --resume


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, readonly: bool = False):
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    path.mkdir()
    opts = f"size={size}" + (",ro" if readonly else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_read_only_and_full_output_folders_are_one_line_errors(tmp_path, capsys):
    raw = _ramps(tmp_path / "raw.zarr")
    with _tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        assert main(["detector1", str(raw), str(ro / "out"), "--workers", "1", "--no-progress"]) == 2
        captured = capsys.readouterr()
        assert "dashboard" not in captured.out  # found before the cluster starts
        err = captured.err.strip().splitlines()
        assert len(err) == 1 and str(ro / "out") in err[0] and "Read-only file system" in err[0]
    with _tmpfs(tmp_path / "full", "24k") as full:
        assert main(["detector1", str(raw), str(full / "out"), "--workers", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "No space left on device" in err[-1] and str(full / "out") in err[-1]
        assert "Traceback" not in "\n".join(err)
        # the staging folder is gone; the stores' folder is kept for --resume if the run's record was written
        assert [p.name for p in full.rglob("*") if p.name.startswith(STAGE_PREFIX)] == []
        assert not (full / "out" / "rate.zarr").exists()


def _daskcal(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "daskcal.cli._main", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def _signal_when_writing(proc, out: Path, signum: int, timeout: float = 120.0) -> int:
    """Send ``signum`` once chunk files are being written under ``out``; return how many there were."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        n = sum(len(files) for s in _stages(out, RESUME_PREFIX) for root, _, files in os.walk(s) if "/c/" in root + "/")
        if n >= 2:
            proc.send_signal(signum)
            return n
        time.sleep(0.01)
    raise AssertionError(f"the run ended or wrote no chunk in time: {proc.communicate()}")


@pytest.fixture(scope="module")
def slow_ramps(tmp_path_factory):
    """Ramps in 64 small chunks for one worker thread: a couple of seconds of chunk writes."""
    return _ramps(tmp_path_factory.mktemp("slow") / "ramps.zarr", shape=(1, 10, 1024, 1024), chunks=(128, 128))


@pytest.mark.slow
def test_sigterm_is_handled_like_ctrl_c(slow_ramps, tmp_path):
    out = tmp_path / "out"
    proc = _daskcal("detector1", slow_ramps, out, "--workers", "1", "--no-progress")
    _signal_when_writing(proc, out, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    _kept_for_resume(out)  # the staging folder is gone; the partial stores are kept for --resume


@pytest.mark.slow
def test_sigkill_leaves_nothing_openable_and_the_next_run_cleans_up(slow_ramps, tmp_path):
    out = tmp_path / "out"
    proc = _daskcal("detector1", slow_ramps, out, "--workers", "1", "--no-progress")
    _signal_when_writing(proc, out, signal.SIGKILL)
    proc.communicate(timeout=60)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its orphaned workers
    (stage,) = _stages(out)
    (partial,) = _stages(out, RESUME_PREFIX)
    assert not (out / "rate.zarr").exists()
    stores = list(partial.glob("*.zarr"))
    assert len(stores) == 3  # rate, rateints and the plane of NaN samples
    for store in stores:
        with pytest.raises(FileNotFoundError):
            xr.open_zarr(store, consolidated=False)
    rerun = subprocess.run([sys.executable, "-m", "daskcal.cli._main", "detector1", str(slow_ramps), str(out),
                            "--workers", "1", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "left by a daskcal run that was killed" in rerun.stderr
    assert f"removing {partial}, the partial detector1 of a daskcal run that stopped" in rerun.stderr
    assert not stage.exists() and _stages(out) == [] and not partial.exists()
    with xr.open_zarr(out / "rate.zarr", consolidated=False) as rate:
        assert np.isfinite(rate["data"].values).mean() > 0.99


@pytest.mark.slow
def test_two_concurrent_writers_one_wins_and_the_other_fails(tmp_path):
    ins = []
    for seed in (1, 2):
        (tmp_path / f"in{seed}").mkdir()
        ins.append(_ramps(tmp_path / f"in{seed}" / "ramps.zarr", shape=(1, 5, 96, 80), seed=seed))
    out = tmp_path / "out"
    procs = [_daskcal("detector1", raw, out, "--workers", "1", "--no-progress") for raw in ins]
    results = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], results
    winner = codes.index(0)
    loser_err = results[1 - winner][1]
    assert any(why in loser_err for why in ("already exists", "appeared while this run was writing",
                                            "is being written by another daskcal run"))
    want = daskcal.detector1(daskcal.open_ramps(ins[winner])).rate.compute(scheduler="sync")
    with xr.open_zarr(out / "rate.zarr", consolidated=False) as got:
        np.testing.assert_array_equal(got["data"].values, want["data"].values)
    with xr.open_zarr(out / "rateints.zarr", consolidated=False) as got:  # both products from the same run
        assert np.array_equal(got["data"].values[0], want["data"].values, equal_nan=True)
    assert _stages(out) == []
