"""Inpainting with any stage, by RePaint-style resampling (Lugmayr et al. 2022) - no inpainting training needed.

"Since the forward process is defined by a Markov Chain of added Gaussian noise, we can sample the intermediate
image x_t at any point in time ... we can sample the known regions m (.) x_t at any time step t ... while the unknown
regions (1 - m) (.) x_t are sampled from the model ... x_{t-1} = m (.) x^known_{t-1} + (1 - m) (.) x^unknown_{t-1}"
(eq. 8-9; there m marks the known pixels, here ``mask`` marks the pixels to regenerate). "Resampling": after a step,
the merged sample is diffused back one step, x_t ~ N(sqrt(1 - beta_t) x_{t-1}, beta_t I), and the step is redone,
`resample` times in all (their r; jump length 1), so the generated region harmonises with the known one.

In VE sigma space (x = x0 + sigma eps) the known region at sigma is image + sigma eps, and diffusing back from
sigma_next to sigma adds noise of variance sigma^2 - sigma_next^2. The reverse step is RePaint's own, ancestral
DDPM (`samplers.ancestral_step` with eta = ``settings.eta``, default 1: DDPM's posterior variance; 0: DDIM), so
``settings.sampler`` is not used here; the grid, guidance, thresholding and seeds are as in `cascade`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch

from .cascade import (Callback, Cancel, Conditioning, SamplingSettings, check_batch, check_images, check_size,
                      prepare, stage_device, stage_inputs)
from .samplers import Cancelled, ancestral_step, make_generators, randn_like_items

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoints import Stage

__all__ = ["inpaint", "check_mask"]

MAX_RESAMPLE = 20


def check_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """A mask [B or 1, 1, H, W] (or [H, W], [B, H, W]) in 0..1 matching the image's size, as [B, 1, H, W] float."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"mask must be a tensor [B, 1, H, W] in 0..1, got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    batch, _, height, width = image.shape
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be [B, 1, H, W], got shape {tuple(mask.shape)}")
    if tuple(mask.shape[-2:]) != (height, width):
        raise ValueError(f"the mask is {mask.shape[-1]}x{mask.shape[-2]} but the image is {width}x{height}; give a "
                         f"mask of the image's size (paint it in LoadImage's mask editor on this image, or resize it "
                         f"with MaskToImage -> ImageScale -> ImageToMask)")
    if mask.shape[0] not in (1, batch):
        raise ValueError(f"the mask batch is {mask.shape[0]} for {batch} images; give one mask or one per image")
    mask = mask.float().clamp(0, 1).expand(batch, -1, -1, -1)
    if not bool((mask > 0).any()):
        raise ValueError("the mask is empty: nothing to regenerate. Paint the area to change (white = regenerate) "
                         "in LoadImage's mask editor, or connect another mask")
    return mask


def inpaint(stage: "Stage", cond: Conditioning, image: torch.Tensor, mask: torch.Tensor, *,
            settings: SamplingSettings = SamplingSettings(), resample: int = 4,
            lowres_image: Optional[torch.Tensor] = None, noise_level: int = 250, callback: Callback = None,
            cancel: Cancel = None) -> torch.Tensor:
    """Regenerate the masked pixels (mask 1) of ``image`` [B, 3, H, W] in -1..1 and keep the rest; RePaint with
    ``resample`` passes per step (1 = replacement only). SR stages also take ``lowres_image`` (default: the image
    downsampled). Costs steps * resample network evaluations. Returns [B, 3, H, W] in -1..1."""
    image = check_images(image, "the input image")
    batch, _, height, width = image.shape
    check_batch(batch)
    check_size(stage, width, height, "the input image")
    if isinstance(resample, bool) or int(resample) != resample or not 1 <= resample <= MAX_RESAMPLE:
        raise ValueError(f"resample must be an integer from 1 to {MAX_RESAMPLE} (RePaint's r), got {resample!r}")
    generators = make_generators(settings.seed, batch)
    device = stage_device(stage)
    mask = check_mask(mask, image).to(device)
    image = image.to(device).float()
    extra = stage_inputs(stage, image, lowres_image, noise_level, generators, device)
    run = prepare(stage, cond, settings, batch, extra, generators)
    sigmas = run.sigmas

    def noise() -> torch.Tensor:
        return randn_like_items(image.shape, generators, device=device)

    eta = 1.0 if settings.eta is None else settings.eta
    steps = sigmas.numel() - 1
    x = image + noise() * sigmas[0]
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        down, up = ancestral_step(s, s_next, eta)
        for u in range(resample):
            if cancel is not None and cancel():
                raise Cancelled(f"inpainting cancelled before step {i + 1} of {steps}")
            with torch.no_grad():
                x0 = run.denoiser(x, x.new_full((batch,), s), **run.args)
            x = x0 + (down / s) * (x - x0)
            if up > 0:
                x = x + noise() * up
            known = image + noise() * s_next if s_next > 0 else image
            x = mask * x + (1 - mask) * known
            if u < resample - 1 and s_next > 0:
                x = x + noise() * math.sqrt(s * s - s_next * s_next)
        if callback is not None:
            callback({"step": i, "total": steps, "x": x, "x0": mask * x0 + (1 - mask) * image, "sigma": s,
                      "sigma_next": s_next})
    return x
