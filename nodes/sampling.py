"""The stage nodes: base sampling, super-resolution, image-to-image, inpainting.

Each node unpacks its sockets, calls one function of ``comfyui_imagen.cascade`` and packs the result
(ComfyUI IMAGE [B, H, W, C] 0..1 on ComfyUI's intermediate device). Progress, previews and Cancel go through
``comfy_compat``; bad input surfaces as the library's ValueError led by the node's name, which ComfyUI shows on the
node.

Sampling widgets default to "auto", the stage's recommended settings (``stage.recommended``: stored in the stage
file, IF's published ones for IF, the library's demo-measured ones otherwise): "auto" in the sampler and schedule
combos, and a sentinel in the number widgets (0 for steps, cfg and the SR strength, where 0 means nothing; -1 for
the dynamic threshold and the noise level, where 0 means something). Any other value is used as given, so saved
workflows keep sampling as they did.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager

from comfyui_imagen import cascade, validation
from comfyui_imagen.images import from_comfy_image, from_comfy_mask, to_comfy_image
from comfyui_imagen.respacing import SPACINGS
from comfyui_imagen.samplers import SAMPLERS, SEED_MAX
from comfyui_imagen.settings import AUTO, with_overrides

from . import comfy_compat as cc
from .declare import image_output, node

log = logging.getLogger(__name__)
CATEGORY = "imagen/sampling"
BASE_SAMPLER, SUPER_RESOLUTION = "Imagen Base Sampler", "Imagen Super-Resolution"
IMAGE_TO_IMAGE, INPAINT = "Imagen Image to Image", "Imagen Inpaint"
AUTO_TIP = "the stage's recommended value (Imagen Model Loader's info output lists them)"


# ------------------------------------------------------------------------------------------------ shared inputs
def _stage_inputs(role_hint: str) -> dict:
    return {
        "model": ("IMAGEN_MODEL", {"tooltip": f"The stage from Imagen Model Loader ({role_hint})."}),
        "embeds": ("IMAGEN_TEXT_EMBEDS", {"tooltip": "Prompt and negative prompt from Imagen Text Encode; the T5 "
                                                     "must be the one the model was trained with."}),
    }


def _sampling_inputs(*, sampler: bool = True) -> dict:
    inputs = {
        "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                         "tooltip": "Noise seed; image k of a batch uses seed + k (wrapping past 2^64 - 1)."}),
        "steps": ("INT", {"default": 0, "min": 0, "max": validation.MAX_STEPS,
                          "tooltip": f"Sampler steps; 0 = auto: {AUTO_TIP} (the demo base 25, the demo SR 15). "
                                     "Ignored by the DeepFloyd IF schedules smart27 ... super100, which fix their "
                                     "own."}),
        "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                          "tooltip": f"Classifier-free guidance scale: 1 = none, higher follows the prompt more; "
                                     f"0 = auto: {AUTO_TIP} (DeepFloyd IF: 7 for stage I, 4 for stage II; the demo: "
                                     f"4 and 1)."}),
    }
    if sampler:
        inputs["sampler"] = ([AUTO, *sorted(SAMPLERS)], {
            "default": AUTO, "tooltip": f"Sampling algorithm; auto = {AUTO_TIP} (DeepFloyd IF: ddpm, its own "
                                        f"ancestral sampler with the learned variance; the demo base: "
                                        f"euler_ancestral)."})
    inputs["schedule"] = ([AUTO, *SPACINGS], {
        "default": AUTO, "tooltip": f"Sigma spacing, or a DeepFloyd IF respacing preset; auto = {AUTO_TIP} "
                                    f"(smart100 for IF stage I, smart50 for stage II, trailing for the demo)."})
    inputs["dynamic_threshold"] = ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.005,
                                             "tooltip": f"Imagen's dynamic thresholding percentile (IF: 0.95, "
                                                        f"Imagen: 0.995); 0 = static clipping to [-1, 1]; -1 = "
                                                        f"auto: {AUTO_TIP}."})
    return inputs


def _noise_level_input(base_note: str = "") -> dict:
    return {"noise_level": ("INT", {"default": -1, "min": -1, "max": validation.MAX_NOISE_LEVEL,
                                    "tooltip": "SR stages: noise augmentation of the low-resolution input on the "
                                               "0..999 timestep scale (DeepFloyd IF stage II: 250; the demo SR: "
                                               f"100); -1 = auto: {AUTO_TIP}. Higher lets the stage repair more, "
                                               f"at the cost of fidelity.{base_note}"})}


def _edit_inputs(image_tooltip: str, middle: dict, *, sampler: bool = True) -> dict:
    """Image to Image and Inpaint: stage, image, the node's own inputs, sampling, noise level; lowres optional."""
    return {"required": {**_stage_inputs("base or super-resolution"), "image": ("IMAGE", {"tooltip": image_tooltip}),
                         **middle, **_sampling_inputs(sampler=sampler),
                         **_noise_level_input(" Base stages have no low-resolution input: ignored there.")},
            "optional": LOWRES_INPUT}


LOWRES_INPUT = {"lowres_image": ("IMAGE", {"tooltip": "SR stages only: the low-resolution image to condition on "
                                                     "(default: the input image, downsampled)."})}


def _settings(stage, seed, steps, cfg, schedule, dynamic_threshold, sampler=AUTO) -> cascade.SamplingSettings:
    """The stage's recommended settings with the widgets that are not "auto" (module docstring) put in."""
    threshold = AUTO if dynamic_threshold < 0 else (dynamic_threshold or None)
    return with_overrides(stage.recommended.settings, seed=seed, steps=steps or AUTO, cfg=cfg or AUTO,
                          spacing=schedule, dynamic_threshold=threshold, sampler=sampler)


def _noise_level(model, noise_level: int):
    """None (the stage's recommended level) for -1, and on base stages, which have no low-resolution input."""
    role = (model.config_stage or model.stage).config.role
    return None if noise_level < 0 or role != "sr" else noise_level


OTHER_ROLE = {"sr": BASE_SAMPLER, "base": SUPER_RESOLUTION}


@contextmanager
def led_by(title: str):
    """The library's ValueErrors raised inside, led by the node's ``title`` (ComfyUI shows them on the node); the
    error keeps its class (a `MemoryLimitError` stays one)."""
    try:
        yield
    except ValueError as e:
        if e.args and isinstance(e.args[0], str) and not e.args[0].startswith(title):
            e.args = (f"{title}: {e.args[0]}", *e.args[1:])
        raise


def _run(title: str, role, function, model, *args, widgets: dict, **kwargs):
    """Call a cascade function on the loaded stage with ComfyUI's progress bar and Cancel; pack an IMAGE.

    ``widgets`` are the sampling widgets (`_settings`); ``role`` ("base", "sr", or None for either) is checked
    first, naming the nodes."""
    described = model.config_stage or model.stage  # what the stage is, without reading its weights
    if role is not None:
        validation.check_role(described, role, title, OTHER_ROLE[role])
    settings = _settings(described, **widgets)
    log.info("%s: %s", title, settings)
    stage = model.load()
    images = function(stage, *args, settings=settings, callback=cc.progress_callback(settings.steps),
                      cancel=cc.interrupted, free_memory=cc.free_memory, **kwargs)
    return (to_comfy_image(images).to(cc.intermediate_device()),)


def _image(image, name: str = "image"):
    """An IMAGE socket's value as library images; bad values are refused naming the node's input."""
    return from_comfy_image(image, f"the {name} input")


def _lowres(lowres_image):
    return None if lowres_image is None else _image(lowres_image, "lowres_image")


# ------------------------------------------------------------------------------------------------ nodes
@node("Imagen Base Sampler (text to 64 px)", CATEGORY,
      "Generates images from text with a base stage (e.g. 64x64), the first stage of a cascade.",
      "sample", image_output("The generated images, at the base stage's resolution unless width/height say "
                             "otherwise."))
class ImagenBaseSampler:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_stage_inputs("a base stage"),
            **_sampling_inputs(),
            "width": ("INT", {"default": 0, "min": 0, "max": validation.MAX_SIDE, "step": 8,
                              "tooltip": "Output width, a multiple of 8; 0 = the model's resolution."}),
            "height": ("INT", {"default": 0, "min": 0, "max": validation.MAX_SIDE, "step": 8,
                               "tooltip": "Output height, a multiple of 8; 0 = the model's resolution."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": validation.MAX_BATCH,
                                   "tooltip": "Images per run."}),
        }}

    def sample(self, model, embeds, seed, steps, cfg, sampler, schedule, dynamic_threshold, width, height,
               batch_size):
        with led_by(BASE_SAMPLER):
            return _run(BASE_SAMPLER, "base", cascade.generate, model, embeds, width=width or None,
                        height=height or None, batch_size=batch_size,
                        widgets=dict(seed=seed, steps=steps, cfg=cfg, schedule=schedule,
                                     dynamic_threshold=dynamic_threshold, sampler=sampler))


@node("Imagen Super-Resolution (SR stage)", CATEGORY,
      "Upscales images with a super-resolution stage (64 -> 256, 256 -> 1024), conditioned on the prompt. Takes "
      "an IMAGE from any node, of any size.",
      "upscale", image_output("The upscaled images: the SR stage's resolution (e.g. 256x256, or 1024x1024 for a "
                              "256 -> 1024 stage) unless width/height say otherwise."))
class ImagenSuperResolution:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            **_stage_inputs("a super-resolution stage"),
            "image": ("IMAGE", {"tooltip": "Images of any size: resized to the stage's input size (e.g. 64x64 for "
                                           "a 64 -> 256 stage); the output is the stage's resolution (256x256, or "
                                           "1024x1024 for a 256 -> 1024 stage)."}),
            **_noise_level_input(),
            **_sampling_inputs(),
            "width": ("INT", {"default": 0, "min": 0, "max": validation.MAX_SIDE, "step": 8,
                              "tooltip": "Output width; 0 = the stage's resolution (256 for a 64 -> 256 stage). "
                                         "The input is resized to width x input/output ratio, so a fully "
                                         "convolutional 4x stage makes 1024 from a 256 image at width 1024."}),
            "height": ("INT", {"default": 0, "min": 0, "max": validation.MAX_SIDE, "step": 8,
                               "tooltip": "Output height; 0 = the stage's resolution."}),
        }, "optional": {
            "strength": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                   "tooltip": "1 = sample from pure noise (Imagen, DeepFloyd IF). Below 1 = start "
                                              "from the bicubic upsampling noised to that fraction of the steps "
                                              "(SDEdit): keeps the input's layout, runs that fraction of the "
                                              f"steps. 0 = auto: {AUTO_TIP} (IF: 1; the demo SR stage is most "
                                              "faithful at 0.15)."}),
        }}

    def upscale(self, model, embeds, image, noise_level, seed, steps, cfg, sampler, schedule, dynamic_threshold,
                width, height, strength=0.0):
        with led_by(SUPER_RESOLUTION):
            return _run(SUPER_RESOLUTION, "sr", cascade.super_resolve, model, embeds, _image(image),
                        noise_level=_noise_level(model, noise_level), width=width or None,
                        height=height or None, strength=strength or None,
                        widgets=dict(seed=seed, steps=steps, cfg=cfg, schedule=schedule,
                                     dynamic_threshold=dynamic_threshold, sampler=sampler))


@node("Imagen Image to Image (SDEdit)", CATEGORY,
      "Re-draws an image with a base or SR stage: noise it to 'strength', then denoise towards the prompt "
      "(SDEdit). The image size must suit the stage (e.g. 64x64 for a 64 px base).",
      "edit", image_output("The edited images, same size as the input."))
class ImagenImageToImage:
    @classmethod
    def INPUT_TYPES(cls):
        return _edit_inputs("The image to edit, at a size the stage handles (multiples of 8, e.g. 64x64 for a base "
                            "stage; use ImageScale first).", {
                                "strength": ("FLOAT", {"default": 0.6, "min": 0.01, "max": 1.0, "step": 0.01,
                                                       "tooltip": "How much to change: 1 = ignore the image, 0.3 = "
                                                                  "keep its layout and colours."})})

    def edit(self, model, embeds, image, strength, seed, steps, cfg, sampler, schedule, dynamic_threshold,
             noise_level, lowres_image=None):
        with led_by(IMAGE_TO_IMAGE):
            return _run(IMAGE_TO_IMAGE, None, cascade.image_to_image, model, embeds, _image(image),
                        strength=strength, lowres_image=_lowres(lowres_image),
                        noise_level=_noise_level(model, noise_level),
                        widgets=dict(seed=seed, steps=steps, cfg=cfg, schedule=schedule,
                                     dynamic_threshold=dynamic_threshold, sampler=sampler))


@node("Imagen Inpaint (RePaint)", CATEGORY,
      "Regenerates the masked part of an image (white = regenerate) with a base or SR stage, by RePaint "
      "resampling: no inpainting-trained model needed.",
      "inpaint", image_output("The images with the masked area regenerated and the rest kept exactly."))
class ImagenInpaint:
    @classmethod
    def INPUT_TYPES(cls):
        return _edit_inputs("The image, at a size the stage handles (e.g. 64x64 for a base stage; use ImageScale "
                            "first).", {
                                "mask": ("MASK", {"tooltip": "Same size as the image; 1 (white) = regenerate. "
                                                             "Paint it in LoadImage's mask editor."}),
                                "resample": ("INT", {"default": 4, "min": 1, "max": validation.MAX_RESAMPLE,
                                                     "tooltip": "RePaint's resampling passes per step (r): more = "
                                                                "better blending, r times slower; 1 = plain "
                                                                "replacement."})}, sampler=False)

    def inpaint(self, model, embeds, image, mask, resample, seed, steps, cfg, schedule, dynamic_threshold,
                noise_level, lowres_image=None):
        with led_by(INPAINT):
            return _run(INPAINT, None, cascade.inpaint, model, embeds, _image(image), from_comfy_mask(mask),
                        resample=resample, lowres_image=_lowres(lowres_image),
                        noise_level=_noise_level(model, noise_level),
                        widgets=dict(seed=seed, steps=steps, cfg=cfg, schedule=schedule,
                                     dynamic_threshold=dynamic_threshold))
