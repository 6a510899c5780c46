"""Image and mask conventions, and the one place that converts between them.

The library works in ``[B, C, H, W]`` float tensors in -1..1 (the range every diffusion stage is trained on).
ComfyUI's sockets are ``IMAGE`` = ``[B, H, W, C]`` float in 0..1 and ``MASK`` = ``[B, H, W]`` or ``[H, W]`` float in
0..1, where 1 marks the pixels to regenerate (ComfyUI's ``LoadImage`` gives ``1 - alpha``). Nothing else in the
project converts between the two: nodes call :func:`from_comfy_image` / :func:`to_comfy_image` /
:func:`from_comfy_mask`, the library calls :func:`resize` and :func:`to_pil`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .validation import check_values

__all__ = ["from_comfy_image", "to_comfy_image", "from_comfy_mask", "resize", "to_pil"]


def from_comfy_image(image: torch.Tensor, what: str = "the IMAGE") -> torch.Tensor:
    """ComfyUI ``IMAGE`` [B, H, W, C] in 0..1 -> library [B, 3, H, W] in -1..1.

    A single image [H, W, C] gains a batch axis; an alpha channel is dropped (ComfyUI carries transparency as a
    separate MASK); a grey image (C = 1) is repeated to RGB. Off the socket's contract is an error naming ``what``:
    an integer (uint8) tensor, NaN / Inf, or values far outside 0..1 (0..255, -1..1); slight overshoot (bicubic
    resizing, up to `validation.RANGE_SLACK`) is clamped.
    """
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"expected an IMAGE tensor [B, H, W, C], got {type(image).__name__}")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"expected an IMAGE tensor [B, H, W, C] with C = 1, 3 or 4, got shape {tuple(image.shape)}; "
            "connect the IMAGE output of a ComfyUI node (e.g. LoadImage) to this input"
        )
    if not image.is_floating_point():
        raise ValueError(f"{what} is a {image.dtype} tensor, but ComfyUI images are float 0..1; the node that made it "
                         f"breaks the IMAGE convention (convert with image.float() / 255)")
    image = check_values(image[..., :3], what, 0.0, 1.0, "ComfyUI images are 0..1: divide a 0..255 image by 255, map "
                                                         "a -1..1 image with (x + 1) / 2")
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    return image.movedim(-1, 1).float() * 2.0 - 1.0


def to_comfy_image(x: torch.Tensor) -> torch.Tensor:
    """Library [B, C, H, W] in -1..1 -> ComfyUI ``IMAGE`` [B, H, W, C] float32 in 0..1 (clamped, contiguous)."""
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images [B, C, H, W], got shape {tuple(x.shape)}")
    return ((x.float() + 1.0) * 0.5).clamp(0.0, 1.0).movedim(1, -1).contiguous()


def from_comfy_mask(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI ``MASK`` [H, W] or [B, H, W] (1 = regenerate) -> library [B, 1, H, W] float (its values are checked
    where it is used: `validation.check_mask`)."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"expected a MASK tensor [B, H, W], got {type(mask).__name__}")
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim == 4 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 3:
        raise ValueError(
            f"expected a MASK tensor [H, W] or [B, H, W], got shape {tuple(mask.shape)}; "
            "connect the MASK output of LoadImage, LoadImageMask or a mask node"
        )
    return mask.float().unsqueeze(1)


def resize(x: torch.Tensor, height: int, width: int, *, mode: str = "bicubic") -> torch.Tensor:
    """Resize a batch [B, C, H, W] to (height, width), antialiased when shrinking.

    Shrinking low-pass filters first (``antialias=True``), as PIL does, so a 1024 px image brought down to a 64 px
    stage keeps no aliasing; ``mode`` is ``"bicubic"``, ``"bilinear"``, ``"area"`` or ``"nearest"``. The result
    has the input's dtype; bicubic overshoot is left to the caller to clamp.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images [B, C, H, W], got shape {tuple(x.shape)}")
    if height < 1 or width < 1:
        raise ValueError(f"cannot resize to {width}x{height}; width and height must be at least 1")
    if tuple(x.shape[-2:]) == (height, width):
        return x
    if mode in ("area", "nearest"):
        return F.interpolate(x.float(), size=(height, width), mode=mode).to(x.dtype)
    if mode not in ("bicubic", "bilinear"):
        raise ValueError(f"unknown resize mode {mode!r}; expected bicubic, bilinear, area or nearest")
    shrinking = height < x.shape[-2] or width < x.shape[-1]
    out = F.interpolate(x.float(), size=(height, width), mode=mode, align_corners=False, antialias=shrinking)
    return out.to(x.dtype)


def upsample_lowres(x: torch.Tensor, height: int, width: int, mode: str = "bilinear") -> torch.Tensor:
    """Upsample an SR stage's low-resolution input to the stage's output size: ``mode`` "bilinear" with
    ``align_corners=True``, as DeepFloyd IF's super-resolution pipeline does, or "nearest", as imagen-pytorch does
    (`StageConfig.lowres_upsample`). The trainer and the cascade both call this, so a stage sees at sampling time
    exactly the conditioning it was trained on."""
    if mode == "nearest":
        return F.interpolate(x, size=(height, width), mode="nearest")
    if mode != "bilinear":
        raise ValueError(f"unknown low-resolution upsampling {mode!r}; expected 'bilinear' or 'nearest'")
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=True)


def to_pil(x: torch.Tensor, index: int = 0):
    """One image of a library batch [B, 3, H, W] in -1..1 as an RGB ``PIL.Image`` (for previews and files)."""
    from PIL import Image

    pixels = to_comfy_image(x[index : index + 1].detach().cpu())[0]
    return Image.fromarray((pixels * 255.0).round().to(torch.uint8).numpy())
