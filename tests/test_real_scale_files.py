"""benchmarks/real_scale.py writes what it claims: safetensors files tensor by tensor that safetensors reads back,
and IF-I-XL / IF-II-L configs that translate to the published shapes (IF-I-XL: 4,304,695,110 parameters)."""
from __future__ import annotations

import torch
from safetensors import safe_open

from benchmarks import real_scale
from comfyui_imagen.checkpoints.deepfloyd import unet_config_from_diffusers
from comfyui_imagen.unet import ImagenUNet
from comfyui_imagen.unet.config import IF_I_XL, IF_II_L


def test_streamed_safetensors_read_back(tmp_path):
    g = torch.Generator().manual_seed(0)
    made = {"a.weight": torch.randn(3, 5, generator=g), "b.weight": torch.randn(7, generator=g),
            "c.scale_weight": torch.tensor(0.25), "marker": torch.empty(0)}
    specs = [("a.weight", (3, 5), torch.float16), ("b.weight", (7,), torch.float8_e4m3fn),
             ("c.scale_weight", (), torch.float32), ("marker", (0,), torch.float8_e4m3fn)]
    path = tmp_path / "x.safetensors"
    real_scale.write_safetensors(path, specs, lambda key, shape: made[key], {"format": "pt"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"} and sorted(f.keys()) == sorted(made)
        for key, shape, dtype in specs:
            t = f.get_tensor(key)
            assert t.dtype == dtype and tuple(t.shape) == shape
            assert torch.equal(t.float(), made[key].to(dtype).float())
    assert not path.with_name("x.safetensors.part").exists()


def test_the_stage_configs_are_the_published_shapes():
    assert unet_config_from_diffusers(real_scale.IF_I_XL_CONFIG) == IF_I_XL
    assert unet_config_from_diffusers(real_scale.IF_II_L_CONFIG) == IF_II_L
    with torch.device("meta"):
        params = sum(p.numel() for p in ImagenUNet(IF_I_XL).parameters())
    assert params == 4_304_695_110


def test_random_weights_keep_norms_at_one_and_biases_at_zero():
    g = torch.Generator().manual_seed(0)
    assert torch.equal(real_scale._random("down.norm1.weight", (4,), g), torch.ones(4))
    assert torch.equal(real_scale._random("down.conv1.bias", (4,), g), torch.zeros(4))
    w = real_scale._random("down.conv1.weight", (64, 32, 3, 3), g)
    assert abs(float(w.std()) - (32 * 9) ** -0.5) < 0.01
