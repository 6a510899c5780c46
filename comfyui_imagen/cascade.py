"""Running one stage of the cascade: text-to-image, super-resolution, image-to-image (SDEdit), inpainting (RePaint).

Every run is the same three moves: check the inputs, prepare a start ``x`` and a sigma grid, call one sampler over
the stage's denoiser (`_sample`). The denoiser is the stage's (`Stage.denoiser`: its parameterization wrapper,
classifier-free guidance with cond and uncond in one batch, then dynamic or static thresholding); the grid is the
stage's (`Stage.sigmas`); SDEdit is `sdedit_start` (a tail of the grid, the image noised to its first sigma), used by
`image_to_image` and by `super_resolve` below strength 1. Settings that are not given come from
``stage.recommended`` (the stage file's, IF's published ones for IF, the library's defaults otherwise).

Every function takes a `Stage`, a `Conditioning` and returns images [B, 3, H, W] in -1..1 on the model's device.
Item k of a batch uses (seed + k) mod 2^64 for its starting noise, its noise augmentation and every stochastic step
(in that order; inpainting draws the augmentation before the start, as it always did), so it equals a batch of one
with that seed up to the network's own rounding, which differs slightly per batch size: on the demo stages at most
7e-5 with one thread, 1.7e-4 with two (an 8-bit pixel is 7.8e-3 on this scale, so a saved pixel differs by at most
1/255, where a value sits on a rounding boundary); an untrained random network can amplify it to ~1e-3.
A batch larger than the free memory allows runs in chunks of items with the same guarantee (`memory.plan_chunk`;
``free_memory`` replaces the free-memory query, e.g. with ComfyUI's); a size where one image cannot fit is a
`memory.MemoryLimitError` before anything runs. Inputs are checked first (`validation`: NaN / Inf, value ranges,
sizes, roles, T5 widths), and a NaN or Inf result is an error, never an image. ``callback(info)`` gets the samplers'
dict (``step``, ``total``, ``x``, ``x0``...) after each step; ``cancel()`` is checked before each step (return True,
or raise, to stop).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional

import torch

from .checks import all_finite, check_int
from .images import resize, upsample_lowres
from .memory import FreeMemory, plan_chunk
from .samplers import get_sampler, make_generators, randn_like_items, sampler_options
from .schedules import ContinuousSchedule, DiscreteSchedule
from .settings import IF_STAGE_I, IF_STAGE_II, Conditioning, SamplingSettings
from .validation import (MAX_BATCH, MAX_RESAMPLE, check_batch, check_conditioning, check_images, check_mask,
                         check_noise_level, check_role, check_size, check_strength, size_multiple)

if TYPE_CHECKING:  # pragma: no cover
    from .stage import Stage

__all__ = ["Conditioning", "SamplingSettings", "IF_STAGE_I", "IF_STAGE_II", "MAX_BATCH", "generate",
           "super_resolve", "image_to_image", "inpaint", "augment_lowres", "sdedit_start", "sigma_grid",
           "make_generators", "randn_like_items", "build_denoiser", "stage_schedule", "size_multiple"]

Callback = Optional[Callable[[dict], None]]
Cancel = Optional[Callable[[], bool]]


# ------------------------------------------------------------------------------------------------ the one path
def _text_batch(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise ValueError(f"the {name} embeddings have batch {tensor.shape[0]} but {batch} images are sampled; "
                     f"encode one prompt (batch 1) or exactly one per image")


def text_args(cond: Conditioning, batch: int, device: torch.device) -> dict:
    """The denoiser's ``cond`` / ``uncond`` kwargs: each branch's embeddings and mask at the run's batch size."""
    args = {}
    for key, embeds, name in (("cond", cond.positive, "prompt"), ("uncond", cond.negative, "negative prompt")):
        args[key] = {"text_embeds": _text_batch(embeds.embeds, batch, name).to(device),
                     "text_mask": _text_batch(embeds.mask, batch, name).to(device)}
    return args


def given_settings(stage: "Stage", settings: Optional[SamplingSettings]) -> SamplingSettings:
    """``settings``, checked, or the stage's recommended ones for None."""
    if settings is None:
        return stage.recommended.settings
    if not isinstance(settings, SamplingSettings):
        raise ValueError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
    return settings


def _sample(stage: "Stage", cond: Conditioning, settings: SamplingSettings, x: torch.Tensor, sigmas: torch.Tensor,
            generators, *, extra: Optional[dict] = None, sampler: Optional[str] = None, callback: Callback = None,
            cancel: Cancel = None, chunk: Optional[int] = None, **options) -> torch.Tensor:
    """One sampler call over the stage's denoiser, without autograd. ``extra`` (the SR conditioning) is shared by
    both guidance branches; ``options`` go to the sampler where it declares them (`sampler_options`).

    ``chunk`` (from `memory_plan`: the batch does not fit the free memory at once) runs the batch in chunks of
    items, each with its own items' generators, conditioning and options: the same images as one call up to the
    network's rounding; the callback then counts the steps of all chunks. NaN or Inf in the result is an error,
    never an image."""
    batch = x.shape[0]
    args = text_args(cond, batch, x.device)
    args["cond"].update(extra or {})
    name = sampler or settings.sampler
    chunk = chunk or batch
    denoiser, sigmas = stage.denoiser(settings), sigmas.to(x.device)
    options = sampler_options(name, eta=settings.eta, **options)
    outs = []
    for start in range(0, batch, chunk):
        part = slice(start, start + chunk)
        report = _chunk_callback(callback, start // chunk, -(-batch // chunk), sigmas.numel() - 1)
        with torch.no_grad():
            outs.append(get_sampler(name)(denoiser, x[part], sigmas, extra_args=_items(args, part, batch),
                                          callback=report, generator=generators[part], cancel=cancel,
                                          **_items(options, part, batch)))
    out = outs[0] if len(outs) == 1 else torch.cat(outs)
    last = float(sigmas[-1])
    if last > 0:  # a grid that stops at its schedule's smallest noise level (imagen-pytorch's t = 0): the DDPM
        out = out / math.sqrt(1 + last * last)  # sample x_t there, as continuous-time DDPM returns it
    if not all_finite(out):
        raise ValueError(f"sampling produced NaN or Inf values ({name}, {settings.spacing}): the stage's weights or "
                         f"the text embeddings overflowed in {next(stage.unet.parameters()).dtype}; load the stage "
                         f"in fp32 or bf16 (Imagen Model Loader's dtype), or try another sampler or schedule")
    return out


def memory_plan(stage: "Stage", settings: SamplingSettings, batch: int, height: int, width: int,
                 free_memory: Optional[FreeMemory]) -> int:
    """Images per sampler call that fit the free memory (`memory.plan_chunk`), asked before anything is allocated."""
    role = "super-resolution" if stage.config.role == "sr" else "base"
    return plan_chunk(stage, batch, height, width, guided=settings.cfg != 1.0, free_memory=free_memory,
                      what=f"sampling with this {role} stage")


def _items(value, part: slice, batch: int):
    """``value`` (a dict of per-item tensors, nested dicts, or anything else) with its batch-``batch`` tensors cut to
    the items ``part``."""
    if isinstance(value, dict):
        return {k: _items(v, part, batch) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.ndim and value.shape[0] == batch:
        return value[part]
    return value


def _chunk_callback(callback: Callback, index: int, chunks: int, steps: int) -> Callback:
    """The sampler callback of chunk ``index`` of ``chunks``: steps counted over all chunks."""
    if callback is None or chunks == 1:
        return callback
    return lambda info: callback({**info, "step": index * steps + info["step"], "total": chunks * steps})


def sigma_grid(stage: "Stage", settings: SamplingSettings) -> torch.Tensor:
    """The descending sigmas (ending in 0) the stage is sampled over (`Stage.sigmas`)."""
    return stage.sigmas(settings)


def build_denoiser(stage: "Stage", settings: SamplingSettings):
    """`Stage.denoiser` (kept under its earlier name)."""
    return stage.denoiser(settings)


def stage_schedule(stage: "Stage"):
    """`Stage.schedule` (kept under its earlier name)."""
    return stage.schedule


def sdedit_start(image: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                 strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SDEdit (Meng et al. 2022): "we first perturb the input with Gaussian noise and then progressively remove the
    noise by simulating the reverse SDE" (Section 3). The grid's tail, its last round(n * strength) steps (at least
    one) of n, and the image noised to that tail's first sigma. Strength 1 is the whole grid from pure noise (the
    image then only shifts the mean of a start whose std is sigma_max)."""
    n = sigmas.numel() - 1
    tail = sigmas[n - max(1, round(n * strength)):]
    return image + noise * tail[0], tail


# ------------------------------------------------------------------------------------------------ SR conditioning
def _noise_level_sigma(schedule, noise_level: float) -> float:
    """The VE sigma of the stage's schedule at an augmentation level on the 0..T-1 timestep scale."""
    if isinstance(schedule, DiscreteSchedule):
        return float(schedule.sigmas[int(round(noise_level))])
    if isinstance(schedule, ContinuousSchedule):
        return float(schedule.time_to_sigma(torch.tensor(noise_level / 1000.0, dtype=torch.float64)))
    raise ValueError(f"cannot noise-augment with schedule {schedule!r}")


def augment_lowres(stage: "Stage", lowres: torch.Tensor, height: int, width: int, noise_level: int,
                   generators) -> dict:
    """The SR stage's conditioning image: resize to the stage's input size (antialiased), upsample to the output
    size (bilinear, align_corners, as DeepFloyd IF's pipeline does), then noise-augment at ``noise_level`` with the
    stage's schedule: x_aug = sqrt(alpha_bar) x + sqrt(1 - alpha_bar) eps, IF's ``image_noising_scheduler.add_noise``.
    Imagen: "we corrupt the low-resolution image with a noise level aug_level ... and condition the diffusion model
    on aug_level" (Saharia et al. 2022, Section 2.5). Returns the U-Net kwargs ``lowres_image`` and ``noise_level``."""
    config = stage.config
    noise_level = check_noise_level(stage, noise_level)
    lr_h = height * config.lowres_resolution // config.resolution
    lr_w = width * config.lowres_resolution // config.resolution
    small = resize(lowres.float(), lr_h, lr_w).clamp(-1, 1)
    up = upsample_lowres(small, height, width, config.lowres_upsample)
    sigma = _noise_level_sigma(stage.lowres_schedule, noise_level)
    eps = randn_like_items(up.shape, generators, device=up.device)
    augmented = (up + sigma * eps) / math.sqrt(1 + sigma * sigma)
    # the network's level input: the number itself (IF), or the augmentation schedule's time for sigma
    level = (float(noise_level) if config.lowres_schedule is None
             else float(stage.lowres_schedule.sigma_to_t(torch.tensor(sigma, dtype=torch.float64))))
    return {"lowres_image": augmented, "noise_level": torch.full((up.shape[0],), level, device=up.device)}


def sr_conditioning(stage: "Stage", lowres: torch.Tensor, like: torch.Tensor, noise_level: Optional[int],
                     generators) -> dict:
    """`augment_lowres` of a checked low-resolution batch for a run at ``like``'s size (one image, or one per
    output), at ``noise_level`` (None: the stage's recommended level)."""
    batch, _, height, width = like.shape
    if lowres.shape[0] not in (1, batch):
        raise ValueError(f"the low-resolution batch has {lowres.shape[0]} images for {batch} outputs; "
                         f"give one image or one per output")
    level = stage.recommended.noise_level if noise_level is None else noise_level
    return augment_lowres(stage, lowres.expand(batch, -1, -1, -1).to(like.device), height, width, level, generators)


def _edit_extra(stage: "Stage", image: torch.Tensor, lowres_image: Optional[torch.Tensor],
                noise_level: Optional[int], generators) -> dict:
    """The extra U-Net kwargs for editing ``image``: none for a base stage; for an SR stage the noise-augmented
    low-resolution image (default: the image itself, downsampled)."""
    if stage.config.role != "sr":
        if lowres_image is not None:
            raise ValueError("lowres_image is only used with super-resolution stages; this is a base stage")
        return {}
    lowres = image if lowres_image is None else check_images(lowres_image, "the low-resolution image")
    return sr_conditioning(stage, lowres, image, noise_level, generators)


def output_size(stage: "Stage", width: Optional[int], height: Optional[int]) -> tuple[int, int]:
    """(width, height) of an SR run: the stage's resolution unless given; checked to map onto whole input pixels."""
    config = stage.config
    width = config.resolution if width is None else width
    height = config.resolution if height is None else height
    width, height = check_size(stage, width, height, "the super-resolution output")
    step = config.resolution // math.gcd(config.resolution, config.lowres_resolution)
    for side in (width, height):
        if side % step:
            raise ValueError(f"the output side {side} must be a multiple of {step} for this "
                             f"{config.lowres_resolution} -> {config.resolution} px stage")
    return width, height


# ------------------------------------------------------------------------------------------------ public runs
def generate(stage: "Stage", cond: Conditioning, *, width: Optional[int] = None, height: Optional[int] = None,
             batch_size: int = 1, settings: Optional[SamplingSettings] = None, callback: Callback = None,
             cancel: Cancel = None, free_memory: Optional[FreeMemory] = None) -> torch.Tensor:
    """Text-to-image with a base stage: [batch_size, 3, height, width] in -1..1 (default size: the stage's)."""
    check_role(stage, "base", "generate()", "super_resolve() (node: Imagen Super-Resolution)")
    settings = given_settings(stage, settings)
    width = stage.config.resolution if width is None else width
    height = stage.config.resolution if height is None else height
    width, height = check_size(stage, width, height, "the requested size")
    batch = check_batch(batch_size)
    check_conditioning(stage, cond)
    chunk = memory_plan(stage, settings, batch, height, width, free_memory)
    generators = make_generators(settings.seed, batch)
    sigmas = stage.sigmas(settings)
    x = randn_like_items((batch, 3, height, width), generators, device=stage.device) * sigmas[0]
    return _sample(stage, cond, settings, x, sigmas, generators, callback=callback, cancel=cancel, chunk=chunk)


def super_resolve(stage: "Stage", cond: Conditioning, lowres_image: torch.Tensor, *,
                  noise_level: Optional[int] = None, settings: Optional[SamplingSettings] = None,
                  width: Optional[int] = None, height: Optional[int] = None, strength: Optional[float] = None,
                  callback: Callback = None, cancel: Cancel = None,
                  free_memory: Optional[FreeMemory] = None) -> torch.Tensor:
    """Super-resolution with an SR stage: any-size images [B, 3, h, w] -> [B, 3, height, width] (default: the
    stage's resolution). The input is resized to the stage's input size (width * lowres_resolution / resolution,
    so a fully convolutional stage may run at other sizes), upsampled and noise-augmented (`augment_lowres`).

    `strength` 1 samples from pure noise (Imagen, DeepFloyd IF). Below 1 the sampler starts from the bicubic
    upsampling of the input, noised to the sigma at that fraction of the grid, and runs only the grid's tail
    (`sdedit_start`): the output keeps the input's layout and costs `strength` x the steps. ``noise_level``,
    ``settings`` and ``strength`` default to the stage's recommended ones (the demo SR: 100, 15 steps, 0.15)."""
    check_role(stage, "sr", "super_resolve()", "generate() (node: Imagen Base Sampler)")
    lowres_image = check_images(lowres_image, "the low-resolution image")
    settings = given_settings(stage, settings)
    strength = check_strength(stage.recommended.strength if strength is None else strength,
                              "from pure noise, small = stay near the bicubic upsampling")
    width, height = output_size(stage, width, height)
    batch = check_batch(lowres_image.shape[0])
    check_conditioning(stage, cond)
    chunk = memory_plan(stage, settings, batch, height, width, free_memory)
    generators = make_generators(settings.seed, batch)
    noise = randn_like_items((batch, 3, height, width), generators, device=stage.device)
    upsampled = resize(lowres_image.float(), height, width, mode="bicubic").clamp(-1, 1).to(stage.device)
    extra = sr_conditioning(stage, lowres_image, upsampled, noise_level, generators)
    x, sigmas = sdedit_start(upsampled if strength < 1 else torch.zeros_like(noise), noise, stage.sigmas(settings),
                             strength)
    return _sample(stage, cond, settings, x, sigmas, generators, extra=extra, callback=callback, cancel=cancel,
                   chunk=chunk)


def _edit_inputs(stage: "Stage", cond: Conditioning, image: torch.Tensor, settings: Optional[SamplingSettings],
                 free_memory: Optional[FreeMemory]):
    """Checks shared by image-to-image and inpainting; (settings, image on the device, per-item generators, images
    per sampler call)."""
    image = check_images(image, "the input image")
    batch, _, height, width = image.shape
    check_batch(batch)
    check_size(stage, width, height, "the input image")
    settings = given_settings(stage, settings)
    check_conditioning(stage, cond)
    chunk = memory_plan(stage, settings, batch, height, width, free_memory)
    return settings, image.to(stage.device).float(), make_generators(settings.seed, batch), chunk


def image_to_image(stage: "Stage", cond: Conditioning, image: torch.Tensor, *, strength: float,
                   settings: Optional[SamplingSettings] = None, lowres_image: Optional[torch.Tensor] = None,
                   noise_level: Optional[int] = None, callback: Callback = None,
                   cancel: Cancel = None, free_memory: Optional[FreeMemory] = None) -> torch.Tensor:
    """SDEdit (`sdedit_start`): noise the image to the sigma at ``strength`` of the grid and denoise from there.

    Works with base stages and SR stages (which also take ``lowres_image``, default the image itself downsampled,
    noise-augmented at ``noise_level``). Output size = image size.
    """
    strength = check_strength(strength, "ignore the input image, small = keep it")
    settings, image, generators, chunk = _edit_inputs(stage, cond, image, settings, free_memory)
    noise = randn_like_items(image.shape, generators, device=stage.device)
    extra = _edit_extra(stage, image, lowres_image, noise_level, generators)
    x, sigmas = sdedit_start(image, noise, stage.sigmas(settings), strength)
    return _sample(stage, cond, settings, x, sigmas, generators, extra=extra, callback=callback, cancel=cancel,
                   chunk=chunk)


def inpaint(stage: "Stage", cond: Conditioning, image: torch.Tensor, mask: torch.Tensor, *,
            settings: Optional[SamplingSettings] = None, resample: int = 4,
            lowres_image: Optional[torch.Tensor] = None, noise_level: Optional[int] = None,
            callback: Callback = None, cancel: Cancel = None,
            free_memory: Optional[FreeMemory] = None) -> torch.Tensor:
    """Regenerate the masked pixels (mask 1) of ``image`` [B, 3, H, W] in -1..1 and keep the rest exactly, with
    RePaint (`samplers.sample_repaint`, ``resample`` passes per step; 1 = replacement only) over the settings' grid,
    guidance, thresholding and seeds; ``settings.sampler`` is not used (RePaint's step is ancestral, ``settings.eta``
    default 1). SR stages also take ``lowres_image`` (default: the image downsampled). Costs steps * resample
    network evaluations. Returns [B, 3, H, W] in -1..1."""
    resample = check_int(resample, "resample", 1, MAX_RESAMPLE, " (RePaint's r)")
    settings, image, generators, chunk = _edit_inputs(stage, cond, image, settings, free_memory)
    mask = check_mask(mask, image).to(stage.device)
    extra = _edit_extra(stage, image, lowres_image, noise_level, generators)  # RePaint draws its augmentation first
    noise = randn_like_items(image.shape, generators, device=stage.device)
    sigmas = stage.sigmas(settings)
    return _sample(stage, cond, settings, image + noise * sigmas[0], sigmas, generators, extra=extra,
                   sampler="repaint", callback=callback, cancel=cancel, chunk=chunk, known=image, mask=mask,
                   resample=resample)
