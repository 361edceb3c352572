import dask
import dask.array as da
import numpy as np
import pytest

from daskcal.detector._halo import overlap_reading_twice


@pytest.mark.parametrize("shape,chunks,halo", [
    ((2, 3, 20, 30), (2, 3, 7, 11), 2),
    ((1, 1, 9, 9), (1, 1, 9, 9), 1),
    ((2, 2, 16, 5), (2, 2, 4, 5), 3),
    ((12, 14), (5, 7), 1),
    ((12, 14), (2, 7), 3),          # chunks thinner than the halo: dask's overlap
])
def test_equals_dask_overlap(shape, chunks, halo):
    a = da.from_array(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), chunks=chunks)
    depth = {a.ndim - 2: halo, a.ndim - 1: halo}
    ref = da.overlap.overlap(a, depth=depth, boundary="none")
    got = overlap_reading_twice(a, halo)
    assert got.chunks == ref.chunks
    np.testing.assert_array_equal(got.compute(), ref.compute())


def test_each_chunk_is_computed_once_and_edges_are_copies():
    """Arrays not read straight from Zarr give their edges from their own chunks."""
    reads = []

    def source(block, block_info=None):
        reads.append(block_info[0]["chunk-location"])
        return block + 0

    base = da.zeros((8, 8), chunks=(4, 4), dtype=np.float32).map_blocks(source, dtype=np.float32)
    out = overlap_reading_twice(base, 1)
    with dask.config.set(scheduler="synchronous"):
        blocks = [b for b in dask.compute(*out.to_delayed().ravel())]
    assert sorted(reads) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    np.testing.assert_array_equal(out.compute(), da.overlap.overlap(base, depth=1, boundary="none").compute())
    assert all(b.base is None or b.base.size == b.size for b in blocks)
