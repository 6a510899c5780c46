"""comfyui_imagen.external: k-diffusion-shaped sampler functions (ComfyUI's SAMPLER) over a stage.

The stand-in for ComfyUI's SAMPLER is k-diffusion's ``sample_dpmpp_2m`` as ComfyUI 0.3.x ships it (copied below,
``trange`` -> ``range``): in tensors, where ours computes its step sizes in Python floats, so the two agree to float32
rounding, not bit for bit. Runs on the tiny random stages of ``tests.comfy_helpers`` (real U-Nets, real guidance and
thresholding, real SR conditioning).
"""
from __future__ import annotations

import pytest
import torch

from comfyui_imagen import cascade, external
from comfyui_imagen.checkpoints import load_stage
from comfyui_imagen.samplers import Cancelled, make_generators, randn_like_items, sample_dpmpp_2m
from comfyui_imagen.settings import Conditioning, with_overrides
from comfyui_imagen.text.encoder import TextEmbeds
from tests.tiny_models import TEXT_WIDTH, write_tiny_stage

# float64: the algorithm (measured <= 4e-12). float32: the first step from sigma_max ~ 2e4 (the cosine schedule) loses
# ~1e-4 to cancellation in x0 = x - sigma eps on both sides, differently (tensor vs Python-float step sizes); the
# thresholded U-Net amplifies it to a measured 4e-4 (karras) .. 1.3e-3 (smart27): under 1/5 of an 8-bit level.
TOL64, TOL32 = 1e-9, 2e-3


@torch.no_grad()
def kd_sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """DPM-Solver++(2M)."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sigma_fn = lambda t: t.neg().exp()
    t_fn = lambda sigma: sigma.log().neg()
    old_denoised = None

    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if callback is not None:
            callback({'x': x, 'i': i, 'sigma': sigmas[i], 'sigma_hat': sigmas[i], 'denoised': denoised})
        t, t_next = t_fn(sigmas[i]), t_fn(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised
        else:
            h_last = t - t_fn(sigmas[i - 1])
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (sigma_fn(t_next) / sigma_fn(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("stages")
    write_tiny_stage(root / "base.safetensors", "base")
    write_tiny_stage(root / "sr.safetensors", "sr")
    return {role: root / f"{role}.safetensors" for role in ("base", "sr")}


@pytest.fixture(scope="module")
def stages(files):
    return {role: load_stage(path, dtype=torch.float32, device="cpu") for role, path in files.items()}


@pytest.fixture(scope="module")
def stages64(files):
    out = {role: load_stage(path, dtype=torch.float32, device="cpu") for role, path in files.items()}
    for stage in out.values():
        stage.unet.to(torch.float64)
    return out


def _cond(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.tensor([[True] * 5 + [False] * 3])
    return Conditioning(TextEmbeds(torch.randn(1, 8, TEXT_WIDTH, generator=g), mask),
                        TextEmbeds(torch.randn(1, 8, TEXT_WIDTH, generator=g) * 0.1, mask))


def _settings(stage, **changes):
    return with_overrides(stage.recommended.settings, **{"seed": 7, "steps": 6, "cfg": 3.0, "spacing": "karras",
                                                         "dynamic_threshold": 0.95, "sampler": "dpmpp_2m",
                                                         **changes})


@pytest.mark.parametrize("role", ["base", "sr"])
@pytest.mark.parametrize("spacing", ["karras", "trailing", "smart27"])
def test_in_float64_kdiffusion_dpmpp_2m_is_our_dpmpp_2m_over_the_stage_denoiser(stages64, role, spacing):
    stage = stages64[role]
    settings = _settings(stage, spacing=spacing)
    sigmas = stage.sigmas(settings).double()
    generators = make_generators(settings.seed, 2)
    side = stage.config.resolution // (4 if role == "sr" else 1)  # 64 px of the SR stage: a cheap conditioning
    x = randn_like_items((2, 3, side, side), generators, dtype=torch.float64) * sigmas[0]
    extra = (cascade.augment_lowres(stage, torch.rand(2, 3, 16, 16) * 2 - 1, side, side, 100, generators)
             if role == "sr" else None)
    theirs = external.sample_with(kd_sample_dpmpp_2m, stage, _cond(), settings, x, sigmas, extra=extra)
    args = cascade.text_args(_cond(), 2, x.device)
    args["cond"].update(extra or {})
    with torch.no_grad():
        ours = sample_dpmpp_2m(stage.denoiser(settings), x, sigmas, extra_args=args)
    assert theirs.dtype == torch.float64
    assert (theirs - ours).abs().max() <= TOL64


@pytest.mark.parametrize("spacing", ["karras", "trailing", "smart27"])
def test_kdiffusion_dpmpp_2m_on_a_base_stage_equals_ours_on_the_same_sigmas(stages, spacing):
    stage = stages["base"]
    settings = _settings(stage, spacing=spacing)
    sigmas = stage.sigmas(settings)
    ours = cascade.generate(stage, _cond(), batch_size=2, settings=settings)
    theirs = external.generate_with(stage, kd_sample_dpmpp_2m, _cond(), sigmas, batch_size=2, settings=settings)
    assert theirs.shape == ours.shape == (2, 3, 64, 64)
    assert (theirs - ours).abs().max() <= TOL32


@pytest.mark.parametrize("threshold", [None, 0.95])
def test_sr_stage_gets_the_same_lowres_conditioning_guidance_and_thresholding(stages, threshold):
    stage = stages["sr"]
    settings = _settings(stage, steps=4, dynamic_threshold=threshold)
    lowres = torch.rand(1, 3, 48, 40) * 2 - 1
    ours = cascade.super_resolve(stage, _cond(1), lowres, noise_level=100, strength=1.0, settings=settings)
    theirs = external.super_resolve_with(stage, kd_sample_dpmpp_2m, _cond(1), lowres, stage.sigmas(settings),
                                         noise_level=100, settings=settings)
    assert theirs.shape == (1, 3, 256, 256)
    assert (theirs - ours).abs().max() <= TOL32


def test_sr_tail_of_the_grid_starts_from_the_upsampling_as_super_resolve_below_strength_1(stages):
    stage = stages["sr"]
    settings = _settings(stage, steps=8)
    lowres = torch.rand(1, 3, 64, 64) * 2 - 1
    ours = cascade.super_resolve(stage, _cond(), lowres, noise_level=50, strength=0.5, settings=settings)
    tail = stage.sigmas(settings)[4:]  # the last 4 of 8 steps: what strength 0.5 runs
    theirs = external.super_resolve_with(stage, kd_sample_dpmpp_2m, _cond(), lowres, tail, noise_level=50,
                                         settings=settings)
    assert (theirs - ours).abs().max() <= TOL32


def test_the_sampler_sees_the_seed_and_options_but_the_network_does_not(stages):
    stage, seen = stages["base"], {}

    def sampler_fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        seen.update(extra_args=dict(extra_args), options=options, disable=disable)
        seen["model_sampling"] = model.inner_model.inner_model.model_sampling
        assert model.inner_model.model_patcher.get_model_object("model_sampling") is seen["model_sampling"]
        # ComfyUI's wrapper takes these kwargs; ours must swallow them rather than hand them to the U-Net
        x0 = model(x, sigmas[0] * x.new_ones(x.shape[0]), **extra_args, model_options={}, denoise_mask=None)
        callback({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": x0})
        return x0

    reports = []
    settings = _settings(stage)
    out = external.generate_with(stage, sampler_fn, _cond(), torch.tensor([10.0, 0.0]), settings=settings,
                                 extra_options={"eta": 0.5}, callback=reports.append)
    assert out.shape == (1, 3, 64, 64)
    assert seen["extra_args"] == {"seed": 7} and seen["options"] == {"eta": 0.5} and seen["disable"] is True
    noise = torch.randn(1, 3, 2, 2)
    assert torch.equal(seen["model_sampling"].noise_scaling(torch.tensor([3.0]), noise, torch.ones_like(noise)),
                       1 + 3 * noise)
    assert seen["model_sampling"].sigma_max == pytest.approx(stage.schedule.sigma_max)
    assert [(r["step"], r["total"], r["sigma"], r["sigma_next"]) for r in reports] == [(0, 1, 10.0, 0.0)]
    assert reports[0]["x0"] is not None


def test_cancel_is_checked_before_each_model_evaluation(stages):
    stage = stages["base"]
    with pytest.raises(Cancelled):
        external.generate_with(stage, kd_sample_dpmpp_2m, _cond(), stage.sigmas(_settings(stage)),
                               settings=_settings(stage), cancel=lambda: True)


@pytest.mark.parametrize("sigmas, message", [
    (torch.tensor([1.0]), "at least 2 values"),
    (torch.tensor([[2.0, 0.0]]), "1-D"),
    (torch.tensor([0.0, 1.0, 2.0]), "strictly descending"),
    (torch.tensor([2.0, float("nan"), 0.0]), "NaN"),
    ([2.0, 0.0], "1-D tensor"),
])
def test_bad_sigmas_are_refused_helpfully(stages, sigmas, message):
    with pytest.raises(ValueError, match=message):
        external.generate_with(stages["base"], kd_sample_dpmpp_2m, _cond(), sigmas)


def test_a_sampler_breaking_the_contract_is_named(stages):
    with pytest.raises(ValueError, match="k-diffusion's contract"):
        external.generate_with(stages["base"], lambda model, x, sigmas, **kw: x[:, :1], _cond(),
                               torch.tensor([5.0, 0.0]))


def test_roles_are_checked(stages):
    with pytest.raises(ValueError, match="super-resolution"):
        external.generate_with(stages["sr"], kd_sample_dpmpp_2m, _cond(), torch.tensor([5.0, 0.0]))
    with pytest.raises(ValueError):
        external.super_resolve_with(stages["base"], kd_sample_dpmpp_2m, _cond(), torch.zeros(1, 3, 64, 64),
                                    torch.tensor([5.0, 0.0]))


def test_a_sampler_hooking_comfyuis_guidance_is_refused(stages):
    def cfg_pp(model, x, sigmas, extra_args=None, **kw):
        return model(x, sigmas[0] * x.new_ones(x.shape[0]),
                     model_options={"sampler_post_cfg_function": [lambda args: args["denoised"]]})

    with pytest.raises(ValueError, match="CFG\\+\\+"):
        external.generate_with(stages["base"], cfg_pp, _cond(), torch.tensor([5.0, 0.0]))
