"""MedianComputer and the nanmedian kernel against np.nanmedian (and stcal)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from daskcal.image import _median as median_mod
from daskcal.image._median import MedianComputer
from daskcal.image._median_kernels import nanmedian_stack


def _ref(stack):
    # the median of (inf, -inf) is NaN, and numpy warns about it
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        return np.nanmedian(stack, axis=0)


def _stack(rng, n, ny, nx, dtype=np.float32, nan_frac=0.1):
    a = rng.normal(100, 10, size=(n, ny, nx)).astype(dtype)
    a[rng.random(a.shape) < nan_frac] = np.nan
    return a


@st.composite
def stacks(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, 13))
    ny = draw(st.integers(1, 9))
    nx = draw(st.integers(1, 9))
    # moderate magnitudes: numpy's odd-count median computes (x + x) / 2, which
    # overflows only within a factor 2 of the float maximum
    width = 32 if dtype == np.float32 else 64
    elements = st.one_of(
        st.floats(-1e6, 1e6, width=width),
        st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0]),
    )
    a = draw(hnp.arrays(dtype, (n, ny, nx), elements=elements))
    # NaN patterns: random (from elements), whole columns, whole frames
    if draw(st.booleans()):
        a[:, draw(st.integers(0, ny - 1)), :] = np.nan
    if n > 1 and draw(st.booleans()):
        a[draw(st.integers(0, n - 1))] = np.nan
    return a


@settings(max_examples=150, deadline=None)
@given(stacks())
def test_kernel_equals_nanmedian(a):
    expected = _ref(a)
    got = nanmedian_stack(a)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=120, deadline=None)
@given(a=stacks(), buffer_size=st.one_of(st.none(), st.integers(0, 4000)), in_memory=st.booleans(), data=st.data())
def test_median_computer_property(tmp_path_factory, a, buffer_size, in_memory, data):
    # frames may arrive in any order and fewer than full_shape[0] may be appended
    n_extra = data.draw(st.integers(0, 2))
    order = data.draw(st.permutations(range(a.shape[0])))
    full_shape = (a.shape[0] + n_extra, *a.shape[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # buffer-too-small log is not a warning
        mc = MedianComputer(full_shape, in_memory, buffer_size, dtype=a.dtype, tempdir=tmp_path_factory.getbasetemp())
    for i in order:
        mc.append(a[i], idx=i)
    got = mc.evaluate()
    np.testing.assert_array_equal(got, _ref(a))
    assert got.dtype == a.dtype


@pytest.mark.parametrize("nframes", [1, 2, 14, 40])
@pytest.mark.parametrize("buffer_size", [0, 1, 512, 7 * 33 * 4 * 3, 10**8])
def test_on_disk_every_buffer_and_frame_count(tmp_path, nframes, buffer_size):
    rng = np.random.default_rng(nframes)
    a = _stack(rng, nframes, 29, 33)
    mc = MedianComputer(a.shape, in_memory=False, buffer_size=buffer_size, tempdir=tmp_path)
    for f in a:
        mc.append(f)
    np.testing.assert_array_equal(mc.evaluate(), _ref(a))
    assert not any(tmp_path.iterdir()), "temporary files must be removed after evaluate"


@pytest.mark.parametrize(("nthreads", "rows"), [(1, 4), (2, 2), (3, 1)])
def test_buffer_bounds_section(tmp_path, nthreads, rows):
    # each thread holds one section and a working copy of at most its size
    mc = MedianComputer((20, 400, 300), in_memory=False, buffer_size=20 * 300 * 4 * 9, tempdir=tmp_path,
                        nthreads=nthreads)
    assert mc.layout.section_rows == rows
    assert mc.layout.nsections == 400 // rows
    assert mc.nthreads == nthreads
    mc.cleanup()
    # a buffer of 3 rows of all frames and copies runs one thread
    mc = MedianComputer((20, 400, 300), in_memory=False, buffer_size=20 * 300 * 4 * 3, tempdir=tmp_path, nthreads=4)
    assert (mc.nthreads, mc.layout.section_rows) == (1, 1)
    mc.cleanup()


def test_more_frames_than_sections_where_stcal_fails(tmp_path):
    """stcal 1.20 raises IndexError when frames outnumber file sections; we do not."""
    from stcal.outlier_detection.median import MedianComputer as StcalMC

    rng = np.random.default_rng(3)
    a = _stack(rng, 14, 40, 50)
    big = a.nbytes  # one section holds everything
    ref = StcalMC(a.shape, in_memory=False, buffer_size=big, tempdir=str(tmp_path))
    with pytest.raises(IndexError):
        for f in a:
            ref.append(f)
    ref._median_computer.cleanup()
    mc = MedianComputer(a.shape, in_memory=False, buffer_size=big, tempdir=tmp_path)
    for f in a:
        mc.append(f)
    np.testing.assert_array_equal(mc.evaluate(), _ref(a))


def test_matches_stcal_on_disk(tmp_path):
    from stcal.outlier_detection.median import MedianComputer as StcalMC

    rng = np.random.default_rng(4)
    a = _stack(rng, 6, 64, 48, nan_frac=0.3)
    ref = StcalMC(a.shape, in_memory=False, buffer_size=6 * 48 * 4 * 10, tempdir=str(tmp_path))
    mc = MedianComputer(a.shape, in_memory=False, buffer_size=6 * 48 * 4 * 10, tempdir=tmp_path)
    for f in a:
        ref.append(f)
        mc.append(f)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
        expected = ref.evaluate()
    np.testing.assert_array_equal(mc.evaluate(), expected)


def test_integer_dtype_and_cast(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 100, size=(5, 6, 7)).astype(np.int32)
    mc = MedianComputer(a.shape, in_memory=False, dtype="int32", tempdir=tmp_path)
    for f in a:
        mc.append(f)
    np.testing.assert_array_equal(mc.evaluate(), np.median(a, axis=0))
    mc = MedianComputer((2, 3, 3), in_memory=True, dtype="float32")
    with pytest.raises(TypeError, match="cannot be stored"):
        mc.append(np.ones((3, 3), dtype=complex), 0)


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="full_shape"):
        MedianComputer((4, 5), in_memory=True)
    with pytest.raises(ValueError, match="buffer_size"):
        MedianComputer((2, 4, 5), in_memory=False, buffer_size=-1, tempdir=tmp_path)
    mc = MedianComputer((2, 4, 5), in_memory=True)
    with pytest.raises(ValueError, match="idx must be given"):
        mc.append(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="shape"):
        mc.append(np.zeros((5, 4), np.float32), 0)
    with pytest.raises(IndexError):
        mc.append(np.zeros((4, 5), np.float32), 2)
    with pytest.raises(ValueError, match="no frames"):
        mc.evaluate()
    mc = MedianComputer((2, 4, 5), in_memory=False, tempdir=tmp_path)
    mc.append(np.zeros((4, 5), np.float32))
    mc.append(np.ones((4, 5), np.float32))
    with pytest.raises(IndexError, match="too many frames"):
        mc.append(np.ones((4, 5), np.float32))
    np.testing.assert_array_equal(mc.evaluate(), np.full((4, 5), 0.5, np.float32))
    with pytest.raises(RuntimeError, match="evaluated"):
        mc.evaluate()


def test_input_not_modified(tmp_path):
    rng = np.random.default_rng(6)
    a = _stack(rng, 5, 8, 9)
    before = a.copy()
    mc = MedianComputer(a.shape, in_memory=True)
    for i, f in enumerate(a):
        mc.append(f, i)
    mc.evaluate()
    nanmedian_stack(a)
    np.testing.assert_array_equal(a, before)


# -- the sorting network, tiles, sections and threads -------------------------------------




def _assert_identical(got, expected):
    """Same dtype, NaN at the same pixels and the same bits elsewhere."""
    assert got.dtype == expected.dtype
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    bits = np.dtype(f"u{got.dtype.itemsize}")
    np.testing.assert_array_equal(got[~nan].view(bits), expected[~nan].view(bits))


@pytest.mark.parametrize("n", range(1, 17))
def test_network_orders_the_lower_half_of_every_01_input(n):
    # 0-1 principle: a comparator network that orders positions 0..n//2 of every
    # 0/1 input does so for every input
    codes = np.arange(2**n, dtype=np.uint32)
    rows = [((codes >> k) & 1).astype(np.uint8) for k in range(n)]
    for i, j in median_mod._median_network(n):
        rows[i], rows[j] = np.minimum(rows[i], rows[j]), np.maximum(rows[i], rows[j])
    got = np.stack(rows[: n // 2 + 1])
    expected = np.sort(np.stack([(codes >> k) & 1 for k in range(n)]), axis=0)[: n // 2 + 1]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("n", [17, 20, 31, 33, 64, 100, 128])
def test_network_orders_the_lower_half_with_ties(n):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 6, size=(n, 3000))
    rows = list(x)
    for i, j in median_mod._median_network(n):
        rows[i], rows[j] = np.minimum(rows[i], rows[j]), np.maximum(rows[i], rows[j])
    np.testing.assert_array_equal(np.stack(rows[: n // 2 + 1]), np.sort(x, axis=0)[: n // 2 + 1])


def _hard_stack(n, ny, nx, dtype, seed):
    """Values with every count of NaN per pixel (even and odd m, m = 0), infinities and ties."""
    rng = np.random.default_rng(seed)
    a = rng.normal(100, 10, size=(n, ny, nx)).astype(dtype)
    a[:, ::7] = np.round(a[:, ::7])  # ties
    flat = a.reshape(n, -1)
    npix = flat.shape[1]
    nnan = rng.integers(0, n + 1, size=npix)  # 0..n NaN per pixel, so m = n..0
    order = rng.random((n, npix)).argsort(axis=0)
    flat[order < nnan] = np.nan
    flat[rng.integers(0, n), rng.random(npix) < 0.05] = np.inf
    flat[rng.integers(0, n), rng.random(npix) < 0.05] = -np.inf
    flat[:, 3] = np.nan  # an all-NaN pixel
    flat[:, 4] = np.nan
    flat[0, 4], flat[min(1, n - 1), 4] = np.inf, -np.inf  # median NaN from inf - inf when n > 1
    return a


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 13, 20])
@pytest.mark.parametrize("nthreads", [1, 3])
def test_identical_to_nanmedian_over_ragged_tiles_and_sections(tmp_path, monkeypatch, dtype, n, nthreads):
    # tiles of 1 to 3 KB working copies and sections of 5 rows end part-way: ragged at both levels
    monkeypatch.setattr(median_mod, "_TILE_MAX", 2000 + 100 * n)
    a = _hard_stack(n, 23, 37, dtype, seed=n)
    expected = _ref(a)
    row = n * 37 * np.dtype(dtype).itemsize
    mc = MedianComputer(a.shape, in_memory=False, buffer_size=2 * nthreads * 5 * row, dtype=dtype, tempdir=tmp_path,
                        nthreads=nthreads)
    assert (mc.layout.section_rows, mc.nthreads) == (5, nthreads)
    for f in a:
        mc.append(f)
    _assert_identical(mc.evaluate(), expected)
    mc = MedianComputer(a.shape, in_memory=True, dtype=dtype, nthreads=nthreads)
    for i, f in enumerate(a):
        mc.append(f, i)
    _assert_identical(mc.evaluate(), expected)


@pytest.mark.parametrize("in_memory", [True, False])
def test_frames_never_appended_and_cast_frames(tmp_path, in_memory):
    a = _hard_stack(9, 31, 17, np.float64, seed=9)
    used = [0, 2, 3, 7, 8]
    mc = MedianComputer((9, 31, 17), in_memory=in_memory, buffer_size=9 * 17 * 4 * 8, tempdir=tmp_path, nthreads=2)
    for i in used:
        mc.append(a[i], idx=i)  # float64 frames stored as float32
    _assert_identical(mc.evaluate(), _ref(a[used].astype(np.float32)))


@pytest.mark.parametrize("n", [47, 48, 49, 80, 150])
def test_more_frames_than_the_network_sorts_the_tile(tmp_path, n):
    assert median_mod._NETWORK_MAX_FRAMES == 48
    a = _hard_stack(n, 6, 11, np.float32, seed=n)
    mc = MedianComputer(a.shape, in_memory=False, tempdir=tmp_path, nthreads=2)
    for f in a:
        mc.append(f)
    _assert_identical(mc.evaluate(), _ref(a))


def test_evaluate_holds_at_most_the_buffer(tmp_path):
    import tracemalloc

    a = _stack(np.random.default_rng(8), 12, 300, 200)
    buffer_size = 1 << 20
    mc = MedianComputer(a.shape, in_memory=False, buffer_size=buffer_size, tempdir=tmp_path, nthreads=2)
    for f in a:
        mc.append(f)
    assert mc.nthreads == 2
    tracemalloc.start()
    try:
        out = mc.evaluate()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(out, _ref(a))
    assert peak <= buffer_size + out.nbytes + 64 * 1024, f"{peak} bytes traced"


def test_default_threads(tmp_path):
    import threading

    main = MedianComputer((3, 4, 5), in_memory=True)
    assert main.nthreads == len(os.sched_getaffinity(0))
    seen = []
    worker = threading.Thread(target=lambda: seen.append(MedianComputer((3, 4, 5), in_memory=True).nthreads))
    worker.start()
    worker.join()
    assert seen == [1]  # inside a worker thread (a Dask task) the median runs serially
    with pytest.raises(ValueError, match="nthreads"):
        MedianComputer((3, 4, 5), in_memory=True, nthreads=0)


def test_failed_reservation_removes_the_folder(tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    with pytest.raises(OSError, match="cannot reserve .* MB for the median's stack"):
        MedianComputer((4, 100, 100), in_memory=False, tempdir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("platform", ["unsupported", "missing"])
def test_reservation_falls_back_to_truncate(tmp_path, monkeypatch, platform):
    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    if platform == "missing":  # macOS has no posix_fallocate; some systems have no preadv
        monkeypatch.delattr(os, "posix_fallocate")
        monkeypatch.delattr(os, "preadv")
    else:
        monkeypatch.setattr(os, "posix_fallocate", unsupported)
    a = _stack(np.random.default_rng(2), 4, 10, 12)
    mc = MedianComputer(a.shape, in_memory=False, tempdir=tmp_path)
    assert os.path.getsize(mc._path) == a.nbytes
    for f in a:
        mc.append(f)
    np.testing.assert_array_equal(mc.evaluate(), _ref(a))


def test_failure_in_a_thread_propagates_and_removes_files(tmp_path, monkeypatch):
    a = _stack(np.random.default_rng(3), 5, 64, 32)
    mc = MedianComputer(a.shape, in_memory=False, buffer_size=5 * 32 * 4 * 8, tempdir=tmp_path, nthreads=2)
    for f in a:
        mc.append(f)
    calls = []

    def broken(stack, frames, out, scratch):
        calls.append(1)
        if len(calls) == 3:
            raise MemoryError("simulated")
        out[...] = 0

    monkeypatch.setattr(median_mod, "_median_block", broken)
    with pytest.raises(MemoryError, match="simulated"):
        mc.evaluate()
    assert not any(tmp_path.iterdir())
    assert len(calls) < mc.layout.nsections  # the other thread stopped early


def test_module_does_not_import_numba(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from daskcal.image._median import MedianComputer\n"
        f"mc = MedianComputer((3, 4, 5), in_memory=False, tempdir={str(tmp_path)!r})\n"
        "for k in range(3): mc.append(np.full((4, 5), k, np.float32))\n"
        "assert (mc.evaluate() == 1).all()\n"
        "assert 'numba' not in sys.modules, 'numba was imported'\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
