"""Samplers: one signature for all, k-diffusion style, in VE sigma space (x = x0 + sigma * eps).

    sample_<name>(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, cancel=None, **opts) -> x

* denoiser: ``denoiser(x, sigma, **extra_args) -> x0`` (see `comfyui_imagen.denoisers`); sigma is passed as a [B]
  tensor. Samplers never look at the network's parameterization.
* x: the starting sample, noise * sigmas[0] for text-to-image (draw it with `randn_like_items`). Keep x in float32:
  in VE space it reaches ~4 * sigma_max (8e4 for DeepFloyd IF), past float16's range; run the network in half
  precision inside the denoiser instead.
* sigmas: 1-D, strictly descending, ending in 0 (`comfyui_imagen.respacing.get_sigmas`). Step i goes from sigmas[i] to
  sigmas[i + 1]; there are len(sigmas) - 1 steps. A grid may also end in a positive sigma, as continuous-time DDPM
  stops at its schedule's smallest noise level (imagen-pytorch's t = 0; ComfyUI's SplitSigmas' high part): the result
  is then the sample at that level. Every sampler's last step adds no noise (DDPM's "z ~ N(0, I) if t > 1, else
  z = 0", Ho et al. 2020 Algorithm 2): an ancestral last step ends on its deterministic part.
* callback: called after every step with one dict ``{"step": i, "total": n, "x": x after the step, "x0": the
  denoised prediction of this step, "sigma": sigmas[i], "sigma_next": sigmas[i + 1]}``.
* generator: the noise source of stochastic samplers; never the global RNG. A list of per-item generators
  (`make_generators(seed, batch)`: item k uses (seed + k) mod 2^64, so item k of a batch draws the noise of a batch of
  one at that seed; the images agree to the network's rounding, `comfyui_imagen.cascade`) or
  one torch.Generator for the whole batch. A stochastic sampler without one raises ValueError.
* cancel: a callable with no arguments checked before every step; when it returns True the sampler raises
  `Cancelled` (it may also raise its own exception, e.g. ComfyUI's interrupt).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence, Union

import torch

from .denoisers import sigma_batch

Generators = Union[Sequence[torch.Generator], torch.Generator, None]

# Seeds are 0 .. 2^64 - 1: torch.Generator.manual_seed's range and ComfyUI's seed widget (KSampler seeds
# torch.manual_seed with the widget's value as is). Item k of a batch uses seed + k modulo 2^64, so every seed works.
SEED_MAX = 2**64 - 1
# Heun's correction is a trapezoid in sigma: when a step divides sigma by more than this, an error in the second
# denoiser call is multiplied by about half that ratio (the first jump of a trailing or linspace grid on a cosine
# schedule, 2e4 -> 16, turns it into noise), so such a step is an Euler step (measured on the demo base below).
HEUN_MAX_RATIO = 3.0


class Cancelled(Exception):
    """Raised by a sampler when its `cancel` callable returns True."""


# --------------------------------------------------------------------------------------------------------------------
# noise
# --------------------------------------------------------------------------------------------------------------------

def make_generators(seed: int, batch_size: int, device: Union[str, torch.device] = "cpu") -> list[torch.Generator]:
    """One generator per batch item; item k is seeded with (seed + k) mod 2^64, so any seed 0 .. 2^64 - 1 (ComfyUI's
    seed widget) works and item k of a batch equals a batch of one at that seed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= int(seed) <= SEED_MAX:
        raise ValueError(f"seed must be an integer from 0 to 2^64 - 1 (ComfyUI's seed range), got {seed!r}")
    return [torch.Generator(device=device).manual_seed((int(seed) + k) & SEED_MAX) for k in range(batch_size)]


def randn_like_items(shape: Sequence[int], generators: Generators, *, dtype: torch.dtype = torch.float32,
                     device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """Standard normal noise of `shape`, item k drawn from generators[k] (in float32 on the generator's device, then
    cast and moved), so the noise does not depend on the batch size, dtype or device."""
    shape = tuple(shape)
    if isinstance(generators, torch.Generator):
        noise = torch.randn(shape, generator=generators, device=generators.device, dtype=torch.float32)
    elif generators is None:
        raise ValueError("noise needs generators: pass make_generators(seed, batch_size)")
    else:
        generators = list(generators)
        if len(generators) != shape[0]:
            raise ValueError(f"got {len(generators)} generators for a batch of {shape[0]}; pass one per item "
                             f"(make_generators(seed, {shape[0]}))")
        noise = torch.stack([torch.randn(shape[1:], generator=g, device=g.device, dtype=torch.float32)
                             for g in generators])
    return noise.to(device=device if device is not None else noise.device, dtype=dtype)


def _noise(x: torch.Tensor, generator: Generators, sampler: str) -> torch.Tensor:
    if generator is None:
        raise ValueError(f"{sampler} adds noise at every step: pass generator=make_generators(seed, batch_size)")
    return randn_like_items(x.shape, generator, dtype=x.dtype, device=x.device)


# --------------------------------------------------------------------------------------------------------------------
# the shared loop
# --------------------------------------------------------------------------------------------------------------------

def check_sigmas(sigmas) -> list[float]:
    """Validate a sampler grid (1-D, finite, strictly descending, ending in 0 or a positive sigma) and return it as
    Python floats."""
    sigmas = torch.as_tensor(sigmas).detach()
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 values ending in 0, got shape "
                         f"{tuple(sigmas.shape)}; build it with comfyui_imagen.respacing.get_sigmas")
    levels = [float(s) for s in sigmas.cpu().double()]
    if not all(math.isfinite(s) for s in levels):
        raise ValueError("sigmas contain NaN or Inf")
    if levels[-1] < 0:
        raise ValueError(f"sigmas must end in 0 (the clean image) or a positive noise level, got last value "
                         f"{levels[-1]}")
    if any(b >= a for a, b in zip(levels, levels[1:])):
        raise ValueError("sigmas must be strictly descending")
    return levels


def _steps(x: torch.Tensor, sigmas, cancel: Callable[[], bool] | None) -> Iterator[tuple[int, float, float]]:
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf; start from finite noise (randn_like_items(...) * sigmas[0])")
    levels = check_sigmas(sigmas)
    for i in range(len(levels) - 1):
        if cancel is not None and cancel():
            raise Cancelled(f"sampling cancelled before step {i + 1} of {len(levels) - 1}")
        yield i, levels[i], levels[i + 1]


def _last(i: int, sigmas) -> bool:
    """Whether step i is the grid's last, which adds no noise (see the module docstring)."""
    return i == len(sigmas) - 2


def _report(callback, i: int, sigmas, x, x0, s: float, s_next: float) -> None:
    if callback is not None:
        callback({"step": i, "total": len(sigmas) - 1, "x": x, "x0": x0, "sigma": s, "sigma_next": s_next})


def ancestral_step(s: float, s_next: float, eta: float = 1.0) -> tuple[float, float]:
    """(sigma_down, sigma_up) for an ancestral step from s to s_next: the deterministic part goes to sigma_down, noise
    of std sigma_up is added, and sigma_down^2 + sigma_up^2 = s_next^2. eta = 1 is DDPM's posterior variance
    (k-diffusion ``get_ancestral_step``; DDIM's sigma_eta, Song et al. 2021 eq. 16, divided by sqrt(alpha_bar_prev))."""
    if not eta or s_next == 0:
        return s_next, 0.0
    up = min(s_next, eta * math.sqrt(s_next ** 2 * (s ** 2 - s_next ** 2) / s ** 2))
    return math.sqrt(s_next ** 2 - up ** 2), up


# --------------------------------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------------------------------

def sample_euler(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, cancel=None):
    """Euler method on the probability-flow ODE dx/dsigma = (x - x0) / sigma, Karras et al. 2022 (Algorithm 2 with
    S_churn = 0 and no second-order correction)."""
    extra_args = extra_args or {}
    for i, s, s_next in _steps(x, sigmas, cancel):
        x0 = denoiser(x, sigma_batch(s, x), **extra_args)
        x = x + (x - x0) / s * (s_next - s)
        _report(callback, i, sigmas, x, x0, s, s_next)
    return x


def sample_heun(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, cancel=None):
    """Heun's second-order method on the probability-flow ODE, Karras et al. 2022 (Algorithm 1); the last step into
    sigma = 0, and any step that divides sigma by more than `HEUN_MAX_RATIO`, is an Euler step (the first step of
    a trailing grid on a cosine schedule, sigma 2e4 -> 16, would multiply the second call's error by ~600). At most
    2 * steps - 1 denoiser calls."""
    extra_args = extra_args or {}
    for i, s, s_next in _steps(x, sigmas, cancel):
        x0 = denoiser(x, sigma_batch(s, x), **extra_args)
        d = (x - x0) / s
        x_euler = x + d * (s_next - s)
        if s_next == 0 or s > HEUN_MAX_RATIO * s_next:
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, sigma_batch(s_next, x), **extra_args)) / s_next
            x = x + (d + d_next) / 2 * (s_next - s)
        _report(callback, i, sigmas, x, x0, s, s_next)
    return x


def _ancestral_loop(name, denoiser, x, sigmas, eta, s_noise, extra_args, callback, generator, cancel):
    extra_args = extra_args or {}
    for i, s, s_next in _steps(x, sigmas, cancel):
        x0 = denoiser(x, sigma_batch(s, x), **extra_args)
        down, up = ancestral_step(s, s_next, eta)
        x = x + (x - x0) / s * (down - s)
        if up > 0 and not _last(i, sigmas):
            x = x + _noise(x, generator, name) * (s_noise * up)
        _report(callback, i, sigmas, x, x0, s, s_next)
    return x


def sample_euler_ancestral(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, cancel=None,
                           eta: float = 1.0, s_noise: float = 1.0):
    """Euler ancestral sampling, Karras et al. 2022 / k-diffusion: an Euler step to sigma_down, then fresh noise of
    std sigma_up (`ancestral_step`); eta = 1 matches DDPM's posterior variance, eta = 0 is `sample_euler`."""
    return _ancestral_loop("sample_euler_ancestral", denoiser, x, sigmas, eta, s_noise, extra_args, callback,
                           generator, cancel)


def sample_ddim(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, cancel=None,
                eta: float = 0.0):
    """DDIM, Song et al. 2021 (eq. 12, with sigma_eta of eq. 16). In VE space DDIM's update
    x_prev = x0 + sqrt(sigma_next^2 - sigma_up^2) * eps + sigma_up * z is exactly an Euler-ancestral step, so eta = 0
    is the Euler ODE step and eta = 1 is DDPM's posterior variance. eps is recomputed from the (possibly thresholded)
    x0, as DeepFloyd IF does (diffusers' ``use_clipped_model_output=True``)."""
    return _ancestral_loop("sample_ddim", denoiser, x, sigmas, eta, 1.0, extra_args, callback, generator, cancel)


def sample_ddpm(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, cancel=None):
    """Ancestral DDPM sampling, Ho et al. 2020, with Nichol & Dhariwal 2021's learned variance when the denoiser has
    one (``learned_variance = True``, e.g. DeepFloyd IF), else the posterior variance beta~.

    With alpha_bar = 1 / (1 + sigma^2), for a step from sigma to sigma_next (retained steps of a respaced schedule):
        beta = 1 - alpha_bar / alpha_bar_next = (sigma^2 - sigma_next^2) / (1 + sigma^2),
        beta~ = beta (1 - alpha_bar_next) / (1 - alpha_bar),
        mean (VE) = x0 + (sigma_next / sigma)^2 (x - x0)                  (the posterior mean mu~(x_t, x0), eq. 7)
        "Sigma_theta(x_t, t) = exp(v log beta_t + (1 - v) log beta~_t)"   (Nichol & Dhariwal eq. 15; v = frac)
    and the VP noise std is divided by sqrt(alpha_bar_next) to move it to VE space."""
    extra_args = extra_args or {}
    learned = bool(getattr(denoiser, "learned_variance", False))
    for i, s, s_next in _steps(x, sigmas, cancel):
        if learned:
            x0, frac = denoiser(x, sigma_batch(s, x), return_variance=True, **extra_args)
        else:
            x0, frac = denoiser(x, sigma_batch(s, x), **extra_args), 0.0
        if s_next == 0:
            x = x0
        elif _last(i, sigmas):
            x = x0 + (s_next * s_next / (s * s)) * (x - x0)  # the posterior mean, no noise
        else:
            s2, n2 = s * s, s_next * s_next
            log_beta = math.log((s2 - n2) / (1 + s2))
            log_beta_tilde = log_beta + math.log(n2 * (1 + s2) / ((1 + n2) * s2))
            log_var = log_beta_tilde + frac * (log_beta - log_beta_tilde)
            log_var = (log_var.to(device=x.device, dtype=x.dtype) if isinstance(log_var, torch.Tensor)
                       else torch.full((), log_var, dtype=x.dtype, device=x.device))  # filled there: no CUDA sync
            std = torch.exp(0.5 * (log_var + math.log1p(n2)))
            x = x0 + (n2 / s2) * (x - x0) + std * _noise(x, generator, "sample_ddpm")
        _report(callback, i, sigmas, x, x0, s, s_next)
    return x


def _dpmpp_2m_loop(name, denoiser, x, sigmas, eta, s_noise, extra_args, callback, generator, cancel):
    extra_args = extra_args or {}
    x0_prev, h_prev = None, None
    for i, s, s_next in _steps(x, sigmas, cancel):
        x0 = denoiser(x, sigma_batch(s, x), **extra_args)
        if s_next == 0:
            x = x0
        else:
            h = math.log(s / s_next)
            eta_h = eta * h
            keep = -math.expm1(-h - eta_h)
            x = (s_next / s) * math.exp(-eta_h) * x + keep * x0
            if x0_prev is not None:  # second order from the previous x0 (midpoint form, 1 / (2r) = h / (2 h_prev))
                x = x + (0.5 * keep * h / h_prev) * (x0 - x0_prev)
            if eta_h > 0 and not _last(i, sigmas):
                x = x + _noise(x, generator, name) * (s_next * math.sqrt(-math.expm1(-2 * eta_h)) * s_noise)
            h_prev = h
        x0_prev = x0
        _report(callback, i, sigmas, x, x0, s, s_next)
    return x


def sample_dpmpp_2m(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, cancel=None):
    """DPM-Solver++(2M), Lu et al. 2022 (Algorithm 2): multistep second order in data prediction, first order on the
    first step and on the last step into sigma = 0. With lambda = -log sigma and h = lambda_next - lambda:
    x_next = (sigma_next / sigma) x - expm1(-h) D, D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h
    (this is `sample_dpmpp_2m_sde` with eta = 0)."""
    return _dpmpp_2m_loop("sample_dpmpp_2m", denoiser, x, sigmas, 0.0, 0.0, extra_args, callback, generator, cancel)


def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, cancel=None,
                        eta: float = 1.0, s_noise: float = 1.0):
    """DPM-Solver++(2M) SDE, Lu et al. 2022 (SDE variant, midpoint; as k-diffusion and diffusers' sde-dpmsolver++):
    x_next = (sigma_next / sigma) e^(-eta h) x + (1 - e^(-h - eta h)) x0
             + 1/(2r) (1 - e^(-h - eta h)) (x0 - x0_prev) + sigma_next sqrt(1 - e^(-2 eta h)) z."""
    return _dpmpp_2m_loop("sample_dpmpp_2m_sde", denoiser, x, sigmas, eta, s_noise, extra_args, callback, generator,
                          cancel)


def sample_repaint(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, cancel=None, known,
                   mask, resample: int = 4, eta: float = 1.0):
    """RePaint, Lugmayr et al. 2022: inpainting with any denoiser by resampling; ``mask`` [B, 1, H, W] marks the
    pixels to regenerate (1), ``known`` [B, C, H, W] holds the rest, which the result keeps exactly.

    "we can sample the known regions m (.) x_t at any time step t ... while the unknown regions (1 - m) (.) x_t are
    sampled from the model ... x_{t-1} = m (.) x^known_{t-1} + (1 - m) (.) x^unknown_{t-1}" (eq. 8-9; there m marks
    the known pixels). The reverse step is ancestral (`ancestral_step` with ``eta``: 1 = DDPM's posterior variance,
    0 = DDIM). "Resampling": after a step the merged sample is diffused back, x_t ~ N(sqrt(1 - beta_t) x_{t-1},
    beta_t I) - in VE space noise of variance sigma^2 - sigma_next^2 - and the step redone, ``resample`` times in
    all (their r; jump length 1). Start from ``known + noise * sigmas[0]``. Costs steps * resample denoiser calls.
    """
    extra_args = extra_args or {}
    for i, s, s_next in _steps(x, sigmas, cancel):
        down, up = ancestral_step(s, s_next, eta)
        for u in range(resample):
            if u and cancel is not None and cancel():  # the first pass was checked by the shared loop
                raise Cancelled(f"inpainting cancelled in step {i + 1} of {len(sigmas) - 1}")
            x0 = denoiser(x, sigma_batch(s, x), **extra_args)
            x = x0 + (down / s) * (x - x0)
            if up > 0 and not _last(i, sigmas):
                x = x + _noise(x, generator, "sample_repaint") * up
            merged = known + _noise(x, generator, "sample_repaint") * s_next if s_next > 0 else known
            x = mask * x + (1 - mask) * merged
            if u < resample - 1 and s_next > 0:
                x = x + _noise(x, generator, "sample_repaint") * math.sqrt(s * s - s_next * s_next)
        _report(callback, i, sigmas, x, mask * x0 + (1 - mask) * known, s, s_next)
    return x


# What users pick for text-to-image, super-resolution and image-to-image; `sample_repaint` (which needs ``known``
# and ``mask``) is registered apart, for inpainting.
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
}
MASKED_SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"repaint": sample_repaint}
# The keyword options each sampler takes beyond the shared signature: callers pass only these (`sampler_options`).
SAMPLER_OPTIONS: dict[str, tuple[str, ...]] = {
    "ddim": ("eta",), "euler_ancestral": ("eta", "s_noise"), "dpmpp_2m_sde": ("eta", "s_noise"),
    "repaint": ("known", "mask", "resample", "eta"),
}


def get_sampler(name: str) -> Callable[..., torch.Tensor]:
    """The sampler function registered under `name` in `SAMPLERS` (or `MASKED_SAMPLERS`)."""
    found = SAMPLERS.get(name) or MASKED_SAMPLERS.get(name)
    if found is None:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
    return found


def sampler_options(name: str, **values) -> dict:
    """The options of `values` that sampler `name` declares in `SAMPLER_OPTIONS`, without the None ones (the
    sampler's default then holds)."""
    declared = SAMPLER_OPTIONS.get(name, ())
    return {k: v for k, v in values.items() if k in declared and v is not None}
