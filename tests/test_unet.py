"""ImagenUNet and UNetConfig on tiny CPU configs: shapes, conditioning, errors, presets, known answers."""
import math

import pytest
import torch

from comfyui_imagen.unet import PRESETS, TINY_BASE, TINY_SR, ImagenUNet, UNetConfig, get_preset
from comfyui_imagen.unet.layers import AddedKVAttention, timestep_embedding


def _inputs(config: UNetConfig, b=2, size=16, tokens=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, config.in_channels, size, size, generator=g)
    text = torch.randn(b, tokens, config.text_embed_dim, generator=g)
    mask = torch.ones(b, tokens, dtype=torch.bool)
    mask[0, 3:] = False
    return x, text, mask


def _model(config, seed=0):
    torch.manual_seed(seed)
    return ImagenUNet(config).eval()


def test_timestep_embedding_known_values():
    emb = timestep_embedding(torch.tensor([0.0, 1.0]), 4)
    # frequencies 10000^(-k/2), k = 0, 1 -> 1, 0.01; cosines first
    expected = torch.tensor([[1.0, 1.0, 0.0, 0.0], [math.cos(1), math.cos(0.01), math.sin(1), math.sin(0.01)]])
    torch.testing.assert_close(emb, expected)


@pytest.mark.parametrize("config", [TINY_BASE, TINY_SR], ids=["base", "sr"])
def test_tiny_forward_shape_and_finite(config):
    model = _model(config)
    x, text, mask = _inputs(config)
    kw = dict(lowres_image=torch.randn_like(x), noise_level=torch.tensor([0, 300])) if config.lowres_cond else {}
    with torch.no_grad():
        out = model(x, torch.tensor([3.0, 999.0]), text, mask, **kw)
    assert out.shape == (2, config.out_channels, 16, 16)
    assert torch.isfinite(out).all()


def test_conditioning_changes_output():
    model = _model(TINY_SR)
    x, text, mask = _inputs(TINY_SR)
    low = torch.randn_like(x)
    t = torch.tensor([500.0, 500.0])
    with torch.no_grad():
        ref = model(x, t, text, mask, lowres_image=low, noise_level=torch.tensor([100, 100]))
        for kw in (dict(noise_level=torch.tensor([400, 400])), dict(lowres_image=low * 0.5),
                   dict(text_embeds=text.flip(0)), dict(timesteps=t * 0.5)):
            args = dict(x=x, timesteps=t, text_embeds=text, text_mask=mask, lowres_image=low,
                        noise_level=torch.tensor([100, 100]))
            args.update(kw)
            assert (model(**args) - ref).abs().max() > 1e-4, kw


def test_masked_attention_equals_attention_over_the_real_tokens_only():
    """Masking text keys must give exactly the attention over the unpadded text (norm_cross removed, since a group
    norm over the sequence sees the padding by design, as in IF)."""
    torch.manual_seed(0)
    for cross_only in (False, True):
        attn = AddedKVAttention(64, 32, 16, groups=32, cross_only=cross_only).eval()
        attn.norm_cross = torch.nn.Identity()
        x, text = torch.randn(1, 64, 4, 4), torch.randn(1, 6, 32)
        bias = torch.zeros(1, 1, 1, 6)
        bias[..., 4:] = -10000.0
        with torch.no_grad():
            torch.testing.assert_close(attn(x, text, bias), attn(x, text[:, :4], None), atol=1e-5, rtol=1e-5)
            assert (attn(x, text, None) - attn(x, text[:, :4], None)).abs().max() > 1e-3


def test_text_mask_config_switch():
    masked = _model(TINY_BASE)
    unmasked = _model(TINY_BASE.replace(text_mask=False))
    unmasked.load_state_dict(masked.state_dict())
    x, text, mask = _inputs(TINY_BASE)
    t = torch.tensor([10.0, 10.0])
    with torch.no_grad():
        assert (masked(x, t, text, mask)[0] - unmasked(x, t, text, mask)[0]).abs().max() > 1e-4
        full = torch.ones_like(mask)
        torch.testing.assert_close(masked(x, t, text, full), unmasked(x, t, text, full))


def test_text_mask_is_ignored_by_if_style_configs():
    config = TINY_BASE.replace(text_mask=False)
    model = _model(config)
    x, text, mask = _inputs(config)
    t = torch.tensor([10.0, 10.0])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, text, mask), model(x, t, text, None))


@pytest.mark.parametrize("dim", [8, 24, 100])
def test_any_text_embed_dim(dim):
    config = TINY_BASE.replace(text_embed_dim=dim, pool_heads=2 if dim % 2 == 0 else 1)
    model = _model(config)
    x, text, mask = _inputs(config)
    with torch.no_grad():
        assert model(x, torch.tensor([1.0, 2.0]), text, mask).shape == x.shape


def test_unconditional_without_text_and_scalar_timestep():
    model = _model(TINY_BASE)
    x, _, _ = _inputs(TINY_BASE)
    with torch.no_grad():
        out = model(x, torch.tensor(250.0))
        same = model(x, torch.tensor([250.0, 250.0]))
    torch.testing.assert_close(out, same)


def test_fully_convolutional_sr_runs_on_non_square_multiples():
    config = TINY_SR  # cross-attention only: no self-attention, any multiple of 2 ** (levels - 1)
    model = _model(config)
    x = torch.randn(1, 3, 24, 40)
    with torch.no_grad():
        out = model(x, torch.tensor([5.0]), torch.randn(1, 4, config.text_embed_dim), lowres_image=x.clone())
    assert out.shape == (1, 3, 24, 40)


def test_input_errors_name_the_fix():
    model = _model(TINY_SR)
    x = torch.randn(1, 3, 15, 16)
    with pytest.raises(ValueError, match="multiple of 2"):
        model(x, torch.tensor([1.0]), lowres_image=x)
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="pass lowres_image"):
        model(x, torch.tensor([1.0]))
    with pytest.raises(ValueError, match="super-resolution stage"):
        _model(TINY_BASE)(x, torch.tensor([1.0]), lowres_image=x)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1.0]), lowres_image=x)


@pytest.mark.parametrize("changes, match", [
    (dict(layers=(1,)), "one entry per level"),
    (dict(attention=("none", "sideways")), "attention entries"),
    (dict(channels=(32, 96), head_dim=64), "multiple of head_dim"),
    (dict(channels=(20, 64)), "multiple of norm_groups"),
    (dict(out_channels=5), "learned variance"),
    (dict(text_embed_dim=33), "multiple of pool_heads"),
    (dict(act="relu"), "act"),
])
def test_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        TINY_BASE.replace(**changes)


def test_config_dict_round_trip_and_unknown_fields():
    for config in PRESETS.values():
        assert UNetConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown UNetConfig fields"):
        UNetConfig.from_dict({**TINY_BASE.to_dict(), "wings": 2})
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        get_preset("IF-IV")


@pytest.mark.parametrize("name, millions", [("IF-I-M", 372), ("IF-I-L", 935), ("IF-I-XL", 4305),
                                            ("IF-II-M", 463), ("IF-II-L", 1243)])
def test_if_presets_have_the_published_sizes(name, millions):
    with torch.device("meta"):
        model = ImagenUNet(get_preset(name))
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == millions


def test_paper_presets_build_on_meta():
    for name in ("base-64", "sr-256", "sr-1024"):
        with torch.device("meta"):
            model = ImagenUNet(get_preset(name))
        assert sum(p.numel() for p in model.parameters()) > 1e8
    assert all(a in ("none", "cross") for a in get_preset("sr-1024").attention)


def test_tiny_model_trains():
    model = ImagenUNet(TINY_BASE)
    x, text, mask = _inputs(TINY_BASE)
    loss = model(x, torch.tensor([10.0, 20.0]), text, mask).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
