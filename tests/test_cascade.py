"""comfyui_imagen.cascade / inpaint / images on toy U-Nets whose ideal denoiser has a closed form.

ExactToy: the data is one constant colour per prompt (tanh of the first 3 embedding values) or, for SR stages, the
conditioning image itself, and the toy predicts the exact eps for that data, so every sampler's final x0 is known.
GaussToy: data ~ N(0, v I); E[x0 | x] = v / (v + sigma^2) x depends on the noise, for the seed tests.
"""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from comfyui_imagen import cascade, images, inpaint as inpaint_mod
from comfyui_imagen.cascade import Conditioning, SamplingSettings
from comfyui_imagen.schedules import get_schedule
from comfyui_imagen.stage import Stage, StageConfig
from comfyui_imagen.unet import UNetConfig

D = 8
SCHEDULE = get_schedule("squaredcos_cap_v2", 1000)


class Embeds(SimpleNamespace):
    """Stands in for comfyui_imagen.text.TextEmbeds (embeds [B, L, D], mask [B, L])."""


def embeds(*colours, width=D, length=4):
    e = torch.zeros(len(colours), length, width)
    for i, c in enumerate(colours):
        e[i, 0, :3] = torch.atanh(torch.tensor(c, dtype=torch.float32))
    return Embeds(embeds=e, mask=torch.ones(len(colours), length, dtype=torch.bool))


class ExactToy(torch.nn.Module):
    def __init__(self, sr=False):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.sr, self.calls, self.noise_levels = sr, 0, []

    def forward(self, x, timesteps, text_embeds=None, text_mask=None, lowres_image=None, noise_level=None):
        self.calls += 1
        sigma = SCHEDULE.t_to_sigma(timesteps.double()).float().view(-1, 1, 1, 1)
        x_ve = x * (1 + sigma**2).sqrt()
        if self.sr:
            self.noise_levels.append(noise_level)
            target = lowres_image
        else:
            target = torch.tanh(text_embeds[:, 0, :3])[:, :, None, None]
        return (x_ve - target) / sigma


class GaussToy(torch.nn.Module):
    v = 0.25

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x, timesteps, text_embeds=None, text_mask=None, lowres_image=None, noise_level=None):
        sigma = SCHEDULE.t_to_sigma(timesteps.double()).float().view(-1, 1, 1, 1)
        x_ve = x * (1 + sigma**2).sqrt()
        x0 = self.v / (self.v + sigma**2) * x_ve
        return (x_ve - x0) / sigma


def stage(unet, role="base", resolution=16, lowres=None):
    """A `Stage` around a toy network (its U-Net config only states the text width and the role)."""
    net = UNetConfig(channels=(8,), layers=(1,), attention=("cross",), mid_attention="cross", lowres_cond=role == "sr",
                     text_embed_dim=D, cond_dim=8, head_dim=8, pool_heads=1, norm_groups=4)
    return Stage(unet=unet, config=StageConfig(role=role, resolution=resolution, lowres_resolution=lowres, unet=net))


FAST = SamplingSettings(sampler="euler", steps=6, cfg=1.0, spacing="karras", seed=3)


def test_generate_returns_the_prompt_colour_with_cfg_one():
    out = cascade.generate(stage(ExactToy()), Conditioning(embeds((0.5, -0.2, 0.1)), embeds((0, 0, 0))),
                           width=16, height=8, batch_size=2, settings=FAST)
    assert out.shape == (2, 3, 8, 16)
    assert torch.allclose(out, torch.tensor([0.5, -0.2, 0.1]).view(1, 3, 1, 1).expand_as(out), atol=1e-4)


def test_guidance_and_thresholding_follow_imagen():
    # x0 = w c + (1 - w) u with w = 2, c = (0.9, 0.15, -0.3), u = 0 -> (1.8, 0.3, -0.6); then
    # static: clip to [-1, 1]; dynamic p = 1 with cap 1.5: s = 1.5, clip to [-s, s] and divide by s.
    cond = Conditioning(embeds((0.9, 0.15, -0.3)), embeds((0.0, 0.0, 0.0)))
    raw = torch.tensor([1.8, 0.3, -0.6]).view(1, 3, 1, 1)
    static = cascade.generate(stage(ExactToy()), cond, width=8, height=8,
                              settings=SamplingSettings(sampler="euler", steps=4, cfg=2.0, dynamic_threshold=None))
    assert torch.allclose(static, raw.clamp(-1, 1).expand_as(static), atol=1e-4)
    dynamic = cascade.generate(stage(ExactToy()), cond, width=8, height=8,
                               settings=SamplingSettings(sampler="euler", steps=4, cfg=2.0, dynamic_threshold=1.0,
                                                         threshold_max=1.5))
    assert torch.allclose(dynamic, (raw.clamp(-1.5, 1.5) / 1.5).expand_as(dynamic), atol=1e-4)


def test_item_k_of_a_batch_equals_a_batch_of_one_with_seed_plus_k():
    cond = Conditioning(embeds((0.1, 0.1, 0.1)), embeds((0, 0, 0)))
    s = SamplingSettings(sampler="euler_ancestral", steps=5, cfg=1.0, seed=10)
    batch = cascade.generate(stage(GaussToy()), cond, width=8, height=8, batch_size=3, settings=s)
    one = cascade.generate(stage(GaussToy()), cond, width=8, height=8, batch_size=1,
                           settings=SamplingSettings(sampler="euler_ancestral", steps=5, cfg=1.0, seed=12))
    assert torch.allclose(batch[2], one[0], atol=1e-5)
    assert not torch.allclose(batch[0], batch[1], atol=1e-3)


def test_if_preset_fixes_the_step_count_and_callback_reports_each_step():
    seen = []
    cascade.generate(stage(ExactToy()), Conditioning(embeds((0, 0, 0)), embeds((0, 0, 0))), width=8, height=8,
                     settings=SamplingSettings(sampler="ddim", spacing="smart27", cfg=1.0), callback=seen.append)
    assert [i["step"] for i in seen] == list(range(27)) and seen[0]["total"] == 27


def test_cancel_stops_within_a_step():
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 2

    toy = ExactToy()
    with pytest.raises(Exception, match="cancel"):
        cascade.generate(stage(toy), Conditioning(embeds((0, 0, 0)), embeds((0, 0, 0))), width=8, height=8,
                         settings=FAST, cancel=cancel)
    assert toy.calls == 2


def test_noise_augmentation_matches_diffusers_add_noise():
    from diffusers import DDPMScheduler

    sr = stage(ExactToy(sr=True), "sr", resolution=32, lowres=8)
    low = torch.rand(2, 3, 8, 8) * 2 - 1
    gens = cascade.make_generators(5, 2)
    out = cascade.augment_lowres(sr, low, 32, 32, 250, gens)
    up = torch.nn.functional.interpolate(low, size=(32, 32), mode="bilinear", align_corners=True)
    eps = cascade.randn_like_items(up.shape, cascade.make_generators(5, 2))
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2").add_noise(up, eps, torch.tensor([250, 250]))
    assert torch.allclose(out["lowres_image"], ref, atol=1e-5)
    assert out["noise_level"].tolist() == [250.0, 250.0]


def test_super_resolve_resizes_any_input_and_conditions_on_it():
    toy = ExactToy(sr=True)
    big = torch.linspace(-0.8, 0.8, 40).view(1, 1, 1, 40).expand(1, 3, 40, 40)
    cond = Conditioning(embeds((0, 0, 0)), embeds((0, 0, 0)))
    out = cascade.super_resolve(stage(toy, "sr", 32, 8), cond, big, noise_level=0, settings=FAST)
    small = images.resize(big, 8, 8)
    expect = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=True)
    assert out.shape == (1, 3, 32, 32)
    assert (out - expect).abs().max() < 0.03  # the noise of level 0 (std ~ 0.006) stays
    assert all(float(n[0]) == 0 for n in toy.noise_levels)


def test_super_resolve_below_strength_one_is_sdedit_from_the_bicubic_upsampling():
    small = torch.rand(2, 3, 8, 8) * 1.6 - 0.8
    cond = Conditioning(embeds((0, 0, 0), (0, 0, 0)), embeds((0, 0, 0), (0, 0, 0)))
    s = SamplingSettings(sampler="euler", steps=20, cfg=1.0, spacing="karras", seed=5)
    seen = []
    out = cascade.super_resolve(stage(GaussToy(), "sr", 32, 8), cond, small, noise_level=50, settings=s,
                                strength=0.3, callback=seen.append)
    start = images.resize(small, 32, 32, mode="bicubic").clamp(-1, 1)
    ref = cascade.image_to_image(stage(GaussToy(), "sr", 32, 8), cond, start, strength=0.3, settings=s,
                                 lowres_image=small, noise_level=50)
    assert len(seen) == 6 and torch.equal(out, ref)
    with pytest.raises(ValueError, match="strength must be in"):
        cascade.super_resolve(stage(GaussToy(), "sr", 32, 8), cond, small, settings=s, strength=0.0)


def test_image_to_image_starts_at_the_strength_sigma_and_keeps_a_weak_edit_close():
    image = torch.rand(1, 3, 16, 16) * 1.6 - 0.8
    seen = []
    s = SamplingSettings(sampler="euler", steps=20, cfg=1.0, spacing="karras")
    out = cascade.image_to_image(stage(GaussToy()), Conditioning(embeds((0, 0, 0)), embeds((0, 0, 0))), image,
                                 strength=0.25, settings=s, callback=seen.append)
    grid = cascade.sigma_grid(stage(GaussToy()), s)
    assert len(seen) == 5 and math.isclose(seen[0]["sigma"], float(grid[15]), rel_tol=1e-6)
    assert out.shape == image.shape and not torch.allclose(out, image)
    weak = cascade.image_to_image(stage(ExactToy()), Conditioning(embeds((0.3, 0.3, 0.3)), embeds((0, 0, 0))),
                                  image, strength=1.0, settings=s)
    assert torch.allclose(weak, torch.full_like(weak, 0.3), atol=1e-4)


def test_inpaint_keeps_the_known_region_and_fills_the_mask():
    toy = ExactToy()
    image = torch.rand(1, 3, 16, 16) * 2 - 1
    mask = torch.zeros(16, 16)
    mask[4:12, 4:12] = 1
    s = SamplingSettings(sampler="euler", steps=5, cfg=1.0)
    out = inpaint_mod.inpaint(stage(toy), Conditioning(embeds((-0.4, 0.2, 0.6)), embeds((0, 0, 0))), image, mask,
                              settings=s, resample=3)
    inside = out[:, :, 4:12, 4:12]
    assert torch.allclose(inside, torch.tensor([-0.4, 0.2, 0.6]).view(1, 3, 1, 1).expand_as(inside), atol=1e-4)
    keep = (mask == 0).expand(1, 3, 16, 16)
    assert torch.equal(out[keep], image[keep])
    assert toy.calls == 5 * 3  # steps * resample


def test_inpaint_resampling_diffuses_back_with_the_step_variance():
    toy = GaussToy()
    image = torch.zeros(1, 3, 8, 8)
    mask = torch.ones(8, 8)
    s = SamplingSettings(sampler="euler", steps=3, cfg=1.0, seed=1, eta=0.0)
    cond = Conditioning(embeds((0, 0, 0)), embeds((0, 0, 0)))
    one = inpaint_mod.inpaint(stage(toy), cond, image, mask, settings=s, resample=1)
    ref = cascade.generate(stage(toy), cond, width=8, height=8, settings=s)
    # full mask, r = 1, eta = 0: the Euler ODE from the same noise (float32 rounding at sigma_max ~ 2e4)
    assert torch.allclose(one, ref, rtol=1e-2, atol=1e-4)
    two = inpaint_mod.inpaint(stage(toy), cond, image, mask, settings=s, resample=2)
    assert (two - ref).abs().max() > 20 * (one - ref).abs().max()


@pytest.mark.parametrize("call, match", [
    (lambda b, r, c: cascade.super_resolve(b, c, torch.zeros(1, 3, 8, 8), settings=FAST), "base stage"),
    (lambda b, r, c: cascade.generate(r, c, settings=FAST), "super-resolution stage"),
    (lambda b, r, c: cascade.generate(b, Conditioning(embeds((0, 0, 0), width=16), embeds((0, 0, 0), width=16)),
                                      settings=FAST), "T5"),
    (lambda b, r, c: cascade.generate(b, c, width=12, height=16, settings=FAST), "multiple of 8"),
    (lambda b, r, c: cascade.generate(b, c, width=1024, height=16, settings=FAST), "far beyond"),
    (lambda b, r, c: cascade.generate(b, c, batch_size=0, settings=FAST), "batch_size"),
    (lambda b, r, c: cascade.image_to_image(b, c, torch.zeros(0, 3, 8, 8), strength=0.5, settings=FAST), "batch 0"),
    (lambda b, r, c: inpaint_mod.inpaint(b, c, torch.zeros(1, 3, 16, 16), torch.ones(1, 64, 64), settings=FAST),
     "mask is 64x64"),
    (lambda b, r, c: inpaint_mod.inpaint(b, c, torch.zeros(1, 3, 16, 16), torch.zeros(16, 16), settings=FAST),
     "empty"),
    (lambda b, r, c: cascade.super_resolve(r, c, torch.zeros(1, 3, 8, 8), noise_level=1000, settings=FAST),
     "noise_level"),
    (lambda b, r, c: SamplingSettings(sampler="nope"), "unknown sampler"),
])
def test_bad_input_raises_a_value_error_naming_the_fix(call, match):
    base, sr = stage(ExactToy()), stage(ExactToy(sr=True), "sr", 32, 8)
    cond = Conditioning(embeds((0, 0, 0)), embeds((0, 0, 0)))
    with pytest.raises(ValueError, match=match):
        call(base, sr, cond)


def test_comfy_image_round_trip_and_mask():
    comfy = torch.rand(2, 5, 7, 4)
    lib = images.from_comfy_image(comfy)
    assert lib.shape == (2, 3, 5, 7) and lib.min() >= -1 and lib.max() <= 1
    assert torch.allclose(images.to_comfy_image(lib), comfy[..., :3], atol=1e-6)
    assert images.from_comfy_mask(torch.ones(5, 7)).shape == (1, 1, 5, 7)
    assert images.resize(lib, 3, 4).shape == (2, 3, 3, 4)
    assert images.to_pil(lib).size == (7, 5)
