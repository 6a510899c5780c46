"""`ImagenPytorchUNet`: lucidrains' imagen-pytorch 2.x ``Unet`` (imagen_pytorch/imagen_pytorch.py), in plain torch.

Module tree and parameter names are theirs (``downs.{i}.{0 pre-downsample, 1 first block, 2 blocks, 3 attention,
4 post-downsample}``, ``ups.{j}.{0, 1, 2, 3 upsample}``, ``mid_block1``, ``attn_pool``, ``null_text_embed``...), so a
``Unet.state_dict()`` loads with ``strict=True``. Absent modules (their ``None`` and ``Identity``) hold no tensors and
are ``None`` here. Inference only: their ``LinearAttention`` dropout (p = 0.05) is not reproduced.

Their attention, quoted where it is not the textbook's:
* queries and keys are l2-normalised per head, scaled by learned ``q_scale`` / ``k_scale``, and the logits
  multiplied by a fixed ``scale = 8`` ("qk rmsnorm"; cosine-similarity attention);
* every attention has a learned null key / value ("add null key / value for classifier free guidance");
* ``Attention`` (self-attention) is multi-query: one key / value head (``to_kv: dim -> dim_head * 2``) for all query
  heads, with the conditioning tokens' keys / values (``to_context``) concatenated in front;
* ``LayerNorm`` has no bias (``g``) and ``eps = 1e-5 if x.dtype == torch.float32 else 1e-3``.

The config is `comfyui_imagen.unet.imagen_pytorch_config.ImagenPytorchUNetConfig` (re-exported here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .imagen_pytorch_config import ImagenPytorchUNetConfig
from .imagen_pytorch_layers import (CrossEmbedLayer, LearnedSinusoidalPosEmb, Parallel, PerceiverResampler, ResnetBlock,
                                    TransformerBlock, UpsampleCombiner, downsample, upsample)
from .model import _batch

__all__ = ["ImagenPytorchUNet", "ImagenPytorchUNetConfig"]

MID_ATTN_FF_MULT = 2.0  # TransformerBlock(mid_dim, depth, **attn_kwargs): FeedForward's default mult


# ------------------------------------------------------------------------------------------------- the U-Net
class ImagenPytorchUNet(nn.Module):
    """imagen-pytorch 2.x's ``Unet`` (see `ImagenPytorchUNetConfig`); loads its state dicts as they are."""

    def __init__(self, config: ImagenPytorchUNetConfig):
        super().__init__()
        self.config = c = config
        tc, cd, n = c.time_cond_dim, c.cond_dim, c.levels
        init_channels = c.channels * (2 if c.lowres_cond else 1)
        self.init_conv = CrossEmbedLayer(init_channels, c.init_dim, c.init_cross_embed_kernel_sizes) \
            if c.init_cross_embed else nn.Conv2d(init_channels, c.init_dim, c.init_conv_kernel_size,
                                                 padding=c.init_conv_kernel_size // 2)
        e = c.learned_sinu_pos_emb_dim
        for prefix in ("", "lowres_") if c.lowres_cond else ("",):
            setattr(self, f"to_{prefix}time_hiddens", nn.Sequential(LearnedSinusoidalPosEmb(e), nn.Linear(e + 1, tc),
                                                                     nn.SiLU()))
            setattr(self, f"to_{prefix}time_cond", nn.Sequential(nn.Linear(tc, tc)))
            setattr(self, f"to_{prefix}time_tokens", nn.Sequential(nn.Linear(tc, cd * c.num_time_tokens)))
        self.norm_cond = nn.LayerNorm(cd)
        self.text_to_cond = nn.Linear(c.text_embed_dim, cd) if c.cond_on_text else None
        attn = dict(heads=c.attn_heads, dim_head=c.attn_dim_head)
        self.attn_pool = PerceiverResampler(cd, num_latents=c.attn_pool_num_latents, **attn) \
            if c.attn_pool_text else None
        self.null_text_embed = nn.Parameter(torch.randn(1, c.max_text_len, cd))
        self.null_text_hidden = nn.Parameter(torch.randn(1, tc))
        self.to_text_non_attn_cond = nn.Sequential(nn.LayerNorm(cd), nn.Linear(cd, tc), nn.SiLU(),
                                                   nn.Linear(tc, tc)) if c.cond_on_text else None
        gca = c.use_global_context_attn
        self.init_resnet_block = ResnetBlock(c.init_dim, c.init_dim, time_cond_dim=tc, use_gca=gca, **attn) \
            if c.memory_efficient else None
        self.skip_connect_scale = 2 ** -0.5 if c.scale_skip_connection else 1.0

        dims = c.dims

        def level_parts(i: int, dim: int, dim_in: int) -> list[nn.Module]:
            cross = c.layer_cross_attns[i] or c.use_linear_cross_attn[i]
            first = ResnetBlock(dim_in, dim, time_cond_dim=tc, cond_dim=cd if cross else None,
                                linear_attn=c.use_linear_cross_attn[i], **attn)
            blocks = nn.ModuleList(ResnetBlock(dim_in, dim, time_cond_dim=tc, use_gca=gca)
                                   for _ in range(c.num_resnet_blocks[i]))
            full, linear = c.layer_attns[i], c.use_linear_attn[i]
            transformer = TransformerBlock(dim, depth=c.layer_attns_depth[i], ff_mult=c.ff_mult, context_dim=cd,
                                           linear=linear and not full, **attn) if full or linear else None
            return [first, blocks, transformer]

        self.downs = nn.ModuleList()
        for i in range(n):
            dim_in, dim_out = dims[i], dims[i + 1]
            current = dim_out if c.memory_efficient else dim_in
            pre = downsample(dim_in, dim_out) if c.memory_efficient else None
            post = None if c.memory_efficient else \
                downsample(current, dim_out) if i < n - 1 else Parallel(dim_in, dim_out)
            self.downs.append(nn.ModuleList([pre, *level_parts(i, current, current), post]))
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, time_cond_dim=tc, cond_dim=cd)
        self.mid_attn = TransformerBlock(mid, depth=c.layer_mid_attns_depth, ff_mult=MID_ATTN_FF_MULT, **attn) \
            if c.attend_at_middle else None
        self.mid_block2 = ResnetBlock(mid, mid, time_cond_dim=tc, cond_dim=cd)
        self.ups = nn.ModuleList()
        for i in reversed(range(n)):  # ups[j] is level n - 1 - j
            dim_in, dim_out = dims[i], dims[i + 1]
            skip = dim_out if c.memory_efficient else dim_in
            up = upsample(dim_out, dim_in, c.pixel_shuffle_upsample) if i > 0 or c.memory_efficient else None
            self.ups.append(nn.ModuleList([*level_parts(i, dim_out, dim_out + skip), up]))
        self.upsample_combiner = UpsampleCombiner([dims[i + 1] for i in reversed(range(n))], c.dim) \
            if c.combine_upsample_fmaps else None
        final_dim = c.dim * (1 + n if c.combine_upsample_fmaps else 1) + \
            (c.dim if c.init_conv_to_final_conv_residual else 0)
        self.final_res_block = ResnetBlock(final_dim, c.dim, time_cond_dim=tc, use_gca=True) \
            if c.final_resnet_block else None
        final_in = (c.dim if c.final_resnet_block else final_dim) + (c.channels if c.lowres_cond else 0)
        k = c.final_conv_kernel_size
        self.final_conv = nn.Conv2d(final_in, c.channels_out, k, padding=k // 2)
        nn.init.zeros_(self.final_conv.weight)  # zero_init_(self.final_conv)
        nn.init.zeros_(self.final_conv.bias)

    def forward(self, x: torch.Tensor, timesteps, text_embeds: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, lowres_image: torch.Tensor | None = None,
                noise_level=None) -> torch.Tensor:
        """Their ``Unet.forward(x, time, text_embeds=, text_mask=, lowres_cond_img=, lowres_noise_times=)``.

        x: [B, channels, H, W], the noisy image (H and W multiples of ``config.downscale``); timesteps: [B] or a
        scalar, what theirs gets as ``time``: the noise level's log-SNR (``noise_scheduler.get_condition(t)``).
        text_embeds: [B, L, text_embed_dim]; text_mask: [B, L] bool, True = a real token (None: every position
        is). As theirs, the text is cut / zero-padded to ``max_text_len`` and masked positions become
        ``null_text_embed``. A row whose mask has at most one True entry (the empty prompt: T5's end-of-sequence
        token alone), or every row when text_embeds is None, is *dropped* exactly as ``cond_drop_prob = 1`` drops
        it: all its tokens ``null_text_embed`` and its pooled text ``null_text_hidden`` (imagen-pytorch's
        unconditional branch is this learned null, not T5("")).
        lowres_image: [B, channels, H, W] (SR U-Nets only), already resized to x's size and noise-augmented (their
        ``lowres_cond_img``); noise_level: [B] or a scalar, that augmentation's log-SNR (their
        ``lowres_noise_times`` after ``lowres_noise_schedule.get_condition``).
        Inputs are cast to the weights' dtype; returns [B, channels_out, H, W] in it.
        """
        c = self.config
        self._check_inputs(x, lowres_image, noise_level)
        dtype, b = next(self.parameters()).dtype, x.shape[0]
        x = x.to(dtype)
        if c.lowres_cond:
            lowres_image = lowres_image.to(dtype)
            x = torch.cat((x, lowres_image), dim=1)
        x = self.init_conv(x)
        residual = x if c.init_conv_to_final_conv_residual else None

        time_hiddens = self.to_time_hiddens(_batch(timesteps, b, x.device))
        time_tokens = self.to_time_tokens(time_hiddens).reshape(b, c.num_time_tokens, c.cond_dim)
        t = self.to_time_cond(time_hiddens)
        if c.lowres_cond:
            lowres_hiddens = self.to_lowres_time_hiddens(_batch(noise_level, b, x.device))
            t = t + self.to_lowres_time_cond(lowres_hiddens)
            lowres_tokens = self.to_lowres_time_tokens(lowres_hiddens).reshape(b, c.num_time_tokens, c.cond_dim)
            time_tokens = torch.cat((time_tokens, lowres_tokens), dim=1)
        cond = time_tokens
        if c.cond_on_text:
            text_tokens, text_hiddens = self._text(text_embeds, text_mask, b, dtype, x.device)
            cond = torch.cat((time_tokens, text_tokens), dim=1)
            t = t + text_hiddens
        cond = self.norm_cond(cond)

        if self.init_resnet_block is not None:
            x = self.init_resnet_block(x, t)
        hiddens = []
        for pre, first, blocks, transformer, post in self.downs:
            x = pre(x) if pre is not None else x
            x = first(x, t, cond)
            for block in blocks:
                x = block(x, t)
                hiddens.append(x)
            x = transformer(x, cond) if transformer is not None else x
            hiddens.append(x)
            x = post(x) if post is not None else x
        x = self.mid_block1(x, t, cond)
        x = self.mid_attn(x) if self.mid_attn is not None else x
        x = self.mid_block2(x, t, cond)

        def with_skip(x):
            return torch.cat((x, hiddens.pop() * self.skip_connect_scale), dim=1)

        up_hiddens = []
        for first, blocks, transformer, up in self.ups:
            x = first(with_skip(x), t, cond)
            for block in blocks:
                x = block(with_skip(x), t)
            x = transformer(x, cond) if transformer is not None else x
            up_hiddens.append(x)
            x = up(x) if up is not None else x
        if self.upsample_combiner is not None:
            x = self.upsample_combiner(x, up_hiddens)
        if residual is not None:
            x = torch.cat((x, residual), dim=1)
        if self.final_res_block is not None:
            x = self.final_res_block(x, t)
        if c.lowres_cond:
            x = torch.cat((x, lowres_image), dim=1)
        return self.final_conv(x)

    def _text(self, text_embeds, text_mask, b: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(text tokens [B, max_text_len or pooled, cond_dim], text hiddens [B, time_cond_dim]) as theirs computes
        them, with the dropped rows (see `forward`) as ``cond_drop_prob = 1`` computes them."""
        c = self.config
        null = self.null_text_embed.to(dtype)
        if text_embeds is None:
            keep = torch.zeros(b, dtype=torch.bool, device=device)
            tokens = null.expand(b, -1, -1)
        else:
            if text_embeds.ndim != 3 or text_embeds.shape[0] != b or text_embeds.shape[-1] != c.text_embed_dim:
                raise ValueError(f"text_embeds must be [{b}, L, {c.text_embed_dim}] (this U-Net's text width); got "
                                 f"{tuple(text_embeds.shape)}: encode the prompt with the T5 the stage was trained on")
            if text_mask is not None and tuple(text_mask.shape) != tuple(text_embeds.shape[:2]):
                raise ValueError(f"text_mask must be [B, L] = {tuple(text_embeds.shape[:2])} like text_embeds; got "
                                 f"{tuple(text_mask.shape)}")
            tokens = self.text_to_cond(text_embeds.to(dtype))[:, :c.max_text_len]
            tokens = F.pad(tokens, (0, 0, 0, c.max_text_len - tokens.shape[1]))
            if text_mask is None:
                keep = torch.ones(b, dtype=torch.bool, device=device)
                keep_tokens = keep[:, None, None]
            else:
                text_mask = text_mask.to(device=device, dtype=torch.bool)
                keep = text_mask.sum(dim=1) > 1
                mask = F.pad(text_mask[:, :c.max_text_len], (0, c.max_text_len - min(text_mask.shape[1],
                                                                                      c.max_text_len)), value=False)
                keep_tokens = keep[:, None, None] & mask[:, :, None]
            tokens = torch.where(keep_tokens, tokens, null)
        if self.attn_pool is not None:
            tokens = self.attn_pool(tokens)
        hiddens = self.to_text_non_attn_cond(tokens.mean(dim=-2))
        hiddens = torch.where(keep[:, None], hiddens, self.null_text_hidden.to(dtype))
        return tokens, hiddens

    def _check_inputs(self, x, lowres_image, noise_level) -> None:
        c = self.config
        if x.ndim != 4 or x.shape[1] != c.channels:
            raise ValueError(f"ImagenPytorchUNet expects x as [B, {c.channels}, H, W]; got {tuple(x.shape)}")
        if x.shape[-1] % c.downscale or x.shape[-2] % c.downscale:
            h, w = (-(-s // c.downscale) * c.downscale for s in x.shape[-2:])
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of {c.downscale} (this U-Net "
                             f"halves the resolution {int(math.log2(c.downscale))} times); use e.g. {h}x{w}")
        if c.lowres_cond:
            if lowres_image is None or noise_level is None:
                raise ValueError("this is a super-resolution U-Net: pass lowres_image (the low-resolution image, "
                                 "resized to x's size and noise-augmented) and noise_level (its augmentation "
                                 "log-SNR)")
            if lowres_image.shape != x.shape:
                raise ValueError(f"lowres_image must already be resized to x's shape {tuple(x.shape)}; got "
                                 f"{tuple(lowres_image.shape)}")
        elif lowres_image is not None or noise_level is not None:
            raise ValueError("lowres_image / noise_level were given to a base (text-to-image) U-Net, which takes "
                             "neither; load a super-resolution stage for upscaling")
