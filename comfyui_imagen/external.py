"""Foreign samplers over a stage: a k-diffusion-shaped sampler function (ComfyUI's ``SAMPLER``, a sampler pack's)
run over the stage's denoiser, on a sigma grid from anywhere (ComfyUI's ``SIGMAS``).

k-diffusion's contract (Crowson's ``k_diffusion.sampling``, which ComfyUI's ``comfy.k_diffusion.sampling`` keeps)::

    sampler_fn(model, x, sigmas, extra_args=..., callback=..., disable=..., **extra_options) -> x
    model(x, sigma * s_in, **extra_args) -> denoised x0

is the one our samplers follow (`comfyui_imagen.samplers`): x = x0 + sigma * eps in VE sigma space, sigma a [B]
tensor, the result the clean sample. The stage's denoiser (`Stage.denoiser`: its parameterization wrapper,
classifier-free guidance, dynamic or static thresholding) is therefore handed over as it is, its text (and, for SR
stages, low-resolution) conditioning bound in `KDiffusionModel`, so a foreign sampler's ``extra_args`` (ComfyUI puts
``seed``, ``model_options``, ``denoise_mask`` there) never reach the network.

What differs from our own samplers, by the foreign sampler's design: its noise. Ancestral and SDE samplers draw it
themselves from ``extra_args["seed"]`` (ComfyUI: one generator for the whole batch), so item k of a batch is not a
batch of one at seed + k as with ours; the start noise and the SR augmentation still are (`make_generators`).
Deterministic samplers equal ours on the same sigmas to float32 rounding (``tests/test_external.py``).

Some of ComfyUI's sampler functions ask the model for its sigma space (``model.inner_model.inner_model.model_sampling``,
``model.inner_model.model_patcher.get_model_object("model_sampling")``): `VEModelSampling` answers as ComfyUI's
epsilon models do (x = x0 + sigma * noise), which our space is. Nothing here imports ComfyUI.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Optional

import torch

from .cascade import given_settings, memory_plan, output_size, sr_conditioning, text_args
from .checks import all_finite
from .images import resize
from .memory import FreeMemory
from .samplers import Cancelled, make_generators, randn_like_items
from .settings import Conditioning, SamplingSettings
from .validation import check_batch, check_conditioning, check_images, check_role, check_size

if TYPE_CHECKING:  # pragma: no cover
    from .stage import Stage

__all__ = ["KDiffusionModel", "VEModelSampling", "check_foreign_sigmas", "generate_with", "sample_with",
           "super_resolve_with"]

SamplerFn = Callable[..., torch.Tensor]
Callback = Optional[Callable[[dict], None]]
Cancel = Optional[Callable[[], bool]]


class VEModelSampling:
    """The sigma-space answers ComfyUI's sampler functions ask a model's ``model_sampling`` for, as its epsilon
    models (``comfy.model_sampling.EPS``) give them: x = x0 + sigma * noise, no inverse scaling."""

    def __init__(self, sigma_min: float, sigma_max: float):
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise: bool = False):
        sigma = torch.as_tensor(sigma, dtype=noise.dtype, device=noise.device)
        sigma = sigma.reshape(sigma.shape[:1] + (1,) * (noise.ndim - sigma.ndim)) if sigma.ndim else sigma
        return latent_image + noise * (torch.sqrt(1.0 + sigma * sigma) if max_denoise else sigma)

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class _ModelView:
    """``inner_model`` / ``model_patcher`` of `KDiffusionModel`: enough of ComfyUI's wrapper chain for a sampler
    function to find the ``model_sampling``."""

    def __init__(self, model_sampling: VEModelSampling):
        self.model_sampling = model_sampling
        self.inner_model = self
        self.model_patcher = self

    def get_model_object(self, name: str):
        if name != "model_sampling":
            raise ValueError(f"this sampler asks the model for {name!r}, which an Imagen stage does not have; only "
                             f"'model_sampling' is provided: pick another sampler (KSamplerSelect's deterministic "
                             f"and ancestral ones work)")
        return self.model_sampling


class KDiffusionModel:
    """The stage's denoiser in k-diffusion's calling convention, ``model(x, sigma, **extra_args) -> x0``, with the
    conditioning ``args`` (`Stage.denoiser`'s ``cond`` / ``uncond`` kwargs) bound; the sampler's own ``extra_args``
    are not passed on (a sampler that hooks ComfyUI's guidance through them, CFG++, is refused). ``cancel()`` is
    checked before each evaluation (raise `Cancelled`)."""

    def __init__(self, denoiser, args: Mapping[str, Any], schedule, cancel: Cancel = None):
        self.denoiser, self.args, self.cancel = denoiser, dict(args), cancel
        self.inner_model = _ModelView(VEModelSampling(schedule.sigma_min, schedule.sigma_max))
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma, **sampler_extra) -> torch.Tensor:
        hooks = sampler_extra.get("model_options") or {}
        if hooks.get("sampler_post_cfg_function") or hooks.get("sampler_cfg_function"):
            raise ValueError("this sampler hooks ComfyUI's own guidance (model_options' cfg functions: the CFG++ "
                             "samplers such as euler_cfg_pp); an Imagen stage guides inside its denoiser, so pick "
                             "a sampler without _cfg_pp")
        if self.cancel is not None and self.cancel():
            raise Cancelled(f"sampling cancelled after {self.calls} model evaluations")
        self.calls += 1
        return self.denoiser(x, sigma, **self.args)


def check_foreign_sigmas(sigmas, what: str = "the sigmas") -> torch.Tensor:
    """A grid from outside (ComfyUI's SIGMAS) as a CPU float32 tensor (float64 stays float64): 1-D, at least 2
    values, finite, non-negative, strictly descending. It need not end in 0 (SplitSigmas' high part does not): the
    result then keeps that much noise, as in ComfyUI."""
    if not isinstance(sigmas, torch.Tensor):
        raise ValueError(f"{what} must be a 1-D tensor (a SIGMAS socket, e.g. from Imagen Sigmas), got "
                         f"{type(sigmas).__name__}")
    sigmas = sigmas.detach().cpu()
    sigmas = sigmas if sigmas.dtype == torch.float64 else sigmas.float()
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"{what} must be a 1-D tensor of at least 2 values (one step), got shape "
                         f"{tuple(sigmas.shape)}")
    if not all_finite(sigmas) or bool((sigmas < 0).any()):
        raise ValueError(f"{what} contain NaN, Inf or negative values")
    if bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise ValueError(f"{what} must be strictly descending (noisiest first; after FlipSigmas, flip them back)")
    return sigmas


def _callback(callback: Callback, sigmas: torch.Tensor) -> Callback:
    """k-diffusion's callback dict ({"i", "x", "denoised", "sigma"...}) as ours ({"step", "total", "x0"...})."""
    if callback is None:
        return None
    total = sigmas.numel() - 1

    def report(info: dict) -> None:
        i = int(info["i"])
        callback({"step": i, "total": total, "x": info.get("x"), "x0": info.get("denoised"),
                  "sigma": float(sigmas[i]), "sigma_next": float(sigmas[min(i + 1, total)])})

    return report


def sample_with(sampler_fn: SamplerFn, stage: Stage, cond: Conditioning, settings: SamplingSettings,
                x: torch.Tensor, sigmas: torch.Tensor, *, extra: dict | None = None,
                extra_options: Mapping[str, Any] | None = None, callback: Callback = None,
                cancel: Cancel = None) -> torch.Tensor:
    """One call of a k-diffusion-shaped ``sampler_fn`` from ``x`` over ``sigmas`` and the stage's denoiser for
    ``settings`` (cfg, thresholding), without autograd. ``extra`` (the SR conditioning) joins the conditional
    branch, as in `cascade`; ``extra_args["seed"]`` is ``settings.seed`` (the foreign sampler's noise);
    ``extra_options`` are its keyword options (ComfyUI's ``KSAMPLER.extra_options``). NaN or Inf in the result is
    an error."""
    sigmas = check_foreign_sigmas(sigmas).to(x.device)
    args = text_args(cond, x.shape[0], x.device)
    args["cond"].update(extra or {})
    model = KDiffusionModel(stage.denoiser(settings), args, stage.schedule, cancel)
    with torch.no_grad():
        out = sampler_fn(model, x, sigmas, extra_args={"seed": settings.seed}, callback=_callback(callback, sigmas),
                         disable=True, **dict(extra_options or {}))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"the sampler returned {type(out).__name__} "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else ''} for a {tuple(x.shape)} "
                         f"sample; it does not follow k-diffusion's contract")
    if not all_finite(out):
        raise ValueError(f"sampling produced NaN or Inf values ({getattr(sampler_fn, '__name__', 'sampler')}): "
                         f"try another sampler or sigmas, or load the stage in fp32 or bf16")
    return out


def generate_with(stage: Stage, sampler_fn: SamplerFn, cond: Conditioning, sigmas: torch.Tensor, *,
                  width: int | None = None, height: int | None = None, batch_size: int = 1,
                  settings: SamplingSettings | None = None, extra_options: Mapping[str, Any] | None = None,
                  callback: Callback = None, cancel: Cancel = None,
                  free_memory: FreeMemory | None = None) -> torch.Tensor:
    """`cascade.generate` with a foreign sampler on given sigmas: start noise * sigmas[0], item k's noise from
    seed + k. [batch_size, 3, height, width] in -1..1. The batch runs in one call (a foreign sampler's noise
    depends on the batch, so it is not split); a batch larger than the free memory is refused."""
    check_role(stage, "base", "generate_with()", "super_resolve_with()")
    settings = given_settings(stage, settings)
    sigmas = check_foreign_sigmas(sigmas)
    width = stage.config.resolution if width is None else width
    height = stage.config.resolution if height is None else height
    width, height = check_size(stage, width, height, "the requested size")
    batch = check_batch(batch_size)
    check_conditioning(stage, cond)
    _check_fits(stage, settings, batch, height, width, free_memory)
    generators = make_generators(settings.seed, batch)
    x = randn_like_items((batch, 3, height, width), generators, device=stage.device) * sigmas[0]
    return sample_with(sampler_fn, stage, cond, settings, x, sigmas, extra_options=extra_options,
                       callback=callback, cancel=cancel)


def super_resolve_with(stage: Stage, sampler_fn: SamplerFn, cond: Conditioning, lowres_image: torch.Tensor,
                       sigmas: torch.Tensor, *, noise_level: int | None = None,
                       width: int | None = None, height: int | None = None,
                       settings: SamplingSettings | None = None,
                       extra_options: Mapping[str, Any] | None = None, callback: Callback = None,
                       cancel: Cancel = None, free_memory: FreeMemory | None = None) -> torch.Tensor:
    """`cascade.super_resolve` with a foreign sampler on given sigmas: the same low-resolution conditioning
    (`cascade.augment_lowres` at ``noise_level``, None = the stage's recommended) and start. A grid from the
    stage's sigma_max starts from pure noise (strength 1); a lower one (a tail, e.g. SplitSigmas' low part) from the
    bicubic upsampling noised to its first sigma (SDEdit, as super_resolve below strength 1)."""
    check_role(stage, "sr", "super_resolve_with()", "generate_with()")
    lowres_image = check_images(lowres_image, "the low-resolution image")
    settings = given_settings(stage, settings)
    sigmas = check_foreign_sigmas(sigmas)
    width, height = output_size(stage, width, height)
    batch = check_batch(lowres_image.shape[0])
    check_conditioning(stage, cond)
    _check_fits(stage, settings, batch, height, width, free_memory)
    generators = make_generators(settings.seed, batch)
    noise = randn_like_items((batch, 3, height, width), generators, device=stage.device)
    upsampled = resize(lowres_image.float(), height, width, mode="bicubic").clamp(-1, 1).to(stage.device)
    extra = sr_conditioning(stage, lowres_image, upsampled, noise_level, generators)
    full = float(sigmas[0]) >= stage.schedule.sigma_max * (1 - 1e-5)  # float32 rounding of sigma_max
    x = (torch.zeros_like(noise) if full else upsampled) + noise * sigmas[0]
    return sample_with(sampler_fn, stage, cond, settings, x, sigmas, extra=extra, extra_options=extra_options,
                       callback=callback, cancel=cancel)


def _check_fits(stage: Stage, settings: SamplingSettings, batch: int, height: int, width: int,
                free_memory: FreeMemory | None) -> None:
    chunk = memory_plan(stage, settings, batch, height, width, free_memory)
    if chunk < batch:
        raise ValueError(f"a batch of {batch} does not fit the free memory at once (at most {chunk}); a foreign "
                         f"sampler's noise depends on the batch, so it is not split: lower batch_size to {chunk}, "
                         f"or use the Imagen sampling nodes, which split it")
