"""`ImagenUNet`: the Efficient U-Net of Imagen / DeepFloyd IF, built from a `UNetConfig`.

Module tree and parameter names are diffusers' ``UNet2DConditionModel`` for IF (``down_blocks.i.resnets.j``,
``.attentions.j``, ``.downsamplers.0``, ``mid_block``, ``up_blocks``, ``time_embedding``, ``class_embedding``,
``add_embedding``, ``encoder_hid_proj``), so an IF checkpoint is this model's state dict as stored.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import UNetConfig
from .layers import AddedKVAttention, ResBlock, TextTimeEmbedding, TimestepMLP, activation, timestep_embedding
from .winograd import set_winograd


class DownLevel(nn.Module):
    """One encoder level: ``layers`` residual blocks (each followed by attention, if any), then a down block."""

    def __init__(self, c: UNetConfig, i: int, c_in: int):
        super().__init__()
        ch, kw = c.channels[i], _res_kwargs(c, c.resnet_scale)
        self.resnets = nn.ModuleList(ResBlock(c_in if j == 0 else ch, ch, c.temb_dim, **kw) for j in range(c.layers[i]))
        self.attentions = _attentions(c, c.attention[i], ch, c.layers[i], c.head_dims[i])
        self.downsamplers = (nn.ModuleList([ResBlock(ch, ch, c.temb_dim, resample="down", **kw)])
                             if i < c.levels - 1 else None)

    def forward(self, x, temb, text, bias, skips: list) -> torch.Tensor:
        for j, res in enumerate(self.resnets):
            x = res(x, temb)
            if self.attentions is not None:
                x = self.attentions[j](x, text, bias)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, temb)
            skips.append(x)
        return x


class UpLevel(nn.Module):
    """One decoder level (reverse index ``i``): ``layers + 1`` residual blocks on [x, skip] (attention after each),
    then an up block."""

    def __init__(self, c: UNetConfig, i: int):
        super().__init__()
        level = c.levels - 1 - i
        ch = c.channels[level]
        prev = c.channels[min(level + 1, c.levels - 1)]  # channels coming up from below
        skip_last = c.channels[max(level - 1, 0)]  # the first skip of this level came from the level above's output
        n = c.layers[level] + 1
        kw = _res_kwargs(c, c.resnet_scale)
        self.resnets = nn.ModuleList(
            ResBlock((prev if j == 0 else ch) + (skip_last if j == n - 1 else ch), ch, c.temb_dim, **kw)
            for j in range(n))
        self.attentions = _attentions(c, c.up_attentions[level], ch, n, c.up_head_dims[level])
        self.upsamplers = nn.ModuleList([ResBlock(ch, ch, c.temb_dim, resample="up", **kw)]) if level > 0 else None

    def forward(self, x, temb, text, bias, skips: list) -> torch.Tensor:
        for j, res in enumerate(self.resnets):
            x = res(torch.cat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[j](x, text, bias)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, temb)
        return x


class MidBlock(nn.Module):
    """Residual block, attention, residual block at the lowest resolution."""

    def __init__(self, c: UNetConfig):
        super().__init__()
        ch, kw = c.channels[-1], _res_kwargs(c, c.mid_scale)
        self.resnets = nn.ModuleList(ResBlock(ch, ch, c.temb_dim, **kw) for _ in range(2))
        self.attentions = _attentions(c, c.mid_attention, ch, 1, c.head_dims[-1])

    def forward(self, x, temb, text, bias) -> torch.Tensor:
        x = self.resnets[0](x, temb)
        x = self.attentions[0](x, text, bias)
        return self.resnets[1](x, temb)


def _res_kwargs(c: UNetConfig, scale: float) -> dict:
    return dict(act=c.act, groups=c.norm_groups, eps=c.norm_eps, out_scale=scale, time_shift=c.time_shift)


def _attentions(c: UNetConfig, kind: str, ch: int, n: int, head_dim: int) -> nn.ModuleList | None:
    if kind == "none":
        return None
    return nn.ModuleList(AddedKVAttention(ch, c.cond_dim, head_dim, groups=c.norm_groups, cross_only=kind == "cross",
                                          cross_norm=c.cross_norm, cross_groups=c.cross_norm_groups)
                         for _ in range(n))


class ImagenUNet(nn.Module):
    """Text-conditioned Efficient U-Net (Imagen / DeepFloyd IF); see `UNetConfig` for the architecture."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        c = self.config = config
        self.conv_in = nn.Conv2d(c.conv_in_channels, c.channels[0], c.conv_in_kernel, padding=c.conv_in_kernel // 2)
        self.time_embedding = TimestepMLP(c.channels[0], c.temb_dim, c.act, c.time_post_act)
        self.class_embedding = TimestepMLP(c.channels[0], c.temb_dim, c.act) if c.lowres_cond else None
        self.encoder_hid_proj = nn.Linear(c.text_embed_dim, c.cond_dim) if c.text_proj else None
        self.add_embedding = TextTimeEmbedding(c.text_embed_dim, c.temb_dim, c.pool_heads) if c.text_pool else None
        # what every residual block sees: time_act once (diffusers' time_embed_act), then act (unless the blocks
        # skip it); both are one function of the summed embedding, computed once here
        acts = [activation(c.time_act)] if c.time_act else []
        self.time_embed_act = nn.Sequential(*acts, *([activation(c.act)] if c.resnet_time_act else []))
        self.down_blocks = nn.ModuleList(
            DownLevel(c, i, c.channels[max(i - 1, 0)]) for i in range(c.levels))
        self.mid_block = MidBlock(c)
        self.up_blocks = nn.ModuleList(UpLevel(c, i) for i in range(c.levels))
        self.conv_norm_out = nn.GroupNorm(c.norm_groups, c.channels[0], eps=c.norm_eps)
        self.conv_act = activation(c.act)
        self.conv_out = nn.Conv2d(c.channels[0], c.out_channels, c.conv_out_kernel, padding=c.conv_out_kernel // 2)
        # Channels-last activations and conv weights: oneDNN / cuDNN convolve them without layout reorders, and the
        # attention reads a channels-last feature map as [tokens, channels] rows in place. Loaded weights (assigned
        # from a file) are converted once by the hook below.
        self.to(memory_format=torch.channels_last)
        self.register_load_state_dict_post_hook(_channels_last_after_load)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, text_embeds: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, lowres_image: torch.Tensor | None = None,
                noise_level: torch.Tensor | None = None) -> torch.Tensor:
        """Predict from a noisy image.

        x: [B, in_channels, H, W], H and W multiples of ``config.downscale``; timesteps: [B] (or scalar) on the
        DDPM 0..999 scale, may be fractional; text_embeds: [B, L, text_embed_dim] (None: an all-zero, fully masked
        single token, i.e. unconditional); text_mask: [B, L] bool, True = real token (honoured when
        ``config.text_mask``); lowres_image: [B, in_channels, H, W], already resized to x's size (SR only);
        noise_level: [B] (or scalar) augmentation level on the 0..999 scale (SR only, default 0).
        Returns [B, out_channels, H, W].
        """
        c = self.config
        b = x.shape[0]
        self._check_inputs(x, lowres_image)
        dtype = self.conv_in.weight.dtype
        x = x.to(dtype)
        if c.lowres_cond:
            x = torch.cat([x, lowres_image.to(dtype)], dim=1)
        if c.center_input:
            x = 2 * x - 1.0
        x = x.contiguous(memory_format=torch.channels_last)
        if text_embeds is None:
            text_embeds = x.new_zeros(b, 1, c.text_embed_dim)
            text_mask = torch.zeros(b, 1, dtype=torch.bool, device=x.device)
        text_embeds = text_embeds.to(dtype)
        mask = text_mask if (c.text_mask and text_mask is not None) else None

        sinusoid = dict(dim=c.channels[0], flip_sin_to_cos=c.flip_sin_to_cos, freq_shift=c.freq_shift)
        temb = self.time_embedding(timestep_embedding(_batch(timesteps, b, x.device), **sinusoid).to(dtype))
        if self.class_embedding is not None:
            level = _batch(noise_level if noise_level is not None else 0, b, x.device)
            temb = temb + self.class_embedding(timestep_embedding(level, **sinusoid).to(dtype))
        if self.add_embedding is not None:
            temb = temb + self.add_embedding(text_embeds)
        temb = self.time_embed_act(temb)
        text = text_embeds if self.encoder_hid_proj is None else self.encoder_hid_proj(text_embeds)
        bias = None
        if mask is not None:
            bias = torch.zeros(mask.shape, dtype=dtype, device=x.device).masked_fill(~mask.bool(), -10000.0)
            bias = bias[:, None, None, :]

        h = self.conv_in(x)
        skips = [h]
        for level in self.down_blocks:
            h = level(h, temb, text, bias, skips)
        h = self.mid_block(h, temb, text, bias)
        for level in self.up_blocks:
            h = level(h, temb, text, bias, skips)
        return self.conv_out(self.conv_act(self.conv_norm_out(h))).contiguous()  # callers get the usual layout

    def set_winograd(self, enabled: bool) -> None:
        """Allow (the default) or forbid Winograd convolutions on the CPU (`comfyui_imagen.unet.winograd`): faster
        inference for a cache of transformed filters (0.73× the parameters for IF-I-M); forbidding frees it."""
        set_winograd(self, enabled)

    def _check_inputs(self, x: torch.Tensor, lowres_image: torch.Tensor | None) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.in_channels:
            raise ValueError(f"ImagenUNet expects x as [B, {c.in_channels}, H, W]; got {tuple(x.shape)}")
        if x.shape[-1] % c.downscale or x.shape[-2] % c.downscale:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of {c.downscale}: this U-Net halves "
                             f"the resolution {c.levels - 1} times; pick a width and height divisible by {c.downscale}")
        if c.lowres_cond:
            if lowres_image is None:
                raise ValueError("this is a super-resolution U-Net: pass lowres_image (the low-resolution image "
                                 "upsampled to x's size)")
            if lowres_image.shape != x.shape:
                raise ValueError(f"lowres_image must already be resized to x's shape {tuple(x.shape)}; got "
                                 f"{tuple(lowres_image.shape)}")
        elif lowres_image is not None:
            raise ValueError("lowres_image was given to a base (text-to-image) U-Net, which takes none; load a "
                             "super-resolution stage for upscaling")


def _channels_last_after_load(module: nn.Module, incompatible_keys) -> None:
    module.to(memory_format=torch.channels_last)


def _batch(t, b: int, device) -> torch.Tensor:
    """A [B] float tensor from a scalar, a 0-d tensor or a [B] tensor."""
    t = torch.as_tensor(t, device=device).float()
    return t.reshape(1).expand(b) if t.ndim == 0 or t.numel() == 1 else t.reshape(b)
