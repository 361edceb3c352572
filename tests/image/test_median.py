"""MedianComputer and the nanmedian kernel against np.nanmedian (and stcal)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

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
