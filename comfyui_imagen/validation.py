"""Input checks shared by every run: image batches, sizes, roles, conditioning, masks (scalars: `checks`).

Each check raises ValueError with a message that names the input and the fix (STYLE: fail loudly and helpfully).
Stage-specific checks take the `Stage` (``stage.config`` is read: role, resolution, lowres_resolution, U-Net).
Tensors are checked for NaN / Inf (an error naming the input, never a NaN image) and for their value range: values
up to `RANGE_SLACK` of the range beyond it (bicubic overshoot) are clamped, values further out are refused, since
they mean another convention (0..255, or 0..1 where -1..1 is expected).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .checks import all_finite, check_int, is_real

if TYPE_CHECKING:  # pragma: no cover
    from .settings import Conditioning
    from .stage import Stage

# A stage samples sides in multiples of 8 (more for deep U-Nets), up to MAX_SCALE times its resolution.
SIZE_MULTIPLE = 8
MAX_SCALE = 4
MAX_BATCH = 64
MAX_RESAMPLE = 20
MAX_STEPS = 1000
MAX_SIDE = 4096  # the largest side a node offers: MAX_SCALE x a 1024 px stage
MAX_NOISE_LEVEL = 999  # the top of the 0..T-1 timestep scale of a 1000-step schedule (every stage shipped or read)
RANGE_SLACK = 0.25  # of a value range's width: how far past it an image or mask may go (and is clamped)


def check_batch(batch_size) -> int:
    return check_int(batch_size, "batch_size", 1, MAX_BATCH)


def check_values(tensor: torch.Tensor, what: str, low: float, high: float, fix: str) -> torch.Tensor:
    """``tensor`` clamped to [low, high]: ValueError naming ``what`` if it holds NaN / Inf or values more than
    `RANGE_SLACK` of the range beyond it (``fix`` says how to convert what was given)."""
    if not tensor.is_floating_point():
        raise ValueError(f"{what} is a {tensor.dtype} tensor; expected float values in {low:g}..{high:g} ({fix})")
    if not all_finite(tensor):
        bad = int((~torch.isfinite(tensor)).sum())
        raise ValueError(f"{what} contains {bad} NaN or Inf values (of {tensor.numel()}); whatever produced it failed "
                         f"(a model that diverged, a division by zero): fix or replace that input. Nothing was sampled")
    lo, hi = (float(v) for v in torch.aminmax(tensor.detach()))
    slack = RANGE_SLACK * (high - low)
    if lo < low - slack or hi > high + slack:
        raise ValueError(f"{what} has values from {lo:g} to {hi:g}, far outside {low:g}..{high:g}; {fix}")
    return tensor if low <= lo and hi <= high else tensor.clamp(low, high)


def check_images(images: torch.Tensor, what: str) -> torch.Tensor:
    """A non-empty batch of finite RGB images [B, 3, H, W] in -1..1 (clamped there; see `check_values`)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a batch of RGB images [B, 3, H, W] in -1..1, got {shape}; "
                         f"convert ComfyUI images with comfyui_imagen.images.from_comfy_image")
    if images.shape[0] < 1:
        raise ValueError(f"{what} is an empty batch (batch 0); connect at least one image")
    return check_values(images, what, -1.0, 1.0, "the library takes images in -1..1: map 0..1 images with x * 2 - 1 "
                                                  "and 0..255 ones with x / 127.5 - 1 (ComfyUI IMAGE: "
                                                  "comfyui_imagen.images.from_comfy_image)")


def check_role(stage: "Stage", want: str, what: str, other: str) -> None:
    """ValueError unless ``stage.config.role == want`` ("base" or "sr"): ``what`` (the function or node that was
    called) leads the message, ``other`` names what runs the other role (a function and its node, or a node)."""
    config = stage.config
    if config.role == want:
        return
    if want == "sr":
        raise ValueError(f"{what} needs a super-resolution stage, but this model is a base stage "
                         f"({config.resolution} px from text alone): use {other} for it, or load an SR model in "
                         f"Imagen Model Loader")
    raise ValueError(f"{what} needs a base stage, but this model is a super-resolution stage "
                     f"({config.lowres_resolution} -> {config.resolution} px): use {other} for it, or load a base "
                     f"model in Imagen Model Loader")


def size_multiple(stage: "Stage") -> int:
    """Sides must be multiples of this: 8, or more for a U-Net that halves the image more than three times."""
    unet = getattr(stage.config, "unet", None)
    return max(SIZE_MULTIPLE, getattr(unet, "downscale", 1))


def check_size(stage: "Stage", width, height, what: str = "the image") -> tuple[int, int]:
    """(width, height) as ints: sides are whole numbers (64.0 is 64), multiples of `size_multiple`, at most
    MAX_SCALE times the stage's resolution."""
    resolution = stage.config.resolution
    limit = MAX_SCALE * resolution
    step = size_multiple(stage)
    for name, value in (("width", width), ("height", height)):
        if not (is_real(value) and int(value) == value) or value < step or value % step:
            nearest = max(step, round(value / step) * step) if is_real(value) else step
            raise ValueError(f"{what}: {name} {value!r} must be a positive multiple of {step} (the U-Net halves "
                             f"the image at every level); e.g. {nearest}. "
                             f"Resize the input with the ImageScale node if it comes from an image")
        if value > limit:
            raise ValueError(f"{what}: {name} {value} is far beyond this {resolution} px stage's range (at most "
                             f"{limit}); sample at {resolution} and add a super-resolution stage, or resize the "
                             f"input with the ImageScale node")
    return int(width), int(height)


def check_strength(strength, one_means: str) -> float:
    """An SDEdit strength in (0, 1]; ``one_means`` says what 1 does for this call."""
    if not is_real(strength) or not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1 = {one_means}), got {strength!r}")
    return float(strength)


def check_noise_level(stage: "Stage", noise_level) -> int:
    limit = stage.config.num_train_timesteps
    return check_int(noise_level, "noise_level", 0, limit - 1, " (DeepFloyd IF stage II uses 250)")


def _t5_hint(width: int) -> str:
    return {4096: "T5 v1.1 XXL, e.g. t5xxl_fp16.safetensors", 256: "the bundled demo T5",
            1024: "T5 v1.1 large", 768: "T5 v1.1 base", 512: "T5 v1.1 small"}.get(width, f"d_model {width}")


def check_conditioning(stage: "Stage", cond: "Conditioning") -> None:
    from .settings import Conditioning

    if not isinstance(cond, Conditioning):
        raise ValueError(f"expected a Conditioning(positive, negative), got {type(cond).__name__}; connect the "
                         f"output of the Imagen Text Encode node")
    for name, embeds in (("prompt", cond.positive), ("negative prompt", cond.negative)):
        if not all_finite(embeds.embeds):
            raise ValueError(f"the {name} embeddings contain NaN or Inf values: the T5 that encoded them is damaged "
                             f"(NaN/Inf weights) or overflowed in its dtype; reload it with dtype fp32 or bf16 in "
                             f"Imagen T5 Loader, or use another copy of the T5 file")
    want = stage.config.text_embed_dim
    if cond.width != want:
        raise ValueError(f"the text embeddings are {cond.width} wide but this model was trained on {want}-wide T5 "
                         f"embeddings; in Imagen T5 Loader (or the CLIP loader feeding Imagen Text Encode (CLIP's T5)) "
                         f"pick the T5 this model was trained with ({_t5_hint(want)})")


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
    if not mask.is_floating_point():
        mask = mask.float()
    mask = check_values(mask, "the mask", 0.0, 1.0, "masks are 0..1 (1 = regenerate): divide a 0..255 mask by 255, "
                                                    "or connect a MASK from LoadImage or a mask node")
    mask = mask.float().expand(batch, -1, -1, -1)
    if not bool((mask > 0).any()):
        raise ValueError("the mask is empty: nothing to regenerate. Paint the area to change (white = regenerate) "
                         "in LoadImage's mask editor, or connect another mask")
    return mask
