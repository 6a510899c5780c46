"""Samplers on closed-form problems, per-item determinism, callbacks, cancellation, bad input, import isolation."""
import math
import re
import subprocess
import sys

import pytest
import torch

from comfyui_imagen.respacing import get_sigmas_karras
from comfyui_imagen.samplers import (SAMPLERS, Cancelled, ancestral_step, check_sigmas, get_sampler,
                                     make_generators, randn_like_items)

DETERMINISTIC = ["euler", "heun", "dpmpp_2m", "ddim"]
STOCHASTIC = ["ddpm", "euler_ancestral", "dpmpp_2m_sde"]
MU, S = 0.3, 0.5  # toy data: every pixel ~ N(MU, S^2), independently


def gaussian_denoiser(x, sigma, **_):
    """The exact E[x0 | x] for x0 ~ N(MU, S^2), x = x0 + sigma eps: (S^2 x + sigma^2 MU) / (S^2 + sigma^2)."""
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
    return (S * S * x + s2 * MU) / (S * S + s2)


def test_registry_has_every_sampler_with_one_signature():
    assert set(SAMPLERS) == set(DETERMINISTIC + STOCHASTIC)
    for name, fn in SAMPLERS.items():
        assert get_sampler(name) is fn
        code = fn.__code__
        assert code.co_varnames[:3] == ("denoiser", "x", "sigmas"), name
        assert {"extra_args", "callback", "generator", "cancel"} <= set(code.co_varnames[3:code.co_argcount
                                                                                        + code.co_kwonlyargcount])
        assert re.search(r"(et al\.|Dhariwal) 20\d\d", fn.__doc__.split("\n")[0]), name  # names algorithm + paper


def test_get_sampler_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown sampler 'lms'.*euler_ancestral"):
        get_sampler("lms")


@pytest.mark.parametrize("name", DETERMINISTIC + STOCHASTIC)
def test_known_x0_is_recovered_exactly(name):
    """A denoiser that always answers the true x0 leaves x0 after the last step (into sigma = 0), and every
    intermediate state is x0 plus noise of std sigma (checked through the mean over many pixels)."""
    x0 = torch.linspace(-1, 1, 2 * 3 * 16 * 16).reshape(2, 3, 16, 16)
    sigmas = get_sigmas_karras(12, 0.02, 80.0).float()
    gens = make_generators(0, 2)
    x = x0 + randn_like_items(x0.shape, gens) * sigmas[0]
    seen = []
    out = get_sampler(name)(lambda x, s, **k: x0.clone(), x, sigmas, generator=gens,
                            callback=lambda d: seen.append((d["x"] - x0).std().item() / max(d["sigma_next"], 1e-9)))
    assert torch.allclose(out, x0, atol=1e-5)
    assert all(0.85 < r < 1.15 for r in seen[:-1]), seen  # noise std tracks sigma_next


def _ode_error(name, steps):
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 80.0
    exact = MU + (x - MU) * S / math.sqrt(S * S + 80.0 ** 2)
    return (get_sampler(name)(gaussian_denoiser, x, get_sigmas_karras(steps, 0.002, 80.0).double()) - exact).abs().max()


@pytest.mark.parametrize("name,order,tol", [("euler", 1, 0.07), ("ddim", 1, 0.07), ("heun", 2, 5e-3),
                                            ("dpmpp_2m", 2, 5e-3)])
def test_gaussian_probability_flow_ode_exact_solution_and_order(name, order, tol):
    """For Gaussian data the probability-flow ODE dx/dsigma = (x - D(x, sigma)) / sigma is solved in closed form:
    x(sigma) = MU + (x(sigma_max) - MU) sqrt((S^2 + sigma^2) / (S^2 + sigma_max^2)). Deterministic samplers approach
    it at their order: doubling the steps divides the error by ~2 (Euler, DDIM) or ~4 (Heun, DPM-Solver++(2M))."""
    err40, err80 = _ode_error(name, 40), _ode_error(name, 80)
    assert err80 < tol
    assert 0.8 * 2 ** order < err40 / err80 < 1.2 * 2 ** order


def test_ddpm_with_fixed_variance_is_euler_ancestral_eta_1_and_ddim_eta_1():
    """DDPM's posterior-variance step in VE space is the eta = 1 ancestral step (Song et al. 2021: DDIM with eta = 1
    is DDPM), so the three samplers give the same trajectory for the same noise."""
    sigmas = get_sigmas_karras(15, 0.01, 50.0).double()
    outs = []
    for name, opts in (("ddpm", {}), ("euler_ancestral", {}), ("ddim", {"eta": 1.0})):
        gens = make_generators(4, 2)
        x = randn_like_items((2, 3, 4, 4), gens, dtype=torch.float64) * sigmas[0]
        outs.append(get_sampler(name)(gaussian_denoiser, x, sigmas, generator=gens, **opts))
    assert torch.allclose(outs[0], outs[1], atol=1e-12) and torch.allclose(outs[0], outs[2], atol=1e-12)


def _ancestral_predicted_std(sigmas, eta=1.0):
    """Exact std of an ancestral sampler's output for N(MU, S^2) data and the exact denoiser: every step maps
    y = x - MU to c y + sigma_up z with c = (S^2 + sigma_down sigma) / (S^2 + sigma^2),
    so Var' = c^2 Var + sigma_up^2."""
    var = float(sigmas[0]) ** 2
    for s, n in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        down, up = ancestral_step(s, n, eta)
        var = ((S * S + down * s) / (S * S + s * s)) ** 2 * var + up ** 2
    return math.sqrt(var)


@pytest.mark.parametrize("name,steps", [("ddpm", 30), ("euler_ancestral", 30), ("dpmpp_2m_sde", 120)])
def test_stochastic_samplers_reach_the_data_distribution(name, steps):
    """Ancestral / SDE sampling with the exact denoiser of N(MU, S^2) data: the mean is MU, and the std is the exact
    finite-step value (ancestral; it is below S at 30 steps) or S (2M SDE, at 120 steps)."""
    gens = make_generators(3, 1)
    sigmas = get_sigmas_karras(steps, 0.002, 80.0).double()
    x = randn_like_items((1, 1, 128, 128), gens, dtype=torch.float64) * 80.0
    out = get_sampler(name)(gaussian_denoiser, x, sigmas, generator=gens)
    std = _ancestral_predicted_std(sigmas) if name != "dpmpp_2m_sde" else S
    assert abs(out.mean().item() - MU) < 0.015
    assert abs(out.std().item() - std) < 0.01, (out.std().item(), std)


@pytest.mark.parametrize("name", STOCHASTIC + ["ddim"])
def test_item_k_of_a_batch_equals_a_batch_of_one_seeded_seed_plus_k(name):
    sigmas = get_sigmas_karras(10, 0.01, 20.0)
    opts = {"eta": 0.5} if name == "ddim" else {}

    def run(seed, batch):
        gens = make_generators(seed, batch)
        x = randn_like_items((batch, 3, 8, 8), gens) * sigmas[0]
        return get_sampler(name)(gaussian_denoiser, x, sigmas, generator=gens, **opts)

    batch = run(100, 3)
    for k in range(3):
        assert torch.equal(batch[k:k + 1], run(100 + k, 1))
    assert not torch.allclose(batch[0], batch[1])


def test_randn_like_items_independent_of_dtype_and_batch():
    a = randn_like_items((3, 2, 4, 4), make_generators(7, 3))
    b = randn_like_items((1, 2, 4, 4), make_generators(9, 1), dtype=torch.float64)
    assert torch.equal(a[2:3].double(), b)
    with pytest.raises(ValueError, match="one per item"):
        randn_like_items((2, 2), make_generators(0, 3))
    with pytest.raises(ValueError, match="make_generators"):
        randn_like_items((2, 2), None)
    single = torch.Generator().manual_seed(5)
    assert randn_like_items((2, 3), single).shape == (2, 3)


def test_callback_reports_every_step_and_cancel_stops():
    sigmas = get_sigmas_karras(6, 0.01, 10.0)
    x = torch.ones(1, 1, 2, 2) * 10
    seen = []
    get_sampler("heun")(gaussian_denoiser, x, sigmas, callback=seen.append)
    assert [d["step"] for d in seen] == list(range(6)) and all(d["total"] == 6 for d in seen)
    assert seen[0]["sigma"] == pytest.approx(10.0) and seen[-1]["sigma_next"] == 0.0
    assert set(seen[0]) == {"step", "total", "x", "x0", "sigma", "sigma_next"}

    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled, match="before step 4 of 6"):
        get_sampler("euler")(gaussian_denoiser, x, sigmas, cancel=cancel)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_bad_input_is_a_value_error(name):
    sampler = get_sampler(name)
    sigmas = get_sigmas_karras(4, 0.1, 10.0)
    x = torch.zeros(1, 1, 2, 2)
    for bad in (torch.tensor([float("nan")]), torch.tensor([float("inf")])):
        with pytest.raises(ValueError, match="NaN or Inf"):
            sampler(gaussian_denoiser, x + bad, sigmas, generator=make_generators(0, 1))
    with pytest.raises(ValueError, match="end in 0.*or a positive"):
        sampler(gaussian_denoiser, x, torch.tensor([1.0, -0.5]), generator=make_generators(0, 1))
    with pytest.raises(ValueError, match="strictly descending"):
        sampler(gaussian_denoiser, x, torch.tensor([1.0, 2.0, 0.0]), generator=make_generators(0, 1))


@pytest.mark.parametrize("name", STOCHASTIC)
def test_stochastic_sampler_without_generator_says_how(name):
    with pytest.raises(ValueError, match="make_generators"):
        get_sampler(name)(gaussian_denoiser, torch.zeros(1, 1, 2, 2), get_sigmas_karras(3, 0.1, 1.0))


def test_check_sigmas_and_ancestral_step():
    assert check_sigmas(torch.tensor([2.0, 1.0, 0.0])) == [2.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="1-D"):
        check_sigmas(torch.tensor([0.0]))
    down, up = ancestral_step(2.0, 1.0, 1.0)
    assert down ** 2 + up ** 2 == pytest.approx(1.0)
    assert up == pytest.approx(math.sqrt(1.0 * (4 - 1) / 4))  # DDPM posterior std in VE units
    assert ancestral_step(2.0, 1.0, 0.0) == (1.0, 0.0) and ancestral_step(2.0, 0.0, 1.0) == (0.0, 0.0)


def test_importing_the_library_loads_no_comfyui_and_touches_no_network():
    code = """
import socket, sys, pkgutil, importlib
def no_network(*a, **k):
    raise RuntimeError("network access at import time")
socket.socket.connect = socket.socket.connect_ex = no_network
socket.create_connection = socket.getaddrinfo = no_network
import comfyui_imagen
for mod in ("schedules", "respacing", "denoisers", "guidance", "samplers"):
    importlib.import_module("comfyui_imagen." + mod)
for info in pkgutil.walk_packages(comfyui_imagen.__path__, "comfyui_imagen."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m.split(".")[0] in {"comfy", "folder_paths", "nodes", "server", "diffusers"})
print("BAD", bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "BAD []" in out.stdout, out.stdout


@pytest.mark.parametrize("name", ["ddpm", "euler_ancestral", "ddim"])
def test_a_grid_ending_above_zero_ends_on_the_posterior_mean_without_noise(name):
    """imagen-pytorch's continuous-time DDPM stops at t = 0, sigma(0) > 0, and its last step adds no noise: the
    result is the posterior mean x0 + (s1 / s0)^2 (x - x0) (Ho et al. 2020, Algorithm 2's z = 0 at the last step).
    No generator is passed, so drawing noise on that step would raise."""
    x = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0)) * 4.0
    s0, s1 = 4.0, 0.5
    options = {"eta": 1.0} if name == "ddim" else {}
    out = get_sampler(name)(gaussian_denoiser, x, torch.tensor([s0, s1]), **options)
    x0 = gaussian_denoiser(x, torch.full((2,), s0))
    assert torch.allclose(out, x0 + (s1 / s0) ** 2 * (x - x0), atol=1e-6)


def test_a_grid_ending_above_zero_runs_the_earlier_steps_as_before():
    """Only the last step changes: the steps before it draw the same noise and land where a grid ending in 0 would."""
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 8.0
    runs = []
    for last in (0.5, 0.0):
        seen = []
        get_sampler("euler_ancestral")(gaussian_denoiser, x, torch.tensor([8.0, 2.0, last]),
                                       generator=make_generators(3, 1), callback=lambda info: seen.append(info["x"]))
        runs.append(seen)
    assert torch.equal(runs[0][0], runs[1][0]) and not torch.equal(runs[0][1], runs[1][1])
