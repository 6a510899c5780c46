"""Training batches from the procedural demo domain: the dataset is infinite and seeded, so "epochs" are seeds.

Step s on rank r reads dataset items s*B*W + r*B + i (B the per-process batch, W the world size); every random choice
of the step (crops, caption dropout, timesteps, noise) comes from `step_generator(seed, s, r)`. A run therefore
depends only on (config, step), which makes resuming exact and data-parallel ranks disjoint.

A stage trained from a crop cache (``config.crop_cache`` pairs, `comfyui_imagen.data.crops`; stage III) reads pair
(s*B*W + r*B + i) mod N of it instead: the crops were placed and rendered once, when the cache was written.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..images import upsample_lowres


@dataclass
class Batch:
    """images [B, 3, H, W] in -1..1 (the target); lowres [B, 3, H, W] (SR only: the low-resolution image already
    upsampled to the target's size, as the cascade feeds it); captions, one per image."""

    images: torch.Tensor
    captions: list[str]
    lowres: torch.Tensor | None = None


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The CPU generator for one (step, rank): a fixed function of the three numbers."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def to_tensor(images_uint8: list[np.ndarray]) -> torch.Tensor:
    """uint8 [H, W, 3] images -> float [B, 3, H, W] in -1..1."""
    x = torch.from_numpy(np.stack(images_uint8)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def crop_spec(stage_config, config):
    """The `CropSpec` of an SR stage trained from a crop cache (``config.crop_cache`` > 0), else None."""
    from ..data import CropSpec

    if not config.crop_cache:
        return None
    if stage_config.role != "sr" or not config.crop:
        raise ValueError(f"crop_cache={config.crop_cache} trains a super-resolution stage on cached crops: it needs "
                         f"an SR stage (this one is {stage_config.role!r}) and crop > 0 (got {config.crop})")
    return CropSpec(stage_config.resolution, stage_config.lowres_resolution, config.crop, config.crop_cache,
                    config.seed)


def draw_batch(stage_config, config, generator: torch.Generator, *, step: int, rank: int,
               world_size: int = 1, crops=None) -> Batch:
    """The batch of `step` on `rank` for a base stage (images at the stage's resolution) or an SR stage (targets at
    the stage's resolution, or `config.crop`-pixel random crops of them, with the matching upsampled low-res crop;
    with `crops`, the stage's `CropCache`, its pairs)."""
    from ..data import ShapesDataset

    first = (step * world_size + rank) * config.batch_size
    if crops is not None:
        return cached_crops(crops, range(first, first + config.batch_size))
    dataset = ShapesDataset(seed=config.seed, split="train")
    items = [dataset.item(first + i) for i in range(config.batch_size)]
    captions = [item.caption for item in items]
    if stage_config.role == "base":
        res = stage_config.resolution
        return Batch(to_tensor([item.image(res) for item in items]), captions)
    hi, lo = stage_config.resolution, stage_config.lowres_resolution
    target = to_tensor([item.image(hi) for item in items])
    lowres = upsample_lowres(to_tensor([item.image(lo) for item in items]), hi, hi)
    if config.crop and config.crop < hi:
        target, lowres = random_crops(target, lowres, config.crop, generator)
    return Batch(target, captions, lowres)


def random_crops(a: torch.Tensor, b: torch.Tensor, size: int, generator: torch.Generator):
    """The same random `size`-pixel square crop (per item) of two aligned batches."""
    h, w = a.shape[-2:]
    ys = torch.randint(0, h - size + 1, (a.shape[0],), generator=generator).tolist()
    xs = torch.randint(0, w - size + 1, (a.shape[0],), generator=generator).tolist()
    crop = lambda t: torch.stack([t[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(zip(ys, xs))])  # noqa
    return crop(a), crop(b)


def cached_crops(crops, indices) -> Batch:
    """The SR batch of pairs `indices` (modulo its size) of a `CropCache`: the high-res crops as targets, the
    low-res crops upsampled as the cascade upsamples the whole image (`upsample_lowres_crop`)."""
    pairs = [crops[i] for i in indices]
    spec = crops.spec
    lowres = upsample_lowres_crop(to_tensor([p.lowres for p in pairs]), [p.origin for p in pairs], spec.size,
                                  spec.lowres_resolution, spec.resolution)
    return Batch(to_tensor([p.image for p in pairs]), [p.caption for p in pairs], lowres)


def upsample_lowres_crop(lowres: torch.Tensor, origins, size: int, lowres_resolution: int,
                         resolution: int) -> torch.Tensor:
    """The `size`-pixel crops of `upsample_lowres` (bilinear, align_corners=True) of whole `lowres_resolution` px
    images to `resolution`, computed from their low-res crops alone: `lowres` [B, C, s + 2m, s + 2m] holds each crop
    with its `comfyui_imagen.data.crops.MARGIN` (m) border, `origins` the crops' (top, left) in low-res pixels, the
    output crop starting at origin * resolution / lowres_resolution. align_corners=True maps output pixel y to input
    (L - 1) / (H - 1) * y, which is not shift-invariant, hence the global coordinates; it lands at most one low-res
    pixel before the crop, inside the margin."""
    from ..data.crops import MARGIN

    k = resolution // lowres_resolution
    ratio = (lowres_resolution - 1) / (resolution - 1)
    last = lowres.shape[-1] - 1

    def taps(start: int):
        src = (start * k + torch.arange(size, dtype=torch.float64)) * ratio - (start - MARGIN)
        i0 = src.floor().long().clamp(0, last)
        w = (src - i0).clamp(0, 1).to(lowres.dtype)
        return i0, (i0 + 1).clamp(max=last), w

    out = []
    for image, (top, left) in zip(lowres, origins):
        y0, y1, wy = taps(top)
        x0, x1, wx = taps(left)
        rows = image[:, y0] * (1 - wy)[:, None] + image[:, y1] * wy[:, None]
        out.append(rows[:, :, x0] * (1 - wx) + rows[:, :, x1] * wx)
    return torch.stack(out)
