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

The fields after ``text_mask`` are the options diffusers' ``UNet2DConditionModel`` offers for IF's block types beyond
what IF's releases use (an unmirrored decoder, per-level head widths, additive time conditioning, where the time
activation runs...); their defaults are this model's original behaviour, and `UNetConfig.to_dict` leaves them out at
their defaults, so files that do not use them read as before.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

Attention = Literal["none", "cross", "self_cross"]
ATTENTIONS = ("none", "cross", "self_cross")
Activation = Literal["gelu", "silu", "mish"]
ACTIVATIONS = ("gelu", "silu", "mish")
TIME_SHIFTS = ("scale_shift", "add")
CROSS_NORMS = ("group_norm", "layer_norm", "none")


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
    head_dim may also be one width per level (the middle block uses the last level's).

    Options (defaults: the behaviour above; diffusers' names in brackets):
    up_attention / up_head_dim: the decoder's attention and head width per level (None: the encoder's).
    time_shift: "scale_shift" (``norm(h) * (1 + scale) + shift``) or "add" (``norm(h + proj(t))``)
    [resnet_time_scale_shift "default"].
    time_act: an activation applied once to the summed time embedding [time_embedding_act_fn]; resnet_time_act:
    every residual block applies ``act`` to it again before its projection [not resnet_skip_time_act];
    time_post_act: an activation closing the timestep MLP [timestep_post_act].
    cross_norm / cross_norm_groups: how the text is normed before the attention's key/value projections
    [cross_attention_norm; diffusers fixes the group count at 32]; None groups: norm_groups.
    text_proj: project the text to cond_dim first (False: the text is used as is, text_embed_dim == cond_dim)
    [encoder_hid_dim]; text_pool: add the pooled text to the time embedding [addition_embed_type "text"].
    flip_sin_to_cos / freq_shift: the sinusoidal layout; conv_in_kernel / conv_out_kernel; center_input: map the
    input x -> 2x - 1 first [center_input_sample].
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
    head_dim: int | tuple[int, ...] = 16
    pool_heads: int = 2
    time_embed_dim: int | None = None
    resnet_scale: float = 1.0
    mid_scale: float = 1.0
    act: Literal["gelu", "silu"] = "gelu"
    norm_groups: int = 32
    norm_eps: float = 1e-5
    text_mask: bool = True
    up_attention: tuple[Attention, ...] | None = None
    up_head_dim: int | tuple[int, ...] | None = None
    time_shift: Literal["scale_shift", "add"] = "scale_shift"
    time_act: Activation | None = None
    resnet_time_act: bool = True
    time_post_act: Activation | None = None
    cross_norm: Literal["group_norm", "layer_norm", "none"] = "group_norm"
    cross_norm_groups: int | None = None
    text_proj: bool = True
    text_pool: bool = True
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    conv_in_kernel: int = 3
    conv_out_kernel: int = 3
    center_input: bool = False

    def __post_init__(self) -> None:
        # JSON gives lists; keep the dataclass hashable and comparable
        for name in ("channels", "layers", "attention", "head_dim", "up_attention", "up_head_dim"):
            if isinstance(value := getattr(self, name), list):
                object.__setattr__(self, name, tuple(value))
        _canonical(self)
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

    @property
    def head_dims(self) -> tuple[int, ...]:
        """Head width of each encoder level (the middle block uses the last)."""
        return _per_level(self.head_dim, self.levels)

    @property
    def up_head_dims(self) -> tuple[int, ...]:
        """Head width of each decoder level, indexed by level like `head_dims`."""
        return self.head_dims if self.up_head_dim is None else _per_level(self.up_head_dim, self.levels)

    @property
    def up_attentions(self) -> tuple[Attention, ...]:
        """Attention of each decoder level, indexed by level."""
        return self.attention if self.up_attention is None else self.up_attention

    @property
    def feature_levels(self) -> tuple[tuple[int, bool, float], ...]:
        """(channels, whether it attends, its share of the image's pixels) per level, encoder and decoder together:
        what memory estimates read."""
        return tuple((c, (a, b) != ("none", "none"), 4.0 ** -i)
                     for i, (c, a, b) in enumerate(zip(self.channels, self.attention, self.up_attentions)))

    def replace(self, **changes) -> "UNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-ready fields; the options after ``text_mask`` only where they differ from their defaults (so that a
        file not using them reads in versions that predate them)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in OPTIONS and value == f.default:
                continue
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

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


_FIELDS = [f.name for f in dataclasses.fields(UNetConfig)]
OPTIONS = frozenset(_FIELDS[_FIELDS.index("text_mask") + 1:])  # written only where they differ from the default


def _per_level(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return value if isinstance(value, tuple) else (value,) * n


def _canonical(c: UNetConfig) -> None:
    """One spelling per network, so that configs that build the same U-Net compare equal (a folder's config.json
    and the same file's inferred config, for instance)."""
    def put(name, value):
        object.__setattr__(c, name, value)

    if c.channels and c.time_embed_dim == 4 * c.channels[0]:
        put("time_embed_dim", None)
    for name in ("head_dim", "up_head_dim"):
        value = getattr(c, name)
        if isinstance(value, tuple) and value and len(set(value)) == 1:
            put(name, value[0])
    if c.up_head_dim is not None and _per_level(c.up_head_dim, len(c.channels)) == _per_level(c.head_dim,
                                                                                               len(c.channels)):
        put("up_head_dim", None)
    if c.up_attention == c.attention:
        put("up_attention", None)
    if c.time_act == c.act and not c.resnet_time_act:  # act once on the embedding == act in every block
        put("time_act", None)
        put("resnet_time_act", True)
    if c.cross_norm_groups == c.norm_groups:
        put("cross_norm_groups", None)


def validate_unet_config(c: UNetConfig) -> None:
    """ValueError naming the field when `c` cannot build a U-Net."""
    n = len(c.channels)
    if n < 1:
        raise ValueError("UNetConfig.channels needs at least one level")
    for name in ("layers", "attention", "up_attention", "head_dim", "up_head_dim"):
        value = getattr(c, name)
        if isinstance(value, tuple) and len(value) != n:
            raise ValueError(f"UNetConfig.{name} ({len(value)} entries) needs one entry per level of .channels ({n})")
    if any(a not in ATTENTIONS for a in (*c.attention, *c.up_attentions, c.mid_attention)) or \
            c.mid_attention == "none":
        raise ValueError(f"UNetConfig.attention entries must be one of {ATTENTIONS} and mid_attention 'cross' or "
                         f"'self_cross'; got {c.attention} / {c.up_attention} / {c.mid_attention!r}")
    if any(k < 1 for k in c.layers):
        raise ValueError(f"UNetConfig.layers must all be >= 1, got {c.layers}")
    for name in ("act", "time_act", "time_post_act"):
        if getattr(c, name) not in ACTIVATIONS and (name == "act" or getattr(c, name) is not None):
            raise ValueError(f"UNetConfig.{name} {getattr(c, name)!r}: expected one of {ACTIVATIONS}")
    if c.time_shift not in TIME_SHIFTS or c.cross_norm not in CROSS_NORMS:
        raise ValueError(f"UNetConfig.time_shift {c.time_shift!r} / cross_norm {c.cross_norm!r}: expected one of "
                         f"{TIME_SHIFTS} / {CROSS_NORMS}")
    if any(h < 1 for h in (*c.head_dims, *c.up_head_dims)) or c.norm_groups < 1:
        raise ValueError("UNetConfig.head_dim, up_head_dim and norm_groups must be positive")
    blocks = [(ch, kind, h) for ch, kind, h in zip(c.channels, c.attention, c.head_dims)]
    blocks += [(ch, kind, h) for ch, kind, h in zip(c.channels, c.up_attentions, c.up_head_dims)]
    for ch, kind, h in (*blocks, (c.channels[-1], c.mid_attention, c.head_dims[-1])):
        if ch % c.norm_groups:
            raise ValueError(f"UNetConfig.channels {c.channels}: every width must be a multiple of norm_groups "
                             f"({c.norm_groups})")
        if kind != "none" and ch % h:
            raise ValueError(f"UNetConfig.channels {c.channels}: a level with attention needs a width that is a "
                             f"multiple of head_dim ({h})")
    groups = c.cross_norm_groups or c.norm_groups
    if c.cross_norm == "group_norm" and c.cond_dim % groups:
        raise ValueError(f"UNetConfig.cond_dim {c.cond_dim} must be a multiple of the cross-attention norm's groups "
                         f"({groups}): the text is group-normed before the attention")
    if not c.text_proj and c.text_embed_dim != c.cond_dim:
        raise ValueError(f"UNetConfig.text_proj is off, so the text goes to the attention as is: text_embed_dim "
                         f"({c.text_embed_dim}) must equal cond_dim ({c.cond_dim})")
    if any(k < 1 or k % 2 == 0 for k in (c.conv_in_kernel, c.conv_out_kernel)):
        raise ValueError(f"UNetConfig.conv_in_kernel / conv_out_kernel must be odd, got {c.conv_in_kernel} / "
                         f"{c.conv_out_kernel}")
    if c.text_pool and c.text_embed_dim % c.pool_heads:
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
