"""The U-Net's building blocks: timestep embedding, text pooling, residual block, added-key/value attention.

Parameter names follow diffusers' ``UNet2DConditionModel`` so that DeepFloyd IF's diffusers weights load into these
modules key for key (no renaming pass, no copies: tensors are assigned straight from the memory-mapped file).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .winograd import conv3x3


_ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU, "mish": nn.Mish}


def activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name]()


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, *, flip_sin_to_cos: bool = True,
                       freq_shift: float = 0.0) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (fractional) timesteps [B], cosines first.

    Transformer positions (Vaswani et al. 2017) as DDPM uses them: frequencies ``max_period ** (-k / (dim/2))``,
    k = 0..dim/2-1, laid out ``[cos(t f_k), sin(t f_k)]`` (diffusers' ``flip_sin_to_cos=True, freq_shift=0``, IF's).
    diffusers' other layouts: ``flip_sin_to_cos=False`` puts the sines first; ``freq_shift`` s divides the exponent
    by ``dim/2 - s`` instead. Computed in float32 whatever the model's dtype.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
                      / (half - freq_shift))
    args = t.float()[:, None] * freqs[None]
    pair = (torch.cos(args), torch.sin(args))
    return torch.cat(pair if flip_sin_to_cos else pair[::-1], dim=-1)


class TimestepMLP(nn.Module):
    """Linear -> act -> Linear (-> post_act) on a sinusoidal embedding (diffusers ``TimestepEmbedding``)."""

    def __init__(self, in_dim: int, dim: int, act: str, post_act: str | None = None):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act = activation(act)
        self.linear_2 = nn.Linear(dim, dim)
        self.post_act = activation(post_act) if post_act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear_2(self.act(self.linear_1(x)))
        return x if self.post_act is None else self.post_act(x)


class AttentionPooling(nn.Module):
    """CLIP-style attention pooling (IF's ``AttentionPooling``): one query, the mean token plus a learned position,
    attends over [that token, all text tokens]; the pooled vector is its output. Like IF, every token is pooled,
    padding included (the text mask only masks cross-attention), so a stage's pooled text matches IF's exactly.
    """

    def __init__(self, num_heads: int, dim: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.empty(1, dim))
        if self.positional_embedding.device.type != "meta":  # on meta, a random op costs ~70 MB of lazy imports
            nn.init.normal_(self.positional_embedding, std=dim ** -0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, d = x.shape
        cls = x.mean(dim=1, keepdim=True) + self.positional_embedding.to(x.dtype)
        tokens = torch.cat([cls, x], dim=1)
        h = self.num_heads

        def heads(t):
            return t.view(b, -1, h, d // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj(cls)), heads(self.k_proj(tokens)),
                                             heads(self.v_proj(tokens)))
        return out.transpose(1, 2).reshape(b, d)


class TextTimeEmbedding(nn.Module):
    """Imagen's pooled text conditioning (Saharia et al. 2022, appendix B: a pooled text embedding is added to the
    diffusion timestep embedding): LayerNorm -> attention pool -> Linear -> LayerNorm, as IF implements it."""

    def __init__(self, text_dim: int, temb_dim: int, num_heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(text_dim)
        self.pool = AttentionPooling(num_heads, text_dim)
        self.proj = nn.Linear(text_dim, temb_dim)
        self.norm2 = nn.LayerNorm(temb_dim)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.proj(self.pool(self.norm1(text))))


class ResBlock(nn.Module):
    """BigGAN-style residual block with scale-shift time conditioning; optionally halves or doubles the resolution.

    h = conv1(resample(act(norm1(x)))); h = act(norm2(h) * (1 + scale) + shift); h = conv2(h);
    out = (resample(shortcut(x)) + h) / out_scale. ``temb_act`` is the activated time embedding (the model applies
    the activation once; IF-I applies it in every block, IF-II once, which is the same function).
    ``time_shift="add"`` is the DDPM form instead: h = act(norm2(h + proj(temb))) (diffusers' "default").
    """

    def __init__(self, c_in: int, c_out: int, temb_dim: int, *, act: str, groups: int, eps: float,
                 out_scale: float = 1.0, resample: str = "none", time_shift: str = "scale_shift"):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.scale_shift = time_shift == "scale_shift"
        self.time_emb_proj = nn.Linear(temb_dim, 2 * c_out if self.scale_shift else c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nonlinearity = activation(act)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None
        self.out_scale = out_scale
        self.resample = resample

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool2d(x, 2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        h = self._resample(self.nonlinearity(self.norm1(x)))
        x = self._resample(x)
        h = conv3x3(self.conv1, h)
        if self.scale_shift:
            scale, shift = self.time_emb_proj(temb_act)[:, :, None, None].chunk(2, dim=1)
            h = self.nonlinearity(torch.addcmul(shift, self.norm2(h), 1 + scale))
        else:
            h = self.nonlinearity(self.norm2(h + self.time_emb_proj(temb_act)[:, :, None, None]))
        h = conv3x3(self.conv2, h)
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        out = x + h
        return out if self.out_scale == 1.0 else out / self.out_scale


class AddedKVAttention(nn.Module):
    """IF's attention block (diffusers ``Attention`` + ``AttnAddedKVProcessor``), residual included.

    Queries come from the group-normed image; keys/values from the group-normed text (``add_k_proj``/``add_v_proj``)
    and, unless ``cross_only``, also from the image (``to_k``/``to_v``), text keys first, in one softmax. The text
    mask (True = keep) masks text keys only; image keys are always attended. Both norms have eps 1e-5 whatever the
    U-Net's norm_eps (diffusers' ``Attention`` is built without it). ``cross_norm``: "group_norm" (IF's, in
    ``cross_groups`` groups, default ``groups``), "layer_norm" or "none" for the text.
    """

    def __init__(self, channels: int, cond_dim: int, head_dim: int, *, groups: int, cross_only: bool,
                 cross_norm: str = "group_norm", cross_groups: int | None = None):
        super().__init__()
        self.heads = channels // head_dim
        self.group_norm = nn.GroupNorm(groups, channels, eps=1e-5)
        self.norm_cross = (nn.GroupNorm(cross_groups or groups, cond_dim, eps=1e-5) if cross_norm == "group_norm"
                           else nn.LayerNorm(cond_dim) if cross_norm == "layer_norm" else None)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = None if cross_only else nn.Linear(channels, channels)
        self.to_v = None if cross_only else nn.Linear(channels, channels)
        self.add_k_proj = nn.Linear(cond_dim, channels)
        self.add_v_proj = nn.Linear(cond_dim, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor, text: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [B,C,H,W]; text [B,L,cond_dim]; bias [B,1,1,L] additive (0 keep, -1e4 drop) or None.

        Projections run as 2-D GEMMs with fused bias on [tokens, channels] rows; for a channels-last x those rows
        are x's own memory, and the result is written back channels-last without a transpose copy.
        """
        b, c, hgt, wid = x.shape
        n, h = hgt * wid, self.heads
        tokens = self.group_norm(x).permute(0, 2, 3, 1).reshape(b * n, c)
        if isinstance(self.norm_cross, nn.GroupNorm):
            text = self.norm_cross(text.transpose(1, 2)).transpose(1, 2)
        elif self.norm_cross is not None:
            text = self.norm_cross(text)
        text = text.reshape(-1, text.shape[-1])
        q = self.to_q(tokens).view(b, n, h, c // h).transpose(1, 2)
        k, v = self.add_k_proj(text).view(b, -1, c), self.add_v_proj(text).view(b, -1, c)
        if self.to_k is not None:  # image keys after the text keys, one softmax over both
            k = torch.cat([k, self.to_k(tokens).view(b, n, c)], dim=1)
            v = torch.cat([v, self.to_v(tokens).view(b, n, c)], dim=1)
            if bias is not None:
                bias = F.pad(bias, (0, n))
        k = k.view(b, -1, h, c // h).transpose(1, 2)
        v = v.view(b, -1, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = self.to_out[0](out.transpose(1, 2).reshape(b * n, c))
        return x + out.view(b, hgt, wid, c).permute(0, 3, 1, 2)
