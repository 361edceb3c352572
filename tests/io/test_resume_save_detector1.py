"""``daskcal.save(daskcal.detector1(ramps).rate, path, resume=True)``: a save of detector1's products
that fails after some chunks (a failing chunk task injected here) is continued by the next one, which
fits only the chunks not recorded as written and gives the store an uninterrupted save gives, bit
for bit; on the synchronous, threaded and distributed schedulers."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

import daskcal
from daskcal.detector import _fused
from daskcal.io._outputs import RUN_FILE, resume_folder

SHAPE = (2, 5, 64, 64)
CHUNKS = (16, 16)
NCHUNKS = 16
_BLOCK = _fused.detector1_block
_LOCK = threading.Lock()
_STATE = {"calls": 0, "fail_at": None}


def _block(*args, **kwargs):
    """``_fused.detector1_block`` counting its calls; the ``fail_at``-th call fails (module-level, so distributed
    pickles it by reference; the same function in every run, so the graphs keep their names)."""
    with _LOCK:
        _STATE["calls"] += 1
        n = _STATE["calls"]
    if n == _STATE["fail_at"]:
        msg = "injected failure"
        raise RuntimeError(msg)
    return _BLOCK(*args, **kwargs)


@pytest.fixture(scope="module")
def ramps_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ramps") / "in.zarr"
    return daskcal.save(daskcal.simulate(SHAPE, seed=3, chunks=CHUNKS).ramps, path)


def _rate(store: Path, monkeypatch, fail_at=None):
    _STATE.update(calls=0, fail_at=fail_at)
    monkeypatch.setattr(_fused, "detector1_block", _block)
    return daskcal.detector1(daskcal.open_ramps(store), chunks=CHUNKS).rate


def _files(store: Path) -> dict:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def whole(ramps_store, tmp_path_factory):
    path = tmp_path_factory.mktemp("whole") / "rate.zarr"
    with pytest.MonkeyPatch.context() as monkeypatch:
        daskcal.save(_rate(ramps_store, monkeypatch), path, resume=True)
    assert _STATE["calls"] == NCHUNKS
    return path


@pytest.mark.parametrize("fail_at", [2, 9])
def test_a_failed_save_of_rate_is_resumed_bit_identical(ramps_store, whole, scheduler, fail_at, tmp_path,
                                                       monkeypatch, request):
    from test_resume_save import _old_distributed  # tests/io on sys.path

    if request.node.callspec.params["scheduler"] == "distributed" and _old_distributed():
        pytest.skip("distributed < 2025 may hand an erred key back in the same client session (test_resume_save)")
    path = tmp_path / "rate.zarr"
    with scheduler():
        with pytest.raises(RuntimeError, match="injected failure"):
            daskcal.save(_rate(ramps_store, monkeypatch, fail_at), path, resume=True)
        folder = resume_folder(path)
        assert not path.exists() and (folder / RUN_FILE).is_file()
        kept = len(list((folder / "chunks").glob("*.json")))
        assert kept < NCHUNKS
        if request.node.callspec.params["scheduler"] == "sync":
            assert kept == fail_at - 1  # dask's order writes each chunk once its block is fitted
        daskcal.save(_rate(ramps_store, monkeypatch), path, resume=True)
    assert _STATE["calls"] == NCHUNKS - kept  # only the chunks not written before are fitted
    assert not folder.exists()
    assert _files(path) == _files(whole)


def test_a_save_with_other_parameters_is_refused(ramps_store, tmp_path, monkeypatch):
    import dask

    path = tmp_path / "rate.zarr"
    with pytest.raises(RuntimeError, match="injected failure"), dask.config.set(scheduler="sync"):
        daskcal.save(_rate(ramps_store, monkeypatch, 3), path, resume=True)
    rate = daskcal.detector1(daskcal.open_ramps(ramps_store), chunks=CHUNKS, rejection_threshold=5.0).rate
    with pytest.raises(ValueError, match=r"the partial rate.zarr in .* was made with data \(its graph\)="):
        daskcal.save(rate, path, resume=True)
