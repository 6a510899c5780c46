"""Sampling grids: which sigmas a sampler visits.

Every function here returns what samplers take: a 1-D tensor of sigmas, strictly descending, ending in 0 (or, for
imagen-pytorch's time-uniform grid, in the continuous schedule's smallest sigma: `get_sigmas_uniform_time`).

* k-diffusion spacings in sigma: `get_sigmas_karras` (Karras et al. 2022, eq. 5), `get_sigmas_exponential`.
* diffusers timestep spacings on a discrete schedule ("Common Diffusion Noise Schedules and Sample Steps are Flawed",
  Lin et al. 2023, Table 2): `get_sigmas_trailing` (alias "uniform"), `get_sigmas_leading`, `get_sigmas_linspace`.
* DeepFloyd IF's respacing presets (`IF_PRESETS`, from ``deepfloyd_if/modules/base.py``), expanded by the same
  section-stride rule as IF's ``space_timesteps``: `if_timesteps`, `get_sigmas_if`.
* `get_sigmas(schedule, spacing, steps)`: one entry point by name.
"""
from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch

from .schedules import ContinuousSchedule, DiscreteSchedule, Schedule
from .checks import check_int

# DeepFloyd IF's named respacings: section counts for equal slices of the 1000 training steps, from
# deepfloyd_if/modules/base.py (IFBaseModule.respacing_modes).
IF_PRESETS: dict[str, str] = {
    "fast27": "10,10,3,2,2",
    "smart27": "7,4,2,1,2,4,7",
    "smart50": "10,6,4,3,2,2,3,4,6,10",
    "smart100": "1,1,1,1,2,2,2,2,2,2,3,3,4,4,5,5,6,7,7,8,9,10,13",
    "smart185": "1,1,2,2,2,3,3,3,4,5,6,7,8,9,10,11,12,13,14,15,16,18,20",
    "super27": "1,1,1,1,1,1,1,2,5,13",  # IF stage III super-resolution
    "super40": "2,2,2,2,2,2,3,4,6,15",
    "super100": "4,4,6,6,8,8,10,10,14,30",
}

TIMESTEP_SPACINGS = ("trailing", "uniform", "leading", "linspace")
SIGMA_SPACINGS = ("karras", "exponential")
SPACINGS = SIGMA_SPACINGS + TIMESTEP_SPACINGS + tuple(IF_PRESETS)


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _check_steps(steps, limit: int | None = None) -> int:
    steps = check_int(steps, "steps", 1)
    if limit is not None and steps > limit:
        raise ValueError(f"steps={steps} is beyond the schedule: it has only {limit} training timesteps; "
                         f"use at most {limit} steps, or a sigma spacing ('karras', 'exponential')")
    return int(steps)


# --------------------------------------------------------------------------------------------------------------------
# spacings in sigma
# --------------------------------------------------------------------------------------------------------------------

def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    then 0."""
    n = _check_steps(n)
    _check_sigma_range(sigma_min, sigma_max)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return append_zero((hi + ramp * (lo - hi)) ** rho)


def get_sigmas_exponential(n: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """n sigmas evenly spaced in log-sigma from sigma_max down to sigma_min, then 0."""
    n = _check_steps(n)
    _check_sigma_range(sigma_min, sigma_max)
    return append_zero(torch.linspace(np.log(sigma_max), np.log(sigma_min), n, dtype=torch.float64).exp())


def _check_sigma_range(sigma_min: float, sigma_max: float) -> None:
    if not 0 < sigma_min <= sigma_max < float("inf"):
        raise ValueError(f"need 0 < sigma_min <= sigma_max < inf, got sigma_min={sigma_min}, sigma_max={sigma_max}")


# --------------------------------------------------------------------------------------------------------------------
# timestep spacings on a discrete schedule (diffusers' `timestep_spacing`)
# --------------------------------------------------------------------------------------------------------------------

def timesteps_trailing(n: int, num_timesteps: int = 1000) -> list[int]:
    """Lin et al. 2023 "trailing": round(arange(T, 0, -T/n)) - 1, so the first step is always T-1."""
    n = _check_steps(n, num_timesteps)
    return [int(t) - 1 for t in np.arange(num_timesteps, 0, -num_timesteps / n).round()]


def timesteps_leading(n: int, num_timesteps: int = 1000, offset: int = 0) -> list[int]:
    """DDIM's "leading": (0, T//n, 2T//n, ...) reversed, plus `offset` (Stable Diffusion uses 1)."""
    n = _check_steps(n, num_timesteps)
    return [int(i * (num_timesteps // n)) + offset for i in range(n - 1, -1, -1)]


def timesteps_linspace(n: int, num_timesteps: int = 1000) -> list[int]:
    """DDIM's "linspace": round(linspace(0, T-1, n)) reversed."""
    n = _check_steps(n, num_timesteps)
    return [int(t) for t in np.linspace(0, num_timesteps - 1, n).round()[::-1]]


def space_timesteps(num_timesteps: int, section_counts: Union[str, Sequence[int]]) -> list[int]:
    """Improved-DDPM / DeepFloyd IF respacing: cut [0, T) into len(section_counts) equal slices and take
    section_counts[i] evenly strided steps from slice i; "ddimN" takes the integer stride giving exactly N steps.
    Returns the kept timesteps, descending. (Python's round() is banker's rounding, as in IF.)"""
    if isinstance(section_counts, str):
        if section_counts.startswith("ddim"):
            desired = _check_steps(int(section_counts[len("ddim"):]), num_timesteps)
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return list(range(0, num_timesteps, stride))[::-1]
            raise ValueError(f"cannot take exactly {desired} of {num_timesteps} steps with an integer stride")
        try:
            section_counts = [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"bad respacing {section_counts!r}: expected comma-separated step counts such as "
                             f"'10,10,3,2,2', 'ddimN', or one of {sorted(IF_PRESETS)}") from None
    size_per, extra = divmod(num_timesteps, len(section_counts))
    start, kept = 0, set()
    for i, count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if not 1 <= count <= size:
            raise ValueError(f"cannot take {count} steps from a section of {size} steps (section {i} of "
                             f"{list(section_counts)})")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):  # accumulate like IF does: 7 * (99 / 14) sums to 49.4999..., which rounds to 49
            kept.add(start + round(position))
            position += stride
        start += size
    return sorted(kept, reverse=True)


def if_timesteps(preset: str, num_timesteps: int = 1000) -> list[int]:
    """A DeepFloyd IF respacing preset (`IF_PRESETS`) as descending timesteps, e.g. fast27 -> [999, 800, 799, ...]."""
    if preset not in IF_PRESETS:
        raise ValueError(f"unknown DeepFloyd IF respacing preset {preset!r}; expected one of {list(IF_PRESETS)}")
    # IF translates the name to its section string before calling space_timesteps, so the 999 -> 997 swap that its
    # space_timesteps applies to the literal string "fast27" never runs; diffusers' fast27 list keeps 999 too.
    return space_timesteps(num_timesteps, IF_PRESETS[preset])


def sigmas_from_timesteps(schedule: Schedule, timesteps: Sequence[float]) -> torch.Tensor:
    """The schedule's sigmas at descending `timesteps` (model timesteps), then 0."""
    t = torch.as_tensor(list(timesteps), dtype=torch.float64)
    if t.ndim != 1 or t.numel() < 1:
        raise ValueError("timesteps must be a non-empty 1-D sequence")
    sigmas = schedule.t_to_sigma(t)
    if not bool((sigmas[1:] < sigmas[:-1]).all()):
        raise ValueError("timesteps must be strictly ordered from most to least noisy")
    return append_zero(sigmas)


def get_sigmas_trailing(schedule: DiscreteSchedule, n: int) -> torch.Tensor:
    return sigmas_from_timesteps(schedule, timesteps_trailing(n, _discrete(schedule, "trailing").num_timesteps))


def get_sigmas_leading(schedule: DiscreteSchedule, n: int, offset: int = 0) -> torch.Tensor:
    return sigmas_from_timesteps(schedule, timesteps_leading(n, _discrete(schedule, "leading").num_timesteps, offset))


def get_sigmas_linspace(schedule: DiscreteSchedule, n: int) -> torch.Tensor:
    return sigmas_from_timesteps(schedule, timesteps_linspace(n, _discrete(schedule, "linspace").num_timesteps))


def get_sigmas_if(schedule: DiscreteSchedule, preset: str) -> torch.Tensor:
    return sigmas_from_timesteps(schedule, if_timesteps(preset, _discrete(schedule, preset).num_timesteps))


def get_sigmas_uniform_time(schedule: ContinuousSchedule, n: int) -> torch.Tensor:
    """Continuous time evenly spaced from 1 to 0, imagen-pytorch's grid: sigma(1 - i/n) for i = 0 .. n. It ends at
    sigma(0) > 0, not at 0: as in imagen-pytorch's sampler the last step lands on the schedule's smallest noise
    level without adding noise (`comfyui_imagen.samplers`), and the result is the DDPM sample there."""
    n = _check_steps(n)
    return schedule.time_to_sigma(torch.linspace(1, 0, n + 1, dtype=torch.float64))


def _discrete(schedule: Schedule, spacing: str) -> DiscreteSchedule:
    if not isinstance(schedule, DiscreteSchedule):
        raise ValueError(f"spacing {spacing!r} needs a discrete (DDPM) schedule; for a continuous-time schedule use "
                         f"one of {['uniform', *SIGMA_SPACINGS]}")
    return schedule


def _grid_top(schedule: Schedule) -> float:
    """Where a sigma-spaced grid starts: the schedule's `grid_sigma_max` when it sets one, else its sigma_max."""
    top = getattr(schedule, "grid_sigma_max", None)
    return schedule.sigma_max if top is None else min(top, schedule.sigma_max)


def get_sigmas(schedule: Schedule, spacing: str, steps: int | None = None, *, rho: float | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The descending sigma grid (ending in 0; "uniform" on a continuous schedule ends at its smallest sigma) for
    `steps` sampler steps on `schedule`.

    spacing: "karras" (rho; None: the schedule's own, e.g. an `EDMSchedule`'s, else 7) and "exponential" (both from
    the schedule's `grid_sigma_max` where it sets one), "uniform" (= "trailing" on a discrete schedule, time-uniform
    on a continuous one), "trailing", "leading", "linspace", or a DeepFloyd IF preset (fast27, smart27, smart50,
    smart100, smart185, super27, super40, super100; these fix the step count, so `steps` must be None or match).
    Computed in float64, returned as `dtype`.
    """
    if spacing in IF_PRESETS:
        sigmas = get_sigmas_if(schedule, spacing)
        if steps is not None and steps != sigmas.numel() - 1:
            raise ValueError(f"preset {spacing!r} has {sigmas.numel() - 1} steps; pass steps=None or "
                             f"steps={sigmas.numel() - 1}")
    elif steps is None:
        raise ValueError(f"spacing {spacing!r} needs a number of steps")
    elif spacing == "karras":
        sigmas = get_sigmas_karras(steps, schedule.sigma_min, _grid_top(schedule),
                                   getattr(schedule, "rho", 7.0) if rho is None else rho)
    elif spacing == "exponential":
        sigmas = get_sigmas_exponential(steps, schedule.sigma_min, _grid_top(schedule))
    elif spacing == "uniform" and isinstance(schedule, ContinuousSchedule):
        sigmas = get_sigmas_uniform_time(schedule, steps)
    elif spacing in ("trailing", "uniform"):
        sigmas = get_sigmas_trailing(schedule, steps)
    elif spacing == "leading":
        sigmas = get_sigmas_leading(schedule, steps)
    elif spacing == "linspace":
        sigmas = get_sigmas_linspace(schedule, steps)
    else:
        raise ValueError(f"unknown sigma spacing {spacing!r}; expected one of {list(SPACINGS)}")
    return sigmas.to(dtype)
