"""``daskcal detector1 ... --resume`` after a run SIGKILLed (with its workers, as a batch system does
at the walltime) in the middle of an exposure: the chunks recorded as written are kept, the others
computed, and the products are bit-identical to an uninterrupted run's; a torn chunk is redone; a
resume with other parameters or another input is refused naming the difference, before any cluster
starts, and nothing is touched."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from _resume_common import (  # tests/cli on sys.path
    CLUSTER_WARNINGS,
    chunk_records,
    kill_after_records,
    tree_bytes,
)

import daskcal
from daskcal.cli import main
from daskcal.io._outputs import RESUME_MARKER, RUN_FILE, resume_folder

pytestmark = pytest.mark.filterwarnings(*CLUSTER_WARNINGS)

#: One worker with one thread writes the chunks one after another, so the run can be killed halfway.
RUN = ["--workers", "1", "--threads", "1", "--no-progress", "--chunks", "16", "16"]
SHAPE = (2, 5, 128, 128)  # 64 chunks of 16x16
NCHUNKS = 64


#: Pixels given a NaN sample in the first store, one in each of the 64 chunks: a resumed run's warning counts them all,
#: those of the chunks it kept included.
NAN_PIXELS = [(y, x) for y in range(3, 128, 16) for x in range(5, 128, 16)]


def _save(path: Path, seed: int) -> Path:
    ramps = daskcal.simulate(SHAPE, seed=seed, chunks=(64, 64)).ramps
    if seed == 0:
        ramps = ramps.load()
        data = ramps["data"].values.copy()
        for y, x in NAN_PIXELS:
            data[1, 2, y, x] = np.nan
        ramps["data"] = (ramps["data"].dims, data)
    return daskcal.save(ramps, path)


def _folder(out: Path) -> Path:
    return resume_folder(out / "rate.zarr", "detector1")


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Three ramp stores."""
    root = tmp_path_factory.mktemp("d1kill")
    return [_save(root / f"{name}.zarr", seed) for seed, name in enumerate("abc")]


@pytest.fixture(scope="module")
def whole_a(stores, tmp_path_factory):
    """The products of an uninterrupted run of the first store (OUT)."""
    whole = tmp_path_factory.mktemp("d1whole") / "out"
    assert main(["detector1", str(stores[0]), str(whole), *RUN]) == 0
    return whole


@pytest.fixture(scope="module")
def whole_abc(stores, tmp_path_factory):
    """The products of an uninterrupted run of the three stores with --fits (OUT)."""
    whole = tmp_path_factory.mktemp("d1whole") / "out"
    assert main(["detector1", *map(str, stores), str(whole), "--fits", *RUN]) == 0
    return whole


def _resumed(args: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(["detector1", *args, "--resume", *RUN]) == 0
    return capsys.readouterr().out


def test_a_killed_run_is_resumed_bit_identical_redoing_a_torn_chunk_and_refused_if_run_otherwise(stores, whole_a,
                                                                                                tmp_path, capsys,
                                                                                                caplog):
    store, out = stores[0], tmp_path / "out"
    folder = _folder(out)
    recorded = kill_after_records(["detector1", str(store), str(out), *RUN], folder, 3)
    assert 3 <= recorded < NCHUNKS
    assert [p.name for p in out.iterdir() if not p.name.startswith(".daskcal-partial-")] == [folder.name]
    assert (folder / RUN_FILE).is_file() and (folder / RESUME_MARKER).is_file()

    before = _snapshot(folder)
    for options, difference in [
        (["--rejection-threshold", "5"], "were made with rejection_threshold=4.0; this run has 5.0"),
        (["--chunks", "32", "32"], "were made in chunks of [16, 16]; this run has [32, 32] (--chunks)"),
    ]:
        capsys.readouterr()
        assert main(["detector1", str(store), str(out), "--resume", *RUN, *options]) == 2
        captured = capsys.readouterr()
        assert f"error: the partial products in {folder} {difference}; run without --resume" in captured.err
        assert "dashboard" not in captured.out  # refused before any cluster started
    meta = store / "zarr.json"
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as if rewritten
    try:
        assert main(["detector1", str(store), str(out), "--resume", *RUN]) == 2
        captured = capsys.readouterr()
        assert f"were made from {store.resolve()} as it was then (its data changed since: zarr.json" in captured.err
        assert "dashboard" not in captured.out
    finally:
        os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert _snapshot(folder) == before  # nothing touched

    entry = json.loads(chunk_records(folder)[0].read_text())
    torn = folder / min(f for f in entry["files"] if f.startswith("rateints.zarr/data/"))
    torn.write_bytes(torn.read_bytes()[:-5])  # a write cut short, or damaged since
    kept = len(chunk_records(folder)) - 1
    with caplog.at_level(logging.WARNING, logger="daskcal"):
        printed = _resumed([str(store), str(out)], capsys)
    assert f"detector1 {store}: resuming the partial products in {folder}" in printed
    assert f"{store}: {len(NAN_PIXELS)} pixels have NaN or infinite samples" in caplog.text
    assert (f"detector1 {store}: {kept} of {NCHUNKS} chunks were written by the earlier run and verified; "
            f"{NCHUNKS - kept} computed now") in printed
    assert f"{torn} does not match the record of its chunk" in caplog.text
    assert not folder.exists()
    assert tree_bytes(out) == tree_bytes(whole_a)


@pytest.mark.slow
def test_a_run_killed_in_its_second_exposure_is_resumed_there(stores, whole_abc, tmp_path, capsys):
    """Also: while the second exposure's input differs from the one its partial products were made from, the
    resume is refused, naming the folder to remove to redo only that exposure."""
    out = tmp_path / "out"
    folder = _folder(out / "b")
    recorded = kill_after_records(["detector1", *map(str, stores), str(out), "--fits", *RUN], folder, NCHUNKS // 2)
    assert NCHUNKS // 2 <= recorded < NCHUNKS
    assert sorted(p.name for p in (out / "a").iterdir()) == ["rate.fits", "rate.zarr", "rateints.fits",
                                                             "rateints.zarr"]  # committed
    meta = stores[1] / "zarr.json"
    st = meta.stat()
    os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as if rewritten
    try:
        capsys.readouterr()
        assert main(["detector1", *map(str, stores), str(out), "--fits", "--resume", *RUN]) == 2
        err = capsys.readouterr().err
        assert "its data changed since: zarr.json rewritten); run without --resume" in err
        assert f"or remove {folder} to redo only this exposure" in err
    finally:
        os.utime(meta, ns=(st.st_atime_ns, st.st_mtime_ns))
    printed = _resumed([*map(str, stores), str(out), "--fits"], capsys)
    assert f"detector1 {stores[0]}: done by an earlier run, skipped" in printed
    assert f"detector1 {stores[1]}: {recorded} of {NCHUNKS} chunks were written by the earlier run" in printed
    assert f"detector1 {stores[2]}: " in printed
    assert tree_bytes(out) == tree_bytes(whole_abc)  # the FITS exports too
