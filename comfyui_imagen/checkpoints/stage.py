"""A cascade stage: its U-Net plus what a sampler needs to drive it (role, resolutions, parameterization, schedule)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..unet.config import IF_I_L, IF_I_M, IF_I_XL, IF_II_L, IF_II_M, UNetConfig, dataclass_from_dict

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
VARIANCE_TYPES = ("fixed", "learned_range")


@dataclass(frozen=True)
class StageConfig:
    """Everything about a stage except its weights; stored as JSON in the native checkpoint's metadata.

    role: "base" (text -> ``resolution`` px) or "sr" (``lowres_resolution`` -> ``resolution`` px, conditioned on the
    upsampled low-resolution image and its noise-augmentation level).
    prediction_type: what the network predicts ("epsilon", "v_prediction", "sample").
    variance_type: "learned_range" when the U-Net outputs 2x channels (IF: eps and a log-variance mix), else "fixed".
    schedule / num_train_timesteps: the training noise schedule, by `comfyui_imagen.schedules.get_schedule` name.
    text_embed_dim: width of the text embeddings this stage expects (always ``unet.text_embed_dim``).
    """

    role: Literal["base", "sr"]
    resolution: int
    unet: UNetConfig
    lowres_resolution: int | None = None
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "epsilon"
    variance_type: Literal["fixed", "learned_range"] = "fixed"
    schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    text_embed_dim: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            object.__setattr__(self, "unet", UNetConfig.from_dict(self.unet))
        if self.text_embed_dim is None:
            object.__setattr__(self, "text_embed_dim", self.unet.text_embed_dim)
        validate_stage_config(self)

    def replace(self, **changes) -> "StageConfig":
        if "unet" in changes and "text_embed_dim" not in changes:
            changes["text_embed_dim"] = None  # follow the new U-Net
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["unet"] = self.unet.to_dict()
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "StageConfig":
        return dataclass_from_dict(cls, data)


def validate_stage_config(s: StageConfig) -> None:
    """ValueError naming the field when `s` is inconsistent with itself or its U-Net."""
    from ..schedules import SCHEDULES

    if s.role not in ("base", "sr"):
        raise ValueError(f"StageConfig.role {s.role!r}: expected 'base' or 'sr'")
    if s.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"StageConfig.prediction_type {s.prediction_type!r}: expected one of {PREDICTION_TYPES}")
    if s.variance_type not in VARIANCE_TYPES:
        raise ValueError(f"StageConfig.variance_type {s.variance_type!r}: expected one of {VARIANCE_TYPES}")
    if s.schedule not in SCHEDULES:
        raise ValueError(f"StageConfig.schedule {s.schedule!r}: expected one of {list(SCHEDULES)}")
    if s.num_train_timesteps < 1:
        raise ValueError(f"StageConfig.num_train_timesteps must be positive, got {s.num_train_timesteps}")
    if s.text_embed_dim != s.unet.text_embed_dim:
        raise ValueError(f"StageConfig.text_embed_dim {s.text_embed_dim} differs from its U-Net's text_embed_dim "
                         f"{s.unet.text_embed_dim}")
    if (s.role == "sr") != s.unet.lowres_cond:
        raise ValueError(f"StageConfig.role {s.role!r} needs a U-Net with lowres_cond={s.role == 'sr'}")
    learned = s.unet.out_channels == 2 * s.unet.in_channels
    if learned != (s.variance_type == "learned_range"):
        raise ValueError(f"StageConfig.variance_type {s.variance_type!r} does not match a U-Net with "
                         f"{s.unet.out_channels} output channels for {s.unet.in_channels} image channels")
    if s.resolution < 1 or s.resolution % s.unet.downscale:
        raise ValueError(f"StageConfig.resolution {s.resolution} must be a positive multiple of {s.unet.downscale}")
    if s.role == "sr" and not (s.lowres_resolution and 0 < s.lowres_resolution < s.resolution):
        raise ValueError(f"a super-resolution StageConfig needs 0 < lowres_resolution < resolution ({s.resolution}); "
                         f"got {s.lowres_resolution}")
    if s.role == "base" and s.lowres_resolution is not None:
        raise ValueError("a base StageConfig takes no lowres_resolution")


@dataclass
class Stage:
    """A loaded stage: ``unet`` (an `ImagenUNet`, eval mode) and its ``config``; ``source`` is where it came from."""

    unet: nn.Module
    config: StageConfig
    source: str = ""


def if_stage_config(unet: UNetConfig, name: str = "DeepFloyd IF") -> StageConfig:
    """DeepFloyd IF's setup for an IF U-Net of any shape: stage I (64 px) without a low-resolution input, else stage
    II (64 -> 256 px); eps prediction, learned-range variance, squaredcos_cap_v2 over 1000 steps."""
    sr = unet.lowres_cond
    return StageConfig(role="sr" if sr else "base", resolution=256 if sr else 64, lowres_resolution=64 if sr else None,
                       unet=unet, prediction_type="epsilon", variance_type="learned_range",
                       schedule="squaredcos_cap_v2", num_train_timesteps=1000, name=name)


IF_STAGES: dict[str, StageConfig] = {name: if_stage_config(u, name) for name, u in (
    ("IF-I-M", IF_I_M), ("IF-I-L", IF_I_L), ("IF-I-XL", IF_I_XL), ("IF-II-M", IF_II_M), ("IF-II-L", IF_II_L))}
