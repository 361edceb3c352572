"""Every graph on the synchronous, threaded and distributed schedulers, over chunk grids
1x1, 2x1, 1x2 and ragged 3x3, against the same function on one chunk, synchronously."""

import numpy as np
import pytest

import daskcal


@pytest.mark.parametrize("chunks", [(64, 32), (32, 64)])
def test_detector1_on_threads_with_one_chunk_along_an_axis(chunks):
    """Dask's linear fusion on the threaded scheduler failed ("Cannot fuse tasks with multiple
    outputs") on the halo edges of in-memory ramps when an axis had one chunk."""
    ramps = daskcal.simulate((1, 4, 64, 64), seed=1).ramps
    got = daskcal.detector1(ramps, chunks=chunks).rate.compute(scheduler="threads")
    ref = daskcal.detector1(ramps, chunks=(64, 64)).rate.compute(scheduler="sync")
    for name in ref.data_vars:
        np.testing.assert_array_equal(got[name].values, ref[name].values)
