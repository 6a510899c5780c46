"""The training objective: forward noising, the regression target per prediction type, and SNR loss weights.

Training uses exactly the convention the denoiser wrappers in `comfyui_imagen.denoisers` invert: DDPM's discrete
timesteps t in 0..T-1 with alpha_bar_t from the stage's schedule, the network sees the VP sample

    x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps        (Ho et al. 2020, eq. 4)

(= x / sqrt(1 + sigma^2) in VE sigma space) and t itself, and predicts eps, v or x0.
"""
from __future__ import annotations

from typing import Literal

import torch

Weighting = Literal["min_snr", "p2", "none"]
WEIGHTINGS = ("min_snr", "p2", "none")


def q_sample(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, `alpha_bar` of shape [B] broadcast over the image."""
    a = _per_item(alpha_bar, x0)
    return a.sqrt() * x0 + (1.0 - a).sqrt() * noise


def prediction_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor,
                      alpha_bar: torch.Tensor) -> torch.Tensor:
    """What the network regresses onto: eps; v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022,
    "Progressive Distillation", section 4, with alpha_t = sqrt(alpha_bar)); or x0 itself ("sample")."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        a = _per_item(alpha_bar, x0)
        return a.sqrt() * noise - (1.0 - a).sqrt() * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected 'epsilon', 'v_prediction' or 'sample'")


def snr_loss_weights(alpha_bar: torch.Tensor, prediction_type: str, weighting: Weighting = "min_snr",
                     gamma: float = 5.0, p2_k: float = 1.0) -> torch.Tensor:
    """Per-item loss weights [B] for an MSE on the `prediction_type` target.

    min-SNR (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy", eq. 8): weight the x0-MSE
    by min(SNR_t, gamma). The eps-MSE equals the x0-MSE times 1/SNR, the v-MSE the x0-MSE times (SNR + 1)/SNR, so the
    same weighting on those targets is min(SNR, gamma) / SNR and min(SNR, gamma) / (SNR + 1).
    P2 (Choi et al. 2022, "Perception Prioritized Training of Diffusion Models", eq. 8):
    lambda'_t = 1 / (k + SNR_t)^gamma on the eps-MSE, carried to the other targets the same way (gamma here is
    P2's exponent, typically 1).
    """
    snr = alpha_bar / (1.0 - alpha_bar)
    if weighting == "none":
        return torch.ones_like(snr)
    if weighting == "min_snr":
        x0_weight = snr.clamp(max=gamma)
    elif weighting == "p2":
        x0_weight = snr / (p2_k + snr) ** gamma
    else:
        raise ValueError(f"unknown loss weighting {weighting!r}; expected one of {list(WEIGHTINGS)}")
    if prediction_type == "epsilon":
        return x0_weight / snr
    if prediction_type == "v_prediction":
        return x0_weight / (snr + 1.0)
    if prediction_type == "sample":
        return x0_weight
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected 'epsilon', 'v_prediction' or 'sample'")


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of weight_i * mean-squared-error_i (computed in fp32 whatever the autocast dtype)."""
    per_item = (pred.float() - target.float()).pow(2).flatten(1).mean(1)
    return (weights.float() * per_item).mean()


def _per_item(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))
