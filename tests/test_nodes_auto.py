"""The stage nodes' "auto" widgets run the stage's recommended settings; any other value is used as given; errors
lead with the node's name; the loaders' own check names the missing file and its folder instead of ComfyUI's
"Value not in list"."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from comfyui_imagen import cascade
from comfyui_imagen.images import from_comfy_image, to_comfy_image
from comfyui_imagen.settings import AUTO, SamplingSettings, StageDefaults, with_overrides
from nodes import loaders, sampling, text
from tests.tiny_models import DEMO_NAMES

AUTO_WIDGETS = dict(seed=5, steps=0, cfg=0.0, sampler="auto", schedule="auto", dynamic_threshold=-1.0)


def _defaults(node_class) -> dict:
    """What a freshly added node's widgets hold."""
    types = node_class.INPUT_TYPES()
    return {name: spec[1]["default"] for section in types.values() for name, spec in section.items()
            if len(spec) > 1 and "default" in spec[1]}


def test_a_fresh_node_has_every_sampling_widget_on_auto():
    for node_class in (sampling.ImagenBaseSampler, sampling.ImagenSuperResolution, sampling.ImagenImageToImage,
                       sampling.ImagenInpaint):
        defaults = _defaults(node_class)
        assert {k: defaults[k] for k in ("steps", "cfg", "schedule", "dynamic_threshold")} == \
            {"steps": 0, "cfg": 0.0, "schedule": AUTO, "dynamic_threshold": -1.0}
        assert defaults.get("sampler", AUTO) == AUTO
        if "noise_level" in defaults:
            assert defaults["noise_level"] == -1
    assert _defaults(sampling.ImagenSuperResolution)["strength"] == 0.0


def test_with_overrides_keeps_the_defaults_where_auto():
    base = SamplingSettings(sampler="euler_ancestral", steps=25, cfg=4.0, spacing="trailing", threshold_max=1.5)
    assert with_overrides(base, sampler=AUTO, steps=AUTO, cfg=2.0, seed=3) == base.replace(cfg=2.0, seed=3)
    assert with_overrides(base, dynamic_threshold=None).dynamic_threshold is None  # None is a value: static


@pytest.fixture()
def loaded(model_folders):
    (t5,) = loaders.ImagenT5Loader().load(DEMO_NAMES["t5"])
    (base, _, _), (sr, _, _) = (loaders.ImagenModelLoader().load(DEMO_NAMES[role]) for role in ("base", "sr"))
    return base, sr, text.ImagenTextEncode().encode(t5, "a red circle", "", 21)[0]


def _recommend(model, settings: SamplingSettings, **kw) -> None:
    """Give the loaded stage other recommended settings than the library's defaults, as a stage-v2 file may."""
    for stage in {id(s): s for s in (model.config_stage, model.stage) if s is not None}.values():
        stage.config = dataclasses.replace(stage.config, sampling=StageDefaults(settings, **kw))


def test_auto_base_sampler_runs_the_recommended_settings(loaded):
    base, _, embeds = loaded
    _recommend(base, SamplingSettings(sampler="dpmpp_2m", steps=3, cfg=2.5, spacing="exponential",
                                      dynamic_threshold=0.8, threshold_max=1.2))
    assert base.stage.recommended.settings.steps == 3
    (image,) = sampling.ImagenBaseSampler().sample(base, embeds, width=0, height=0, batch_size=2, **AUTO_WIDGETS)
    ref = cascade.generate(base.stage, embeds, batch_size=2, settings=base.stage.recommended.settings.replace(seed=5))
    assert torch.equal(image, to_comfy_image(ref))
    # explicit values win, widget by widget; 0 in the threshold is static clipping
    explicit = dict(AUTO_WIDGETS, steps=2, sampler="euler", dynamic_threshold=0.0)
    (image,) = sampling.ImagenBaseSampler().sample(base, embeds, width=0, height=0, batch_size=1, **explicit)
    settings = base.stage.recommended.settings.replace(seed=5, steps=2, sampler="euler", dynamic_threshold=None)
    assert torch.equal(image, to_comfy_image(cascade.generate(base.stage, embeds, settings=settings)))


def test_auto_super_resolution_takes_the_stages_noise_level_and_strength(loaded):
    _, sr, embeds = loaded
    _recommend(sr, SamplingSettings(sampler="euler", steps=4, cfg=1.0, spacing="trailing"), noise_level=40,
               strength=0.5)
    low = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    (image,) = sampling.ImagenSuperResolution().upscale(sr, embeds, low, noise_level=-1, width=0, height=0,
                                                        strength=0.0, **AUTO_WIDGETS)
    settings = sr.stage.recommended.settings.replace(seed=5)
    ref = cascade.super_resolve(sr.stage, embeds, from_comfy_image(low), noise_level=40, strength=0.5,
                                settings=settings)
    assert torch.equal(image, to_comfy_image(ref))
    (other,) = sampling.ImagenSuperResolution().upscale(sr, embeds, low, noise_level=300, width=0, height=0,
                                                        strength=1.0, **AUTO_WIDGETS)
    assert not torch.equal(image, other)


def test_noise_level_does_nothing_on_a_base_stage(loaded):
    base, _, embeds = loaded
    image = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    runs = [sampling.ImagenImageToImage().edit(base, embeds, image, strength=0.5, noise_level=level,
                                               **dict(AUTO_WIDGETS, steps=3))[0] for level in (-1, 0, 250)]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    assert "ignored there" in sampling.ImagenImageToImage.INPUT_TYPES()["required"]["noise_level"][1]["tooltip"]


def test_errors_lead_with_the_node_name(loaded):
    base, sr, embeds = loaded
    low = torch.rand(1, 64, 64, 3)
    with pytest.raises(ValueError, match=r"^Imagen Super-Resolution needs a super-resolution stage, .*: use Imagen "
                                         r"Base Sampler for it"):
        sampling.ImagenSuperResolution().upscale(base, embeds, low, noise_level=-1, width=0, height=0, **AUTO_WIDGETS)
    with pytest.raises(ValueError, match=r"^Imagen Base Sampler needs a base stage, .*: use Imagen Super-Resolution"):
        sampling.ImagenBaseSampler().sample(sr, embeds, width=0, height=0, batch_size=1, **AUTO_WIDGETS)
    with pytest.raises(ValueError, match=r"^Imagen Base Sampler: .*multiple of 8"):
        sampling.ImagenBaseSampler().sample(base, embeds, width=60, height=64, batch_size=1, **AUTO_WIDGETS)
    with pytest.raises(ValueError, match=r"^Imagen Image to Image: the image input"):
        sampling.ImagenImageToImage().edit(base, embeds, low * 255, strength=0.5, noise_level=-1, **AUTO_WIDGETS)


def test_loaders_check_names_themselves(model_folders):
    # ComfyUI runs VALIDATE_INPUTS instead of its "Value not in list" for the inputs it names: the message says
    # which file is missing and where it goes, and names earlier versions listed still pass
    assert loaders.ImagenModelLoader.VALIDATE_INPUTS(DEMO_NAMES["base"]) is True
    assert loaders.ImagenModelLoader.VALIDATE_INPUTS("IF-I-M-v1.0") is True
    message = loaders.ImagenModelLoader.VALIDATE_INPUTS("IF-I-XL-v1.0/unet/diffusion_pytorch_model.fp16.safetensors")
    assert message.startswith("Imagen Model Loader: ") and "models/imagen" in message
    assert "huggingface.co/DeepFloyd" in message
    message = loaders.ImagenT5Loader.VALIDATE_INPUTS("t5xxl_fp16.safetensors")
    assert message.startswith("Imagen T5 Loader: ") and "models/text_encoders" in message
    assert "invalid model name" in loaders.ImagenT5Loader.VALIDATE_INPUTS("../../etc/passwd")


def test_explicit_widgets_sample_as_the_release_before_did(loaded):
    # the release before built SamplingSettings(sampler, steps, cfg, spacing, seed, dynamic_threshold) from the
    # widgets: the stage's recommended eta (here ddim's 0) must not reach the sampler a saved workflow names
    base, _, embeds = loaded
    _recommend(base, SamplingSettings(sampler="ddim", steps=4, cfg=3.0, spacing="trailing", eta=0.0))
    widgets = dict(seed=2, steps=3, cfg=2.0, sampler="euler_ancestral", schedule="karras", dynamic_threshold=0.9)
    (image,) = sampling.ImagenBaseSampler().sample(base, embeds, width=0, height=0, batch_size=1, **widgets)
    before = SamplingSettings(sampler="euler_ancestral", steps=3, cfg=2.0, spacing="karras", seed=2,
                              dynamic_threshold=0.9)
    assert torch.equal(image, to_comfy_image(cascade.generate(base.stage, embeds, settings=before)))


def test_steps_given_over_an_if_preset_run_that_many():
    # IF's stage I recommends smart100, which fixes its own step count: steps 20 with the schedule on auto means 20
    from comfyui_imagen.settings import IF_STAGE_I

    settings = with_overrides(IF_STAGE_I, steps=20, spacing=AUTO)
    assert (settings.steps, settings.spacing) == (20, "trailing")
    assert with_overrides(IF_STAGE_I, steps=AUTO, spacing=AUTO).spacing == "smart100"
    assert with_overrides(IF_STAGE_I, steps=20, spacing="smart50").spacing == "smart50"
