"""The tiles of a mosaic that an addition leaves as they are, carried into its staged successor.

``daskcal resample --add`` writes the grown mosaic as a new store beside the old one (the tiles
the added exposures reach, computed; the metadata, final) and gives it the old store's other
chunk files as hard links (:func:`carry_unchanged`): no data is copied or read, and the old store
is never written to. The new store then replaces the old one as any product is moved into place
(:meth:`daskcal.io._outputs.OutputSet.commit`), so a reader sees the old mosaic or the new one,
never a mixture, and an interrupted addition leaves the old one as it was.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import numpy as np

__all__ = ["carry_unchanged"]


def carry_unchanged(old: str | os.PathLike, new: str | os.PathLike, tiles) -> int:
    """Give the staged store ``new`` the chunk files of tiles ``tiles`` (``(iy, ix)``) of the store ``old``.

    Every array of ``new`` that ``old`` has too gets those chunk files as hard links (copies where the file
    system has none); a file ``new`` already has (a resumed addition) is left as it is. An array whose
    leading axes grew (``con``: one plane more per 32 inputs) has other chunks: its tiles are read from
    ``old``, padded with zeros and written whole. Any other file of ``old`` that ``new`` lacks (daskcal
    writes none; one a user put there) is carried too, so the store that replaces ``old`` holds everything
    it held. Returns the number of chunk files carried.
    """
    from daskcal.io._atomic import every_chunk

    with every_chunk():  # a plane of zeros is written too: a written tile's missing chunk reads as damage
        carried = _carry(Path(old), Path(new), sorted(tiles))
    for path in sorted(Path(old).rglob("*")):
        if path.is_file():
            _link(path, Path(new) / path.relative_to(old))
    return carried


def _carry(old: Path, new: Path, tiles: list) -> int:
    import zarr

    from daskcal.io._journal import chunk_files
    from daskcal.io._zarr_read import ZarrSource

    carried = 0
    for folder in sorted(p for p in new.iterdir() if (p / "zarr.json").is_file()):
        name = folder.name
        if not (old / name / "zarr.json").is_file():
            continue
        src = zarr.open_array(old / name, mode="r", zarr_format=3)
        dst = zarr.open_array(folder, mode="r+", zarr_format=3)
        chunk = dst.metadata.chunk_grid.chunk_shape
        same = src.shape == dst.shape and src.metadata.chunk_grid.chunk_shape == chunk
        lead = dst.shape[:-2]
        for iy, ix in tiles:
            y0, x0 = iy * chunk[-2], ix * chunk[-1]
            shape = (*lead, min(chunk[-2], dst.shape[-2] - y0), min(chunk[-1], dst.shape[-1] - x0))
            start = (*(0,) * len(lead), y0, x0)
            if same:
                for key in chunk_files(dst, start, shape):
                    carried += _link(old / name / key, folder / key)
                continue
            block = np.zeros(shape, dst.dtype)  # a grown leading axis: the stored planes, then zeros
            block[tuple(slice(0, n) for n in src.shape[:-2])] = ZarrSource.at(old, name).read(
                (*(slice(0, n) for n in src.shape[:-2]), slice(y0, y0 + shape[-2]), slice(x0, x0 + shape[-1])))
            dst[..., y0:y0 + shape[-2], x0:x0 + shape[-1]] = block
            carried += 1
    return carried


def _link(src: Path, dst: Path) -> int:
    """Hard-link ``src`` to ``dst`` (copy it where links are not possible); 0 if ``src`` is missing or ``dst``
    is there already."""
    if not src.is_file() or os.path.lexists(dst):
        return 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        tmp = dst.with_name(f".{dst.name}.copy")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return 1
