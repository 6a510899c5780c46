"""Training batches from the procedural demo domain: the dataset is infinite and seeded, so "epochs" are seeds.

Step s on rank r reads dataset items s*B*W + r*B + i (B the per-process batch, W the world size); every random choice
of the step (crops, caption dropout, timesteps, noise) comes from `step_generator(seed, s, r)`. A run therefore
depends only on (config, step), which makes resuming exact and data-parallel ranks disjoint.
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


def draw_batch(stage_config, config, generator: torch.Generator, *, step: int, rank: int,
               world_size: int = 1) -> Batch:
    """The batch of `step` on `rank` for a base stage (images at the stage's resolution) or an SR stage (targets at
    the stage's resolution, or `config.crop`-pixel random crops of them, with the matching upsampled low-res crop)."""
    from ..data import ShapesDataset

    dataset = ShapesDataset(seed=config.seed, split="train")
    first = (step * world_size + rank) * config.batch_size
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
