"""``--cluster slurm`` and deploy/ on a real single-node SLURM (tests/_localslurm.py).

The SLURM daemons run on this machine for the module's tests and are stopped by PID at the end.
The tests skip, with the reason, only where the SLURM packages are missing and cannot be
installed (not root, no apt-get, no package registry).

What is checked, through the command line as a user runs it:
- detector1 and resample with ``--cluster slurm`` give the same products as a LocalCluster
  run, and their tasks ran in SLURM jobs (each worker job logged its start under its job id);
- the shipped deploy/jobqueue.yaml fits a small node (its jobs start);
- ``sbatch deploy/slurm-image3.sh asn.json out/`` from an unrelated folder runs image3 inside
  an allocation;
- worker jobs that cannot start (asking for more cores than the node has) stop the command
  after ``--wait-workers`` with their queue state, ``PD (PartitionConfig)``, and are cancelled;
- ``scancel`` of the driver's job leaves no worker job behind;
- ``--adapt MIN MAX`` runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from _localslurm import LocalSlurm, SlurmUnavailable, install

import daskcal

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        install()
        s = LocalSlurm(tmp_path_factory.mktemp("slurm")).start()
    except SlurmUnavailable as exc:
        pytest.skip(f"no SLURM on this machine: {exc}")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def env(slurm, tmp_path):
    """The environment of a user who submits from here: the shipped configuration, on loopback (the only
    interface these machines open), worker logs in a folder of the test."""
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    return {**slurm.env, "DASK_CONFIG": str(DEPLOY), "DASK_JOBQUEUE__SLURM__INTERFACE": "lo",
            "DASK_JOBQUEUE__SLURM__LOG_DIRECTORY": str(logs), "DASK_JOBQUEUE__SLURM__WALLTIME": "00:10:00"}


def _daskcal(*argv, env, cwd, timeout=600):
    cmd = [sys.executable, "-m", "daskcal", *map(str, argv)]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def _worker_jobs(env) -> dict[str, str]:
    """Job id -> the worker's log, for every worker job that logged its start in the log directory."""
    jobs = {}
    for err in Path(env["DASK_JOBQUEUE__SLURM__LOG_DIRECTORY"]).glob("daskcal-worker-*.err"):
        text = err.read_text(errors="replace")
        if "Start worker at" in text:
            jobs[err.stem.rsplit("-", 1)[1]] = text
    return jobs


def _no_jobs_left(slurm, timeout=30.0) -> list[dict]:
    """Wait until SLURM has no pending or running job; what is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        left = [j for j in slurm.jobs() if j["state"] in {"PENDING", "RUNNING", "CONFIGURING"}]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.5)


def _assert_clean_run(done):
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert "CancelledError" not in done.stderr, done.stderr


@pytest.fixture(scope="module")
def ramps(tmp_path_factory):
    d = tmp_path_factory.mktemp("ramps")
    sim = daskcal.simulate((1, 6, 256, 192), seed=3, chunks=(128, 96))  # a 2x2 grid of chunks
    return daskcal.save(sim.ramps, d / "ramps.zarr")


def test_detector1_on_slurm_equals_local(slurm, env, ramps, tmp_path):
    done = _daskcal("detector1", ramps, "slurm-out", "--cluster", "slurm", "--workers", 2, "--no-progress",
                    env=env, cwd=tmp_path)
    _assert_clean_run(done)
    local = _daskcal("detector1", ramps, "local-out", "--workers", 2, "--no-progress", env=env, cwd=tmp_path)
    _assert_clean_run(local)
    for product in ("rate", "rateints"):
        with xr.open_zarr(tmp_path / "slurm-out" / f"{product}.zarr") as a, \
                xr.open_zarr(tmp_path / "local-out" / f"{product}.zarr") as b:
            assert set(a.data_vars) == set(b.data_vars) >= {"data", "err", "dq"}
            for name in a.data_vars:
                np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=f"{product}.{name}")
            assert np.isfinite(a["data"].values).mean() > 0.95
    jobs = _worker_jobs(env)
    assert len(jobs) == 2, f"expected 2 worker jobs to have started; logs of {sorted(jobs)}"
    assert all("SLURMCluster" in text for text in jobs.values())
    assert _no_jobs_left(slurm) == []


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three dithered 160x160 exposures as Zarr stores, and an association of them."""
    d = tmp_path_factory.mktemp("images")
    sim = daskcal.simulate_images(3, (160, 160), seed=4, n_stars=40, cosmic_rays=20)
    members = []
    for k, ds in enumerate(sim.images):
        daskcal.save(ds, d / f"img{k}.zarr")
        members.append({"expname": f"img{k}.zarr", "exptype": "science"})
    asn = d / "asn.json"
    asn.write_text(json.dumps({"asn_type": "image3", "products": [{"name": "field", "members": members}]}))
    return asn


def test_resample_on_slurm_equals_local(slurm, env, images, tmp_path):
    inputs = sorted(images.parent.glob("img*.zarr"))
    # the same memory per worker as the jobs' (deploy/jobqueue.yaml), so both plan the same tiles
    done = _daskcal("resample", *inputs, "-o", "slurm.zarr", "--cluster", "slurm", "--workers", 2,
                    "--no-progress", env=env, cwd=tmp_path)
    _assert_clean_run(done)
    local = _daskcal("resample", *inputs, "-o", "local.zarr", "--workers", 2, "--memory-limit", "4GiB",
                     "--no-progress", env=env, cwd=tmp_path)
    _assert_clean_run(local)
    with xr.open_zarr(tmp_path / "slurm.zarr") as a, xr.open_zarr(tmp_path / "local.zarr") as b:
        assert a["data"].shape == b["data"].shape
        for name in ("data", "wht", "con"):
            if name in a:
                np.testing.assert_array_equal(a[name].values, b[name].values, err_msg=name)
        assert np.isfinite(a["data"].values).mean() > 0.5
    assert len(_worker_jobs(env)) == 2
    assert _no_jobs_left(slurm) == []


def test_sbatch_image3_script_from_another_folder(slurm, env, images, tmp_path):
    """The batch script runs the driver in an allocation; its worker job shares the node (2 CPUs)."""
    env = {k: v for k, v in env.items() if k != "DASK_CONFIG"}  # the script finds deploy/ itself
    env["WORKERS"] = "1"
    submit = tmp_path / "elsewhere"
    submit.mkdir()
    done = slurm.run("sbatch", "--parsable", str(DEPLOY / "slurm-image3.sh"), os.path.relpath(images, submit), "out",
                     "--no-progress", "--steps.tweakreg.skip", env=env, cwd=submit)
    job_id = done.stdout.strip().split(";")[0]
    info = slurm.wait_job(job_id, timeout=600)
    log = (submit / f"daskcal-image3-{job_id}.log")
    text = log.read_text() if log.exists() else f"(no {log.name}; {sorted(p.name for p in submit.iterdir())})"
    assert info.get("JobState") == "COMPLETED", text
    assert (submit / "out" / "field_i2d.zarr").is_dir(), text
    assert "Traceback" not in text, text
    assert len(_worker_jobs(env)) == 1, text
    assert _no_jobs_left(slurm) == []


def test_workers_that_cannot_start_stop_the_command_with_the_queue_state(slurm, env, ramps, tmp_path):
    env = {**env, "DASK_JOBQUEUE__SLURM__CORES": "64"}  # more than the node has: pending forever
    t0 = time.monotonic()
    done = _daskcal("detector1", ramps, "out", "--cluster", "slurm", "--workers", 2, "--wait-workers", 5,
                    env=env, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("daskcal detector1: error: no Dask worker joined within 5 s"), done.stderr
    assert line.count("PD (PartitionConfig)") == 2, line
    assert "cancelled" in line
    assert time.monotonic() - t0 < 60
    assert _no_jobs_left(slurm, timeout=10) == []
    assert not (tmp_path / "out").exists()


def test_scancel_of_the_driver_cancels_its_workers(slurm, env, tmp_path):
    daskcal.save(daskcal.simulate((1, 10, 1024, 1024), seed=1).ramps, tmp_path / "big.zarr")
    env = {**env, "WORKERS": "1"}
    job_id = slurm.run("sbatch", "--parsable", str(DEPLOY / "slurm-detector1.sh"), "big.zarr", "out",
                       "--no-progress", env=env, cwd=tmp_path).stdout.strip().split(";")[0]
    deadline = time.monotonic() + 120
    while not any(j["name"] == "daskcal-worker" and j["state"] == "RUNNING" for j in slurm.jobs()):
        assert time.monotonic() < deadline, slurm.jobs()
        time.sleep(0.5)
    slurm.run("scancel", job_id)
    left = _no_jobs_left(slurm, timeout=30)
    assert left == [], left
    log = (tmp_path / f"daskcal-detector1-{job_id}.log").read_text()
    assert "stopped by SIGTERM" in log, log
    assert not (tmp_path / "out").exists()


def test_adaptive_scaling(slurm, env, ramps, tmp_path):
    done = _daskcal("detector1", ramps, "out", "--cluster", "slurm", "--adapt", 1, 2, "--no-progress",
                    env=env, cwd=tmp_path)
    _assert_clean_run(done)
    assert (tmp_path / "out" / "rate.zarr").is_dir()
    assert 1 <= len(_worker_jobs(env)) <= 2
    assert _no_jobs_left(slurm) == []
