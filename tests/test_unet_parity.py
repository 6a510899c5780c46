"""Parity with diffusers' UNet2DConditionModel (the oracle) on tiny random models with IF's block types: the same
weights give the same output, in memory, through a saved diffusers folder, and through a lone file whose config is
inferred from its shapes."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import save_file  # noqa: E402

from comfyui_imagen.checkpoints import load_stage  # noqa: E402
from comfyui_imagen.checkpoints.deepfloyd import unet_config_from_diffusers  # noqa: E402
from comfyui_imagen.unet import ImagenUNet  # noqa: E402
from comfyui_imagen.unet.config import IF_SKIP_SCALE  # noqa: E402

TOL = 1e-4


def if_diffusers_kwargs(stage: int, *, cross_only=False, head_dim=64, text_dim=64) -> dict:
    """A tiny IF-shaped diffusers config: stage 1 (IF-I blocks) or 2 (IF-II: 6 input channels, class-embedded noise
    level, GELU once on the embedding, 1/0.7071 skips, uneven blocks per level)."""
    kw = dict(sample_size=16, layers_per_block=1, block_out_channels=[32, 64],
              down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
              mid_block_type="UNetMidBlock2DSimpleCrossAttn",
              up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"], in_channels=3, out_channels=6,
              cross_attention_dim=64, encoder_hid_dim=text_dim, attention_head_dim=head_dim,
              addition_embed_type="text", addition_embed_type_num_heads=64 if head_dim == 64 else 2,
              cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
              only_cross_attention=cross_only)
    if stage == 2:
        kw.update(sample_size=64, layers_per_block=[1, 2], in_channels=6, class_embed_type="timestep",
                  resnet_out_scale_factor=IF_SKIP_SCALE, mid_block_scale_factor=IF_SKIP_SCALE,
                  time_embedding_act_fn="gelu", time_embedding_dim=64, resnet_skip_time_act=True)
    return kw


def random_diffusers_unet(kwargs: dict, seed=0):
    torch.manual_seed(seed)
    model = diffusers.UNet2DConditionModel(**kwargs).eval()
    with torch.no_grad():  # default init zeroes some layers; randomise everything so that every path is tested
        for p in model.parameters():
            p.normal_(0.0, 0.1)
    return model


def compare(ref_model, ours, stage: int, *, masked: bool):
    g = torch.Generator().manual_seed(1)
    x, low = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    text = torch.randn(2, 7, ref_model.config.encoder_hid_dim, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 0]], dtype=torch.bool) if masked else None
    t, level = torch.tensor([10.0, 637.0]), torch.tensor([0.0, 250.0])
    with torch.no_grad():
        ref = ref_model(torch.cat([x, low], 1) if stage == 2 else x, t, encoder_hidden_states=text,
                        encoder_attention_mask=mask, class_labels=level if stage == 2 else None).sample
        sr = dict(lowres_image=low, noise_level=level) if stage == 2 else {}
        out = ours(x, t, text, mask, **sr)
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= TOL, err
    return err


@pytest.mark.parametrize("stage, cross_only, masked", [(1, False, True), (2, False, True), (2, True, False)],
                         ids=["stage1-masked", "stage2-masked", "stage2-cross-only"])
def test_same_output_as_diffusers(stage, cross_only, masked):
    kwargs = if_diffusers_kwargs(stage, cross_only=cross_only, head_dim=16, text_dim=48)
    ref = random_diffusers_unet(kwargs)
    config = unet_config_from_diffusers(dict(ref.config))
    if masked:
        config = config.replace(text_mask=True)  # IF passes no mask; here the mask path itself is compared
    ours = ImagenUNet(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    compare(ref, ours, stage, masked=masked)


@pytest.mark.parametrize("stage", [1, 2])
def test_diffusers_folder_and_lone_file_load_with_parity(tmp_path, stage):
    ref = random_diffusers_unet(if_diffusers_kwargs(stage))
    root = tmp_path / "IF-test"
    ref.save_pretrained(root / "unet", safe_serialization=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "IFPipeline"}))
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon", "num_train_timesteps": 1000,
         "variance_type": "learned_range"}))
    lone = tmp_path / "if_unet.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(lone))

    for path in (root, root / "unet", lone):
        stage_obj = load_stage(path)
        cfg = stage_obj.config
        assert cfg.role == ("sr" if stage == 2 else "base")
        assert (cfg.variance_type, cfg.prediction_type, cfg.schedule) == ("learned_range", "epsilon",
                                                                           "squaredcos_cap_v2")
        if stage == 2:
            assert cfg.lowres_resolution * 4 == cfg.resolution
        compare(ref, stage_obj.unet, stage, masked=False)
    # a mask given to an IF stage is ignored, as IF's pipelines pass none
    inferred = load_stage(lone)
    assert inferred.config.unet == load_stage(root).config.unet
    assert inferred.config.unet.text_mask is False


def test_fp16_folder_keeps_fp16_unless_asked(tmp_path):
    ref = random_diffusers_unet(if_diffusers_kwargs(1))
    ref.half().save_pretrained(tmp_path / "unet", safe_serialization=True, variant="fp16")
    stage = load_stage(tmp_path / "unet")
    assert {p.dtype for p in stage.unet.parameters()} == {torch.float16}
    stage32 = load_stage(tmp_path / "unet", dtype=torch.float32)
    compare(ref.float(), stage32.unet, 1, masked=False)
