"""Architectures of the stages this trainer makes: the demo cascade's base and SR stages, and tiny ones for tests.

Sized for a 2-core CPU (measured with one thread per stage, fp32, while other jobs shared the machine): the demo base
(16, 32, 64, 128 channels at 64, 32, 16, 8 px; self- and cross-attention at 16 and 8 px; 4.8 M parameters) takes about
1.5 s per batch of 16; the demo SR stage (16, 32, 64 channels; text cross-attention only at the lowest level, so it is
fully convolutional; 1.3 M parameters) about 2 s per batch of 8 random 128 px crops. A thin top level is enough for
flat-coloured shapes; the capacity sits at 16 and 8 px where composition is decided.

The demo's stage III (256 -> 1024 px) has one more level and a thinner top: 8, 16, 32, 64 channels at 1024, 512, 256,
128 px (1, 1, 2, 2 blocks; text cross-attention only at the lowest level and in the middle, so fully convolutional,
as the paper's 1024 px stage; 1.35 M parameters, a 5.4 MB file). Its work is edge sharpening: where a 256 px pixel's
antialiased value says the edge runs is decided at the 256 px level, so the capacity sits there and below, and the
two levels above only draw the sharp edge. A training step on a batch of 8 crops of 192 px takes about 1.7 s on one
thread (2.6 s while other jobs share the cores; 0.9 s on two threads; 256 px crops cost twice that, and 16 channels
at the top, as the 64 -> 256 stage has, 2.6x).
"""
from __future__ import annotations

import math

from ..unet.config import UNetConfig

DEMO_TEXT_DIM = 256  # the demo T5's d_model (comfyui_imagen.train.demo_t5)

DEMO_BASE_UNET = UNetConfig(channels=(16, 32, 64, 128), layers=(1, 1, 2, 2),
                            attention=("none", "none", "self_cross", "self_cross"), mid_attention="self_cross",
                            text_embed_dim=DEMO_TEXT_DIM, cond_dim=128, head_dim=16, pool_heads=4, norm_groups=16)
DEMO_SR_UNET = UNetConfig(channels=(16, 32, 64), layers=(1, 1, 2), attention=("none", "none", "cross"),
                          mid_attention="cross", lowres_cond=True, text_embed_dim=DEMO_TEXT_DIM, cond_dim=64,
                          head_dim=16, pool_heads=4, norm_groups=8, resnet_scale=math.sqrt(2),
                          mid_scale=math.sqrt(2))
DEMO_SR1024_UNET = DEMO_SR_UNET.replace(channels=(8, 16, 32, 64), layers=(1, 1, 2, 2),
                                       attention=("none", "none", "none", "cross"), norm_groups=4, time_embed_dim=64)
# Tests: build and step in milliseconds.
TINY_BASE_UNET = UNetConfig(channels=(16, 32), layers=(1, 1), attention=("none", "self_cross"),
                            mid_attention="self_cross", text_embed_dim=32, cond_dim=32, head_dim=16, pool_heads=2,
                            norm_groups=8)
TINY_SR_UNET = TINY_BASE_UNET.replace(attention=("none", "cross"), mid_attention="cross", lowres_cond=True)
TINY_SR1024_UNET = TINY_SR_UNET.replace(channels=(8, 16), norm_groups=4)  # thin: a whole 1024 px image in a second

_STAGES = {
    "demo-base": dict(role="base", resolution=64, lowres_resolution=None, unet=DEMO_BASE_UNET,
                      name="imagen-demo-base64"),
    "demo-sr": dict(role="sr", resolution=256, lowres_resolution=64, unet=DEMO_SR_UNET, name="imagen-demo-sr256"),
    "demo-sr1024": dict(role="sr", resolution=1024, lowres_resolution=256, unet=DEMO_SR1024_UNET,
                        name="imagen-demo-sr1024"),
    "tiny-base": dict(role="base", resolution=32, lowres_resolution=None, unet=TINY_BASE_UNET, name="tiny-base"),
    "tiny-sr": dict(role="sr", resolution=64, lowres_resolution=32, unet=TINY_SR_UNET, name="tiny-sr"),
    "tiny-sr1024": dict(role="sr", resolution=1024, lowres_resolution=256, unet=TINY_SR1024_UNET,
                        name="tiny-sr1024"),
}
STAGE_NAMES = tuple(_STAGES)


def stage_preset(name: str, text_embed_dim: int | None = None):
    """The `StageConfig` of a named stage: epsilon prediction, fixed variance, DDPM cosine (squaredcos_cap_v2)
    schedule with 1000 steps, as DeepFloyd IF trains (IF additionally learns the variance). `text_embed_dim`
    overrides the U-Net's text width (to pair a tiny stage with another encoder)."""
    from ..stage import StageConfig

    if name not in _STAGES:
        raise ValueError(f"unknown stage preset {name!r}; expected one of {sorted(_STAGES)}")
    spec = dict(_STAGES[name])
    unet = spec.pop("unet")
    if text_embed_dim is not None:
        unet = unet.replace(text_embed_dim=text_embed_dim)
    return StageConfig(unet=unet, prediction_type="v_prediction", variance_type="fixed", schedule="squaredcos_cap_v2",
                       num_train_timesteps=1000, text_embed_dim=unet.text_embed_dim, **spec)
