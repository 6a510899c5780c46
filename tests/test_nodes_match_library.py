"""Each node's output equals the library call it adapts, with the same inputs: every widget reaches the library.

Widgets are set to values unlike their defaults (and unlike the library's), so a node that dropped or renamed one
(strength, dynamic_threshold, noise_level...) gives other pixels than the library call and fails here.
"""
from __future__ import annotations

import pytest
import torch

from comfyui_imagen import cascade
from comfyui_imagen.images import from_comfy_image, from_comfy_mask, to_comfy_image
from comfyui_imagen.settings import SamplingSettings
from nodes import loaders, sampling, text
from tests.tiny_models import DEMO_NAMES

WIDGETS = dict(seed=11, steps=3, cfg=2.5, schedule="exponential", dynamic_threshold=0.8)
SETTINGS = dict(seed=11, steps=3, cfg=2.5, spacing="exponential", dynamic_threshold=0.8)


@pytest.fixture()
def loaded(model_folders):
    """The tiny T5, base and SR stage through the loader nodes, and one encoding (max_length 21, a negative)."""
    (t5,) = loaders.ImagenT5Loader().load(DEMO_NAMES["t5"])
    (base, _, _), (sr, _, _) = (loaders.ImagenModelLoader().load(DEMO_NAMES[role]) for role in ("base", "sr"))
    return t5, base, sr, text.ImagenTextEncode().encode(t5, "a red circle", "a blue square", 21)[0]


def _same(node_image: torch.Tensor, library_image: torch.Tensor) -> None:
    assert node_image.shape == to_comfy_image(library_image).shape
    assert torch.equal(node_image, to_comfy_image(library_image))


def test_text_encode_equals_the_encoder(loaded):
    t5, _, _, embeds = loaded
    positive = t5.encoder.encode(["a red circle"], 21)
    negative = t5.encoder.encode(["a blue square"], 21)
    assert embeds.positive.embeds.shape[1] == 21
    for ours, ref in ((embeds.positive, positive), (embeds.negative, negative)):
        assert torch.equal(ours.embeds, ref.embeds) and torch.equal(ours.mask, ref.mask)


@pytest.mark.parametrize("dynamic_threshold", [0.8, 0.0])
def test_base_sampler_equals_generate(loaded, dynamic_threshold):
    _, base, _, embeds = loaded
    widgets = {**WIDGETS, "dynamic_threshold": dynamic_threshold}
    (image,) = sampling.ImagenBaseSampler().sample(base, embeds, sampler="dpmpp_2m_sde", width=32, height=48,
                                                   batch_size=2, **widgets)
    settings = SamplingSettings(sampler="dpmpp_2m_sde", **{**SETTINGS, "dynamic_threshold": dynamic_threshold or None})
    ref = cascade.generate(base.stage, embeds, width=32, height=48, batch_size=2, settings=settings)
    _same(image, ref)


def test_super_resolution_equals_super_resolve(loaded):
    _, _, sr, embeds = loaded
    low = torch.rand(1, 40, 24, 3, generator=torch.Generator().manual_seed(0))
    (image,) = sampling.ImagenSuperResolution().upscale(sr, embeds, low, noise_level=77, sampler="euler",
                                                        width=128, height=192, strength=0.6, **WIDGETS)
    ref = cascade.super_resolve(sr.stage, embeds, from_comfy_image(low), noise_level=77, width=128, height=192,
                                strength=0.6, settings=SamplingSettings(sampler="euler", **SETTINGS))
    _same(image, ref)


def test_image_to_image_equals_the_library_on_base_and_sr(loaded):
    _, base, sr, embeds = loaded
    g = torch.Generator().manual_seed(1)
    image, big = torch.rand(1, 64, 64, 3, generator=g), torch.rand(1, 128, 128, 3, generator=g)
    (edited,) = sampling.ImagenImageToImage().edit(base, embeds, image, strength=0.45, sampler="ddim",
                                                   noise_level=5, **WIDGETS)
    ref = cascade.image_to_image(base.stage, embeds, from_comfy_image(image), strength=0.45,
                                 settings=SamplingSettings(sampler="ddim", **SETTINGS))
    _same(edited, ref)
    (edited_sr,) = sampling.ImagenImageToImage().edit(sr, embeds, big, strength=0.7, sampler="heun", noise_level=33,
                                                      lowres_image=image, **WIDGETS)
    ref_sr = cascade.image_to_image(sr.stage, embeds, from_comfy_image(big), strength=0.7, noise_level=33,
                                    lowres_image=from_comfy_image(image),
                                    settings=SamplingSettings(sampler="heun", **SETTINGS))
    _same(edited_sr, ref_sr)


def test_inpaint_equals_the_library(loaded):
    _, base, sr, embeds = loaded
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(1, 64, 64)
    mask[:, 8:40, 16:56] = 1
    (filled,) = sampling.ImagenInpaint().inpaint(base, embeds, image, mask, resample=2, noise_level=9, **WIDGETS)
    ref = cascade.inpaint(base.stage, embeds, from_comfy_image(image), from_comfy_mask(mask), resample=2,
                          settings=SamplingSettings(sampler="ddpm", **SETTINGS))
    _same(filled, ref)
    big, low = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(3)), image
    big_mask = torch.nn.functional.interpolate(mask[None], size=(128, 128))[0]
    (filled_sr,) = sampling.ImagenInpaint().inpaint(sr, embeds, big, big_mask, resample=2, noise_level=41,
                                                    lowres_image=low, **WIDGETS)
    ref_sr = cascade.inpaint(sr.stage, embeds, from_comfy_image(big), from_comfy_mask(big_mask), resample=2,
                             noise_level=41, lowres_image=from_comfy_image(low),
                             settings=SamplingSettings(sampler="ddpm", **SETTINGS))
    _same(filled_sr, ref_sr)
