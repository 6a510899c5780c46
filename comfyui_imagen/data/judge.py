"""The correctness judge of the shapes domain: does an image show what its caption states?

Implements demo-domain.md "What a correct image is", at any resolution (positions and sizes are canvas fractions):

- background: the per-channel median of the outer 2-pixel border, nearest (RGB distance) of white/gray/black;
- object pixels: pixels farther than 60 (RGB distance) from that measured border median;
- colour: the per-channel median of the object pixels, nearest of the six colours;
- shape: fill ratio = object pixels / area of their bounding box, nearest of circle pi/4, square 1, triangle 1/2;
- position: the centroid of the object pixels, nearest of the five positions;
- size: the larger bounding-box side (canvas fraction), nearest of 0.25 / 0.375 / 0.5;
- two objects: the canvas is split in halves along the relation's axis (left|right for "to the left of",
  top|bottom for "above"); each half is judged as above for its object, and "position" means that the half holds an
  object at all (at least MIN_OBJECT_FRACTION of the canvas), i.e. the relation.

What is judged: the domain defines an unstated background as white and an unstated position as the centre, so both
are always judged; size is judged only when the caption states it ("size (when stated)"). A prompt is correct when
every judged attribute is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenes import BACKGROUNDS, COLOURS, DEFAULT_SIZE, POSITIONS, SIZES, Scene, as_scene, resolved_background

OBJECT_DISTANCE = 60.0
BORDER = 2
FILL_RATIOS = {"circle": 0.785, "square": 1.0, "triangle": 0.5}
SIZE_NAMES = {"small": SIZES["small"], "medium": DEFAULT_SIZE, "large": SIZES["large"]}
# A region with fewer object pixels than this fraction of the canvas holds no object (a small triangle is 3.1%).
MIN_OBJECT_FRACTION = 0.005
ATTRIBUTES = ("background", "colour", "shape", "position", "size")


def nearest(table: dict[str, tuple[float, ...] | float], value) -> str:
    """The key of `table` whose value is nearest (Euclidean) to `value`; ties go to the first key."""
    v = np.asarray(value, dtype=np.float64)
    return min(table, key=lambda k: float(np.sum((np.asarray(table[k], dtype=np.float64) - v) ** 2)))


def border_median(image: np.ndarray, width: int = BORDER) -> np.ndarray:
    """Per-channel median of the outer `width`-pixel frame of an HWC image."""
    frame = np.concatenate([image[:width].reshape(-1, 3), image[-width:].reshape(-1, 3),
                            image[width:-width, :width].reshape(-1, 3), image[width:-width, -width:].reshape(-1, 3)])
    return np.median(frame.astype(np.float64), axis=0)


@dataclass(frozen=True)
class Measurement:
    """What the judge saw of one object: pixel count, median colour (and its nearest name), fill ratio (and nearest
    shape), centroid (x, y canvas fractions, and nearest position), larger bounding-box side (and nearest size)."""

    pixels: int
    rgb: tuple[float, float, float]
    colour: str
    fill_ratio: float
    shape: str
    centroid: tuple[float, float]
    position: str
    size: float
    size_name: str


@dataclass(frozen=True)
class ObjectVerdict:
    """Per-attribute results for one object; `size` is None when the caption does not state it; `measured` is None
    when no object was found (then every attribute is False)."""

    colour: bool
    shape: bool
    position: bool
    size: bool | None
    measured: Measurement | None


@dataclass(frozen=True)
class Verdict:
    scene: Scene
    background: bool
    measured_background: str
    objects: tuple[ObjectVerdict, ...]

    def _all(self, name: str) -> bool | None:
        values = [getattr(o, name) for o in self.objects if getattr(o, name) is not None]
        return all(values) if values else None

    @property
    def colour(self) -> bool:
        return self._all("colour")

    @property
    def shape(self) -> bool:
        return self._all("shape")

    @property
    def position(self) -> bool:
        return self._all("position")

    @property
    def size(self) -> bool | None:
        return self._all("size")

    def attributes(self) -> dict[str, bool]:
        """The judged attributes (size only when stated) and whether each is correct for every object."""
        return {k: getattr(self, k) for k in ATTRIBUTES if getattr(self, k) is not None}

    @property
    def correct(self) -> bool:
        return all(self.attributes().values())


def measure(image: np.ndarray, mask: np.ndarray, origin: tuple[int, int], canvas: tuple[int, int],
            min_pixels: int) -> Measurement | None:
    """Measure the object pixels `mask` of the region `image` whose top-left corner sits at `origin` (row, col) of a
    canvas of size `canvas` (height, width); None when fewer than `min_pixels` pixels are object pixels."""
    ys, xs = np.nonzero(mask)
    if len(ys) < max(1, min_pixels):
        return None
    (h, w), (oy, ox) = canvas, origin
    rgb = np.median(image[ys, xs].astype(np.float64), axis=0)
    bw, bh = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    fill = len(ys) / (bw * bh)
    centroid = ((ox + xs.mean() + 0.5) / w, (oy + ys.mean() + 0.5) / h)
    side = max(bw / w, bh / h)
    return Measurement(int(len(ys)), tuple(float(c) for c in rgb), nearest(COLOURS, rgb), float(fill),
                       nearest(FILL_RATIOS, fill), (float(centroid[0]), float(centroid[1])),
                       nearest(POSITIONS, centroid), float(side), nearest(SIZE_NAMES, side))


def _regions(scene: Scene, h: int, w: int) -> list[tuple[slice, slice]]:
    if scene.relation == "left of":
        return [(slice(0, h), slice(0, w // 2)), (slice(0, h), slice(w // 2, w))]
    if scene.relation == "above":
        return [(slice(0, h // 2), slice(0, w)), (slice(h // 2, h), slice(0, w))]
    return [(slice(0, h), slice(0, w))]


def _check_image(image) -> np.ndarray:
    if hasattr(image, "detach"):        # a torch tensor, without importing torch
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 2 * BORDER + 2:
        raise ValueError(f"judge expects a uint8 RGB image [H, W, 3] (H, W >= {2 * BORDER + 2}), got dtype "
                         f"{image.dtype} shape {image.shape}; convert with (x.clamp(-1, 1) + 1) * 127.5 -> uint8 and "
                         f"move channels last")
    return image


def judge(image, scene_or_caption: Scene | str) -> Verdict:
    """Judge a uint8 HWC RGB image (any size) against a Scene or a caption of the shapes grammar."""
    scene = as_scene(scene_or_caption)
    image = _check_image(image)
    h, w = image.shape[:2]
    bg = border_median(image)
    bg_name = nearest(BACKGROUNDS, bg)
    distance = np.sqrt(np.sum((image.astype(np.float32) - bg.astype(np.float32)) ** 2, axis=-1))
    is_object = distance > OBJECT_DISTANCE
    min_pixels = int(np.ceil(MIN_OBJECT_FRACTION * h * w))
    expected_positions = [None if scene.relation else (obj.position or "center") for obj in scene.objects]
    verdicts = []
    for obj, (rows, cols), position in zip(scene.objects, _regions(scene, h, w), expected_positions):
        m = measure(image[rows, cols], is_object[rows, cols], (rows.start, cols.start), (h, w), min_pixels)
        stated_size = obj.size is not None
        if m is None:
            verdicts.append(ObjectVerdict(False, False, False, False if stated_size else None, None))
            continue
        verdicts.append(ObjectVerdict(
            colour=m.colour == obj.colour,
            shape=m.shape == obj.shape,
            position=True if position is None else m.position == position,
            size=(m.size_name == obj.size) if stated_size else None,
            measured=m))
    return Verdict(scene, bg_name == resolved_background(scene), bg_name, tuple(verdicts))


__all__ = ["judge", "Verdict", "ObjectVerdict", "Measurement", "ATTRIBUTES", "nearest", "border_median"]
