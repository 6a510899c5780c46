"""Schedules and sampling grids against diffusers (test-only oracle), DeepFloyd IF's presets and closed forms."""
import math

import numpy as np
import pytest
import torch

from comfyui_imagen.respacing import (IF_PRESETS, SPACINGS, get_sigmas, get_sigmas_exponential, get_sigmas_karras,
                                      if_timesteps, space_timesteps, timesteps_leading, timesteps_linspace,
                                      timesteps_trailing)
from comfyui_imagen.schedules import (ContinuousSchedule, DiscreteSchedule, alpha_bar_to_sigma, betas_linear,
                                      betas_squaredcos_cap_v2, get_schedule, log_snr_to_sigma, sigma_to_alpha_bar,
                                      sigma_to_log_snr)

diffusers = pytest.importorskip("diffusers")


@pytest.mark.parametrize("name", ["linear", "squaredcos_cap_v2"])
def test_betas_match_diffusers(name):
    from diffusers import DDPMScheduler

    ours = betas_linear() if name == "linear" else betas_squaredcos_cap_v2()
    theirs = DDPMScheduler(beta_schedule=name).betas.double()
    assert torch.allclose(ours, theirs, rtol=1e-6, atol=1e-9)
    ac = get_schedule(name).alphas_cumprod
    assert torch.allclose(ac, DDPMScheduler(beta_schedule=name).alphas_cumprod.double(), rtol=5e-5)


def test_cosine_matches_deepfloyd_if_formula_and_endpoints():
    """IF: betas_for_alpha_bar(1000, cos((t + 0.008) / 1.008 * pi / 2)^2), capped at 0.999."""
    betas = betas_squaredcos_cap_v2(1000)
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert betas[10].item() == pytest.approx(1 - f(11 / 1000) / f(10 / 1000), rel=1e-12)
    assert betas[-1].item() == 0.999
    s = get_schedule("cosine")
    assert s.num_timesteps == 1000 and 2e4 < s.sigma_max < 2.1e4 and s.sigma_min == pytest.approx(6.37e-3, rel=1e-2)


def test_conversions_are_inverse():
    sigma = torch.tensor([1e-3, 0.5, 1.0, 80.0, 2e4], dtype=torch.float64)
    assert torch.allclose(alpha_bar_to_sigma(sigma_to_alpha_bar(sigma)), sigma, rtol=1e-9)
    assert torch.allclose(log_snr_to_sigma(sigma_to_log_snr(sigma)), sigma, rtol=1e-12)
    assert sigma_to_alpha_bar(torch.tensor(1.0)).item() == 0.5 and sigma_to_log_snr(torch.tensor(1.0)).item() == 0


def test_discrete_sigma_to_t_matches_diffusers_and_round_trips():
    from diffusers import DPMSolverMultistepScheduler

    schedule = get_schedule("squaredcos_cap_v2")
    t = torch.tensor([0.0, 0.25, 1.0, 17.5, 500.0, 998.9, 999.0], dtype=torch.float64)
    assert torch.allclose(schedule.sigma_to_t(schedule.t_to_sigma(t)), t, atol=1e-9)
    sigmas = torch.tensor([0.01, 0.3, 1.0, 7.0, 150.0, 1e4], dtype=torch.float64)
    theirs = DPMSolverMultistepScheduler()._sigma_to_t(sigmas.numpy(), schedule.log_sigmas.numpy())
    assert np.allclose(schedule.sigma_to_t(sigmas).numpy(), theirs, atol=1e-9)
    assert schedule.sigma_to_t(torch.tensor([1e-9, 1e9])).tolist() == [0.0, 999.0]  # clamped outside the table
    assert schedule.sigma_to_t(torch.tensor(1.0, dtype=torch.float32)).dtype == torch.float32


def test_discrete_schedule_rejects_bad_tables():
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        DiscreteSchedule(torch.tensor([0.9, 0.0]))
    with pytest.raises(ValueError, match="strictly decrease"):
        DiscreteSchedule(torch.tensor([0.5, 0.9]))
    with pytest.raises(ValueError, match="unknown noise schedule 'cosin'.*squaredcos_cap_v2"):
        get_schedule("cosin")


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_continuous_schedules_match_imagen_pytorch_log_snr(kind):
    """imagen-pytorch: alpha_cosine_log_snr(t) = -log(cos((t + s)/(1 + s) pi/2)^-2 - 1) (its clamp at 1e-5 never
    binds for t in [0, 1]); beta_linear_log_snr(t) = -log(expm1(1e-4 + 10 t^2))."""
    s = ContinuousSchedule(kind)
    t = torch.linspace(0, 0.999, 11, dtype=torch.float64)
    if kind == "cosine":
        expected = -torch.log(torch.cos((t + 0.008) / 1.008 * math.pi * 0.5) ** -2 - 1)
    else:
        expected = -torch.log(torch.expm1(1e-4 + 10 * t ** 2))
    assert torch.allclose(s.log_snr(t), expected, rtol=1e-9, atol=1e-9)
    assert torch.allclose(s.sigma_to_time(s.time_to_sigma(t)), t, atol=1e-9)
    assert torch.allclose(s.sigma_to_t(s.time_to_sigma(t)), expected, atol=1e-9)  # conditioned on log-SNR
    by_time = ContinuousSchedule(kind, condition="time", time_scale=1000.0)
    assert torch.allclose(by_time.sigma_to_t(by_time.time_to_sigma(t)), t * 1000, atol=1e-6)
    assert torch.allclose(by_time.t_to_sigma(t * 1000), s.time_to_sigma(t), rtol=1e-9)


def test_if_presets_equal_diffusers_deepfloyd_if_tables():
    from diffusers.pipelines.deepfloyd_if import timesteps as tables

    for name in IF_PRESETS:
        assert if_timesteps(name) == getattr(tables, f"{name}_timesteps"), name


def test_space_timesteps_rules():
    steps = space_timesteps(300, "10,15,20")  # IF's docstring example: 100 steps strided to 10, then 15, then 20
    assert len(steps) == 45 and steps[-3:] == [22, 11, 0] and {99, 100, 199, 200, 299} <= set(steps)
    assert space_timesteps(300, [10, 15, 20]) == steps
    assert space_timesteps(1000, "ddim50") == list(range(980, -1, -20))
    with pytest.raises(ValueError, match="cannot take 200 steps from a section of 100"):
        space_timesteps(1000, [200] * 10)
    with pytest.raises(ValueError, match="comma-separated"):
        space_timesteps(1000, "fast")


@pytest.mark.parametrize("n", [1, 7, 20, 50])
def test_timestep_spacings_match_diffusers(n):
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    for spacing, ours in (("leading", timesteps_leading(n)), ("trailing", timesteps_trailing(n)),
                          ("linspace", timesteps_linspace(n))):
        cls = EulerDiscreteScheduler if spacing == "trailing" else DDIMScheduler
        sched = cls(timestep_spacing=spacing)
        sched.set_timesteps(n)
        assert ours == [int(t) for t in sched.timesteps], spacing


def test_get_sigmas_grids():
    schedule = get_schedule("linear")
    for spacing in SPACINGS:
        steps = None if spacing in IF_PRESETS else 12
        sigmas = get_sigmas(schedule, spacing, steps)
        assert sigmas.dtype == torch.float32 and sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all()), spacing
    assert torch.allclose(get_sigmas(schedule, "uniform", 10), get_sigmas(schedule, "trailing", 10))
    karras = get_sigmas_karras(5, 0.1, 10.0, rho=7.0)
    assert karras[0].item() == pytest.approx(10.0) and karras[4].item() == pytest.approx(0.1) and karras[5] == 0
    mid = ((10.0 ** (1 / 7) + 0.5 * (0.1 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7)
    assert karras[2].item() == pytest.approx(mid)
    expo = get_sigmas_exponential(3, 0.1, 10.0)
    assert torch.allclose(expo, torch.tensor([10.0, 1.0, 0.1, 0.0], dtype=torch.float64))
    cont = get_sigmas(ContinuousSchedule("cosine"), "uniform", 4, dtype=torch.float64)
    times = torch.tensor([1, 0.75, 0.5, 0.25], dtype=torch.float64)
    assert torch.allclose(cont[:-1], ContinuousSchedule("cosine").time_to_sigma(times))


def test_get_sigmas_bad_input_names_the_fix():
    schedule = get_schedule("linear")
    with pytest.raises(ValueError, match="unknown sigma spacing 'karas'.*karras"):
        get_sigmas(schedule, "karas", 10)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        get_sigmas(schedule, "karras", 0)
    with pytest.raises(ValueError, match="beyond the schedule.*1000"):
        get_sigmas(schedule, "trailing", 1001)
    with pytest.raises(ValueError, match="has 27 steps"):
        get_sigmas(schedule, "smart27", 30)
    with pytest.raises(ValueError, match="needs a discrete"):
        get_sigmas(ContinuousSchedule(), "leading", 10)
    with pytest.raises(ValueError, match="needs a number of steps"):
        get_sigmas(schedule, "karras")


def test_imagen_pytorch_float32_log_snr_caps_the_cosine_schedule_at_t_1():
    from comfyui_imagen.schedules import float32_log_snr

    top = float32_log_snr("cosine", 1.0)
    assert -34.5 < top < -33.5  # float32 cos(pi / 2) = -4.4e-8, not 0
    capped = ContinuousSchedule("cosine", log_snr_min=top)
    assert capped.sigma_max == pytest.approx(math.exp(-top / 2), rel=1e-9)
    assert capped.time_to_sigma(torch.tensor(0.5, dtype=torch.float64)) == ContinuousSchedule("cosine").time_to_sigma(
        torch.tensor(0.5, dtype=torch.float64))
    assert float32_log_snr("linear", 1.0) == pytest.approx(-math.log(math.expm1(10.0001)), rel=1e-5)
    grid = get_sigmas(capped, "uniform", 4, dtype=torch.float64)
    assert grid[-1] == pytest.approx(capped.sigma_min) and grid[-1] > 0  # imagen-pytorch's grid stops at t = 0
