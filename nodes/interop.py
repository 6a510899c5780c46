"""Interop with ComfyUI's own samplers: a core ``SAMPLER`` (KSamplerSelect, or any pack's k-diffusion sampler)
and core ``SIGMAS`` drive an Imagen stage (`comfyui_imagen.external`), and a stage's own grids go out as SIGMAS,
so core sigma tools (SplitSigmas, a sampler pack's schedulers...) chain with it.

Widgets follow the stage nodes' "auto" convention (`nodes.sampling`): 0 for cfg, -1 for the dynamic threshold and
the noise level, 0 for steps, "auto" in the schedule combo.
"""
from __future__ import annotations

from comfyui_imagen import external, validation
from comfyui_imagen.respacing import SPACINGS
from comfyui_imagen.samplers import SEED_MAX
from comfyui_imagen.settings import AUTO

from .declare import image_output, node
from .sampling import AUTO_TIP, CATEGORY, _image, _noise_level, _noise_level_input, _run, _settings, led_by

CUSTOM_SAMPLER, SIGMAS_NODE = "Imagen Custom Sampler", "Imagen Sigmas"


def _sampler_function(sampler):
    """The k-diffusion function and options of a core SAMPLER (``comfy.samplers.KSAMPLER``)."""
    function = getattr(sampler, "sampler_function", None)
    if not callable(function):
        raise ValueError(f"the sampler input is a {type(sampler).__name__} without a k-diffusion sampler_function; "
                         f"connect KSamplerSelect (or a sampler node that makes a KSAMPLER)")
    return function, dict(getattr(sampler, "extra_options", None) or {})


@node("Imagen Custom Sampler (SAMPLER + SIGMAS)", CATEGORY,
      "Runs a ComfyUI SAMPLER (KSamplerSelect, sampler packs) on SIGMAS (Imagen Sigmas, core sigma tools) over an "
      "Imagen stage, with its guidance and thresholding; SR stages take the image to upscale.",
      "sample", image_output("The sampled images: the stage's resolution unless width/height say otherwise."))
class ImagenSamplerCustom:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("IMAGEN_MODEL", {"tooltip": "The stage from Imagen Model Loader (base or super-resolution)."}),
            "embeds": ("IMAGEN_TEXT_EMBEDS", {"tooltip": "Prompt and negative prompt from Imagen Text Encode; the "
                                                         "T5 must be the one the model was trained with."}),
            "sampler": ("SAMPLER", {"tooltip": "A ComfyUI sampler, e.g. KSamplerSelect. Ancestral and SDE samplers "
                                               "draw their noise from the seed for the whole batch."}),
            "sigmas": ("SIGMAS", {"tooltip": "The descending noise levels, e.g. Imagen Sigmas (the stage's own "
                                             "grids): the stage's VE sigma scale, not an SD model's."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": SEED_MAX, "control_after_generate": True,
                             "tooltip": "Seed of the start noise (image k: seed + k), the SR noise augmentation "
                                        "and the sampler's own noise."}),
            "cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                              "tooltip": f"Classifier-free guidance scale: 1 = none; 0 = auto: {AUTO_TIP}."}),
            "dynamic_threshold": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.005,
                                            "tooltip": f"Imagen's dynamic thresholding percentile; 0 = static "
                                                       f"clipping to [-1, 1]; -1 = auto: {AUTO_TIP}."}),
            "width": ("INT", {"default": 0, "min": 0, "max": validation.MAX_SIDE, "step": 8,
                              "tooltip": "Output width, a multiple of 8; 0 = the stage's resolution."}),
            "height": ("INT", {"default": 0, "min": 0, "max": validation.MAX_SIDE, "step": 8,
                               "tooltip": "Output height, a multiple of 8; 0 = the stage's resolution."}),
            "batch_size": ("INT", {"default": 1, "min": 1, "max": validation.MAX_BATCH,
                                   "tooltip": "Images per run (base stages; an SR stage makes one per input "
                                              "image)."}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "SR stages only (required there): the images to upscale, any size."}),
            **_noise_level_input(" Base stages: ignored."),
        }}

    def sample(self, model, embeds, sampler, sigmas, seed, cfg, dynamic_threshold, width, height, batch_size,
               image=None, noise_level=-1):
        with led_by(CUSTOM_SAMPLER):
            function, options = _sampler_function(sampler)
            role = (model.config_stage or model.stage).config.role
            widgets = dict(seed=seed, steps=0, cfg=cfg, schedule=AUTO, dynamic_threshold=dynamic_threshold)
            size = dict(width=width or None, height=height or None)
            if role == "sr":
                if image is None:
                    raise ValueError("a super-resolution stage needs the image input (the images to upscale)")
                return _run(CUSTOM_SAMPLER, "sr", external.super_resolve_with, model, function, embeds,
                            _image(image), sigmas, noise_level=_noise_level(model, noise_level),
                            extra_options=options, widgets=widgets, **size)
            if image is not None:
                raise ValueError("the image input is for super-resolution stages; this is a base stage (use Imagen "
                                 "Image to Image to edit an image)")
            return _run(CUSTOM_SAMPLER, "base", external.generate_with, model, function, embeds, sigmas,
                        batch_size=batch_size, extra_options=options, widgets=widgets, **size)


@node("Imagen Sigmas (stage's noise levels)", CATEGORY,
      "The stage's own sigma grid (karras, trailing, DeepFloyd IF presets...) as SIGMAS for Imagen Custom Sampler "
      "and core sigma tools (SplitSigmas...).",
      "sigmas", (("SIGMAS", "sigmas", "Descending VE noise levels ending in 0 (steps + 1 values)."),))
class ImagenSigmas:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("IMAGEN_MODEL", {"tooltip": "The stage from Imagen Model Loader; its weights are not read."}),
            "schedule": ([AUTO, *SPACINGS], {"default": AUTO,
                                             "tooltip": f"Sigma spacing, or a DeepFloyd IF respacing preset; auto "
                                                        f"= {AUTO_TIP}."}),
            "steps": ("INT", {"default": 0, "min": 0, "max": validation.MAX_STEPS,
                              "tooltip": f"Steps; 0 = auto: {AUTO_TIP}. Ignored by the IF presets smart27 ... "
                                         f"super100, which fix their own."}),
        }}

    def sigmas(self, model, schedule, steps):
        with led_by(SIGMAS_NODE):
            described = model.config_stage or model.stage
            settings = _settings(described, seed=0, steps=steps, cfg=0.0, schedule=schedule, dynamic_threshold=-1)
            return (described.sigmas(settings).float().cpu(),)
