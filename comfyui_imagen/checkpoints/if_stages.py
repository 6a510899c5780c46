"""DeepFloyd IF's stage setup: how an IF-family U-Net becomes a `Stage` config, and IF's published sampling settings
as its recommended ones. The family-specific half of the IF reader (`deepfloyd.py` translates the U-Net config)."""
from __future__ import annotations

from ..settings import IF_STAGE_I, IF_STAGE_II, StageDefaults
from ..stage import StageConfig
from ..unet.config import IF_I_L, IF_I_M, IF_I_XL, IF_II_L, IF_II_M, UNetConfig

# deepfloyd_if/modules/stage_I.py, stage_II.py: stage II's input noise-augmented at 250, sampled from pure noise
IF_DEFAULTS = {"base": StageDefaults(IF_STAGE_I), "sr": StageDefaults(IF_STAGE_II, noise_level=250, strength=1.0)}


def if_stage_config(unet: UNetConfig, name: str = "DeepFloyd IF") -> StageConfig:
    """DeepFloyd IF's setup for an IF-family U-Net of any shape: stage I (64 px) without a low-resolution input, else
    stage II (64 -> 256 px); eps prediction, learned-range variance when the U-Net outputs twice the image's
    channels (IF's own), fixed otherwise; squaredcos_cap_v2 over 1000 steps; IF's published sampling settings."""
    role = "sr" if unet.lowres_cond else "base"
    learned = unet.out_channels == 2 * unet.in_channels
    return StageConfig(role=role, resolution=256 if role == "sr" else 64,
                       lowres_resolution=64 if role == "sr" else None, unet=unet, prediction_type="epsilon",
                       variance_type="learned_range" if learned else "fixed", schedule="squaredcos_cap_v2",
                       num_train_timesteps=1000, name=name, sampling=IF_DEFAULTS[role])


IF_STAGES: dict[str, StageConfig] = {name: if_stage_config(u, name) for name, u in (
    ("IF-I-M", IF_I_M), ("IF-I-L", IF_I_L), ("IF-I-XL", IF_I_XL), ("IF-II-M", IF_II_M), ("IF-II-L", IF_II_L))}
