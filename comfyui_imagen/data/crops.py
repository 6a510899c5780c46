"""Aligned crop pairs for super-resolution stages trained on crops (stage III: 256 -> 1024 px), and their cache.

A `CropPair` is a ``size``-pixel square of a scene rendered at ``resolution`` -- only that window is rendered
(`render.render` with ``window``), so a 1024 px crop costs its own part of the 4096-sample grid, not the whole
scene's -- and the same part of the canvas rendered at ``lowres_resolution``: ``size // scale`` pixels plus a
`MARGIN`-pixel border (edge pixels repeated where the canvas ends), with which the trainer upsamples the low-res crop
exactly as the cascade upsamples the whole image (`comfyui_imagen.train.batches.upsample_lowres_crop`). Crops start
on whole low-res pixels, so the two squares cover the same part of the canvas.

Where a crop sits (`crop_origin`): most of a 1024 px canvas is flat colour, which a stage keeps flat easily, while
its work is at the edges; so with probability `EDGE_FRACTION` a crop is centred on an edge pixel of the low-res render
(one that differs from a neighbour), otherwise its place is uniform.

Pair k of a `CropSpec` is item k of the training split of ``ShapesDataset(spec.seed)`` with its crop drawn from a
generator keyed by (seed, k): a fixed function of those numbers. `CropCache` writes the spec's ``count`` pairs once,
as .npy files in a folder named by the spec, and memory-maps them when opened again (a resumed run re-renders
nothing). Imports only numpy.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .dataset import ShapesDataset
from .render import render

MARGIN = 1           # low-res pixels around a crop: what bilinear upsampling (align_corners=True) reads past its edge
EDGE_FRACTION = 0.8  # crops centred on an edge of the low-res render; the rest uniform
FORMAT = 1           # of the cache folder (meta.json "format")
_CROP_STREAM = 7     # keys the crop generators apart from the dataset's scene generators


@dataclass(frozen=True)
class CropSpec:
    """``count`` pairs of ``size``-pixel crops at ``resolution`` with their low-res crops at ``lowres_resolution``,
    from the training scenes of dataset seed ``seed``."""

    resolution: int
    lowres_resolution: int
    size: int
    count: int
    seed: int = 0

    def __post_init__(self):
        if self.lowres_resolution < 1 or self.resolution % self.lowres_resolution:
            raise ValueError(f"crop pairs need a whole scale factor: {self.lowres_resolution} -> {self.resolution} px")
        if not 0 < self.size <= self.resolution or self.size % self.scale:
            raise ValueError(f"the crop size {self.size} must be a multiple of the scale factor {self.scale} and at "
                             f"most the resolution {self.resolution}")
        if self.count < 1 or self.seed < 0:
            raise ValueError(f"a crop cache holds count >= 1 pairs of a seed >= 0, got count={self.count}, "
                             f"seed={self.seed}")

    @property
    def scale(self) -> int:
        return self.resolution // self.lowres_resolution

    @property
    def lowres_size(self) -> int:
        return self.size // self.scale

    @property
    def folder_name(self) -> str:
        return (f"crops-{self.lowres_resolution}to{self.resolution}-{self.size}px-n{self.count}-seed{self.seed}")


@dataclass(frozen=True)
class CropPair:
    """``image`` uint8 [size, size, 3] at the high resolution; ``lowres`` uint8 [s + 2 MARGIN, s + 2 MARGIN, 3] at the
    low resolution (s = size // scale), the crop with its margin; ``origin`` (top, left) of the crop in low-res
    pixels (without the margin); ``caption`` the scene's."""

    image: np.ndarray
    lowres: np.ndarray
    origin: tuple[int, int]
    caption: str


def edge_pixels(image: np.ndarray) -> np.ndarray:
    """(row, col) [n, 2] of the pixels of a uint8 HWC image that differ from their right or lower neighbour."""
    edge = np.zeros(image.shape[:2], dtype=bool)
    edge[:, :-1] |= np.any(image[:, 1:] != image[:, :-1], axis=-1)
    edge[:-1] |= np.any(image[1:] != image[:-1], axis=-1)
    return np.argwhere(edge)


def crop_origin(lowres: np.ndarray, size: int, rng: np.random.Generator,
                edge_fraction: float = EDGE_FRACTION) -> tuple[int, int]:
    """(top, left) of a `size`-pixel crop of the low-res render `lowres`: centred on a random edge pixel with
    probability `edge_fraction` (clamped to the canvas), else uniform."""
    h, w = lowres.shape[:2]
    edges = edge_pixels(lowres)
    if len(edges) and rng.random() < edge_fraction:
        y, x = edges[int(rng.integers(len(edges)))]
        return (int(np.clip(y - size // 2, 0, h - size)), int(np.clip(x - size // 2, 0, w - size)))
    return int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))


def crop_pair(scene, origin: tuple[int, int], spec: CropSpec, lowres: np.ndarray | None = None) -> CropPair:
    """The pair of `spec`'s sizes whose low-res crop starts at `origin` (top, left, low-res pixels); `lowres`: the
    scene's low-res render, if already made."""
    top, left = origin
    lowres = render(scene, spec.lowres_resolution) if lowres is None else lowres
    s, k = spec.lowres_size, spec.scale
    padded = np.pad(lowres, ((MARGIN, MARGIN), (MARGIN, MARGIN), (0, 0)), mode="edge")
    small = padded[top:top + s + 2 * MARGIN, left:left + s + 2 * MARGIN]
    image = render(scene, spec.resolution, window=(top * k, left * k, spec.size, spec.size))
    return CropPair(image, np.ascontiguousarray(small), (int(top), int(left)), scene.caption)


def draw_crop_pair(spec: CropSpec, index: int) -> CropPair:
    """Pair `index` of `spec` (see the module docstring)."""
    dataset = ShapesDataset(seed=spec.seed, split="train")
    scene = dataset.scene(index)
    lowres = render(scene, spec.lowres_resolution)
    rng = np.random.default_rng([spec.seed, _CROP_STREAM, int(index)])
    return crop_pair(scene, crop_origin(lowres, spec.lowres_size, rng), spec, lowres)


class CropCache:
    """A spec's pairs on disk: ``images`` uint8 [N, size, size, 3], ``lowres`` uint8 [N, s + 2, s + 2, 3],
    ``origins`` int32 [N, 2] (memory-mapped .npy files) and ``captions``; `open` builds the folder the first time."""

    def __init__(self, folder: Path, spec: CropSpec):
        self.folder, self.spec = Path(folder), spec
        self.images = np.load(self.folder / "images.npy", mmap_mode="r")
        self.lowres = np.load(self.folder / "lowres.npy", mmap_mode="r")
        self.origins = np.load(self.folder / "origins.npy")
        self.captions: list[str] = json.loads((self.folder / "captions.json").read_text())

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> CropPair:
        index = int(index) % len(self)
        top, left = self.origins[index]
        return CropPair(np.asarray(self.images[index]), np.asarray(self.lowres[index]), (int(top), int(left)),
                        self.captions[index])

    @classmethod
    def open(cls, root: str | os.PathLike, spec: CropSpec, log: Callable[[str], None] | None = None) -> "CropCache":
        """The cache of `spec` under `root` (the folder ``root / spec.folder_name``), rendered first if it is not
        there. Building writes a temporary folder and renames it, so an interrupted build leaves nothing half-made
        and two processes building at once both end with the same files."""
        folder = Path(root) / spec.folder_name
        if not folder.exists():
            _build(folder, spec, log or (lambda line: None))
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
        if meta != _meta(spec):
            raise ValueError(f"the crop cache {folder} was written for {meta} rather than {_meta(spec)}; delete the "
                             f"folder and it is rendered again")
        return cls(folder, spec)


def _meta(spec: CropSpec) -> dict:
    return {"format": FORMAT, **asdict(spec), "margin": MARGIN, "edge_fraction": EDGE_FRACTION}


def _build(folder: Path, spec: CropSpec, log: Callable[[str], None]) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        n, side = spec.count, spec.lowres_size + 2 * MARGIN
        images = np.lib.format.open_memmap(tmp / "images.npy", "w+", np.uint8, (n, spec.size, spec.size, 3))
        lowres = np.lib.format.open_memmap(tmp / "lowres.npy", "w+", np.uint8, (n, side, side, 3))
        origins, captions = np.zeros((n, 2), np.int32), []
        log(f"rendering {n} crop pairs into {folder} ...")
        for k in range(n):
            pair = draw_crop_pair(spec, k)
            images[k], lowres[k], origins[k] = pair.image, pair.lowres, pair.origin
            captions.append(pair.caption)
        images.flush()
        lowres.flush()
        del images, lowres
        np.save(tmp / "origins.npy", origins)
        (tmp / "captions.json").write_text(json.dumps(captions))
        (tmp / "meta.json").write_text(json.dumps(_meta(spec)))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / "meta.json").is_file():  # not another process's finished build: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
