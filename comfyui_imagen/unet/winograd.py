"""3×3 convolutions by Winograd's minimal filtering F(2×2, 3×3) and F(4×4, 3×3) (Lavin & Gray 2016, "Fast
Algorithms for Convolutional Neural Networks"), for CPU inference.

A direct 3×3 convolution spends 9 multiply-adds per output pixel and channel pair; F(2×2, 3×3) computes each 2×2
output tile from a 4×4 input tile with 16, i.e. 4 per pixel (2.25× fewer):

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

g the 3×3 filter, d the 4×4 input tile; the ⊙ summed over input channels becomes 16 matrix products
[tiles, C_in] × [C_in, C_out], one per tile position. The filter transform U = G g Gᵀ is computed once per weight
and cached on the module (16/9 of the weight's memory); Bᵀ and Aᵀ hold only 0 and ±1, so the input and output
transforms are cheap tensor ops (einsums over the tile axes). In fp32 the result is
as accurate as oneDNN's direct convolution (2-3e-6 max abs against float64 where direct gives 8e-6 to 1e-5, at
unit-scale outputs).

F(4×4, 3×3) saves more (36 multiplies per 16 outputs, 4× fewer) at a cost in accuracy (its transforms' larger
coefficients: 3-6e-5 max abs at unit-scale outputs, inside the 1e-4 parity bar, far inside fp16's 1e-3 steps and
diffusion sampling's tolerance; oneDNN also runs F(4×4, 3×3) in fp32); `tile_size` picks the
variant per feature-map size. `conv3x3` is the entry point the U-Net calls: it takes a Winograd path only where it
is faster (CPU, float32, no autograd, both channel counts >= `MIN_CHANNELS`, maps of 16 px and more) and otherwise
calls the module itself.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Below ~128 channels the GEMMs are too small to pay for the transforms' memory traffic (measured, 1 thread).
MIN_CHANNELS = 128
# F(m×m, 3×3) for m = 2 and 4 (Lavin & Gray 2016, section 4.1 / 4.2): input transform Bᵀ, filter transform G,
# output transform Aᵀ, for correlation (what conv2d computes). Tiles are (m + 2)×(m + 2) with stride m.
TRANSFORMS = {
    2: dict(BT=((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
            G=((1, 0, 0), (1 / 2, 1 / 2, 1 / 2), (1 / 2, -1 / 2, 1 / 2), (0, 0, 1)),
            AT=((1, 1, 1, 0), (0, 1, -1, -1))),
    4: dict(BT=((4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0), (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0),
                (0, 2, -1, -2, 1, 0), (0, 4, 0, -5, 0, 1)),
            G=((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
               (1 / 24, -1 / 12, 1 / 6), (0, 0, 1)),
            AT=((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1))),
}


def filter_transform(weight: torch.Tensor, m: int) -> torch.Tensor:
    """U = G g Gᵀ for every filter: weight [C_out, C_in, 3, 3] -> [(m+2)², C_in, C_out] (tile position first),
    computed in float64 and returned in the weight's dtype."""
    g = torch.tensor(TRANSFORMS[m]["G"], dtype=torch.float64, device=weight.device)
    u = torch.einsum("ik,ockl,jl->ijco", g, weight.double(), g)
    return u.reshape(-1, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor | None, m: int) -> torch.Tensor:
    """conv2d(x, weight, bias, padding=1) for x [B, C_in, H, W] given u = filter_transform(weight, m); returns
    [B, C_out, H, W] in channels-last memory. H and W need not be multiples of m (the last tiles are zero-padded
    and their extra outputs dropped)."""
    b, c, h, w = x.shape
    a = m + 2
    bt = torch.tensor(TRANSFORMS[m]["BT"], dtype=x.dtype, device=x.device)
    at = torch.tensor(TRANSFORMS[m]["AT"], dtype=x.dtype, device=x.device)
    th, tw = -(-h // m), -(-w // m)
    xp = F.pad(x, (1, tw * m + 1 - w, 1, th * m + 1 - h)).permute(0, 2, 3, 1).contiguous()  # [B, H', W', C]
    s = xp.stride()
    tiles = xp.as_strided((b, th, tw, a, a, c), (s[0], m * s[1], m * s[2], s[1], s[2], s[3]))
    v = torch.einsum("js,ibtwsc->ijbtwc", bt, torch.einsum("ir,btwrsc->ibtwsc", bt, tiles))  # Bᵀ d B
    prod = torch.bmm(v.reshape(a * a, -1, c), u).view(a, a, b, th, tw, -1)  # summed over C_in per tile position
    y = torch.einsum("qj,pjbtwo->btpwqo", at, torch.einsum("pi,ijbtwo->pjbtwo", at, prod))  # Aᵀ M A
    y = y.reshape(b, th * m, tw * m, -1)[:, :h, :w]
    if bias is not None:
        y = y + bias
    return y.permute(0, 3, 1, 2)


def tile_size(h: int, w: int) -> int:
    """The output tile m of F(m×m, 3×3) for a feature map, 0 for a direct convolution.

    The transformed filters are cached, (m+2)²/9 times the weight's size, while the work saved grows with the map's
    area, so large maps (where weights are small: few channels) get m = 4 (4× fewer multiplies than direct), 16 px
    maps m = 2 (2.25×), and smaller ones (the widest layers) the direct convolution. On IF-I-M at 64 px this caches
    0.73× the model's parameters and runs 1.29× faster than direct everywhere; m = 4 down to 16 px and m = 2 at 8 px
    is 1.30× for a cache of 1.70×, m = 4 at 32 and 64 px alone 1.20× for 0.42× (measured, 1 thread).
    """
    side = min(h, w)
    return 4 if side >= 32 else 2 if side >= 16 else 0


def _use_winograd(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad))
            and conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.padding == (1, 1)
            and conv.dilation == (1, 1) and conv.groups == 1
            and min(conv.in_channels, conv.out_channels) >= MIN_CHANNELS and getattr(conv, "winograd", True)
            and tile_size(*x.shape[-2:]) > 0)


def conv3x3(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)``, by `winograd_conv3x3` where that is faster (module docstring). The filter transform is cached on
    the module and rebuilt when the weight changes: a new tensor (address), an in-place edit (version counter), or
    an edit through ``.data`` as ComfyUI's weight patching does, which bumps no version (the weight's sum, one read
    of the weight per call: 20 ms, 0.5%, of an IF-I-M forward). ``conv.winograd = False`` always runs the module
    itself."""
    if not _use_winograd(conv, x):
        return conv(x)
    m = tile_size(*x.shape[-2:])
    weight = conv.weight.detach()
    version = -1 if weight.is_inference() else conv.weight._version  # inference tensors (ComfyUI) have none
    key = (weight.data_ptr(), version, weight.dtype, m, float(weight.sum()))
    cached = conv.__dict__.get("_winograd_cache")
    if cached is None or cached[0] != key:
        cached = (key, filter_transform(weight, m))
        conv.__dict__["_winograd_cache"] = cached
    return winograd_conv3x3(x, cached[1], conv.bias, m)


def set_winograd(module: nn.Module, enabled: bool) -> None:
    """Allow or forbid the Winograd path for every 3×3 convolution under `module`; forbidding drops the caches."""
    for conv in module.modules():
        if isinstance(conv, nn.Conv2d):
            conv.winograd = enabled
            if not enabled:
                conv.__dict__.pop("_winograd_cache", None)
