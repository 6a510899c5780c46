"""Winograd 3×3 convolutions: exact in float64 against conv2d, accurate in float32, taken only where they pay, cache
kept in step with the weights, and the whole U-Net still matching diffusers with them on."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from comfyui_imagen.unet import ImagenUNet
from comfyui_imagen.unet.winograd import TRANSFORMS, conv3x3, filter_transform, tile_size, winograd_conv3x3


@pytest.mark.parametrize("m", sorted(TRANSFORMS))
@pytest.mark.parametrize("shape", [(1, 2, 3, 4, 4), (2, 3, 5, 8, 6), (1, 4, 4, 7, 9), (2, 3, 2, 16, 16),
                                   (1, 1, 1, 1, 1)], ids=lambda s: "x".join(map(str, s)))
def test_equals_conv2d_in_float64(m, shape):
    b, c_in, c_out, h, w = shape
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, c_in, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(c_out, generator=g, dtype=torch.float64)
    out = winograd_conv3x3(x, filter_transform(weight, m), bias, m)
    torch.testing.assert_close(out, F.conv2d(x, weight, bias, padding=1), atol=1e-12, rtol=0)
    out = winograd_conv3x3(x, filter_transform(weight, m), None, m)
    torch.testing.assert_close(out, F.conv2d(x, weight, None, padding=1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("m, limit", [(2, 1e-5), (4, 1e-4)])
def test_float32_error_at_unit_scale(m, limit):
    """Unit-variance input and fan-in-scaled filters (unit-scale outputs), as in a trained network."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 256, 32, 32, generator=g)
    weight = torch.randn(256, 256, 3, 3, generator=g) / (3 * 256 ** 0.5)
    ref = F.conv2d(x.double(), weight.double(), padding=1)
    err = (winograd_conv3x3(x, filter_transform(weight, m), None, m).double() - ref).abs().max().item()
    assert err < limit, err


def test_tile_size_by_map_size():
    assert [tile_size(s, s) for s in (256, 64, 32, 16, 8)] == [4, 4, 4, 2, 0]
    assert tile_size(64, 8) == 0


def wide_conv(channels=128, seed=0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(channels, channels, 3, padding=1).eval()


def test_taken_only_in_inference_on_wide_float32_maps():
    conv = wide_conv()
    x = torch.randn(1, 128, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(conv3x3(conv, x), conv(x), atol=1e-4, rtol=0)
    assert "_winograd_cache" in conv.__dict__
    for case, (c, inp, grad) in {
        "training": (wide_conv(), x, True),
        "narrow": (nn.Conv2d(64, 64, 3, padding=1), torch.randn(1, 64, 32, 32), False),
        "small map": (wide_conv(), torch.randn(1, 128, 8, 8), False),
        "bf16": (wide_conv().bfloat16(), x.bfloat16(), False),
    }.items():
        with torch.set_grad_enabled(grad):
            assert torch.equal(conv3x3(c, inp), c(inp)), case
        assert "_winograd_cache" not in c.__dict__, case
    conv = wide_conv()
    conv.winograd = False
    with torch.no_grad():
        assert torch.equal(conv3x3(conv, x), conv(x))


def test_cache_follows_the_weights():
    """In-place edits (also through ``.data``, which ComfyUI's weight patching uses and which does not bump the
    version counter), a new tensor, and a dtype change each rebuild the transformed filters."""
    conv, x = wide_conv(), torch.randn(1, 128, 32, 32)
    with torch.no_grad():
        conv3x3(conv, x)
        conv.weight.mul_(2)
        torch.testing.assert_close(conv3x3(conv, x), conv(x), atol=2e-4, rtol=0)
        conv.weight.data.add_(0.01)
        torch.testing.assert_close(conv3x3(conv, x), conv(x), atol=2e-4, rtol=0)
        conv.weight = nn.Parameter(torch.randn_like(conv.weight) * 0.01)
        torch.testing.assert_close(conv3x3(conv, x), conv(x), atol=2e-4, rtol=0)


def test_weights_made_under_inference_mode():
    """ComfyUI loads and runs models under torch.inference_mode, whose tensors have no version counter."""
    with torch.inference_mode():
        conv, x = wide_conv(), torch.randn(1, 128, 32, 32)
        torch.testing.assert_close(conv3x3(conv, x), conv(x), atol=1e-4, rtol=0)
        conv.weight.mul_(0.5)
        torch.testing.assert_close(conv3x3(conv, x), conv(x), atol=1e-4, rtol=0)


def test_unet_with_and_without_winograd_and_against_diffusers():
    """An IF-I-shaped U-Net wide enough (128 and 256 channels, 32 px) for F(4×4) at 32 px and F(2×2) at 16 px."""
    diffusers = pytest.importorskip("diffusers")
    from tests.test_unet_parity import if_diffusers_kwargs
    from comfyui_imagen.checkpoints.deepfloyd import unet_config_from_diffusers

    kwargs = if_diffusers_kwargs(1, head_dim=64, text_dim=64)
    kwargs.update(block_out_channels=[128, 256], cross_attention_dim=256)
    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**kwargs).eval()
    with torch.no_grad():  # unit-scale random weights everywhere (the default init zeroes some output layers)
        for p in ref.parameters():
            p.normal_(0.0, 1.0 / max(1, p[0].numel()) ** 0.5)
    ours = ImagenUNet(unet_config_from_diffusers(dict(ref.config))).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    g = torch.Generator().manual_seed(1)
    x, text, t = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 7, 64, generator=g), torch.tensor([10., 600.])
    with torch.no_grad():
        expected = ref(x, t, encoder_hidden_states=text).sample
        fast = ours(x, t, text)
        assert any("_winograd_cache" in m.__dict__ for m in ours.modules())
        ours.set_winograd(False)
        direct = ours(x, t, text)
    scale = expected.abs().max().item()
    assert (fast - expected).abs().max().item() <= 1e-4 * max(1.0, scale)
    assert (fast - direct).abs().max().item() <= 1e-4 * max(1.0, scale)
    assert not any("_winograd_cache" in m.__dict__ for m in ours.modules())
