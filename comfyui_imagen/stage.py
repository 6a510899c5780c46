"""A cascade stage, the seam where a model family plugs in: its config, its network, its schedule, and the one place
that turns `SamplingSettings` into a denoiser.

A model family is a U-Net module plus a checkpoint reader that returns a `Stage` (``comfyui_imagen.checkpoints``:
native files, DeepFloyd IF; nothing here knows a family); samplers, guidance, the cascade runs, the nodes and the
trainer only talk to `Stage`:

    stage.schedule                  the training noise schedule (computed once)
    stage.denoiser(settings)        Thresholded(CFGDenoiser(<parameterization wrapper>(unet))): x0 for any sampler
    stage.sigmas(settings)          the descending sigma grid the settings ask for
    stage.recommended               `StageDefaults` read from the file (IF's published ones for IF files)

dtype: the network computes in its own weights' dtype (the U-Net casts its inputs in), the denoiser returns float32
(the samplers' arithmetic; VE samples reach ~8e4, past float16), so a stage loaded in fp16/bf16 needs nothing else.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Optional, Union

import torch
from torch import nn

from .denoisers import PREDICTION_TYPES, VARIANCE_TYPES, PredictionType, VarianceType, make_denoiser
from .guidance import CFGDenoiser, Thresholded
from .respacing import IF_PRESETS, get_sigmas
from .schedules import SCHEDULES, get_schedule
from .settings import SamplingSettings, StageDefaults, role_defaults
from .unet.config import UNetConfig, dataclass_from_dict

if TYPE_CHECKING:  # pragma: no cover
    from .train.config import TrainConfig
    from .unet.imagen_pytorch import ImagenPytorchUNetConfig

__all__ = ["Stage", "StageConfig", "Role", "validate_stage_config"]

Role = Literal["base", "sr"]
ROLES = ("base", "sr")
LowresUpsample = Literal["bilinear", "nearest"]
LOWRES_UPSAMPLES = ("bilinear", "nearest")


@dataclass(frozen=True)
class StageConfig:
    """Everything about a stage except its weights; stored as JSON in the native checkpoint's metadata.

    role: "base" (text -> ``resolution`` px) or "sr" (``lowres_resolution`` -> ``resolution`` px, conditioned on the
    upsampled low-resolution image and its noise-augmentation level).
    prediction_type: what the network predicts ("epsilon", "v_prediction", "sample").
    variance_type: "learned_range" when the U-Net outputs 2x channels (IF: eps and a log-variance mix), else "fixed".
    schedule / num_train_timesteps: the training noise schedule, by `comfyui_imagen.schedules.get_schedule` name.
    text_embed_dim: width of the text embeddings this stage expects (always ``unet.text_embed_dim``).
    sampling: the stage's recommended `StageDefaults` (None: the library's defaults for its role).

    Fields for other model families (written to files only where they differ from these defaults):
    unet may be an `ImagenPytorchUNetConfig` (imagen-pytorch's U-Net; its dict says ``"architecture"``).
    schedule_options: keyword arguments of `get_schedule` (imagen-pytorch's float32 ``log_snr_min``, EDM's
    ``sigma_min`` / ``sigma_max``). sigma_data: EDM's data std (prediction_type "edm").
    lowres_schedule: the schedule an SR stage's low-resolution image is noise-augmented on, and whose time its
    ``noise_level`` input is given in (`Schedule.sigma_to_t`: imagen-pytorch's linear log-SNR); None: the stage's
    own schedule, the level passed as the 0..T-1 number (DeepFloyd IF). lowres_upsample: how that image is
    upsampled to the output size: "bilinear" (IF, align_corners) or "nearest" (imagen-pytorch).
    """

    role: Role
    resolution: int
    unet: Union[UNetConfig, "ImagenPytorchUNetConfig"]
    lowres_resolution: Optional[int] = None
    prediction_type: PredictionType = "epsilon"
    variance_type: VarianceType = "fixed"
    schedule: str = "squaredcos_cap_v2"
    num_train_timesteps: int = 1000
    text_embed_dim: Optional[int] = None
    name: str = ""
    sampling: Optional[StageDefaults] = None
    schedule_options: Optional[dict] = None
    sigma_data: float = 0.5
    lowres_schedule: Optional[str] = None
    lowres_upsample: LowresUpsample = "bilinear"

    def __post_init__(self) -> None:
        if isinstance(self.unet, dict):
            object.__setattr__(self, "unet", unet_config_from_dict(self.unet))
        if isinstance(self.sampling, dict):
            object.__setattr__(self, "sampling", StageDefaults.from_dict(self.sampling))
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
        if self.sampling is None:
            del d["sampling"]  # stage-v1 readers know no such field
        else:
            d["sampling"] = self.sampling.to_dict()
        for name, default in _LATER_FIELDS.items():  # files that do not use them read as before, by any version
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "StageConfig":
        return dataclass_from_dict(cls, data)


_LATER_FIELDS = {"schedule_options": None, "sigma_data": 0.5, "lowres_schedule": None, "lowres_upsample": "bilinear"}


def unet_config_from_dict(data: dict):
    """The U-Net config a stored dict describes: imagen-pytorch's when it says ``"architecture": "imagen-pytorch"``,
    else the Efficient U-Net's `UNetConfig`."""
    if isinstance(data, dict) and data.get("architecture") == "imagen-pytorch":
        from .unet.imagen_pytorch import ImagenPytorchUNetConfig
        return ImagenPytorchUNetConfig.from_dict(data)
    return UNetConfig.from_dict(data)


def validate_stage_config(s: StageConfig) -> None:
    """ValueError naming the field when `s` is inconsistent with itself or its U-Net."""
    if s.role not in ROLES:
        raise ValueError(f"StageConfig.role {s.role!r}: expected 'base' or 'sr'")
    if s.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"StageConfig.prediction_type {s.prediction_type!r}: expected one of {PREDICTION_TYPES}")
    if s.variance_type not in VARIANCE_TYPES:
        raise ValueError(f"StageConfig.variance_type {s.variance_type!r}: expected one of {VARIANCE_TYPES}")
    if s.schedule not in SCHEDULES:
        raise ValueError(f"StageConfig.schedule {s.schedule!r}: expected one of {list(SCHEDULES)}")
    if s.lowres_upsample not in LOWRES_UPSAMPLES:
        raise ValueError(f"StageConfig.lowres_upsample {s.lowres_upsample!r}: expected one of {LOWRES_UPSAMPLES}")
    if s.lowres_schedule is not None and s.lowres_schedule not in SCHEDULES:
        raise ValueError(f"StageConfig.lowres_schedule {s.lowres_schedule!r}: expected None or one of "
                         f"{list(SCHEDULES)}")
    if s.schedule_options is not None and not isinstance(s.schedule_options, dict):
        raise ValueError(f"StageConfig.schedule_options must be a dict of get_schedule keywords, got "
                         f"{s.schedule_options!r}")
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
    if s.sampling is not None and (s.role == "sr") != (s.sampling.noise_level is not None):
        raise ValueError(f"StageConfig.sampling: a{'n SR' if s.role == 'sr' else ' base'} stage's defaults "
                         f"{'need' if s.role == 'sr' else 'take no'} a noise_level")


@dataclass
class Stage:
    """A loaded stage: ``unet`` (eval mode), its ``config``, ``source`` (where it came from) and ``train_config``
    (the `TrainConfig` that trained it, when its file says so)."""

    unet: nn.Module
    config: StageConfig
    source: str = ""
    train_config: Optional["TrainConfig"] = None

    @functools.cached_property
    def schedule(self):
        """The noise schedule the stage was trained with (`comfyui_imagen.schedules`)."""
        return get_schedule(self.config.schedule, self.config.num_train_timesteps,
                            **(self.config.schedule_options or {}))

    @functools.cached_property
    def lowres_schedule(self):
        """The schedule an SR stage's low-resolution image is noise-augmented on (`StageConfig.lowres_schedule`)."""
        name = self.config.lowres_schedule
        return self.schedule if name is None else get_schedule(name, self.config.num_train_timesteps)

    @property
    def recommended(self) -> StageDefaults:
        """The settings this stage samples best with: from its file, else the library's defaults for its role."""
        return self.config.sampling or role_defaults(self.config.role)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def describe(self, name: str = "") -> str:
        """One line for people: role, sizes, prediction type, T5 width, size in parameters, recommended settings."""
        c = self.config
        size = (f"{c.resolution} px from text" if c.role == "base"
                else f"{c.lowres_resolution} -> {c.resolution} px super-resolution")
        return (f"{name or c.name or 'stage'}: {c.role} stage, {size}, {c.prediction_type}, T5 width "
                f"{c.text_embed_dim}, {sum(p.numel() for p in self.unet.parameters()) / 1e6:.1f} M parameters; "
                f"recommended (the nodes' auto): {self.recommended.describe()}")

    def denoiser(self, settings: SamplingSettings):
        """``Thresholded(CFGDenoiser(make_denoiser(unet)))``, called with ``cond=`` / ``uncond=`` kwargs.

        The threshold cap is ``settings.threshold_max``, else the stage's recommended one (IF: 1.5 / 1.0), else the
        library's default for the stage's role."""
        config = self.config
        raw = make_denoiser(self.unet, self.schedule, config.prediction_type, config.variance_type,
                            sigma_data=config.sigma_data)
        guided = CFGDenoiser(raw, settings.cfg, settings.cfg_parallel)
        if settings.dynamic_threshold is None:
            return Thresholded(guided, "static")
        cap = (settings.threshold_max or self.recommended.settings.threshold_max
               or role_defaults(config.role).settings.threshold_max)
        return Thresholded(guided, "dynamic", settings.dynamic_threshold, cap)

    def sigmas(self, settings: SamplingSettings) -> torch.Tensor:
        """The descending sigmas (ending in 0) the stage is sampled over."""
        steps = None if settings.spacing in IF_PRESETS else settings.steps
        return get_sigmas(self.schedule, settings.spacing, steps)
