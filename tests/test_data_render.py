"""Shapes renderer: geometry against closed-form areas and centroids, colours, antialiasing, 64 px = BOX(256 px)."""
import math

import numpy as np
import pytest

from comfyui_imagen.data import ShapesDataset, downsample, render
from comfyui_imagen.data.render import coverage, supersample_factor
from comfyui_imagen.data.scenes import BACKGROUNDS, COLOURS


@pytest.mark.parametrize("shape,area", [("circle", math.pi / 4), ("square", 1.0), ("triangle", 0.5)])
@pytest.mark.parametrize("cx,cy,side", [(0.5, 0.5, 0.375), (0.28, 0.72, 0.25), (0.72, 0.28, 0.5)])
def test_coverage_matches_closed_form_area_and_centroid(shape, area, cx, cy, side):
    res = 128
    rows, cols, c = coverage(shape, cx, cy, side, res, supersample_factor(res))
    assert 0.0 <= c.min() and c.max() == 1.0
    total = c.sum() / res**2
    assert total == pytest.approx(area * side**2, rel=1e-2)   # 1024-sample grid: edge error < 1%
    ys, xs = np.mgrid[rows, cols]
    centroid_x = ((xs + 0.5) * c).sum() / c.sum() / res
    centroid_y = ((ys + 0.5) * c).sum() / c.sum() / res
    # a triangle's centroid lies a third of the height above its base: side/6 below the box centre
    expected_y = cy + (side / 6 if shape == "triangle" else 0.0)
    assert centroid_x == pytest.approx(cx, abs=1e-3)
    assert centroid_y == pytest.approx(expected_y, abs=1e-3)


def test_pixels_have_exact_colours_inside_and_outside_and_blends_on_edges():
    img = render("a large red square in the top left on a gray background", 256)
    assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    assert tuple(img[70, 70]) == COLOURS["red"]                      # (0.28, 0.28) centre
    assert tuple(img[200, 200]) == BACKGROUNDS["gray"]
    # square spans 0.03..0.53 of 256 = 7.68..135.68 px: column 7 is 32% covered, column 8 fully; 4 samples per
    # pixel side at 256 px sit at 7.125, 7.375, 7.625, 7.875, so one of four columns of samples is inside
    assert tuple(img[70, 8]) == COLOURS["red"] and tuple(img[70, 6]) == BACKGROUNDS["gray"]
    edge = img[70, 7].astype(float)
    expected = np.array(BACKGROUNDS["gray"]) * 0.75 + np.array(COLOURS["red"]) * 0.25
    assert np.allclose(edge, expected, atol=1)


def test_triangle_points_up_and_unstated_caption_draws_defaults():
    img = render("a blue triangle", 256)
    blue = np.all(img == COLOURS["blue"], axis=-1)
    widths = blue.sum(axis=1)
    rows = np.nonzero(widths)[0]
    # apex up: full rows get wider going down; side 0.375 * 256 = 96 px, centred -> rows 80..175
    assert widths[rows[0]] < widths[rows[-1]] and np.all(np.diff(widths[rows]) >= 0)
    assert abs(rows[0] - 80) <= 2 and rows[-1] == 175 and widths[rows[-1]] >= 94
    assert tuple(img[2, 2]) == BACKGROUNDS["white"]


def test_two_objects_sit_at_the_relation_centres():
    img = render("a yellow circle above a purple square on a black background", 64)
    yellow = np.all(img == COLOURS["yellow"], axis=-1)
    purple = np.all(img == COLOURS["purple"], axis=-1)
    ys, xs = np.nonzero(yellow)
    assert (xs.mean() + 0.5) / 64 == pytest.approx(0.5, abs=0.01)
    assert (ys.mean() + 0.5) / 64 == pytest.approx(0.28, abs=0.01)
    ys, xs = np.nonzero(purple)
    assert (ys.mean() + 0.5) / 64 == pytest.approx(0.72, abs=0.01)
    assert purple.sum() == pytest.approx((0.3 * 64) ** 2, rel=0.15)   # interior pixels of a 19.2 px square


def test_64px_render_is_the_box_downsample_of_the_256px_render():
    ds = ShapesDataset(seed=2, split="all")
    for i in range(30):
        item = ds.item(i)
        small, big = item.image(64), item.image(256)
        diff = np.abs(small.astype(int) - downsample(big, 64).astype(int))
        assert diff.max() <= 1, item.caption


def test_render_is_deterministic_and_rejects_bad_input():
    a = render("a green circle to the left of a orange triangle", 96)
    assert a.shape == (96, 96, 3) and np.array_equal(a, render("a green circle to the left of a orange triangle", 96))
    with pytest.raises(ValueError, match="resolution"):
        render("a red circle", 4)
    with pytest.raises(ValueError, match="grammar"):
        render("a red blob", 64)
