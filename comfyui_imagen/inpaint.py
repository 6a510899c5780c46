"""Inpainting moved into the one sampling path: `comfyui_imagen.cascade.inpaint` runs the RePaint sampler
(`comfyui_imagen.samplers.sample_repaint`); these names stay importable from here for earlier code."""
from .cascade import inpaint  # noqa: F401
from .validation import MAX_RESAMPLE, check_mask  # noqa: F401

__all__ = ["inpaint", "check_mask", "MAX_RESAMPLE"]
