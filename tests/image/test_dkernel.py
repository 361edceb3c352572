"""The one-pass drizzle kernel against drizzle 2.2's C kernel (the oracle, called here)."""

from __future__ import annotations

import numpy as np
import pytest
from drizzle.resample import Drizzle

from daskcal.image import _dkernel
from daskcal.image._dkernel import _scan_outline, drizzle_window

RTOL = 1e-5  # drizzle keeps float32 running means and weights; we keep float64 sums


def drizzle_oracle(data, weight, pixmap, bounds, out_shape, *, kernel="square", pixfrac=1.0, dq=None,
                   psr=1.0):
    """drizzle 2.2's add_image as the resample engine calls it: (out_img, out_wht, ctx bool, out_dq)."""
    img = np.zeros(out_shape, np.float32)
    wht = np.zeros(out_shape, np.float32)
    d = Drizzle(kernel=kernel, fillval="0", out_img=img, out_wht=wht, out_shape=out_shape)
    xmin, xmax, ymin, ymax = bounds
    kw = {} if dq is None else {"dq": dq}
    d.add_image(data, exptime=1.0, pixmap=pixmap, weight_map=weight, wht_scale=1.0, pixfrac=pixfrac,
                in_units="cps", iscale=1.0, pixel_scale_ratio=psr, xmin=xmin, xmax=xmax, ymin=ymin,
                ymax=ymax, **kw)
    return d.out_img, d.out_wht, d.out_ctx[0] != 0, (d.out_dq if dq is not None else None)


def distorted_pixmap(shape, *, angle=20.0, scale=1.2, origin=(40.0, 35.0), poly=1.0):
    """Output (x, y) of the input pixel centres: rotation, scale and a smooth quadratic distortion."""
    ny, nx = shape
    y, x = np.indices(shape, dtype=np.float64)
    cx, cy = x - nx / 2, y - ny / 2
    t = np.radians(angle)
    u = scale * (np.cos(t) * cx - np.sin(t) * cy) + poly * (1.5e-3 * cx * cy + 4e-4 * cy**2)
    v = scale * (np.sin(t) * cx + np.cos(t) * cy) + poly * (8e-4 * cx**2 - 5e-4 * cx * cy)
    return np.dstack([u + origin[0], v + origin[1]])


def inputs(shape=(60, 70), seed=0):
    rng = np.random.default_rng(seed)
    data = (20.0 + rng.normal(size=shape)).astype(np.float32)  # positive: relative tolerances apply
    weight = rng.uniform(0.5, 2.0, size=shape).astype(np.float32)
    return data, weight


def assert_matches(res, img, wht, ctx=None, dq=None):
    """Weights to rtol 1e-5, data to rtol 1e-5 where wht > 1e-3 max, equal support, context and DQ."""
    atol = 1e-7 * float(wht.max(initial=0.0))  # float32 rounding of tiny corner drops
    assert np.count_nonzero(np.abs(res.wht - wht) > RTOL * np.abs(wht) + atol) == 0
    assert np.count_nonzero((res.wht != 0) != (wht != 0)) == 0
    strong = wht > 1e-3 * wht.max(initial=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = res.swd / res.wht
    bad = ~np.isclose(mean[strong], img[strong], rtol=RTOL, atol=0.0, equal_nan=True)
    assert np.count_nonzero(bad) == 0, f"{np.count_nonzero(bad)} of {strong.sum()} pixels differ"
    if ctx is not None:
        assert np.count_nonzero(res.ctx != ctx) == 0
    if dq is not None:
        assert np.count_nonzero(res.dq != dq) == 0


@pytest.mark.parametrize("kernel", ["square", "point"])
@pytest.mark.parametrize("pixfrac", [1.0, 0.8, 0.5, 0.1])
@pytest.mark.parametrize(("angle", "scale"), [(20.0, 1.2), (-63.0, 0.9), (135.0, 1.5)])
def test_distorted_whole_footprint(kernel, pixfrac, angle, scale):
    data, weight = inputs()
    pm = distorted_pixmap(data.shape, angle=angle, scale=scale, origin=(75.0, 70.0))
    out_shape = (150, 160)  # holds the whole footprint
    assert 2 < pm[..., 0].min() < pm[..., 0].max() < 158 and 2 < pm[..., 1].min() < pm[..., 1].max() < 148
    bounds = (0, 69, 0, 59)
    img, wht, ctx, _ = drizzle_oracle(data, weight, pm, bounds, out_shape, kernel=kernel, pixfrac=pixfrac)
    res = drizzle_window(data, weight, pm, bounds, out_shape, kernel=kernel, pixfrac=pixfrac)
    assert_matches(res, img, wht, ctx)
    assert wht.sum() > 1000  # the case is not empty


@pytest.mark.parametrize("pixfrac", [1.0, 0.6])
@pytest.mark.parametrize(("angle", "scale"), [(20.0, 10.0), (-63.0, 3.3), (90.0, 4.0), (0.0, 7.0), (135.0, 2.5)])
def test_drops_larger_than_output_pixels(pixfrac, angle, scale):
    """A finer output grid (pixel scale ratio 0.1-0.4): output pixels whole inside a drop take all of it
    (the kernel's shortcut) and equal drizzle's clipped areas; the footprint also crosses the window's edges."""
    data, weight = inputs((30, 26), seed=11)
    pm = distorted_pixmap(data.shape, angle=angle, scale=scale, origin=(0.45 * scale * 30, 0.55 * scale * 30))
    out_shape = (int(scale * 30), int(scale * 28))  # smaller than the footprint: drizzle clips it
    bounds = (0, 25, 0, 29)
    img, wht, ctx, _ = drizzle_oracle(data, weight, pm, bounds, out_shape, pixfrac=pixfrac)
    res = drizzle_window(data, weight, pm, bounds, out_shape, pixfrac=pixfrac)
    assert_matches(res, img, wht, ctx)
    assert np.count_nonzero(wht) > 0.25 * wht.size  # not empty (pixfrac 0.6 covers 36% of the footprint)


@pytest.mark.parametrize("kernel", ["square", "point"])
@pytest.mark.parametrize("scale", [1.2, 6.0])
@pytest.mark.parametrize("keep", [(0, 300, 0, 280), (40, 133, 17, 200), (0, 1, 0, 280), (150, 300, 279, 280),
                                  (10, 10, 0, 5)])
def test_keep_is_the_window_cut_to_the_box(kernel, scale, keep):
    """Sums over a box of the window equal the whole window's sums cut to it, bit for bit (the footprint
    is still clipped by the whole window, as drizzle clips it)."""
    data, weight = inputs((40, 36), seed=12)
    pm = distorted_pixmap(data.shape, angle=33.0, scale=scale, origin=(140.0, 150.0))
    planes = np.stack([weight, data, weight + 1.0]).astype(np.float32)
    dq = (np.arange(data.size, dtype=np.uint32) % 5).reshape(data.shape)
    kw = dict(kernel=kernel, sqrt_var=planes, dq=dq)
    full = drizzle_window(data, weight, pm, (0, 35, 0, 39), (300, 280), **kw)
    part = drizzle_window(data, weight, pm, (0, 35, 0, 39), (300, 280), keep=keep, **kw)
    cut = (slice(keep[0], keep[1]), slice(keep[2], keep[3]))
    for name in ("wht", "swd", "ctx", "dq"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[cut])
    np.testing.assert_array_equal(part.swv, full.swv[(slice(None), *cut)])
    assert full.wht.sum() > 100


def test_keep_outside_the_window_is_refused():
    data, weight = inputs()
    with pytest.raises(ValueError, match="keep must be a box"):
        drizzle_window(data, weight, distorted_pixmap(data.shape), (0, 69, 0, 59), (50, 50), keep=(0, 51, 0, 10))


def test_outputs_are_added_into():
    """Given zeroed outputs (views of a reused buffer), the sums land in them; other shapes are refused."""
    data, weight = inputs((40, 36), seed=13)
    pm = distorted_pixmap(data.shape, angle=33.0, scale=1.2, origin=(40.0, 40.0))
    full = drizzle_window(data, weight, pm, (0, 35, 0, 39), (90, 80), keep=(10, 60, 5, 70))
    mine = [np.zeros((50, 65)), np.zeros((50, 65)), np.zeros((0, 50, 65)), np.zeros((50, 65), bool),
            np.zeros((0, 0), np.uint32)]
    res = drizzle_window(data, weight, pm, (0, 35, 0, 39), (90, 80), keep=(10, 60, 5, 70), outputs=mine)
    assert res.wht is mine[0] and res.swd is mine[1] and res.ctx is mine[3]
    np.testing.assert_array_equal(res.wht, full.wht)
    np.testing.assert_array_equal(res.swd, full.swd)
    with pytest.raises(ValueError, match="outputs must be"):
        drizzle_window(data, weight, pm, (0, 35, 0, 39), (90, 80), outputs=mine)


def test_inside_overlap_needs_a_convex_quadrilateral():
    """The shortcut's test: +-1 by orientation for a convex quadrilateral, 0 (exact areas) otherwise."""
    square = ((0.0, 5.0, 5.0, 0.0), (5.0, 5.0, 0.0, 0.0))
    assert _dkernel._inside_overlap(*square) == _dkernel._box_overlap(2, 2, *square) == 1.0
    flipped = (square[0][::-1], square[1][::-1])
    assert _dkernel._inside_overlap(*flipped) == _dkernel._box_overlap(2, 2, *flipped) == -1.0
    dart = ((0.0, 2.5, 5.0, 2.5), (0.0, 5.0, 0.0, 1.5))  # one reflex vertex
    assert _dkernel._inside_overlap(*dart) == 0.0
    oa, ob, ka, kb = _dkernel._row_columns(*square, 2, -10, 10)
    assert (oa, ob, ka, kb) == (0, 5, 1, 4)  # pixels 0 and 5 straddle the edges x = 0 and 5


@pytest.mark.parametrize("kernel", ["square", "point"])
@pytest.mark.parametrize("pixfrac", [1.0, 0.8, 0.5, 0.1])
@pytest.mark.parametrize("bounds", [(0, 69, 0, 59), (3, 61, 5, 50), (10, 40, 0, 59), (0, 69, 17, 30)])
def test_partial_edges(kernel, pixfrac, bounds):
    """Footprint crossing all four window edges; bounds strict subsets of the input."""
    data, weight = inputs(seed=1)
    pm = distorted_pixmap(data.shape, angle=20.0, scale=1.2, origin=(30.0, 25.0))
    out_shape = (50, 61)
    img, wht, ctx, _ = drizzle_oracle(data, weight, pm, bounds, out_shape, kernel=kernel, pixfrac=pixfrac)
    res = drizzle_window(data, weight, pm, bounds, out_shape, kernel=kernel, pixfrac=pixfrac)
    assert_matches(res, img, wht, ctx)
    edges = [wht[0], wht[-1], wht[:, 0], wht[:, -1]]
    assert sum(bool((e > 0).any()) for e in edges) >= 2  # the footprint does cross the window's edges


@pytest.mark.parametrize(("xshift", "yshift"), [(0.3, -0.15), (-0.6, 0.3), (-0.9, 0.45), (0.5, -0.25),
                                                (-0.5, 0.25), (0.2, -2.96), (0.1, 0.03), (-0.2, 1.525)])
@pytest.mark.parametrize("kernel", ["square", "point"])
def test_grid_aligned_edges(xshift, yshift, kernel):
    """Corners exactly on output pixel edges and centres on half pixels (ties in context and rounding).

    drizzle scans only input pixels that lie whole inside the window (within
    0.03 px), so with xshift -0.6 the first output column gets 0.6 of a pixel's
    weight, not 1; yshift -2.96 and 1.525 put the window's bottom and top edge
    where that slack decides whether a row is scanned.
    """
    shape = (12, 14)
    data, weight = inputs(shape, seed=2)
    y, x = np.indices(shape, dtype=np.float64)
    pm = np.dstack([x + xshift, y + yshift])
    out_shape = (10, 11)
    img, wht, ctx, _ = drizzle_oracle(data, weight, pm, (0, 13, 0, 11), out_shape, kernel=kernel)
    res = drizzle_window(data, weight, pm, (0, 13, 0, 11), out_shape, kernel=kernel)
    assert_matches(res, img, wht, ctx)
    if kernel == "square" and xshift == -0.6:
        # input column 1 covers output x -0.1..0.9 (0.6 of column 0); column 0's 0.4 is not scanned.
        # input row j covers output y j-0.2..j+0.8: 0.7 of it on row j, 0.3 on row j+1
        expected = 0.6 * (0.7 * weight[3:6, 1] + 0.3 * weight[2:5, 1])
        np.testing.assert_allclose(res.wht[3:6, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("kernel", ["square", "point"])
def test_point_rounds_halves_away_from_zero(kernel):
    """Centres at exactly x.5 land on the pixel away from zero, as C's round does (not Python's)."""
    shape = (8, 9)
    data, weight = inputs(shape, seed=3)
    y, x = np.indices(shape, dtype=np.float64)
    pm = np.dstack([x + 2.5, y + 1.5])
    res = drizzle_window(data, weight, pm, (0, 8, 0, 7), (12, 14), kernel=kernel)
    img, wht, ctx, _ = drizzle_oracle(data, weight, pm, (0, 8, 0, 7), (12, 14), kernel=kernel)
    assert_matches(res, img, wht, ctx)
    if kernel == "point":
        assert res.wht[2, 3] == weight[0, 0] and res.wht[2, 2] == 0


@pytest.mark.parametrize("kernel", ["square", "point"])
@pytest.mark.parametrize("pixfrac", [1.0, 0.5])
@pytest.mark.parametrize("where", ["blob", "edge rows", "box corner", "inversion 5th", "inversion 2nd"])
def test_nan_pixmap(kernel, pixfrac, where):
    data, weight = inputs(seed=4)
    pm = distorted_pixmap(data.shape, angle=-30.0, scale=1.1, origin=(30.0, 28.0))
    if where == "blob":
        pm[20:26, 30:41] = np.nan
        pm[40, 7, 1] = np.nan  # one coordinate only
    elif where == "edge rows":  # drizzle shrinks the box to the rows and columns with finite values
        pm[:3] = np.nan
        pm[:, -2:] = np.nan
    elif where == "box corner":  # the box outline's corner cannot be mapped: the whole box is scanned
        pm[:2, :2] = np.nan
    elif where == "inversion 5th":  # the search for the clipped outline's 5th vertex meets NaN
        pm[50:58, 38:46] = np.nan
    else:  # ... and for its 2nd: drizzle scans a mix of inverted vertices and box corners
        pm[0:4, 15:22] = np.nan
    out_shape = (48, 52)
    bounds = (0, 69, 0, 59)
    img, wht, ctx, _ = drizzle_oracle(data, weight, pm, bounds, out_shape, kernel=kernel, pixfrac=pixfrac)
    res = drizzle_window(data, weight, pm, bounds, out_shape, kernel=kernel, pixfrac=pixfrac)
    assert_matches(res, img, wht, ctx)


def test_scan_outline_fallbacks():
    """The test above reaches each path of the scanned outline: clipped, the box, and a mix."""
    box = (0, 69, 0, 59)
    corners = [(-0.5, -0.5), (69.5, -0.5), (69.5, 59.5), (-0.5, 59.5)]
    pm = distorted_pixmap((60, 70), angle=-30.0, scale=1.1, origin=(30.0, 28.0))
    clipped = _scan_outline(pm, box, 48, 52)
    assert len(clipped) == 5  # the outline cut by the window's corner
    pm[:2, :2] = np.nan
    assert _scan_outline(pm, box, 48, 52) == corners
    pm = distorted_pixmap((60, 70), angle=-30.0, scale=1.1, origin=(30.0, 28.0))
    pm[0:4, 15:22] = np.nan
    assert _scan_outline(pm, box, 48, 52) == [clipped[0], *corners[1:]]
    pm = distorted_pixmap((60, 70), angle=-30.0, scale=1.1, origin=(30.0, 28.0))
    pm[50:58, 38:46] = np.nan
    assert _scan_outline(pm, box, 48, 52) == clipped[:4]


@pytest.mark.parametrize("kernel", ["square", "point"])
def test_zero_weights_and_nan_data(kernel):
    """Zero-weight pixels add nothing, even NaN ones; NaN data with weight poisons its drops as in drizzle."""
    data, weight = inputs(seed=5)
    weight[10:20, 10:30] = 0
    data[12:18, 12:28] = np.nan  # all under zero weight
    weight[40:45, 50:55] = 0
    data[30, 30] = np.nan  # with weight: NaN in both
    pm = distorted_pixmap(data.shape, angle=10.0, scale=1.3, origin=(45.0, 40.0))
    out_shape = (90, 95)
    img, wht, ctx, _ = drizzle_oracle(data, weight, pm, (0, 69, 0, 59), out_shape, kernel=kernel)
    res = drizzle_window(data, weight, pm, (0, 69, 0, 59), out_shape, kernel=kernel)
    assert_matches(res, img, wht, ctx)
    assert np.isnan(img).sum() == np.isnan(res.swd).sum() > 0
    assert (~ctx & (wht == 0)).sum() > 0 and not np.isnan(res.swd[wht == 0]).any()


@pytest.mark.parametrize("kernel", ["square", "point"])
@pytest.mark.parametrize("pixfrac", [1.0, 0.5])
def test_sqrt_var_planes_and_dq(kernel, pixfrac):
    """Each plane's weighted mean equals drizzling that plane alone; DQ equals drizzle's dq output."""
    data, weight = inputs(seed=6)
    rng = np.random.default_rng(7)
    planes = rng.uniform(0.1, 3.0, size=(3, *data.shape)).astype(np.float32)
    planes[1, 5, 5] = np.nan
    dq = (rng.integers(0, 4, size=data.shape) * rng.integers(0, 2, size=data.shape)).astype(np.uint32)
    dq[rng.random(data.shape) < 0.02] |= np.uint32(1 << 31)
    weight[rng.random(data.shape) < 0.1] = 0
    pm = distorted_pixmap(data.shape, angle=75.0, scale=1.0, origin=(30.0, 30.0))
    out_shape = (56, 58)
    bounds = (2, 66, 1, 57)
    img, wht, ctx, odq = drizzle_oracle(data, weight, pm, bounds, out_shape, kernel=kernel,
                                        pixfrac=pixfrac, dq=dq)
    res = drizzle_window(data, weight, pm, bounds, out_shape, kernel=kernel, pixfrac=pixfrac,
                         sqrt_var=planes, dq=dq)
    assert_matches(res, img, wht, ctx, odq)
    assert odq.any()
    for k in range(3):
        vimg, vwht, _, _ = drizzle_oracle(planes[k], weight, pm, bounds, out_shape, kernel=kernel,
                                          pixfrac=pixfrac)
        assert_matches(type(res)(res.wht, res.swv[k], None, None, None), vimg, vwht)


@pytest.mark.parametrize("kernel", ["square", "point"])
@pytest.mark.parametrize("psr", [0.5, 2.0])
def test_pixel_scale_ratio_does_not_enter(kernel, psr):
    """drizzle's square and point kernels ignore pixel_scale_ratio, so drizzle_window has no such argument."""
    data, weight = inputs(seed=8)
    pm = distorted_pixmap(data.shape, scale=psr, origin=(50.0, 50.0))
    out_shape = (100, 100)
    img, wht, ctx, _ = drizzle_oracle(data, weight, pm, (0, 69, 0, 59), out_shape, kernel=kernel, psr=psr)
    img1, wht1, _, _ = drizzle_oracle(data, weight, pm, (0, 69, 0, 59), out_shape, kernel=kernel)
    np.testing.assert_array_equal(img, img1)
    np.testing.assert_array_equal(wht, wht1)
    assert_matches(drizzle_window(data, weight, pm, (0, 69, 0, 59), out_shape, kernel=kernel), img, wht, ctx)


def test_footprint_outside_window_is_empty():
    data, weight = inputs(seed=9)
    pm = distorted_pixmap(data.shape, origin=(300.0, 40.0))
    res = drizzle_window(data, weight, pm, (0, 69, 0, 59), (50, 50), dq=np.ones(data.shape, np.uint32))
    _, wht, _, _ = drizzle_oracle(data, weight, pm, (0, 69, 0, 59), (50, 50))
    assert not wht.any() and not res.wht.any() and not res.swd.any() and not res.ctx.any() and not res.dq.any()


def test_all_nan_pixmap_is_empty():
    """drizzle refuses a pixel map without finite values; the window is simply empty here."""
    data, weight = inputs(seed=9)
    res = drizzle_window(data, weight, np.full((*data.shape, 2), np.nan), (0, 69, 0, 59), (20, 20))
    assert not res.wht.any() and res.swv is None and res.dq is None


def test_outputs_and_options():
    data, weight = inputs(seed=10)
    pm = distorted_pixmap(data.shape, origin=(50.0, 50.0))
    res = drizzle_window(data, weight, pm, (0, 69, 0, 59), (100, 100), want_ctx=False,
                         sqrt_var=np.ones((2, *data.shape), np.float32))
    assert res.ctx is None and res.dq is None and res.swv.shape == (2, 100, 100)
    assert res.wht.dtype == res.swd.dtype == res.swv.dtype == np.float64
    np.testing.assert_allclose(res.swv[0], res.wht)  # a plane of ones: its sum is the weight


def test_bad_arguments():
    data, weight = inputs(seed=11)
    pm = distorted_pixmap(data.shape)
    with pytest.raises(ValueError, match="kernel must be one of"):
        drizzle_window(data, weight, pm, (0, 69, 0, 59), (50, 50), kernel="turbo")
    with pytest.raises(ValueError, match="pixfrac must be positive"):
        drizzle_window(data, weight, pm, (0, 69, 0, 59), (50, 50), pixfrac=0.0)
    with pytest.raises(ValueError, match="weight must have shape"):
        drizzle_window(data, weight[1:], pm, (0, 69, 0, 59), (50, 50))
    with pytest.raises(ValueError, match="pixmap must have shape"):
        drizzle_window(data, weight, pm[..., :1], (0, 69, 0, 59), (50, 50))
    with pytest.raises(ValueError, match="sqrt_var must be"):
        drizzle_window(data, weight, pm, (0, 69, 0, 59), (50, 50), sqrt_var=np.ones((4, *data.shape)))


def test_tiny_pixfrac_is_the_point_kernel():
    """At pixfrac <= 0.001 drizzle resets the square kernel to point (with a warning), and so do we."""
    data, weight = inputs(seed=12)
    pm = distorted_pixmap(data.shape, origin=(50.0, 50.0))
    with pytest.warns(Warning, match="Kernel reset to 'point'"):
        img, wht, ctx, _ = drizzle_oracle(data, weight, pm, (0, 69, 0, 59), (100, 100), pixfrac=0.001)
    res = drizzle_window(data, weight, pm, (0, 69, 0, 59), (100, 100), pixfrac=0.001)
    assert_matches(res, img, wht, ctx)
    point = drizzle_window(data, weight, pm, (0, 69, 0, 59), (100, 100), kernel="point")
    np.testing.assert_array_equal(res.wht, point.wht)


@pytest.mark.parametrize("name", ["_drizzle_kernel", "_finite_box", "_row_limits"])
def test_compiled_loops_release_the_gil(name):
    """Every loop over pixels or rows is compiled nogil, so threads drizzle in parallel."""
    assert getattr(_dkernel, name).targetoptions["nogil"] is True
