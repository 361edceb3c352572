"""``daskcal resample ... --resume``: a run killed (SIGKILL of the command and its workers, as a batch
system does at the walltime) is continued from the tiles it recorded as written; the mosaic is
bit-identical to an uninterrupted run's; a torn tile is redone; a run with other parameters or inputs
is refused naming the difference, before any cluster starts, and nothing is touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _resume_common import (  # tests/cli on sys.path
    CLUSTER_WARNINGS,
    chunk_records,
    kill_after_records,
    tree_bytes,
)

from daskcal.cli import main
from daskcal.io._outputs import RESUME_MARKER, RUN_FILE, resume_folder

pytestmark = pytest.mark.filterwarnings(*CLUSTER_WARNINGS)

RUN = ["--tile-shape", "64", "64", "--workers", "1", "--no-progress"]


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def _records(out: Path) -> list[Path]:
    return chunk_records(resume_folder(out))


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """Simulated exposures (their association) and the mosaic of an uninterrupted run."""
    root = tmp_path_factory.mktemp("resample")
    assert main(["simulate-images", "-n", "4", "--shape", "200", "200", str(root / "sim")]) == 0
    asn = root / "sim" / "asn.json"
    out = root / "whole.zarr"
    assert main(["resample", str(asn), "-o", str(out), *RUN]) == 0
    return asn, out


def _killed(asn: Path, out: Path, after: int) -> int:
    """``daskcal resample`` SIGKILLed once ``after`` tiles are recorded; how many were recorded then."""
    return kill_after_records(["resample", str(asn), "-o", str(out), *RUN], resume_folder(out), after)


def _written(store: Path) -> list:
    meta = json.loads((store / "data" / "zarr.json").read_text())
    return meta["attributes"]["daskcal:written"]


def _resumed(asn: Path, out: Path, reference: Path, kept: int, capsys, caplog, torn=None) -> None:
    capsys.readouterr()
    assert main(["resample", str(asn), "-o", str(out), "--resume", *RUN]) == 0
    printed = capsys.readouterr().out
    total = len(_written(reference))
    assert (f"resample: {kept} of {total} tiles were written by the earlier run and verified; "
            f"{total - kept} computed now") in printed
    if torn is not None:
        assert f"{torn} does not match the record of its chunk" in caplog.text
    assert not resume_folder(out).exists()
    assert tree_bytes(out) == tree_bytes(reference)


def _refused(asn: Path, out: Path, options, difference, capsys) -> None:
    folder = resume_folder(out)
    before = _snapshot(folder)
    capsys.readouterr()
    assert main(["resample", str(asn), "-o", str(out), "--resume", *RUN, *options]) == 2
    captured = capsys.readouterr()
    assert f"error: the partial {out.name} in {folder} {difference}; run without --resume" in captured.err
    assert "dashboard" not in captured.out  # refused before any cluster started
    assert _snapshot(folder) == before


DIFFERENCES = [
    (["--pixfrac", "0.5"], "was made with pixfrac=1.0; this run has 0.5"),
    (["--kernel", "point"], "was made with kernel='square'; this run has 'point'"),
    (["--tile-shape", "32", "32"], "was made with tile_shape=[64, 64]; this run has [32, 32]"),
]


def test_a_killed_run_is_resumed_bit_identical_redoing_a_torn_tile_and_refused_if_run_otherwise(whole, tmp_path,
                                                                                             capsys, caplog):
    asn, reference = whole
    out = tmp_path / "m.zarr"
    recorded = _killed(asn, out, 4)
    assert not out.exists()  # nothing that looks like a product
    folder = resume_folder(out)
    assert (folder / RUN_FILE).is_file() and (folder / RESUME_MARKER).is_file()
    for options, difference in DIFFERENCES:
        _refused(asn, out, options, difference, capsys)
    member = sorted(asn.parent.glob("*.zarr"))[1] / "zarr.json"
    st = member.stat()
    os.utime(member, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # as if rewritten
    try:
        assert main(["resample", str(asn), "-o", str(out), "--resume", *RUN]) == 2
        err = capsys.readouterr().err
        assert f"was made from its inputs as they were then ({member.parent.resolve()} changed since)" in err
    finally:
        os.utime(member, ns=(st.st_atime_ns, st.st_mtime_ns))
    entry = json.loads(_records(out)[0].read_text())
    torn = folder / min(f for f in entry["files"] if "/c/" in f)
    torn.write_bytes(torn.read_bytes()[:-5])  # a write cut short, or damaged since
    _resumed(asn, out, reference, recorded - 1, capsys, caplog, torn=torn)


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["resample", "a.zarr", "-o", str(tmp_path / "m.zarr"), "--resume", "--overwrite"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_a_resume_repeats_the_recorded_input_checks_without_reading_the_inputs_again(tmp_path, capsys, caplog,
                                                                                       monkeypatch):
    """The interrupted run recorded its input checks' warnings (reading every input's DQ and variance, 1-1.5 CPU s
    of ~18 for 16 x 2048^2); the resume logs them again instead of computing them."""
    import numpy as np
    import zarr

    from daskcal.cli._resample import CHECKS_FILE
    from daskcal.image import _checks

    assert main(["simulate-images", "-n", "4", "--shape", "200", "200", str(tmp_path / "sim")]) == 0
    asn = tmp_path / "sim" / "asn.json"
    var = zarr.open_array(sorted(asn.parent.glob("*.zarr"))[1] / "var_rnoise", mode="r+")
    values = var[:]
    values[:30, :30] = np.nan  # 900 pixels (one of them flagged) that get weight 0
    var[:] = values
    warning = "exposure 'sim001_cal': var_rnoise is NaN, infinite or 0 at 899 of its"
    out = tmp_path / "m.zarr"
    assert _killed(asn, out, 2) >= 2
    kept = json.loads((resume_folder(out) / CHECKS_FILE).read_text())
    assert len(kept["warnings"]) == 1 and kept["warnings"][0].startswith(warning)

    def not_again(*args, **kwargs):
        raise AssertionError("the resume read the inputs for their checks again")

    monkeypatch.setattr(_checks, "_counts", not_again)
    caplog.clear()
    assert main(["resample", str(asn), "-o", str(out), "--resume", *RUN]) == 0
    again = [r.getMessage() for r in caplog.records if r.name == _checks.INPUT_CHECKS_LOGGER]
    assert len(again) == 1 and again[0].startswith(warning) and again[0].endswith("(as the interrupted run found)")
    assert "tiles were written by the earlier run and verified" in capsys.readouterr().out
    monkeypatch.undo()
    caplog.clear()
    assert main(["resample", str(asn), "-o", str(tmp_path / "whole.zarr"), *RUN]) == 0  # checks made as before
    assert [r.getMessage() for r in caplog.records if r.name == _checks.INPUT_CHECKS_LOGGER] == kept["warnings"]
    assert tree_bytes(out) == tree_bytes(tmp_path / "whole.zarr")
