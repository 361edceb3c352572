"""Which chunks of a staged Zarr product are completely written (chunk-level ``--resume``).

When a write task of :mod:`daskcal.io._atomic` has written one ``(y, x)`` chunk of every array
it writes (a resample tile: ``data``, ``wht``, ``con``, ... at one place), it reads the chunk
files back and records their sizes and CRC-32 checksums in one small file of its own,
``<journal>/<grid>-<y0>-<x0>.json``, written under a temporary name and renamed into place. One
file per chunk: writers on several processes or hosts (a LocalCluster, dask-jobqueue workers)
never share a file, and a killed writer leaves either no record or a whole one.

A run that resumes the product (:meth:`ChunkJournal.verified`) reads every record and checks
each file it names against the disk: a chunk whose files all match is skipped; one with a
missing, shorter or changed file (a torn write, a damaged disk) is redone, with a warning that
names the file; a chunk without a record is computed as if new. Files are not ``fsync``-ed:
what a crash of the machine loses is found by the same check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ChunkJournal", "chunk_files", "grid_tag"]

log = logging.getLogger(__name__)


def grid_tag(names) -> str:
    """A short name for the set of arrays one write task writes (the records' file-name prefix)."""
    return hashlib.sha1(",".join(sorted(names)).encode()).hexdigest()[:10]


def chunk_files(array, start: tuple[int, ...], shape: tuple[int, ...]) -> list[str]:
    """The chunk keys (relative to the array's folder) of a block of ``shape`` at ``start`` of a
    ``zarr.Array`` with a regular chunk grid."""
    import itertools

    meta = array.metadata
    chunk = meta.chunk_grid.chunk_shape
    spans = [range(s // c, -(-(s + n) // c)) for s, n, c in zip(start, shape, chunk, strict=True)]
    return [meta.encode_chunk_key(coords) for coords in itertools.product(*spans)]


def _checksum(path: Path) -> list[int] | None:
    """``[size, crc32]`` of a file, or None if it is missing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    return [len(data), zlib.crc32(data)]


@dataclass(frozen=True)
class ChunkJournal:
    """The completion records of one staged Zarr store.

    Attributes
    ----------
    folder : str
        Where the records go (created by :meth:`start`).
    root : str
        The folder that holds the staged store(s); the records name files relative to it.
    run : str
        The record of the run, as JSON (:func:`daskcal.io._resume.run_record`), written by :meth:`start`
        as ``root/run.json`` (:data:`daskcal.io._outputs.RUN_FILE`) if it is not there: from then on the
        partial product can be resumed.
    """

    folder: str
    root: str
    run: str = ""

    def start(self) -> None:
        """Create the records' folder and write the run's record (the stores' metadata is written by then)."""
        from daskcal.io._outputs import RUN_FILE

        Path(self.folder).mkdir(exist_ok=True)
        run = Path(self.root) / RUN_FILE
        if self.run and not run.exists():
            tmp = run.with_name(f".{RUN_FILE}.{uuid.uuid4().hex[:8]}")
            tmp.write_text(self.run)
            os.replace(tmp, run)

    def record(self, tag: str, y0: int, x0: int, files: list[str]) -> None:
        """Record that the chunk files ``files`` (paths) of the chunk at ``(y0, x0)`` of the arrays ``tag``
        are written: their sizes and checksums as they are on disk now."""
        root = Path(self.root).resolve()
        entry = {"chunk": [int(y0), int(x0)],
                 "files": {Path(f).resolve().relative_to(root).as_posix(): _checksum(Path(f)) for f in files}}
        folder = Path(self.folder)
        if not folder.is_dir():  # never re-create the records of a run that was cancelled and removed
            msg = f"{folder}: the records of the product being written no longer exist (the run was cancelled?)"
            raise FileNotFoundError(msg)
        final = folder / f"{tag}-{int(y0)}-{int(x0)}.json"
        tmp = folder / f".{final.name}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(json.dumps(entry))
        os.replace(tmp, final)

    def verified(self) -> tuple[set, list[str]]:
        """``(done, redone)``: the ``(tag, y0, x0)`` chunks whose recorded files all match the disk, and the
        files of recorded chunks that do not (missing, torn or changed: those chunks are computed again)."""
        done, bad = set(), []
        folder = Path(self.folder)
        if not folder.is_dir():
            return done, bad
        root = Path(self.root)
        for entry in sorted(folder.glob("*.json")):
            tag = entry.stem.partition("-")[0]
            try:
                record = json.loads(entry.read_text())
                files = record["files"]
                y0, x0 = (int(v) for v in record["chunk"])
            except (OSError, ValueError, KeyError, TypeError):
                bad.append(str(entry))  # cannot happen (records are renamed into place whole); redo the chunk
                continue
            wrong = [f for f, want in files.items() if want is None or _checksum(root / f) != want]
            if wrong:
                bad += [str(root / f) for f in wrong]
                continue
            done.add((tag, y0, x0))
        return done, bad
