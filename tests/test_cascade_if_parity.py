"""The cascade glue against diffusers' DeepFloyd IF pipelines (the oracle), on tiny random IF-shaped U-Nets.

Same weights, same seed, IF's own sampling (ancestral DDPM with the learned variance, classifier-free guidance on the
eps, dynamic thresholding p = 0.95 with c = 1.5 / 1.0): `generate` must reproduce ``IFPipeline`` and `super_resolve`
``IFSuperResolutionPipeline``, including the SR stage's bilinear upsampling and noise augmentation at noise_level and
the order in which both draw their noise (start noise, augmentation noise, then one draw per step).
"""
import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from comfyui_imagen import cascade  # noqa: E402
from comfyui_imagen.checkpoints import Stage, if_stage_config  # noqa: E402
from comfyui_imagen.checkpoints.deepfloyd import unet_config_from_diffusers  # noqa: E402
from comfyui_imagen.text import TextEmbeds  # noqa: E402
from comfyui_imagen.unet import ImagenUNet  # noqa: E402
from tests.test_unet_parity import if_diffusers_kwargs, random_diffusers_unet  # noqa: E402

STEPS, SEED, TEXT = 3, 7, 48


def if_stage(reference) -> Stage:
    config = if_stage_config(unet_config_from_diffusers(dict(reference.config)))
    unet = ImagenUNet(config.unet).eval()
    unet.load_state_dict(reference.state_dict(), strict=True)
    return Stage(unet, config)


def scheduler(max_value: float):
    """IF's scheduler (cosine, learned range, dynamic thresholding) with diffusers' "trailing" timesteps."""
    return diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                                   thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=max_value,
                                   timestep_spacing="trailing")


def pipeline(cls, unet, max_value, **extra):
    return cls(tokenizer=None, text_encoder=None, unet=unet, scheduler=scheduler(max_value), safety_checker=None,
               feature_extractor=None, watermarker=None, requires_safety_checker=False, **extra)


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(3)
    pos, neg = torch.randn(1, 5, TEXT, generator=g), torch.randn(1, 5, TEXT, generator=g)
    ones = torch.ones(1, 5, dtype=torch.bool)
    return pos, neg, cascade.Conditioning(TextEmbeds(pos, ones), TextEmbeds(neg, ones))


def settings(cfg, max_value):
    return cascade.SamplingSettings(sampler="ddpm", spacing="trailing", steps=STEPS, cfg=cfg, dynamic_threshold=0.95,
                                    threshold_max=max_value, seed=SEED)


def test_generate_matches_if_stage_one_pipeline(prompts):
    pos, neg, cond = prompts
    ref = random_diffusers_unet(if_diffusers_kwargs(1, head_dim=16, text_dim=TEXT))
    with torch.no_grad():
        expected = pipeline(diffusers.IFPipeline, ref, 1.5)(
            prompt_embeds=pos, negative_prompt_embeds=neg, height=16, width=16, num_inference_steps=STEPS,
            guidance_scale=5.0, generator=torch.Generator().manual_seed(SEED), output_type="pt").images
    ours = cascade.generate(if_stage(ref), cond, width=16, height=16, settings=settings(5.0, 1.5))
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() < 2e-3


def test_super_resolve_matches_if_stage_two_pipeline(prompts, noise_level=250):
    pos, neg, cond = prompts
    ref = random_diffusers_unet(if_diffusers_kwargs(2, head_dim=16, text_dim=TEXT))
    low = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
    noising = diffusers.DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    with torch.no_grad():
        expected = pipeline(diffusers.IFSuperResolutionPipeline, ref, 1.0, image_noising_scheduler=noising)(
            image=low, prompt_embeds=pos, negative_prompt_embeds=neg, height=16, width=16, noise_level=noise_level,
            num_inference_steps=STEPS, guidance_scale=4.0, generator=torch.Generator().manual_seed(SEED),
            output_type="pt").images
    ours = cascade.super_resolve(if_stage(ref), cond, low, noise_level=noise_level, width=16, height=16,
                                 settings=settings(4.0, 1.0))
    assert ours.shape == expected.shape == (1, 3, 16, 16)
    assert (ours - expected).abs().max().item() < 2e-3
