"""Rendering scenes of the shapes domain: filled, axis-aligned, antialiased by supersampling.

A scene is drawn on a grid of at least ``REFERENCE_GRID`` (1024) samples per side: a resolution R image averages
S x S binary samples per pixel with S = max(4, ceil(1024 / R)), i.e. it is the box-filter (PIL ``Image.BOX``)
downsample of a hard-edged 1024-sample render. Hence the 64 px image equals the 256 px image downsampled with
``Image.BOX`` up to uint8 rounding (both average the same 16 x 16 samples), which is what the base stage sees, while
a 64 px image costs only a 64 x 16 grid -- and only inside each object's bounding box is anything evaluated.

At 1024 px (stage III's ground truth) S = 4: a 4096-sample grid, so the 1024 px image box-filtered to 256 px equals
the 256 px render only up to antialiasing (16 x 16 samples per 256 px pixel against 4 x 4; edge pixels differ, by
at most 30 levels on 200 scenes, at most 0.8% of an image's pixels by more than 1). A full 1024 px render takes about
35 ms on one core; ``window`` renders only a rectangle of the canvas (the same samples, so the same pixels: a 256 px
window of a 1024 px scene in about 4 ms), which is how stage III's training crops are made.
"""
from __future__ import annotations

import math

import numpy as np

from .scenes import BACKGROUNDS, COLOURS, Scene, as_scene, resolved_background, resolved_layout

REFERENCE_GRID = 1024
MIN_SUPERSAMPLE = 4


def supersample_factor(resolution: int) -> int:
    """Samples per pixel side at `resolution`: enough for a 1024-sample grid, at least 4."""
    return max(MIN_SUPERSAMPLE, math.ceil(REFERENCE_GRID / resolution))


def shape_mask(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """Boolean [len(ys), len(xs)]: which sample points (canvas fractions) lie inside the shape whose bounding box is
    the square of side `side` centred at (cx, cy). Triangle: isosceles, apex up, base width = height = side."""
    dx, dy = xs[None, :] - cx, ys[:, None] - cy
    half = side / 2
    if shape == "circle":
        return dx * dx + dy * dy <= half * half
    if shape == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        depth = dy + half                      # distance below the apex; the half-width there is depth / 2
        return (depth >= 0) & (depth <= side) & (np.abs(dx) <= depth / 2)
    raise ValueError(f"unknown shape {shape!r}; expected circle, square or triangle")


def coverage(shape: str, cx: float, cy: float, side: float, resolution: int, supersample: int,
             window: tuple[int, int, int, int] | None = None) -> tuple[slice, slice, np.ndarray]:
    """The fraction of each pixel the shape covers, within the pixels its bounding box touches:
    (row slice, column slice, float32 coverage of that block). With `window` = (top, left, height, width) only the
    pixels inside that rectangle of the canvas are evaluated and the slices index the window."""
    r, s = resolution, supersample
    top, left, height, width = (0, 0, r, r) if window is None else window
    lo_x = max(left, math.floor((cx - side / 2) * r))
    hi_x = max(lo_x, min(left + width, math.ceil((cx + side / 2) * r)))
    lo_y = max(top, math.floor((cy - side / 2) * r))
    hi_y = max(lo_y, min(top + height, math.ceil((cy + side / 2) * r)))
    n = r * s
    xs = (np.arange(lo_x * s, hi_x * s, dtype=np.float32) + 0.5) / n
    ys = (np.arange(lo_y * s, hi_y * s, dtype=np.float32) + 0.5) / n
    mask = shape_mask(shape, xs, ys, cx, cy, side)
    block = mask.reshape(hi_y - lo_y, s, hi_x - lo_x, s).mean(axis=(1, 3), dtype=np.float32)
    return slice(lo_y - top, hi_y - top), slice(lo_x - left, hi_x - left), block


def render(scene: Scene | str, resolution: int = 256, supersample: int | None = None, *,
           window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The scene (or caption) as a uint8 [resolution, resolution, 3] RGB image; deterministic. `window` = (top,
    left, height, width) in pixels: only that rectangle, [height, width, 3], equal to the same slice of the whole
    render (the same samples) at the cost of the part of the objects inside it."""
    scene = as_scene(scene)
    if not isinstance(resolution, int) or resolution < 8:
        raise ValueError(f"resolution must be an integer >= 8 pixels, got {resolution!r}")
    s = supersample_factor(resolution) if supersample is None else int(supersample)
    if s < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    if window is not None:
        top, left, height, width = (int(v) for v in window)
        if height < 1 or width < 1 or top < 0 or left < 0 or top + height > resolution or left + width > resolution:
            raise ValueError(f"window (top, left, height, width) = {tuple(window)} must lie inside the "
                             f"{resolution} x {resolution} canvas and be at least 1 pixel")
        window = (top, left, height, width)
    height, width = (resolution, resolution) if window is None else window[2:]
    canvas = np.empty((height, width, 3), dtype=np.float32)
    canvas[:] = BACKGROUNDS[resolved_background(scene)]
    for obj, (cx, cy, side) in zip(scene.objects, resolved_layout(scene)):
        rows, cols, c = coverage(obj.shape, cx, cy, side, resolution, s, window)
        c = c[..., None]
        canvas[rows, cols] = canvas[rows, cols] * (1 - c) + np.asarray(COLOURS[obj.colour], np.float32) * c
    return np.rint(canvas).astype(np.uint8)


def downsample(image: np.ndarray, resolution: int) -> np.ndarray:
    """A uint8 HWC image resized to resolution x resolution with PIL's box filter (the antialiased area average
    that makes the base stage's 64 px images from 256 px ones)."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((resolution, resolution), Image.BOX))
