"""Noise schedules seen as k-diffusion style VE sigmas.

Every schedule here is read in one space: x = x0 + sigma * eps, with

    sigma = sqrt((1 - alpha_bar) / alpha_bar),   alpha_bar = 1 / (1 + sigma^2),   log_snr = -2 log sigma,

so a DDPM sample x_vp = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps is x_vp = x * sqrt(alpha_bar). A schedule maps a
sigma to the timestep the network was trained with (`sigma_to_t`) and back (`t_to_sigma`). Two kinds exist:

* `DiscreteSchedule`: DDPM's 0..T-1 integer timesteps (linear betas, Ho et al. 2020; ``squaredcos_cap_v2``, Nichol &
  Dhariwal 2021, the one DeepFloyd IF uses). Between the integers, t is interpolated in log-sigma as in k-diffusion's
  ``DiscreteSchedule``.
* `ContinuousSchedule`: continuous time in [0, 1] with a closed-form log-SNR (cosine and linear, as imagen-pytorch reads
  the Imagen paper); the network is conditioned on log-SNR (imagen-pytorch) or on time * `time_scale`.
* `EDMSchedule`: Karras et al. 2022's noise levels, sigma itself in [sigma_min, sigma_max], the network conditioned on
  ln(sigma) / 4 (imagen-pytorch's ElucidatedImagen).

Sampling grids (sigma spacings, DeepFloyd IF's respacing presets) live in `comfyui_imagen.respacing`.
All tables are float64; results come back in the dtype and device of the input.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch

SCHEDULES = ("linear", "squaredcos_cap_v2", "cosine", "continuous_cosine", "continuous_linear", "edm")


# --------------------------------------------------------------------------------------------------------------------
# conversions between alpha_bar, sigma and log-SNR (elementwise, any float tensor)
# --------------------------------------------------------------------------------------------------------------------

def sigma_to_alpha_bar(sigma: torch.Tensor) -> torch.Tensor:
    """alpha_bar = 1 / (1 + sigma^2)."""
    return 1.0 / (1.0 + sigma * sigma)


def alpha_bar_to_sigma(alpha_bar: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - alpha_bar) / alpha_bar)."""
    return ((1.0 - alpha_bar) / alpha_bar).sqrt()


def sigma_to_log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """log_snr = log(alpha_bar / (1 - alpha_bar)) = -2 log sigma."""
    return -2.0 * sigma.log()


def log_snr_to_sigma(log_snr: torch.Tensor) -> torch.Tensor:
    """sigma = exp(-log_snr / 2)."""
    return (-0.5 * log_snr).exp()


# --------------------------------------------------------------------------------------------------------------------
# discrete beta schedules
# --------------------------------------------------------------------------------------------------------------------

def betas_linear(num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Linear betas from `beta_start` to `beta_end` (Ho et al. 2020; diffusers' ``"linear"``), float64."""
    _check_num_timesteps(num_timesteps)
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def betas_squaredcos_cap_v2(num_timesteps: int = 1000, max_beta: float = 0.999, s: float = 0.008) -> torch.Tensor:
    """Cosine betas, Nichol & Dhariwal 2021 (diffusers' ``squaredcos_cap_v2``; DeepFloyd IF's ``"cosine"``), float64.

    "alpha_bar(t) = f(t) / f(0), f(t) = cos(((t / T + s) / (1 + s)) * pi / 2)^2 ... beta_t = 1 - alpha_bar(t) /
    alpha_bar(t - 1) ... In practice, we clip beta_t to be no larger than 0.999 to prevent singularities at the end of
    the diffusion process near t = T." (eq. 17 and Section 3.2)
    """
    _check_num_timesteps(num_timesteps)
    f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731  (f(0) cancels in the ratio)
    betas = [min(1 - f((i + 1) / num_timesteps) / f(i / num_timesteps), max_beta) for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def _check_num_timesteps(num_timesteps: int) -> None:
    if int(num_timesteps) != num_timesteps or num_timesteps < 2:
        raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_timesteps!r}")


# --------------------------------------------------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------------------------------------------------

def _table(values: torch.Tensor, like: torch.Tensor, cache: dict) -> torch.Tensor:
    """A float64 lookup table on `like`'s device (float32 on MPS, which has no float64), copied there once per device
    and kept in `cache`: a host-to-device copy at every denoiser call would synchronize the CUDA stream each time.
    The copy is an ordinary tensor even when first made under ComfyUI's inference mode."""
    table = cache.get(like.device)
    if table is None:
        dtype = torch.float32 if like.device.type == "mps" else torch.float64
        with torch.inference_mode(False):
            table = cache[like.device] = values.to(device=like.device, dtype=dtype)
    return table


def _as_float_tensor(value) -> torch.Tensor:
    t = torch.as_tensor(value)
    return t if t.is_floating_point() else t.to(torch.float64)


class DiscreteSchedule:
    """A DDPM schedule with `num_timesteps` integer timesteps, read as VE sigmas.

    `alphas_cumprod[t]` is alpha_bar at timestep t (increasing t = more noise). `sigmas` (ascending, float64) are the
    matching VE noise levels.
    """

    def __init__(self, alphas_cumprod: torch.Tensor):
        ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64).detach().cpu()
        if ac.ndim != 1 or ac.numel() < 2:
            raise ValueError(f"alphas_cumprod must be 1-D with at least 2 entries, got shape {tuple(ac.shape)}")
        if not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("alphas_cumprod must lie strictly between 0 and 1 (a zero-terminal-SNR schedule has an "
                             "infinite sigma and cannot be read as VE sigmas)")
        if not bool((ac[1:] < ac[:-1]).all()):
            raise ValueError("alphas_cumprod must strictly decrease with the timestep")
        self.alphas_cumprod = ac
        self.sigmas = alpha_bar_to_sigma(ac)
        self.log_sigmas = self.sigmas.log()
        self._tables: dict = {}  # log_sigmas per device (`_table`)

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> "DiscreteSchedule":
        """alpha_bar_t = prod_{s <= t} (1 - beta_s)."""
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must lie strictly between 0 and 1")
        return cls(torch.cumprod(1.0 - betas, dim=0))

    def __repr__(self) -> str:
        return (f"DiscreteSchedule(num_timesteps={self.num_timesteps}, sigma_min={self.sigma_min:.4g}, "
                f"sigma_max={self.sigma_max:.4g})")

    @property
    def num_timesteps(self) -> int:
        return self.alphas_cumprod.numel()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma) -> torch.Tensor:
        """The model's (fractional) timestep for `sigma`: linear in log-sigma between the discrete steps, clamped to
        [0, T-1] (k-diffusion ``DiscreteSchedule.sigma_to_t``). Same dtype/device as `sigma`."""
        sigma = _as_float_tensor(sigma)
        log_sigmas = _table(self.log_sigmas, sigma, self._tables)
        log_sigma = sigma.to(log_sigmas.dtype).clamp(min=1e-30).log()
        high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, self.num_timesteps - 1)
        high = high.reshape(sigma.shape)
        low = high - 1
        w = ((log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])).clamp(0, 1)
        return (low + w).to(sigma.dtype)

    def t_to_sigma(self, t) -> torch.Tensor:
        """sigma at (fractional) timestep `t`, interpolating log-sigma linearly (k-diffusion ``t_to_sigma``)."""
        t = _as_float_tensor(t)
        log_sigmas = _table(self.log_sigmas, t, self._tables)
        tc = t.to(log_sigmas.dtype).clamp(0, self.num_timesteps - 1)
        low = tc.floor().long().clamp(max=self.num_timesteps - 2)
        w = tc - low
        return ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp().to(t.dtype)


ConditionKind = Literal["log_snr", "time"]


@dataclass(frozen=True)
class ContinuousSchedule:
    """Continuous-time schedule, time in [0, 1], as imagen-pytorch's ``GaussianDiffusionContinuousTimes`` reads the
    Imagen paper (which follows Kingma et al. 2021, "Variational Diffusion Models").

    kind "cosine":  log_snr(t) = -log(tan^2(((t + s) / (1 + s)) * pi / 2)), i.e. sigma = tan((t + s) / (1 + s) * pi/2)
    kind "linear":  log_snr(t) = -log(expm1(1e-4 + 10 t^2)),                i.e. sigma^2 = expm1(1e-4 + 10 t^2)

    `condition` says what the network is conditioned on: "log_snr" (imagen-pytorch) or "time" (time * time_scale).
    `log_snr_min` caps the noise at t = 1, where the cosine log-SNR is -inf: sigma <= exp(-log_snr_min / 2).
    imagen-pytorch computes the log-SNR in float32, where t = 1 gives a finite -33.9 (`float32_log_snr`); its
    networks start sampling there, so its stages set that cap (None: no cap).
    `grid_sigma_max` is the top of the sigma-spaced sampling grids ("karras", "exponential"; None: `sigma_max`). At
    the float32 cap the cosine sigma is 2.3e7, and a Karras grid from there spends 26 of 30 steps above 80, where
    the image is noise: imagen-pytorch's stages start those grids at sigma(1 - 1/timesteps), the noise level their
    own DDPM's first step lands on (642 for 1000 steps).
    """

    kind: Literal["cosine", "linear"] = "cosine"
    condition: ConditionKind = "log_snr"
    time_scale: float = 1000.0
    s: float = 0.008
    log_snr_min: Optional[float] = None
    grid_sigma_max: Optional[float] = None

    def __post_init__(self):
        if self.kind not in ("cosine", "linear"):
            raise ValueError(f"unknown continuous schedule kind {self.kind!r}; expected 'cosine' or 'linear'")
        if self.condition not in ("log_snr", "time"):
            raise ValueError(f"unknown condition {self.condition!r}; expected 'log_snr' or 'time'")
        if self.log_snr_min is not None and not math.isfinite(self.log_snr_min):
            raise ValueError(f"log_snr_min must be a finite number or None, got {self.log_snr_min!r}")
        if self.grid_sigma_max is not None and not (0 < self.grid_sigma_max < math.inf):
            raise ValueError(f"grid_sigma_max must be a positive number or None, got {self.grid_sigma_max!r}")

    @property
    def sigma_min(self) -> float:
        return float(self.time_to_sigma(torch.tensor(0.0, dtype=torch.float64)))

    @property
    def sigma_max(self) -> float:
        return float(self.time_to_sigma(torch.tensor(1.0, dtype=torch.float64)))

    def time_to_sigma(self, time) -> torch.Tensor:
        time = _as_float_tensor(time)
        t = time.to(torch.float64) if time.device.type != "mps" else time
        if self.kind == "cosine":
            sigma = torch.tan((t + self.s) / (1 + self.s) * (math.pi / 2))
        else:
            sigma = torch.expm1(1e-4 + 10 * t * t).sqrt()
        if self.log_snr_min is not None:
            sigma = sigma.clamp(max=math.exp(-0.5 * self.log_snr_min))
        return sigma.to(time.dtype)

    def sigma_to_time(self, sigma) -> torch.Tensor:
        sigma = _as_float_tensor(sigma)
        sg = sigma.to(torch.float64) if sigma.device.type != "mps" else sigma
        if self.kind == "cosine":
            time = torch.atan(sg) * (2 / math.pi) * (1 + self.s) - self.s
        else:
            time = ((torch.log1p(sg * sg) - 1e-4) / 10).clamp(min=0).sqrt()
        return time.clamp(0, 1).to(sigma.dtype)

    def log_snr(self, time) -> torch.Tensor:
        return sigma_to_log_snr(self.time_to_sigma(time))

    def sigma_to_t(self, sigma) -> torch.Tensor:
        """What the network is conditioned on at `sigma`: log-SNR, or time * time_scale."""
        sigma = _as_float_tensor(sigma)
        if self.condition == "log_snr":
            return sigma_to_log_snr(sigma)
        return self.sigma_to_time(sigma) * self.time_scale

    def t_to_sigma(self, t) -> torch.Tensor:
        t = _as_float_tensor(t)
        if self.condition == "log_snr":
            return log_snr_to_sigma(t)
        return self.time_to_sigma(t / self.time_scale)


def float32_log_snr(kind: str, time: float, s: float = 0.008) -> float:
    """The log-SNR at `time` as imagen-pytorch computes it, in float32 (``alpha_cosine_log_snr`` /
    ``beta_linear_log_snr``, with its ``log``'s clamp): at t = 1 the cosine one is -33.9, not -inf, because
    cos(pi / 2) rounds to -4.4e-8 in float32."""
    t = torch.tensor([time], dtype=torch.float32)
    if kind == "cosine":
        value = -torch.log((torch.cos((t + s) / (1 + s) * math.pi * 0.5) ** -2 - 1).clamp(min=1e-5))
    elif kind == "linear":
        value = -torch.log(torch.expm1(1e-4 + 10 * (t ** 2)).clamp(min=1e-12))
    else:
        raise ValueError(f"unknown continuous schedule kind {kind!r}; expected 'cosine' or 'linear'")
    return float(value)


@dataclass(frozen=True)
class EDMSchedule:
    """Karras et al. 2022 ("EDM") noise levels: the VE sigma itself, from `sigma_min` to `sigma_max`, the network
    conditioned on "c_noise(sigma) = 1/4 ln(sigma)" (Table 1), as imagen-pytorch's ElucidatedImagen (its defaults:
    0.002 and 80). The input and output scalings (c_in, c_skip, c_out) are the denoiser's (`EDMDenoiser`). `rho`
    is the Karras grid's (its eq. 5, 7 by default) that "karras" spacing on this schedule uses."""

    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def __post_init__(self):
        if not (0 < self.sigma_min < self.sigma_max and math.isfinite(self.sigma_max)):
            raise ValueError(f"an EDM schedule needs 0 < sigma_min < sigma_max, got {self.sigma_min}, "
                             f"{self.sigma_max}")
        if not (self.rho > 0 and math.isfinite(self.rho)):
            raise ValueError(f"an EDM schedule's rho must be a positive number, got {self.rho}")

    def sigma_to_t(self, sigma) -> torch.Tensor:
        sigma = _as_float_tensor(sigma)
        return sigma.clamp(min=1e-20).log() * 0.25  # imagen-pytorch's log clamps at 1e-20

    def t_to_sigma(self, t) -> torch.Tensor:
        return (_as_float_tensor(t) * 4).exp()


Schedule = Union[DiscreteSchedule, ContinuousSchedule, EDMSchedule]


def get_schedule(name: str, num_train_timesteps: int = 1000, **kwargs) -> Schedule:
    """A schedule by name: "linear" (kwargs beta_start, beta_end), "squaredcos_cap_v2" or its alias "cosine"
    (DeepFloyd IF), "continuous_cosine" or "continuous_linear" (kwargs condition, time_scale, log_snr_min,
    grid_sigma_max), "edm"
    (kwargs sigma_min, sigma_max, rho)."""
    if name == "linear":
        return DiscreteSchedule.from_betas(betas_linear(num_train_timesteps, **kwargs))
    if name in ("squaredcos_cap_v2", "cosine"):
        return DiscreteSchedule.from_betas(betas_squaredcos_cap_v2(num_train_timesteps, **kwargs))
    if name in ("continuous_cosine", "continuous_linear"):
        return ContinuousSchedule(kind=name.split("_", 1)[1], **kwargs)
    if name == "edm":
        return EDMSchedule(**kwargs)
    raise ValueError(f"unknown noise schedule {name!r}; expected one of {list(SCHEDULES)}")
