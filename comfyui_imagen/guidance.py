"""Classifier-free guidance and x0 thresholding, as denoiser wrappers (see `comfyui_imagen.denoisers`).

Compose them as DeepFloyd IF and Imagen do: ``Thresholded(CFGDenoiser(make_denoiser(...), scale))``; guidance mixes the
branches, then the guided x0 is thresholded. Both pass a learned variance through (`return_variance=True`).
"""
from __future__ import annotations

from typing import Any, Literal, Mapping

import torch

from .denoisers import sigma_batch

ThresholdMode = Literal["dynamic", "static", "none"]
THRESHOLD_MODES = ("dynamic", "static", "none")


# --------------------------------------------------------------------------------------------------------------------
# thresholding
# --------------------------------------------------------------------------------------------------------------------

def static_threshold(x0: torch.Tensor) -> torch.Tensor:
    """Imagen's static thresholding: "elementwise clipping the x-prediction to [-1, 1]"."""
    return x0.clamp(-1, 1)


def dynamic_threshold(x0: torch.Tensor, percentile: float = 0.95, max_value: float = 1.5) -> torch.Tensor:
    """Imagen's dynamic thresholding, with DeepFloyd IF's cap `max_value` on s (IF's p=0.95, c=1.5 by default).

    "Dynamic thresholding: At each sampling step we set s to a certain percentile absolute pixel value in x^0_t, and
    if s > 1, then we threshold x^0_t to the range [-s, s] and then divide by s. Dynamic thresholding pushes saturated
    pixels (those near -1 and 1) inwards, thereby actively preventing pixels from saturation at each step."
    (Saharia et al. 2022, Section 2.3). Here s = clamp(quantile(|x0|, p), 1, c) per batch item.
    """
    _check_threshold_args(percentile, max_value)
    flat = x0.reshape(x0.shape[0], -1)
    work = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()  # quantile needs float32/64
    s = row_quantile(work.abs(), percentile).clamp(min=1.0, max=max_value)[:, None]
    return (work.clamp(-s, s) / s).to(x0.dtype).reshape(x0.shape)


def row_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q, dim=1)`` (linear interpolation) of a float32/64 [B, N] tensor, bit for bit, by
    selecting the two order statistics it interpolates (one `torch.kthvalue`) instead of sorting every row: 8× faster
    on one CPU core for a 256 px image (2.4 against 19 ms; sorting made thresholding 3% of a demo SR step).

    As torch.quantile computes it: rank = q * (N - 1) in the values' dtype, the values at floor(rank) and
    ceil(rank) of the sorted row, lerp by rank - floor(rank); a row holding NaN gives NaN. Devices without kthvalue
    (MPS) use torch.quantile itself."""
    if values.device.type not in ("cpu", "cuda"):
        return torch.quantile(values, q, dim=1)
    n = values.shape[1]
    rank = torch.tensor(q, dtype=values.dtype) * (n - 1)      # a CPU scalar: no device sync
    below, above = (min(int(r.long()), n - 1) for r in (rank, rank.ceil()))   # float32 (N - 1) may round past N - 1
    low = values.kthvalue(below + 1, dim=1).values                 # kthvalue counts from 1
    high = low
    if above != below:  # the next order statistic: low again if more than below + 1 values are <= low, else the
        # smallest value above low (four elementwise passes: a second kthvalue costs 3x that)
        column = low[:, None]
        ties = (values <= column).sum(dim=1) > above
        high = torch.where(ties, low, values.masked_fill(values <= column, float("inf")).amin(dim=1))
    out = torch.lerp(low, high, torch.full_like(low, float(rank - below)))  # lerp(inf, inf, 0) is NaN there too
    return out.masked_fill_(values.amax(dim=1).isnan(), float("nan"))   # amax propagates NaN (10x isnan().any())


def _check_threshold_args(percentile: float, max_value: float) -> None:
    if not 0 < percentile <= 1:
        raise ValueError(f"dynamic thresholding percentile must be in (0, 1], got {percentile} "
                         f"(Imagen uses 0.995, DeepFloyd IF 0.95)")
    if not max_value >= 1:
        raise ValueError(f"dynamic thresholding max_value must be >= 1, got {max_value} (DeepFloyd IF uses 1.5)")


class Thresholded:
    """Wraps a denoiser and thresholds its x0: mode "dynamic" (percentile, max_value), "static" or "none"."""

    def __init__(self, denoiser, mode: ThresholdMode = "dynamic", percentile: float = 0.95, max_value: float = 1.5):
        if mode not in THRESHOLD_MODES:
            raise ValueError(f"unknown threshold mode {mode!r}; expected one of {list(THRESHOLD_MODES)}")
        if mode == "dynamic":
            _check_threshold_args(percentile, max_value)
        self.denoiser, self.mode, self.percentile, self.max_value = denoiser, mode, percentile, max_value

    @property
    def learned_variance(self) -> bool:
        return getattr(self.denoiser, "learned_variance", False)

    def __call__(self, x: torch.Tensor, sigma, *, return_variance: bool = False, **cond):
        if return_variance:
            x0, frac = self.denoiser(x, sigma, return_variance=True, **cond)
            return self._threshold(x0), frac
        return self._threshold(self.denoiser(x, sigma, **cond))

    def _threshold(self, x0: torch.Tensor) -> torch.Tensor:
        if self.mode == "dynamic":
            return dynamic_threshold(x0, self.percentile, self.max_value)
        if self.mode == "static":
            return static_threshold(x0)
        return x0


# --------------------------------------------------------------------------------------------------------------------
# classifier-free guidance
# --------------------------------------------------------------------------------------------------------------------

def _pad_dim1(t: torch.Tensor, length: int) -> torch.Tensor:
    pad = t.new_zeros((t.shape[0], length - t.shape[1], *t.shape[2:]))
    return torch.cat([t, pad], dim=1)


def _cat_pair(key: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Concatenate along the batch; sequences of different length (dim 1, e.g. text embeds and masks of a prompt and
    a negative prompt) are zero/False padded to the longer one."""
    if a.ndim != b.ndim or a.shape[2:] != b.shape[2:] or (a.ndim == 1 and a.shape != b.shape):
        raise ValueError(f"cond[{key!r}] has shape {tuple(a.shape)} but uncond[{key!r}] has {tuple(b.shape)}; "
                         f"they may differ only in sequence length (dim 1)")
    if a.ndim > 1 and a.shape[1] != b.shape[1]:
        length = max(a.shape[1], b.shape[1])
        a, b = _pad_dim1(a, length), _pad_dim1(b, length)
    return torch.cat([a, b.to(a.dtype)])


def batch_cond_uncond(cond: Mapping[str, Any], uncond: Mapping[str, Any]) -> dict[str, Any]:
    """One kwargs dict for a [cond; uncond] batch. A key missing from `uncond` is shared (taken from `cond`, e.g. the
    low-resolution image of a super-resolution stage); non-tensor values must be equal in both."""
    unknown = set(uncond) - set(cond)
    if unknown:
        raise ValueError(f"uncond has keys {sorted(unknown)} that cond lacks; give both branches the same keys")
    merged = {}
    for key, a in cond.items():
        b = uncond.get(key, a)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            merged[key] = _cat_pair(key, a, b)
        elif isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or a != b:
            raise ValueError(f"cond[{key!r}] and uncond[{key!r}] differ but are not both tensors; "
                             f"non-tensor arguments must be the same for both branches")
        else:
            merged[key] = a
    return merged


class CFGDenoiser:
    """Classifier-free guidance, Ho & Salimans 2022, in the Imagen paper's form.

    "eps~_theta(z_t, c) = w eps_theta(z_t, c) + (1 - w) eps_theta(z_t) ... Setting w = 1 disables classifier-free
    guidance, while increasing w > 1 strengthens the effect of guidance." (Saharia et al. 2022, eq. 2). The mix is
    taken on x0, which is affine in eps for a shared x and sigma, so it is the same as mixing eps (or v). The
    unconditional branch may be a negative prompt: ``uncond`` is just another kwargs dict.

    Call: ``cfg(x, sigma, cond={...}, uncond={...})``; both branches run as one batch [cond; uncond]. With scale 1 or
    uncond None, only the conditional branch runs. A learned variance comes from the conditional branch, as in IF.

    ``parallel`` (None: plain guidance) keeps only that fraction of the update's component parallel to the
    conditional prediction, as imagen-pytorch's default guidance (``cfg_remove_parallel_component=True``,
    ``keep_parallel_frac=0``; after Sadat et al. 2024, "Eliminating Oversaturation and Artifacts of High Guidance
    Scales", eq. 9): with the network outputs p_c, p_u and update u = p_c - p_u, u_par = (u . p_c / |p_c|^2) p_c
    per item, the guided output is p_c + (w - 1) (u - u_par + parallel * u_par). The network output is affine in x0
    with the same coefficients for both branches, so this is done on x0 with p_c's direction from the wrapper
    (`NetworkDenoiser.prediction_direction`), in float64 as imagen-pytorch's ``project``.
    """

    def __init__(self, denoiser, scale: float, parallel: float | None = None):
        if parallel is not None and not hasattr(denoiser, "prediction_direction"):
            raise ValueError("guidance with parallel= needs a network denoiser (comfyui_imagen.denoisers."
                             "make_denoiser), which knows the direction of its network's output")
        self.denoiser, self.scale = denoiser, float(scale)
        self.parallel = None if parallel is None else float(parallel)

    @property
    def learned_variance(self) -> bool:
        return getattr(self.denoiser, "learned_variance", False)

    def __call__(self, x: torch.Tensor, sigma, *, cond: Mapping[str, Any] | None = None,
                 uncond: Mapping[str, Any] | None = None, return_variance: bool = False):
        cond = dict(cond or {})
        extra = {"return_variance": True} if return_variance else {}
        if uncond is None or self.scale == 1.0:
            if uncond is None and self.scale != 1.0:
                raise ValueError(f"guidance scale {self.scale} needs an unconditional branch: pass uncond= (the "
                                 f"empty or negative prompt's embeddings), or use scale 1")
            return self.denoiser(x, sigma, **extra, **cond)
        sigma2 = sigma_batch(sigma, x).repeat(2)
        out = self.denoiser(torch.cat([x, x]), sigma2, **extra, **batch_cond_uncond(cond, uncond))
        x0, frac = out if return_variance else (out, None)
        x0_c, x0_u = x0.chunk(2)
        if self.parallel is None:
            guided = self.scale * x0_c + (1 - self.scale) * x0_u
        else:
            update = x0_c - x0_u
            update = update - (1 - self.parallel) * parallel_part(update, self.denoiser.prediction_direction(
                x, sigma_batch(sigma, x), x0_c))
            guided = x0_c + (self.scale - 1) * update
        return (guided, frac.chunk(2)[0]) if return_variance else guided


def parallel_part(update: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """The component of each item of `update` parallel to the same item of `direction`, (u . d / |d|^2) d, computed
    in float64 (imagen-pytorch's ``project``); a zero direction has no parallel part."""
    u, d = update.reshape(update.shape[0], -1).double(), direction.reshape(direction.shape[0], -1).double()
    unit = torch.nn.functional.normalize(d, dim=-1)
    return ((u * unit).sum(dim=-1, keepdim=True) * unit).to(update.dtype).reshape(update.shape)

