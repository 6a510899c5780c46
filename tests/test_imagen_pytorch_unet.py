"""`ImagenPytorchUNet` / `ImagenPytorchUNetConfig` against imagen-pytorch 2.1.0's own ``Unet`` (a test-only oracle).

Tiny U-Nets with every parameter random (their zero-initialised final convolution and unit norm gains would hide
mistakes), loaded key for key with ``strict=True``, compared on random inputs: real text, a padded prompt, the empty
prompt's single token (a dropped row, against their ``cond_drop_prob=1``) in one batch.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch

from comfyui_imagen.unet import build_unet
from comfyui_imagen.unet.imagen_pytorch import ImagenPytorchUNet, ImagenPytorchUNetConfig
from imagen_pytorch_oracle import imagen_pytorch, randomise

TOL = 1e-4
D = 32  # text width
# (1) BaseUnet64-like: cross-embed init conv, attention + cross-attention below the top, attention in the middle,
# global context, pixel-shuffle upsampling, per-level block counts; non-square images
BASE = dict(dim=16, dim_mults=(1, 2, 3), num_resnet_blocks=(1, 2, 1), layer_attns=(False, True, True),
            layer_cross_attns=(False, True, True), attn_heads=2, attn_dim_head=8, text_embed_dim=D, max_text_len=16,
            attn_pool_num_latents=4)
# (2) SRUnet256-like: memory efficient, low-resolution conditioning, linear cross-attention at the top, combined
# upsample feature maps into the final ResnetBlock
SR = dict(dim=16, dim_mults=(1, 2), num_resnet_blocks=(1, 2), layer_attns=(False, True),
          layer_cross_attns=(False, True), use_linear_cross_attn=(True, False), attn_heads=2, attn_dim_head=8,
          text_embed_dim=D, max_text_len=16, memory_efficient=True, lowres_cond=True, attn_pool_num_latents=4,
          init_cross_embed_kernel_sizes=(7, 3), combine_upsample_fmaps=True, layer_mid_attns_depth=2)
# (3) linear-attention transformers, a plain init conv, nearest upsampling, init-conv residual, combined feature
# maps, no final ResnetBlock, no attention pooling, no global context, unscaled skips, odd widths
LINEAR = dict(dim=16, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=False, use_linear_attn=True,
              layer_cross_attns=(True, False), attn_heads=2, attn_dim_head=16, text_embed_dim=D, max_text_len=8,
              init_cross_embed=False, init_conv_kernel_size=5, pixel_shuffle_upsample=False,
              init_conv_to_final_conv_residual=True, combine_upsample_fmaps=True, final_resnet_block=False,
              attn_pool_text=False, layer_attns_depth=2, use_global_context_attn=False, scale_skip_connection=False,
              final_conv_kernel_size=1, ff_mult=3, num_time_tokens=3, cond_dim=24, learned_sinu_pos_emb_dim=8)
CONFIGS = {"base": (BASE, (16, 24), 20), "sr": (SR, (16, 16), 12), "linear": (LINEAR, (16, 16), 12)}


@pytest.fixture(scope="module")
def ip():
    torch.set_num_threads(1)
    return imagen_pytorch()


@pytest.fixture(scope="module")
def pairs(ip):
    """name -> (their Unet, our U-Net with its weights, image size, text length)."""
    out = {}
    for seed, (name, (kwargs, size, length)) in enumerate(CONFIGS.items()):
        torch.manual_seed(seed)
        theirs = ip.Unet(**kwargs).eval()
        randomise(theirs, seed)
        ours = ImagenPytorchUNet(ImagenPytorchUNetConfig.from_kwargs(theirs._locals)).eval()
        ours.load_state_dict(theirs.state_dict(), strict=True)
        out[name] = theirs, ours, size, length
    return out


def _inputs(unet, size, length, seed=0):
    g, b = torch.Generator().manual_seed(seed), 4
    x = torch.randn(b, 3, *size, generator=g)
    time = torch.randn(b, generator=g) * 4  # log-SNRs
    text = torch.randn(b, length, D, generator=g)
    mask = torch.ones(b, length, dtype=torch.bool)
    mask[1, 5:] = False  # a short prompt
    mask[2, 1:] = False  # the empty prompt: T5's end-of-sequence token alone -> dropped
    mask[3, :] = False  # nothing at all -> dropped
    lowres = {}
    if unet.lowres_cond:
        lowres = dict(lowres_cond_img=torch.randn(b, 3, *size, generator=g),
                      lowres_noise_times=torch.randn(b, generator=g))
    return x, time, text, mask, lowres


def _ours(lowres: dict) -> dict:
    return dict(lowres_image=lowres.get("lowres_cond_img"), noise_level=lowres.get("lowres_noise_times"))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_imagen_pytorch(pairs, name):
    theirs, ours, size, length = pairs[name]
    x, time, text, mask, lowres = _inputs(theirs, size, length)
    with torch.no_grad():
        kept = theirs(x, time, text_embeds=text, text_mask=mask, **lowres)
        dropped = theirs(x, time, text_embeds=text, text_mask=mask, cond_drop_prob=1.0, **lowres)
        got = ours(x, time, text, mask, **_ours(lowres))
    assert got.shape == kept.shape and torch.isfinite(got).all()
    assert 0.05 < kept.abs().max() < 1e3  # an output that can show a mistake
    assert (got[:2] - kept[:2]).abs().max() <= TOL
    assert (got[2:] - dropped[2:]).abs().max() <= TOL
    assert (dropped[:2] - kept[:2]).abs().max() > 100 * TOL  # the rows really differ: the text matters


@pytest.mark.parametrize("name", ["base", "linear"])
def test_no_mask_and_no_text(pairs, name):
    """text_mask None: every position real (padding to max_text_len stays zeros, as theirs); text_embeds None:
    every row dropped (their cond_drop_prob=1)."""
    theirs, ours, size, length = pairs[name]
    x, time, text, _, lowres = _inputs(theirs, size, length, seed=1)
    with torch.no_grad():
        assert (ours(x, time, text, None) - theirs(x, time, text_embeds=text)).abs().max() <= TOL
        dropped = theirs(x, time, text_embeds=text, cond_drop_prob=1.0)
        assert (ours(x, time) - dropped).abs().max() <= TOL
        # a scalar time is every row's
        assert (ours(x, float(time[0])) - theirs(x, time[:1].expand(4), text_embeds=text, cond_drop_prob=1.0)
                ).abs().max() <= TOL


def test_other_dtype_casts_inputs_and_output(pairs):
    """Weights in float64: float32 inputs are cast, the output is float64 (their LayerNorm eps is 1e-3 for any
    dtype but float32: both sides in float64 agree to float32 rounding)."""
    theirs, ours, size, length = pairs["sr"]
    x, time, text, mask, lowres = _inputs(theirs, size, length, seed=2)
    double = ImagenPytorchUNet(ours.config).double().eval()
    double.load_state_dict(ours.state_dict())
    theirs_double = copy.deepcopy(theirs).double()
    with torch.no_grad():
        got = double(x, time, text, mask, **_ours(lowres))
        args = x.double(), time.double()
        kwargs = dict(text_embeds=text.double(), text_mask=mask, **{k: v.double() for k, v in lowres.items()})
        want = torch.cat((theirs_double(*args, **kwargs)[:2], theirs_double(*args, **kwargs, cond_drop_prob=1.0)[2:]))
        single = ours(x, time, text, mask, **_ours(lowres))
    assert got.dtype == torch.float64 and (got - want).abs().max() <= 1e-6  # their softmaxes run in float32
    assert (got - single).abs().max() > 100 * TOL  # eps 1e-3 instead of 1e-5 shows


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_from_shapes_equals_from_kwargs(pairs, name):
    theirs, ours, _, _ = pairs[name]
    kwargs = CONFIGS[name][0]
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    inferred = ImagenPytorchUNetConfig.from_shapes(
        shapes, scale_skip_connection=kwargs.get("scale_skip_connection", True),
        use_linear_cross_attn=kwargs.get("use_linear_cross_attn", False))
    assert inferred == ours.config
    assert isinstance(build_unet(inferred), ImagenPytorchUNet)


def test_config_fields_and_properties(pairs):
    base, sr, linear = (pairs[n][1].config for n in ("base", "sr", "linear"))
    assert base.num_resnet_blocks == (1, 2, 1) and base.layer_attns_depth == (1, 1, 1)
    assert base.use_linear_attn == (False, False, False) and base.cond_dim == 16 and base.init_dim == 16
    assert (base.levels, base.downscale, sr.downscale, linear.downscale) == (3, 4, 4, 2)
    assert sr.lowres_cond and sr.in_channels == sr.out_channels == 3 and sr.text_embed_dim == D
    assert sr.use_linear_cross_attn == (True, False) and sr.layer_cross_attns == (False, True)
    assert sr.init_cross_embed_kernel_sizes == (3, 7)  # sorted, as CrossEmbedLayer sorts them
    assert linear.use_linear_attn == (True, True) and linear.layer_attns_depth == (2, 2)
    assert linear.ff_mult == 3.0 and linear.cond_dim == 24 and linear.attn_pool_num_latents == 32  # unused: default


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_dict_round_trip(pairs, name):
    config = pairs[name][1].config
    data = json.loads(json.dumps(config.to_dict()))
    assert data["architecture"] == "imagen-pytorch" and isinstance(data["dim_mults"], list)
    assert ImagenPytorchUNetConfig.from_dict(data) == config
    assert config.replace(dim=32) != config and config.replace(dim=32).dim == 32


def test_pydantic_unet_config_dict(ip):
    """A trainer checkpoint's imagen_params["unets"] entry: UnetConfig.dict(), with its own head defaults."""
    kwargs = dict(dim=16, dim_mults=[1, 2], text_embed_dim=D, max_text_len=8, layer_attns=(False, True),
                  attn_pool_num_latents=4)
    entry = ip.UnetConfig(**kwargs).dict()
    config = ImagenPytorchUNetConfig.from_kwargs(entry)
    assert (config.attn_heads, config.attn_dim_head) == (16, 32)  # pydantic's defaults, not Unet's 8 / 64
    unet = ip.UnetConfig(**kwargs).create()
    assert config == ImagenPytorchUNetConfig.from_kwargs(unet._locals)
    ImagenPytorchUNet(config).load_state_dict(unet.state_dict(), strict=True)


@pytest.mark.parametrize("change, words", [
    (dict(self_cond=True), "self_cond"), (dict(cond_images_channels=3), "cond_images_channels"),
    (dict(cross_embed_downsample=True), "cross_embed_downsample"), (dict(frames=4, foo=1), "['foo', 'frames']"),
    (dict(dim_mults=(1, 2), num_resnet_blocks=(1, 2, 3)), "num_resnet_blocks"),
    (dict(init_conv_kernel_size=4, init_cross_embed=False), "init_conv_kernel_size")])
def test_from_kwargs_refuses(change, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        ImagenPytorchUNetConfig.from_kwargs({"dim": 16, **change})
    with pytest.raises(ValueError, match="'dim'"):
        ImagenPytorchUNetConfig.from_kwargs({"dim_mults": (1, 2)})
    # ignored arguments are accepted
    assert ImagenPytorchUNetConfig.from_kwargs(dict(dim=16, dropout=0.1, num_image_tokens=2, resize_mode="nearest"))


def test_from_dict_refuses_unknown_fields():
    with pytest.raises(ValueError, match="channels_in"):
        ImagenPytorchUNetConfig.from_dict({"architecture": "imagen-pytorch", "dim": 16, "channels_in": 3})
    with pytest.raises(ValueError, match="architecture"):
        ImagenPytorchUNetConfig(architecture="imagen")


def test_from_shapes_refuses(pairs):
    shapes = {k: tuple(v.shape) for k, v in pairs["base"][0].state_dict().items()}
    missing = dict(shapes)
    del missing["downs.1.2.0.gca.to_k.weight"]
    with pytest.raises(ValueError, match="downs.1.2.0.gca.to_k.weight"):
        ImagenPytorchUNetConfig.from_shapes(missing)
    wrong = {**shapes, "mid_attn.layers.0.1.1.weight": (40, 48)}
    with pytest.raises(ValueError, match="mid_attn.layers.0.1.1.weight"):
        ImagenPytorchUNetConfig.from_shapes(wrong)
    old = {k.replace(".norm.gamma", ".groupnorm.weight"): v for k, v in shapes.items()}
    with pytest.raises(ValueError, match="< 2.0"):
        ImagenPytorchUNetConfig.from_shapes(old)
    with pytest.raises(ValueError, match="to_time_cond.0.weight"):
        ImagenPytorchUNetConfig.from_shapes({"conv_in.weight": (32, 3, 3, 3)})


def test_forward_refuses_bad_inputs(pairs):
    _, base, _, _ = pairs["base"]
    _, sr, _, _ = pairs["sr"]
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="multiple of 4.*16x20"):
        base(torch.randn(1, 3, 16, 18), 0.0)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        base(torch.randn(1, 4, 16, 16), 0.0)
    with pytest.raises(ValueError, match="lowres_image"):
        sr(x, 0.0)
    with pytest.raises(ValueError, match="base"):
        base(x, 0.0, lowres_image=x, noise_level=0.0)
    with pytest.raises(ValueError, match=f"{D}"):
        base(x, 0.0, torch.randn(1, 4, D + 1))
