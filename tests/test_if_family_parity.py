"""Parity with diffusers' UNet2DConditionModel (the oracle) on IF-family configs unlike IF's own: other group counts,
head widths (per block, None, diffusers' unreversed decoder heads), block mixes (attention at the top level, an
unmirrored decoder, only_cross_attention lists), time-embedding options, norms, kernels. Each is saved as a diffusers
folder and loaded through `load_stage`, as a user's fine-tune would be; then the same inputs must give the same
output. Configs outside the family are refused by field name."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402

from comfyui_imagen.checkpoints import CheckpointError, load_stage  # noqa: E402
from comfyui_imagen.checkpoints.deepfloyd import unet_config_from_diffusers  # noqa: E402
from tests.test_unet_parity import TOL  # noqa: E402

DOWN, ATTN_DOWN = "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"
UP, ATTN_UP = "ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D"
COMMON = dict(mid_block_type="UNetMidBlock2DSimpleCrossAttn", addition_embed_type="text",
              cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu")

CONFIGS = {
    # 8 groups, 8-wide heads, attention only at the top level, additive time conditioning, uneven blocks, mid
    # block cross-only while the levels attend to themselves too, non-default eps and time width
    "groups8-top-attention-add-shift": dict(
        COMMON, sample_size=32, block_out_channels=[24, 48], layers_per_block=[2, 1],
        down_block_types=[ATTN_DOWN, DOWN], up_block_types=[UP, ATTN_UP], in_channels=3, out_channels=6,
        cross_attention_dim=32, encoder_hid_dim=20,
        attention_head_dim=8, addition_embed_type_num_heads=4, norm_num_groups=8, norm_eps=1e-3, act_fn="silu",
        time_embedding_dim=40, resnet_time_scale_shift="default", mid_block_only_cross_attention=True),
    # super-resolution, 4 groups, per-block heads (the decoder reads them unreversed), an unmirrored decoder,
    # only_cross_attention per block, an extra SiLU on the embedding before every block's GELU, scale factors
    "sr-groups4-block-heads-unmirrored": dict(
        COMMON, sample_size=64, block_out_channels=[16, 32, 48], layers_per_block=[1, 2, 1],
        down_block_types=[DOWN, ATTN_DOWN, ATTN_DOWN], up_block_types=[ATTN_UP, UP, ATTN_UP], in_channels=6,
        out_channels=3, class_embed_type="timestep", cross_attention_dim=64, encoder_hid_dim=24,
        attention_head_dim=[8, 16, 16], only_cross_attention=[False, True, False], addition_embed_type_num_heads=6,
        norm_num_groups=4, time_embedding_dim=24, time_embedding_act_fn="silu", resnet_skip_time_act=False,
        resnet_out_scale_factor=1.3, mid_block_scale_factor=0.8),
    # 16 groups, layer-normed text used without a projection, 8 pooling heads, sines first with a frequency
    # shift, Mish, a post-activation and no activation at all before the blocks' projections, 5x5 / 1x1 convs,
    # centred input, everything cross-only
    "groups16-layer-norm-no-proj-mish": dict(
        COMMON, sample_size=16, block_out_channels=[32, 64], layers_per_block=1, down_block_types=[DOWN, ATTN_DOWN],
        up_block_types=[ATTN_UP, UP], in_channels=3, out_channels=3, cross_attention_dim=64, encoder_hid_dim=None,
        attention_head_dim=16, only_cross_attention=True, addition_embed_type_num_heads=8, norm_num_groups=16,
        cross_attention_norm="layer_norm", flip_sin_to_cos=False, freq_shift=1, act_fn="mish",
        timestep_post_act="mish", resnet_skip_time_act=True, conv_in_kernel=5, conv_out_kernel=1,
        center_input_sample=True),
    # super-resolution without pooled text or a text norm, 12 groups, a None head width (one head as wide as the
    # block; in the decoder it lands on the other level), GELU once on the embedding and SiLU in the blocks skipped
    "sr-groups12-none-head-no-pool": dict(
        COMMON, sample_size=64, block_out_channels=[24, 48], layers_per_block=[1, 2], down_block_types=[ATTN_DOWN] * 2,
        up_block_types=[ATTN_UP] * 2, in_channels=6, out_channels=6, class_embed_type="timestep",
        cross_attention_dim=40, encoder_hid_dim=24, attention_head_dim=[None, 12], addition_embed_type=None,
        cross_attention_norm=None, norm_num_groups=12, act_fn="silu", time_embedding_act_fn="gelu",
        resnet_skip_time_act=True, mid_block_scale_factor=1.5, resnet_out_scale_factor=1 / 0.7071),
}


def random_diffusers_unet(kwargs: dict, seed=0):
    """Random weights at unit scale (each layer keeps its input's scale; norms near identity), so that attention
    logits are large enough for head widths and text norms to change the output well beyond the tolerance."""
    torch.manual_seed(seed)
    model = diffusers.UNet2DConditionModel(**kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim > 1:
                p.normal_(0.0, p[0].numel() ** -0.5)
            else:
                p.normal_(1.0 if "norm" in name and name.endswith("weight") else 0.0, 0.1)
    return model


def write_folder(root, ref) -> None:
    ref.save_pretrained(root / "unet", safe_serialization=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "IFPipeline"}))


def max_error(ref, ours) -> float:
    c = ref.config
    sr = c.class_embed_type == "timestep"
    image = c.in_channels // 2 if sr else c.in_channels
    g = torch.Generator().manual_seed(1)
    x, low = torch.randn(2, image, 16, 16, generator=g), torch.randn(2, image, 16, 16, generator=g)
    text = torch.randn(2, 7, c.encoder_hid_dim or c.cross_attention_dim, generator=g)
    t, level = torch.tensor([10.0, 637.0]), torch.tensor([0.0, 250.0])
    with torch.no_grad():
        expected = ref(torch.cat([x, low], 1) if sr else x, t, encoder_hidden_states=text,
                       class_labels=level if sr else None).sample
        out = ours(x, t, text, **(dict(lowres_image=low, noise_level=level) if sr else {}))
    assert out.shape == expected.shape
    return (out - expected).abs().max().item()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_unusual_if_family_folder_loads_with_parity(tmp_path, name):
    kwargs = CONFIGS[name]
    ref = random_diffusers_unet(kwargs)
    write_folder(tmp_path / name, ref)
    stage = load_stage(tmp_path / name)
    sr = kwargs.get("class_embed_type") == "timestep"
    assert stage.config.role == ("sr" if sr else "base")
    assert stage.config.resolution == (256 if sr else kwargs["sample_size"])  # a base stage samples at sample_size
    assert sum(p.numel() for p in stage.unet.parameters()) == sum(p.numel() for p in ref.parameters())
    err = max_error(ref, stage.unet)
    assert err <= TOL, err
    assert stage.config.unet == unet_config_from_diffusers(dict(ref.config))


def test_lone_file_reads_the_config_beside_it(tmp_path):
    """Shapes cannot show 4 norm groups or per-block heads: without the config.json the loader says to put it
    beside the file, and with it the file loads exactly as its folder would."""
    ref = random_diffusers_unet(CONFIGS["sr-groups4-block-heads-unmirrored"])
    lone = tmp_path / "finetune.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(lone))
    with pytest.raises(CheckpointError, match=r"finetune.safetensors.*32 norm groups.*config.json beside the file"):
        load_stage(lone)
    (tmp_path / "finetune.json").write_text(json.dumps(dict(ref.config)))
    stage = load_stage(lone)
    assert max_error(ref, stage.unet) <= TOL
    (tmp_path / "finetune.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({**dict(ref.config), "layers_per_block": 1}))  # another's
    with pytest.raises(CheckpointError, match=r"finetune.safetensors: tensors do not fit.*config.json beside it"):
        load_stage(lone)


@pytest.mark.parametrize("change, match", [
    (dict(down_block_types=[DOWN, "CrossAttnDownBlock2D"]), r"down_block_types\[1\] = 'CrossAttnDownBlock2D' is not"),
    (dict(up_block_types=["UpBlock2D", UP]), r"up_block_types\[0\] = 'UpBlock2D' is not"),
    (dict(mid_block_type="UNetMidBlock2DCrossAttn"), "mid_block_type = 'UNetMidBlock2DCrossAttn' is not"),
    (dict(addition_embed_type="text_time"), "addition_embed_type = 'text_time' is not"),
    (dict(class_embed_type="projection"), "class_embed_type = 'projection' is not"),
    (dict(time_embedding_type="fourier"), "time_embedding_type = 'fourier' is not"),
    (dict(time_cond_proj_dim=8), "time_cond_proj_dim = 8 is not"),
    (dict(act_fn="relu"), "act_fn = 'relu' does not fit"),
    (dict(attention_head_dim=[8, 12]), "attention_head_dim = \\[8, 12\\] does not fit.*32-channel"),
    (dict(norm_num_groups=5), "norm_num_groups = 5 does not fit"),
    (dict(cross_attention_dim=48), "cross_attention_dim = 48 does not fit.*32 groups"),
    (dict(addition_embed_type_num_heads=7), "addition_embed_type_num_heads = 7 does not fit"),
    (dict(cross_attention_norm="layer_norm", cross_attention_dim=64),
     "cross_attention_norm = 'layer_norm' does not fit"),
    (dict(layers_per_block=[1, 1, 1]), "layers_per_block = \\[1, 1, 1\\] does not fit"),
], ids=lambda v: str(v)[:40])
def test_configs_outside_the_family_are_refused_by_field(tmp_path, change, match):
    base = dict(COMMON, block_out_channels=[16, 32], layers_per_block=1, down_block_types=[DOWN, ATTN_DOWN],
                up_block_types=[ATTN_UP, UP], in_channels=3, out_channels=6, cross_attention_dim=32,
                encoder_hid_dim=16, attention_head_dim=8, addition_embed_type_num_heads=2, norm_num_groups=8)
    unet_config_from_diffusers(base)  # the unchanged config is in the family
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel",
                                                                **base, **change}))
    with pytest.raises(CheckpointError, match=f"config.json: {match}"):
        load_stage(tmp_path)
