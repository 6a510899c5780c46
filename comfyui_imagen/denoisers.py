"""Denoisers: one contract for every sampler, ``denoiser(x, sigma, **cond) -> x0``.

x is the VE sample x = x0 + sigma * eps ([B, C, H, W]); sigma is a scalar or a [B] tensor. The wrappers here turn a raw
network ``model(x_in, t, **cond)`` into that contract, converting its parameterization once so that samplers never
branch on it (k-diffusion's ``DiscreteEpsDDPMDenoiser`` / ``VDenoiser``):

    x_in = x / sqrt(1 + sigma^2)                          (the DDPM sample the network was trained on)
    t    = schedule.sigma_to_t(sigma)                     (the network's own timestep for sigma)
    eps:  x0 = x - sigma * eps
    v:    x0 = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v      (v = alpha eps - sigma_vp x0, Salimans & Ho 2022)
    x0:   x0 = output
    edm:  x0 = c_skip x + c_out F(c_in x, ln(sigma) / 4)      (Karras et al. 2022, Table 1; imagen-pytorch's Elucidated)

For guidance that works on the network's own output (`comfyui_imagen.guidance.CFGDenoiser`'s ``parallel``), each
wrapper also gives the direction of that output from x and x0 (`NetworkDenoiser.prediction_direction`).

Learned variance (Nichol & Dhariwal 2021, DeepFloyd IF: ``variance_type="learned_range"``): the network returns 2C
channels, the second half v in [-1, 1]. A denoiser whose attribute ``learned_variance`` is True accepts
``return_variance=True`` and then returns ``(x0, frac)`` with frac = (v + 1) / 2, the model's interpolation
"Sigma_theta = exp(v log beta_t + (1 - v) log beta~_t)" (eq. 15, with v there = our frac). `sample_ddpm` asks for it.
"""
from __future__ import annotations

from typing import Literal, Protocol, get_args

import torch

from .schedules import Schedule

# One home for the parameterization names (StageConfig's fields are typed with these).
PredictionType = Literal["epsilon", "v_prediction", "sample", "edm"]
VarianceType = Literal["fixed", "learned_range"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
VARIANCE_TYPES: tuple[str, ...] = get_args(VarianceType)


class Denoiser(Protocol):
    """``denoiser(x, sigma, **cond) -> x0``; optional ``learned_variance`` attribute (see module docstring)."""

    def __call__(self, x: torch.Tensor, sigma, **cond) -> torch.Tensor: ...


def sigma_batch(sigma, x: torch.Tensor) -> torch.Tensor:
    """sigma (float, 0-d or [B] tensor) as a [B] tensor on x's device, in x's dtype but at least float32 (IF's
    sigma_max ~ 2e4 squared overflows float16)."""
    dtype = torch.promote_types(x.dtype, torch.float32)
    if isinstance(sigma, (int, float)):  # filled on the device: no host-to-device copy (a CUDA stream sync) per step
        return torch.full((x.shape[0],), float(sigma), dtype=dtype, device=x.device)
    sigma = torch.as_tensor(sigma, device=x.device, dtype=dtype)
    if sigma.ndim == 0:
        return sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape [{x.shape[0]}] (one per batch item), "
                         f"got {tuple(sigma.shape)}")
    return sigma


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """[B] -> [B, 1, ..., 1] with `ndim` dimensions in all."""
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


class NetworkDenoiser:
    """Base wrapper: runs ``model(x / sqrt(1 + sigma^2), schedule.sigma_to_t(sigma), **cond)``; subclasses say how
    the output becomes x0 (`_to_x0`)."""

    prediction_type: PredictionType

    def __init__(self, model, schedule: Schedule, *, learned_variance: bool = False):
        self.model = model
        self.schedule = schedule
        self.learned_variance = bool(learned_variance)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={type(self.model).__name__}, schedule={self.schedule!r}, "
                f"learned_variance={self.learned_variance})")

    def __call__(self, x: torch.Tensor, sigma, *, return_variance: bool = False, **cond):
        sigma = sigma_batch(sigma, x)
        s = append_dims(sigma, x.ndim)
        # the network casts its inputs to its own dtype; its output comes back in x's (the samplers' float32)
        out = self.model(x * self._input_scale(s), self.schedule.sigma_to_t(sigma), **cond).to(x.dtype)
        frac = None
        if self.learned_variance:
            if out.shape[1] != 2 * x.shape[1]:
                raise ValueError(f"a learned-variance model must return {2 * x.shape[1]} channels "
                                 f"(prediction + variance), got {out.shape[1]}; is variance_type right?")
            out, v = out.split(x.shape[1], dim=1)
            frac = (v + 1) / 2
        elif out.shape[1] != x.shape[1]:
            raise ValueError(f"the model returned {out.shape[1]} channels for a {x.shape[1]}-channel input; "
                             f"if it predicts a variance too, use variance_type='learned_range'")
        x0 = self._to_x0(x, s, out).to(x.dtype)  # s is float32 at least: IF's sigma_max^2 overflows float16
        if return_variance:
            if frac is None:
                raise ValueError("return_variance=True needs a learned-variance denoiser (learned_variance=True)")
            return x0, frac
        return x0

    def _input_scale(self, s: torch.Tensor) -> torch.Tensor:
        """What x is multiplied by before the network sees it: 1 / sqrt(1 + sigma^2), the DDPM (VP) sample."""
        return (1 + s * s).rsqrt()

    def _to_x0(self, x: torch.Tensor, s: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def prediction_direction(self, x: torch.Tensor, sigma, x0: torch.Tensor) -> torch.Tensor:
        """A per-item positive or negative multiple of the network output that gives `x0` at (x, sigma): x0 is
        affine in the output, x0 = a x + b out with scalars a, b per item, so out is parallel to x0 - a x."""
        s = append_dims(sigma_batch(sigma, x), x.ndim)
        return x0 - self._to_x0(x, s, torch.zeros_like(x))


class EpsDenoiser(NetworkDenoiser):
    """Network predicts the noise eps: x0 = x - sigma * eps (Ho et al. 2020)."""

    prediction_type = "epsilon"

    def _to_x0(self, x, s, out):
        return x - s * out


class VDenoiser(NetworkDenoiser):
    """Network predicts v = alpha eps - sigma_vp x0 (Salimans & Ho 2022): x0 = alpha^2 x - sigma_vp v."""

    prediction_type = "v_prediction"

    def _to_x0(self, x, s, out):
        return x / (1 + s * s) - s * (1 + s * s).rsqrt() * out


class X0Denoiser(NetworkDenoiser):
    """Network predicts x0 itself."""

    prediction_type = "sample"

    def _to_x0(self, x, s, out):
        return out


class EDMDenoiser(NetworkDenoiser):
    """Karras et al. 2022's preconditioning, "D_theta(x; sigma) = c_skip(sigma) x + c_out(sigma) F_theta(c_in(sigma) x;
    c_noise(sigma))" (eq. 7) with Table 1's c_skip = sigma_data^2 / (sigma^2 + sigma_data^2), c_out = sigma sigma_data
    / sqrt(sigma^2 + sigma_data^2), c_in = 1 / sqrt(sigma^2 + sigma_data^2); c_noise = ln(sigma) / 4 is the schedule's
    `sigma_to_t` (`comfyui_imagen.schedules.EDMSchedule`). x is the VE sample itself (EDM's space is ours)."""

    prediction_type = "edm"

    def __init__(self, model, schedule: Schedule, *, learned_variance: bool = False, sigma_data: float = 0.5):
        if learned_variance:
            raise ValueError("an EDM-preconditioned network has no learned variance (variance_type='fixed')")
        if not sigma_data > 0:
            raise ValueError(f"sigma_data must be positive (imagen-pytorch: 0.5), got {sigma_data!r}")
        super().__init__(model, schedule)
        self.sigma_data = float(sigma_data)

    def _input_scale(self, s):
        return (s * s + self.sigma_data ** 2).rsqrt()

    def _to_x0(self, x, s, out):
        d2 = self.sigma_data ** 2
        return d2 / (s * s + d2) * x + s * self.sigma_data * (s * s + d2).rsqrt() * out


_WRAPPERS = {cls.prediction_type: cls for cls in (EpsDenoiser, VDenoiser, X0Denoiser, EDMDenoiser)}


def make_denoiser(model, schedule: Schedule, prediction_type: str = "epsilon",
                  variance_type: str = "fixed", *, sigma_data: float = 0.5) -> NetworkDenoiser:
    """The wrapper for a network's `prediction_type` ("epsilon", "v_prediction", "sample", "edm" with `sigma_data`)
    and `variance_type` ("fixed", or "learned_range" for DeepFloyd IF's 6-channel output)."""
    if prediction_type not in _WRAPPERS:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; expected one of {list(PREDICTION_TYPES)}")
    if variance_type not in VARIANCE_TYPES:
        raise ValueError(f"unknown variance_type {variance_type!r}; expected one of {list(VARIANCE_TYPES)}")
    extra = {"sigma_data": sigma_data} if prediction_type == "edm" else {}
    return _WRAPPERS[prediction_type](model, schedule, learned_variance=variance_type == "learned_range", **extra)
