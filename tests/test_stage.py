"""`Stage` (the model-family seam), its recommended settings, the sampler option registry and the shared checks."""
from __future__ import annotations

import pytest
import torch

from comfyui_imagen.denoisers import EpsDenoiser
from comfyui_imagen.guidance import CFGDenoiser, Thresholded
from comfyui_imagen.samplers import SAMPLER_OPTIONS, SAMPLERS, get_sampler, sample_repaint, sampler_options
from comfyui_imagen.settings import (DEFAULT_BASE, DEFAULT_SR, IF_STAGE_I, IF_STAGE_II, SamplingSettings,
                                     StageDefaults)
from comfyui_imagen.checkpoints import if_stage_config
from comfyui_imagen.stage import Stage, StageConfig
from comfyui_imagen.unet import TINY_BASE, TINY_SR, ImagenUNet
from comfyui_imagen.checks import check_int


def test_old_import_places_still_work():
    from comfyui_imagen import checkpoints, inpaint
    from comfyui_imagen.checkpoints.stage import Stage as OldStage
    from comfyui_imagen.checkpoints.stage import StageConfig as OldConfig

    assert OldStage is Stage and OldConfig is StageConfig and checkpoints.Stage is Stage
    assert inpaint.inpaint.__module__ == "comfyui_imagen.cascade"


def test_recommended_settings_come_from_the_file_or_the_role():
    base = StageConfig(role="base", resolution=64, unet=TINY_BASE)
    assert Stage(ImagenUNet(TINY_BASE), base).recommended is DEFAULT_BASE
    sr = StageConfig(role="sr", resolution=256, lowres_resolution=64, unet=TINY_SR)
    assert Stage(ImagenUNet(TINY_SR), sr).recommended is DEFAULT_SR
    assert DEFAULT_SR.noise_level == 100 and DEFAULT_SR.strength == 0.15
    own = StageDefaults(SamplingSettings(sampler="heun", steps=9, cfg=2.0, spacing="karras"))
    stored = base.replace(sampling=own)
    assert StageConfig.from_dict(stored.to_dict()) == stored  # round trip through the file's JSON
    assert Stage(None, stored).recommended == own
    assert "sampling" not in base.to_dict()  # a stage without defaults writes what stage-v1 readers know


def test_if_stages_recommend_ifs_published_settings():
    one = if_stage_config(TINY_BASE.replace(out_channels=6))
    two = if_stage_config(TINY_SR.replace(out_channels=6))
    assert one.sampling.settings == IF_STAGE_I and one.sampling.noise_level is None
    assert two.sampling.settings == IF_STAGE_II and (two.sampling.noise_level, two.sampling.strength) == (250, 1.0)
    assert (IF_STAGE_I.threshold_max, IF_STAGE_II.threshold_max) == (1.5, 1.0)


def test_an_sr_stage_default_needs_a_noise_level():
    with pytest.raises(ValueError, match="noise_level"):
        StageConfig(role="sr", resolution=256, lowres_resolution=64, unet=TINY_SR,
                    sampling=StageDefaults(SamplingSettings()))
    with pytest.raises(ValueError, match="unknown sampling settings"):
        StageDefaults.from_dict({"settings": {"sampler": "euler", "churn": 1}})


def test_denoiser_assembles_parameterization_guidance_and_the_threshold_cap():
    stage = Stage(ImagenUNet(TINY_BASE), StageConfig(role="base", resolution=64, unet=TINY_BASE))
    d = stage.denoiser(SamplingSettings(cfg=3.0, dynamic_threshold=0.9))
    assert isinstance(d, Thresholded) and isinstance(d.denoiser, CFGDenoiser)
    assert isinstance(d.denoiser.denoiser, EpsDenoiser) and d.denoiser.scale == 3.0
    assert (d.mode, d.percentile, d.max_value) == ("dynamic", 0.9, DEFAULT_BASE.settings.threshold_max)
    assert stage.denoiser(SamplingSettings(threshold_max=2.5)).max_value == 2.5
    assert stage.denoiser(SamplingSettings(dynamic_threshold=None)).mode == "static"
    assert stage.schedule is stage.schedule  # computed once
    grid = stage.sigmas(SamplingSettings(spacing="smart27"))
    assert grid.numel() == 28 and float(grid[-1]) == 0


def test_sampler_options_are_declared_not_inspected():
    assert sampler_options("euler", eta=0.5) == {}
    assert sampler_options("ddim", eta=0.5, s_noise=2.0) == {"eta": 0.5}
    assert sampler_options("euler_ancestral", eta=None, s_noise=0.9) == {"s_noise": 0.9}
    assert get_sampler("repaint") is sample_repaint and "repaint" not in SAMPLERS
    assert set(SAMPLER_OPTIONS) <= set(SAMPLERS) | {"repaint"}
    with pytest.raises(ValueError, match="unknown sampler"):
        get_sampler("lms")


def test_repaint_keeps_known_pixels_and_draws_the_mask_from_the_denoiser():
    target = torch.tensor([0.5, -0.25, 0.75]).view(1, 3, 1, 1)

    def exact(x, sigma, **_):  # data is one colour: x0 is known exactly
        return target.expand_as(x)

    known = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.0])
    g = torch.Generator().manual_seed(0)
    out = sample_repaint(exact, known + torch.randn(1, 3, 8, 8, generator=g) * 80, sigmas, generator=g,
                         known=known, mask=mask, resample=3)
    assert torch.equal(out * (1 - mask), known * (1 - mask))
    assert torch.allclose(out[..., 2:6, 2:6], target.expand(1, 3, 4, 4), atol=1e-6)


@pytest.mark.parametrize("value, ok", [(3, True), (64.0, True), (True, False), ("7", False), (2.5, False),
                                       (float("nan"), False), (0, False), (11, False)])
def test_check_int_takes_whole_numbers_in_range(value, ok):
    if ok:
        assert check_int(value, "n", 1, 64) == int(value)
    else:
        high = 10 if value == 11 else 64
        with pytest.raises(ValueError, match=f"n must be an integer from 1 to {high}, got"):
            check_int(value, "n", 1, high)
