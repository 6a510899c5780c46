"""U-Net architecture: one frozen dataclass, serialised into every checkpoint, with named presets.

The vocabulary is the Efficient U-Net's (Imagen, Saharia et al. 2022, appendix B.1) written so that DeepFloyd IF's
diffusers blocks are exact special cases:

* a *level* is one resolution: ``layers[i]`` residual blocks at ``channels[i]`` channels, each followed by attention
  when ``attention[i]`` is not "none"; every level but the last ends in a residual block that halves the resolution
  (``ResnetDownsampleBlock2D`` / ``SimpleCrossAttnDownBlock2D``) and the decoder mirrors it with ``layers[i] + 1``
  blocks and a residual block that doubles it;
* attention is IF's "added key/value" attention: queries from the image, keys/values from the group-normed text
  (and, for "self_cross", from the image too, in one softmax); "cross" is text only, which keeps a stage fully
  convolutional (the paper's 1024 px stage drops self-attention and keeps text cross-attention);
* ``resnet_scale = sqrt(2)`` is the paper's skip connections scaled by 1/sqrt(2): every residual block returns
  ``(x + h) / resnet_scale``;
* "more residual blocks at low resolution" is a per-level ``layers`` tuple; "downsample before / upsample after the
  convolutions" is where the resolution changes: the down block is norm -> act -> avg-pool -> conv, so its
  convolutions already run at the lower resolution, and the up block doubles the resolution only after the level's
  convolutions, so they run at the lower one;
* the text is attention-pooled and layer-normed and added to the time embedding (IF's ``TextTimeEmbedding``); a
  super-resolution stage embeds its noise-augmentation level exactly like the timestep and adds it too.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

Attention = Literal["none", "cross", "self_cross"]
ATTENTIONS = ("none", "cross", "self_cross")
ACTIVATIONS = ("gelu", "silu")


@dataclass(frozen=True)
class UNetConfig:
    """Shape of an `ImagenUNet`. Tuples run from the highest resolution (level 0) to the lowest.

    channels: output channels of each level; layers: residual blocks per level in the encoder (the decoder has one
    more); attention: "none" | "cross" (text only) | "self_cross" (image and text keys in one softmax), per level;
    mid_attention: the middle block's attention ("cross" or "self_cross").
    in_channels: image channels; with ``lowres_cond`` the U-Net takes twice as many (the noisy image and the
    upsampled low-resolution image, concatenated) and embeds a noise-augmentation level.
    out_channels: ``in_channels`` or ``2 * in_channels`` (learned variance: IF predicts eps and a variance mix).
    text_embed_dim: width of the text encoder's embeddings (T5-XXL: 4096); any width works.
    cond_dim: width the text is projected to for the attention keys/values (IF's ``cross_attention_dim``).
    head_dim: channels per attention head; pool_heads: heads of the text attention-pooling.
    time_embed_dim: width of the time embedding (None: ``4 * channels[0]``).
    resnet_scale / mid_scale: residual blocks return ``(x + h) / scale`` (sqrt(2) in the paper's SR stages and IF-II).
    text_mask: whether cross-attention honours the text mask. IF was trained attending to T5's padding tokens (its
    pipelines pass no mask), so IF configs ignore a mask to reproduce IF; Imagen masks, and so do our own stages.
    """

    channels: tuple[int, ...] = (32, 64)
    layers: tuple[int, ...] = (1, 1)
    attention: tuple[Attention, ...] = ("none", "self_cross")
    mid_attention: Attention = "self_cross"
    in_channels: int = 3
    out_channels: int = 3
    lowres_cond: bool = False
    text_embed_dim: int = 32
    cond_dim: int = 32
    head_dim: int = 16
    pool_heads: int = 2
    time_embed_dim: int | None = None
    resnet_scale: float = 1.0
    mid_scale: float = 1.0
    act: Literal["gelu", "silu"] = "gelu"
    norm_groups: int = 32
    norm_eps: float = 1e-5
    text_mask: bool = True

    def __post_init__(self) -> None:
        # JSON gives lists; keep the dataclass hashable and comparable
        for name in ("channels", "layers", "attention"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.channels and self.time_embed_dim == 4 * self.channels[0]:
            object.__setattr__(self, "time_embed_dim", None)  # one spelling of the default, so configs compare equal
        validate_unet_config(self)

    @property
    def levels(self) -> int:
        return len(self.channels)

    @property
    def temb_dim(self) -> int:
        return self.time_embed_dim or 4 * self.channels[0]

    @property
    def downscale(self) -> int:
        """Height and width must be multiples of this (the resolution halves at every level but the last)."""
        return 2 ** (self.levels - 1)

    @property
    def conv_in_channels(self) -> int:
        return self.in_channels * (2 if self.lowres_cond else 1)

    def replace(self, **changes) -> "UNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        return dataclass_from_dict(cls, data)


def dataclass_from_dict(cls, data: dict):
    """``cls(**data)`` for a config dataclass read from a file, refusing fields it does not know by name."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; expected some of {sorted(known)} (was the file "
                         f"written by a newer comfyui-imagen? update the custom node)")
    return cls(**data)


def validate_unet_config(c: UNetConfig) -> None:
    """ValueError naming the field when `c` cannot build a U-Net."""
    n = len(c.channels)
    if n < 1:
        raise ValueError("UNetConfig.channels needs at least one level")
    if len(c.layers) != n or len(c.attention) != n:
        raise ValueError(f"UNetConfig.layers ({len(c.layers)}) and .attention ({len(c.attention)}) need one entry per "
                         f"level of .channels ({n})")
    if any(a not in ATTENTIONS for a in (*c.attention, c.mid_attention)) or c.mid_attention == "none":
        raise ValueError(f"UNetConfig.attention entries must be one of {ATTENTIONS} and mid_attention 'cross' or "
                         f"'self_cross'; got {c.attention} / {c.mid_attention!r}")
    if any(k < 1 for k in c.layers):
        raise ValueError(f"UNetConfig.layers must all be >= 1, got {c.layers}")
    if c.act not in ACTIVATIONS:
        raise ValueError(f"UNetConfig.act {c.act!r}: expected one of {ACTIVATIONS}")
    for ch, kind in zip((*c.channels, c.channels[-1]), (*c.attention, c.mid_attention)):
        if ch % c.norm_groups:
            raise ValueError(f"UNetConfig.channels {c.channels}: every width must be a multiple of norm_groups "
                             f"({c.norm_groups})")
        if kind != "none" and ch % c.head_dim:
            raise ValueError(f"UNetConfig.channels {c.channels}: a level with attention needs a width that is a "
                             f"multiple of head_dim ({c.head_dim})")
    if c.cond_dim % c.norm_groups:
        raise ValueError(f"UNetConfig.cond_dim {c.cond_dim} must be a multiple of norm_groups ({c.norm_groups}): the "
                         "text is group-normed before the attention")
    if c.text_embed_dim % c.pool_heads:
        raise ValueError(f"UNetConfig.text_embed_dim {c.text_embed_dim} must be a multiple of pool_heads "
                         f"({c.pool_heads})")
    if c.out_channels not in (c.in_channels, 2 * c.in_channels):
        raise ValueError(f"UNetConfig.out_channels {c.out_channels}: expected in_channels ({c.in_channels}) or twice "
                         "that (learned variance)")
    if c.temb_dim % 2 or c.channels[0] % 2:
        raise ValueError("UNetConfig: channels[0] and time_embed_dim must be even (sinusoidal embedding)")


def _if_stage_i(base: int, mult=(1, 2, 3, 4)) -> UNetConfig:
    """IF stage I: 64 px, 3 blocks per level, self+cross attention below the top level, learned variance."""
    channels = tuple(base * m for m in mult)
    return UNetConfig(channels=channels, layers=(3, 3, 3, 3), attention=("none", "self_cross", "self_cross",
                      "self_cross"), mid_attention="self_cross", in_channels=3, out_channels=6, text_embed_dim=4096,
                      cond_dim=channels[-1], head_dim=64, pool_heads=64, text_mask=False)


# IF's stage II scales its skips by 1 / 0.7071 (its conversion's number, a hair under sqrt(2)); see resnet_scale
IF_SKIP_SCALE = 1 / 0.7071


def _if_stage_ii(base: int, mult) -> UNetConfig:
    """IF stage II: 64 -> 256 px, five levels, more blocks at low resolution, sqrt(2) skips, noise-level embedding."""
    channels = tuple(base * m for m in mult)
    return UNetConfig(channels=channels, layers=(2, 2, 3, 5, 5), attention=("none", "none", "none", "self_cross",
                      "self_cross"), mid_attention="self_cross", in_channels=3, out_channels=6, lowres_cond=True,
                      text_embed_dim=4096, cond_dim=channels[-1], head_dim=64, pool_heads=64,
                      time_embed_dim=channels[-1], resnet_scale=IF_SKIP_SCALE, mid_scale=IF_SKIP_SCALE, text_mask=False)


# DeepFloyd IF. IF-I-XL's shape is its unet/config.json's; M and L follow the same pattern and match the published
# parameter counts (372M "400M", 935M "900M", 4.3B). The IF-II shapes are fitted to the published counts (463M
# "450M", 1.24B "1.2B"): real IF files never need them, their config.json or tensor shapes give the exact shape.
IF_I_M = _if_stage_i(192)
IF_I_L = _if_stage_i(320)
IF_I_XL = _if_stage_i(704)
IF_II_M = _if_stage_ii(128, (1, 2, 3, 4, 6))
IF_II_L = _if_stage_ii(160, (1, 2, 4, 6, 8))

# Imagen (Saharia et al. 2022), appendix F, paraphrased: the 2B base U-Net at 64 px has 512 base channels,
# multipliers (1, 2, 3, 4), 3 residual blocks per level and attention at 32, 16 and 8 px; the Efficient U-Net SR
# stages have 128 base channels, multipliers (1, 2, 4, 8) and (2, 4, 8, 8) residual blocks, text cross-attention at
# the lowest resolution only, and the 1024 px stage no self-attention.
BASE_64 = UNetConfig(channels=(512, 1024, 1536, 2048), layers=(3, 3, 3, 3),
                     attention=("none", "self_cross", "self_cross", "self_cross"), mid_attention="self_cross",
                     in_channels=3, out_channels=3, text_embed_dim=4096, cond_dim=2048, head_dim=64, pool_heads=64)
SR_256 = UNetConfig(channels=(128, 256, 512, 1024), layers=(2, 4, 8, 8), attention=("none", "none", "none",
                    "self_cross"), mid_attention="self_cross", in_channels=3, out_channels=3, lowres_cond=True,
                    text_embed_dim=4096, cond_dim=1024, head_dim=64, pool_heads=64, resnet_scale=math.sqrt(2),
                    mid_scale=math.sqrt(2))
SR_1024 = SR_256.replace(attention=("none", "none", "none", "cross"), mid_attention="cross")

# Tiny shapes for our own demo cascade and tests: build in milliseconds on a CPU.
TINY_BASE = UNetConfig(channels=(32, 64), layers=(1, 2), attention=("none", "self_cross"), text_embed_dim=32,
                       cond_dim=64, head_dim=16, pool_heads=2)
TINY_SR = UNetConfig(channels=(32, 64), layers=(1, 2), attention=("none", "cross"), mid_attention="cross",
                     lowres_cond=True, text_embed_dim=32, cond_dim=64, head_dim=16, pool_heads=2,
                     resnet_scale=math.sqrt(2), mid_scale=math.sqrt(2))

PRESETS: dict[str, UNetConfig] = {
    "IF-I-M": IF_I_M, "IF-I-L": IF_I_L, "IF-I-XL": IF_I_XL, "IF-II-M": IF_II_M, "IF-II-L": IF_II_L,
    "base-64": BASE_64, "sr-256": SR_256, "sr-1024": SR_1024, "tiny-base": TINY_BASE, "tiny-sr": TINY_SR,
}


def get_preset(name: str) -> UNetConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]
