"""The layers of imagen-pytorch 2.x's ``Unet`` (imagen_pytorch/imagen_pytorch.py) in plain torch, with its module
trees and parameter names (`comfyui_imagen.unet.imagen_pytorch.ImagenPytorchUNet` assembles them; its docstring
says where their attention differs from the textbook's). Inference only."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .imagen_pytorch_config import PERCEIVER_MAX_SEQ_LEN

ATTN_SCALE = 8.0  # Attention / CrossAttention / PerceiverAttention(scale = 8)
# mid_block1 / mid_block2 = ResnetBlock(mid_dim, mid_dim, cond_dim = cond_dim, ...): no attn_kwargs, so their
# cross-attention keeps CrossAttention's defaults (heads = 8, dim_head = 64) whatever attn_heads says
MID_CROSS_HEADS, MID_CROSS_DIM_HEAD = 8, 64
PERCEIVER_DEPTH, PERCEIVER_MEAN_POOLED, PERCEIVER_FF_MULT = 2, 4, 4.0  # PerceiverResampler(depth = 2) defaults


# ------------------------------------------------------------------------------------------------- norms
class LayerNorm(nn.Module):
    """Their bias-free LayerNorm over ``dim`` (-1: tokens; -3: an image's channels, their ``ChanLayerNorm``):
    ``(x - mean) * (var + eps).rsqrt() * g`` with ``eps = 1e-5`` for float32 input, else 1e-3."""

    def __init__(self, feats: int, dim: int = -1):
        super().__init__()
        self.dim = dim
        self.g = nn.Parameter(torch.ones(feats, *((1,) * (-dim - 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        eps = 1e-5 if x.dtype == torch.float32 else 1e-3
        if self.dim == -1:
            return F.layer_norm(x, x.shape[-1:], self.g.to(x.dtype), eps=eps)
        var, mean = torch.var_mean(x, dim=self.dim, unbiased=False, keepdim=True)
        return (x - mean) * (var + eps).rsqrt() * self.g.to(x.dtype)


class ChanRMSNorm(nn.Module):
    """``F.normalize(x, dim = 1) * sqrt(dim) * gamma``."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


def feed_forward(dim: int, mult: float, channels: bool = False) -> nn.Sequential:
    """Their ``FeedForward`` (tokens) or ``ChanFeedForward`` (1x1 convolutions): norm, in, GELU, norm, out."""
    hidden = int(dim * mult)
    if channels:
        return nn.Sequential(LayerNorm(dim, -3), nn.Conv2d(dim, hidden, 1, bias=False), nn.GELU(),
                             LayerNorm(hidden, -3), nn.Conv2d(hidden, dim, 1, bias=False))
    return nn.Sequential(LayerNorm(dim), nn.Linear(dim, hidden, bias=False), nn.GELU(), LayerNorm(hidden),
                         nn.Linear(hidden, dim, bias=False))


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``b n (h d) -> b h n d``."""
    b, n, _ = t.shape
    return t.reshape(b, n, heads, -1).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    """``b h n d -> b n (h d)``."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b, n, h * d)


def _cosine_attention(q, k, v, q_scale, k_scale) -> torch.Tensor:
    """softmax(8 * (l2norm(q) * q_scale) . (l2norm(k) * k_scale)) v, per head."""
    q = F.normalize(q, dim=-1) * q_scale
    k = F.normalize(k, dim=-1) * k_scale
    return F.scaled_dot_product_attention(q, k, v, scale=ATTN_SCALE)


# ------------------------------------------------------------------------------------------------- attention
class Attention(nn.Module):
    """Their multi-query self-attention on tokens, optionally with the conditioning tokens' keys / values."""

    def __init__(self, dim: int, *, dim_head: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.norm = LayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_context = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, dim_head * 2)) \
            if context_dim is not None else None
        self.to_out = nn.Sequential(nn.Linear(dim_head * heads, dim, bias=False), LayerNorm(dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, h = x.shape[0], self.heads
        x = self.norm(x)
        q = _heads(self.to_q(x), h)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        nk, nv = self.null_kv.unbind(0)
        k = torch.cat((nk.expand(b, 1, -1), k), dim=1)
        v = torch.cat((nv.expand(b, 1, -1), v), dim=1)
        if context is not None:  # "add text conditioning, if present": its keys / values go in front
            ck, cv = self.to_context(context).chunk(2, dim=-1)
            k, v = torch.cat((ck, k), dim=1), torch.cat((cv, v), dim=1)
        k, v = k[:, None].expand(-1, h, -1, -1), v[:, None].expand(-1, h, -1, -1)
        return self.to_out(_merge(_cosine_attention(q, k, v, self.q_scale, self.k_scale)))


class CrossAttention(nn.Module):
    """Their CrossAttention (``linear=False``) and LinearCrossAttention (``linear=True``, the same parameters):
    image tokens attend to the conditioning tokens and a learned null key / value, every head its own."""

    def __init__(self, dim: int, *, context_dim: int, dim_head: int, heads: int, linear: bool = False):
        super().__init__()
        self.heads, self.linear = heads, linear
        self.norm = LayerNorm(dim)
        self.null_kv = nn.Parameter(torch.randn(2, dim_head))
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(context_dim, dim_head * heads * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Sequential(nn.Linear(dim_head * heads, dim, bias=False), LayerNorm(dim))

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, h = x.shape[0], self.heads
        x = self.norm(x)
        q = _heads(self.to_q(x), h)
        k, v = (_heads(t, h) for t in self.to_kv(context).chunk(2, dim=-1))
        nk, nv = self.null_kv[:, None, None, None, :].expand(2, b, h, 1, -1).unbind(0)  # one pair for all heads
        k, v = torch.cat((nk, k), dim=2), torch.cat((nv, v), dim=2)
        if not self.linear:
            return self.to_out(_merge(_cosine_attention(q, k, v, self.q_scale, self.k_scale)))
        # LinearCrossAttention: q = q.softmax(dim = -1); k = k.softmax(dim = -2); q = q * self.scale;
        # context = einsum('b n d, b n e -> b d e', k, v); out = einsum('b n d, b d e -> b n e', q, context)
        q = q.softmax(dim=-1) * ATTN_SCALE
        k = k.softmax(dim=-2)
        return self.to_out(_merge(q @ (k.transpose(-1, -2) @ v)))


class LinearAttention(nn.Module):
    """Their LinearAttention on an image: depthwise-convolved q / k / v, softmax over each query's channels and
    over the keys' positions, ``scale = dim_head ** -0.5``, SiLU, then 1x1 convolution and channel LayerNorm."""

    def __init__(self, dim: int, *, dim_head: int, heads: int, context_dim: int):
        super().__init__()
        self.scale = dim_head ** -0.5
        self.heads = heads
        inner = dim_head * heads
        self.norm = LayerNorm(dim, -3)
        # index 0 is their nn.Dropout(0.05), without parameters
        for name in ("to_q", "to_k", "to_v"):
            setattr(self, name, nn.Sequential(nn.Identity(), nn.Conv2d(dim, inner, 1, bias=False),
                                              nn.Conv2d(inner, inner, 3, bias=False, padding=1, groups=inner)))
        self.to_context = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, inner * 2, bias=False))
        self.to_out = nn.Sequential(nn.Conv2d(inner, dim, 1, bias=False), LayerNorm(dim, -3))

    def forward(self, fmap: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, _, hh, ww = fmap.shape
        h = self.heads
        fmap = self.norm(fmap)
        # 'b (h c) x y -> (b h) (x y) c'
        q, k, v = (fn(fmap).reshape(b * h, -1, hh * ww).transpose(1, 2) for fn in (self.to_q, self.to_k, self.to_v))
        if context is not None:
            ck, cv = (t.reshape(b, -1, h, t.shape[-1] // h).transpose(1, 2).reshape(b * h, -1, t.shape[-1] // h)
                      for t in self.to_context(context).chunk(2, dim=-1))
            k, v = torch.cat((k, ck), dim=1), torch.cat((v, cv), dim=1)
        q = q.softmax(dim=-1) * self.scale
        k = k.softmax(dim=-2)
        out = q @ (k.transpose(1, 2) @ v)  # (b h) (x y) d
        out = out.transpose(1, 2).reshape(b, -1, hh, ww)  # '(b h) (x y) d -> b (h d) x y'
        return self.to_out(F.silu(out))


class TransformerBlock(nn.Module):
    """``depth`` x (Attention, FeedForward), residual, on an image's pixels as tokens (their TransformerBlock) or,
    with ``linear``, (LinearAttention, ChanFeedForward) on the image itself (LinearAttentionTransformerBlock)."""

    def __init__(self, dim: int, *, depth: int, heads: int, dim_head: int, ff_mult: float,
                 context_dim: int | None = None, linear: bool = False):
        super().__init__()
        self.linear = linear
        attn = LinearAttention if linear else Attention
        self.layers = nn.ModuleList(nn.ModuleList([
            attn(dim, heads=heads, dim_head=dim_head, context_dim=context_dim),
            feed_forward(dim, ff_mult, channels=linear)]) for _ in range(depth))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, hh, ww = x.shape
        x = x if self.linear else x.flatten(2).transpose(1, 2)
        for attn, ff in self.layers:
            x = attn(x, context) + x
            x = ff(x) + x
        return x if self.linear else x.transpose(1, 2).reshape(b, c, hh, ww)


class PerceiverAttention(nn.Module):
    """Latents attend to the text tokens and to themselves ("the paper differs from Perceiver in which they also
    concat the key / values derived from the latents to be attended to")."""

    def __init__(self, dim: int, *, dim_head: int, heads: int):
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, inner * 2, bias=False)
        self.q_scale = nn.Parameter(torch.ones(dim_head))
        self.k_scale = nn.Parameter(torch.ones(dim_head))
        self.to_out = nn.Sequential(nn.Linear(inner, dim, bias=False), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm(x), self.norm_latents(latents)
        q = _heads(self.to_q(latents), self.heads)
        k, v = (_heads(t, self.heads) for t in self.to_kv(torch.cat((x, latents), dim=1)).chunk(2, dim=-1))
        return self.to_out(_merge(_cosine_attention(q, k, v, self.q_scale, self.k_scale)))


class PerceiverResampler(nn.Module):
    """Their text attention pooling: 4 latents from the mean-pooled tokens plus ``num_latents`` learned ones, two
    (PerceiverAttention, FeedForward x4) layers over the position-embedded tokens."""

    def __init__(self, dim: int, *, dim_head: int, heads: int, num_latents: int):
        super().__init__()
        self.pos_emb = nn.Embedding(PERCEIVER_MAX_SEQ_LEN, dim)
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.to_latents_from_mean_pooled_seq = nn.Sequential(LayerNorm(dim),
                                                             nn.Linear(dim, dim * PERCEIVER_MEAN_POOLED))
        self.layers = nn.ModuleList(nn.ModuleList([
            PerceiverAttention(dim, dim_head=dim_head, heads=heads), feed_forward(dim, PERCEIVER_FF_MULT)])
            for _ in range(PERCEIVER_DEPTH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        x_with_pos = x + self.pos_emb.weight[:n].to(x.dtype)
        # masked_mean with an all-True mask: the plain mean of the (un-positioned) tokens
        pooled = self.to_latents_from_mean_pooled_seq(x.mean(dim=1)).reshape(b, PERCEIVER_MEAN_POOLED, d)
        latents = torch.cat((pooled, self.latents.to(x.dtype).expand(b, -1, -1)), dim=1)
        for attn, ff in self.layers:
            latents = attn(x_with_pos, latents) + latents
            latents = ff(latents) + latents
        return latents


# ------------------------------------------------------------------------------------------------- convolutions
class LearnedSinusoidalPosEmb(nn.Module):
    """``[x, sin(2 pi x w), cos(2 pi x w)]`` with learned frequencies ``w`` (crowsonkb's v-diffusion); computed in
    at least float32 (the log-SNR times the frequencies loses its phase in half precision)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weights = nn.Parameter(torch.randn(dim // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        work = torch.promote_types(self.weights.dtype, torch.float32)
        x = x.to(work)[:, None]
        freqs = x * self.weights.to(work)[None] * 2 * math.pi
        return torch.cat((x, freqs.sin(), freqs.cos()), dim=-1).to(self.weights.dtype)


class GlobalContext(nn.Module):
    """Their GlobalContext ("a superior form of squeeze-excitation"): a softmax-weighted pixel average, then a
    bottleneck MLP and a sigmoid gate per channel."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.to_k = nn.Conv2d(dim_in, 1, 1)
        hidden = max(3, dim_out // 2)
        self.net = nn.Sequential(nn.Conv2d(dim_in, hidden, 1), nn.SiLU(), nn.Conv2d(hidden, dim_out, 1),
                                 nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self.to_k(x).flatten(2).softmax(dim=-1)  # b 1 n
        pooled = torch.einsum("bin,bcn->bci", weights, x.flatten(2))
        return self.net(pooled[..., None])


class Block(nn.Module):
    """ChanRMSNorm, optional ``x * (scale + 1) + shift``, SiLU, 3x3 convolution."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.norm = ChanRMSNorm(dim)
        self.project = nn.Conv2d(dim, dim_out, 3, padding=1)

    def forward(self, x: torch.Tensor, scale_shift=None) -> torch.Tensor:
        x = self.norm(x)
        if scale_shift is not None:
            scale, shift = scale_shift
            x = x * (scale + 1) + shift
        return self.project(F.silu(x))


class ResnetBlock(nn.Module):
    """block1 -> [cross-attention to the conditioning tokens] -> block2 (time scale / shift) -> [global-context
    gate], plus the (1x1-projected) input."""

    def __init__(self, dim: int, dim_out: int, *, time_cond_dim: int, cond_dim: int | None = None,
                 linear_attn: bool = False, use_gca: bool = False, heads: int = MID_CROSS_HEADS,
                 dim_head: int = MID_CROSS_DIM_HEAD):
        super().__init__()
        self.time_mlp = nn.Sequential(nn.SiLU(), nn.Linear(time_cond_dim, dim_out * 2))
        self.cross_attn = CrossAttention(dim_out, context_dim=cond_dim, dim_head=dim_head, heads=heads,
                                         linear=linear_attn) if cond_dim is not None else None
        self.block1 = Block(dim, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.gca = GlobalContext(dim_out, dim_out) if use_gca else None
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        scale_shift = self.time_mlp(t)[:, :, None, None].chunk(2, dim=1)
        h = self.block1(x)
        if self.cross_attn is not None:
            b, c, hh, ww = h.shape
            tokens = h.flatten(2).transpose(1, 2)
            h = (self.cross_attn(tokens, cond) + tokens).transpose(1, 2).reshape(b, c, hh, ww)
        h = self.block2(h, scale_shift)
        if self.gca is not None:
            h = h * self.gca(h)
        return h + (x if self.res_conv is None else self.res_conv(x))


class CrossEmbedLayer(nn.Module):
    """Convolutions of several kernel sizes (stride 1), concatenated: the smallest kernel gets half the channels,
    the next a quarter... (``dim_scales = [int(dim_out / (2 ** i)) for i in range(1, num_scales)]``, the last the
    rest)."""

    def __init__(self, dim_in: int, dim_out: int, kernel_sizes: tuple[int, ...]):
        super().__init__()
        kernel_sizes = sorted(kernel_sizes)
        scales = [int(dim_out / 2 ** i) for i in range(1, len(kernel_sizes))]
        scales.append(dim_out - sum(scales))
        self.convs = nn.ModuleList(nn.Conv2d(dim_in, s, k, padding=(k - 1) // 2) for k, s in zip(kernel_sizes, scales))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([conv(x) for conv in self.convs], dim=1)


class PixelShuffleUpsample(nn.Module):
    """1x1 convolution to 4x the channels, SiLU, pixel shuffle (initialised ICNR-style as theirs: each output pixel
    of a 2x2 group starts from the same filter, against checkerboard artefacts)."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        conv = nn.Conv2d(dim, dim_out * 4, 1)
        self.net = nn.Sequential(conv, nn.SiLU(), nn.PixelShuffle(2))
        weight = torch.empty(dim_out, dim, 1, 1)
        nn.init.kaiming_uniform_(weight)
        with torch.no_grad():
            conv.weight.copy_(weight.repeat_interleave(4, dim=0))
            conv.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Parallel(nn.Module):
    """The sum of a 3x3 and a 1x1 convolution (their last level's stand-in for a downsample)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.fns = nn.ModuleList([nn.Conv2d(dim_in, dim_out, 3, padding=1), nn.Conv2d(dim_in, dim_out, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fns[0](x) + self.fns[1](x)


def downsample(dim: int, dim_out: int) -> nn.Sequential:
    """Space-to-depth then a 1x1 convolution ("SP-conv", arXiv 2208.03641; their ``Rearrange('b c (h s1) (w s2) ->
    b (c s1 s2) h w')`` is ``pixel_unshuffle``)."""
    return nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(dim * 4, dim_out, 1))


def upsample(dim: int, dim_out: int, pixel_shuffle: bool) -> nn.Module:
    if pixel_shuffle:
        return PixelShuffleUpsample(dim, dim_out)
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim_out, 3, padding=1))


class UpsampleCombiner(nn.Module):
    """Every decoder level's output, resized to the final size (nearest) and through a `Block`, concatenated to x."""

    def __init__(self, dim_ins: list[int], dim_out: int):
        super().__init__()
        self.fmap_convs = nn.ModuleList(Block(d, dim_out) for d in dim_ins)

    def forward(self, x: torch.Tensor, fmaps: list[torch.Tensor]) -> torch.Tensor:
        size = x.shape[-2:]  # theirs resizes to (W, W): the same for the square images it is used with
        outs = [conv(F.interpolate(f, size=size, mode="nearest") if f.shape[-2:] != size else f)
                for f, conv in zip(fmaps, self.fmap_convs)]
        return torch.cat((x, *outs), dim=1)
