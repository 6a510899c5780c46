"""Stage checkpoints: native save/load round trip, StageConfig checks, and every bad input giving a CheckpointError
that names the file and the fix."""
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from comfyui_imagen.checkpoints import IF_STAGES, CheckpointError, StageConfig, load_stage, save_stage
from comfyui_imagen.checkpoints.deepfloyd import infer_unet_config, unet_config_from_diffusers
from comfyui_imagen.checkpoints.tensors import load_pickle_state_dict
from comfyui_imagen.unet import TINY_BASE, TINY_SR, ImagenUNet

BASE = StageConfig(role="base", resolution=64, unet=TINY_BASE, prediction_type="v_prediction", name="tiny")
SR = StageConfig(role="sr", resolution=64, lowres_resolution=16, unet=TINY_SR, schedule="linear")


def _unet(config, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return ImagenUNet(config).to(dtype).eval()


@pytest.mark.parametrize("stage, dtype", [(BASE, torch.float32), (SR, torch.bfloat16), (SR, torch.float16)])
def test_native_round_trip_is_bit_exact(tmp_path, stage, dtype):
    unet = _unet(stage.unet, dtype=dtype)
    path = save_stage(tmp_path / "s.safetensors", unet, stage)
    loaded = load_stage(path)
    assert loaded.config == stage
    assert not loaded.unet.training
    a, b = unet.state_dict(), loaded.unet.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert b[k].dtype == dtype and torch.equal(a[k], b[k]), k
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]  # the atomic write leaves nothing behind
    if dtype != torch.float32:
        return
    x = torch.randn(1, 3, 16, 16)
    kw = dict(lowres_image=x, noise_level=torch.tensor([3])) if stage.role == "sr" else {}
    with torch.no_grad():  # same weights; kernels may round differently on differently aligned memory
        torch.testing.assert_close(unet(x.to(dtype), torch.tensor([7.0]), **kw),
                                   loaded.unet(x.to(dtype), torch.tensor([7.0]), **kw))


def test_load_casts_when_asked(tmp_path):
    path = save_stage(tmp_path / "s.safetensors", _unet(TINY_BASE), BASE)
    assert {p.dtype for p in load_stage(path, dtype=torch.bfloat16).unet.parameters()} == {torch.bfloat16}


def test_save_stage_refuses_mismatches(tmp_path):
    with pytest.raises(ValueError, match="differs from config.unet"):
        save_stage(tmp_path / "s.safetensors", _unet(TINY_SR), BASE)
    with pytest.raises(ValueError, match=".safetensors"):
        save_stage(tmp_path / "s.pt", _unet(TINY_BASE), BASE)


@pytest.mark.parametrize("changes, match", [
    (dict(role="sr"), "lowres_cond"),
    (dict(variance_type="learned_range"), "variance_type"),
    (dict(resolution=31), "multiple of 2"),
    (dict(schedule="karras"), "schedule"),
    (dict(prediction_type="noise"), "prediction_type"),
    (dict(lowres_resolution=16), "no lowres_resolution"),
    (dict(text_embed_dim=4096), "text_embed_dim"),
])
def test_stage_config_validation(changes, match):
    with pytest.raises(ValueError, match=match):
        BASE.replace(**changes)


def test_stage_config_dict_round_trip():
    for config in (BASE, SR, *IF_STAGES.values()):
        assert StageConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert IF_STAGES["IF-II-L"].role == "sr" and IF_STAGES["IF-I-XL"].variance_type == "learned_range"


def _state(config=TINY_BASE):
    return {k: v.contiguous() for k, v in _unet(config).state_dict().items()}


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_stage(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="unet/config.json"):
        load_stage(tmp_path / "empty")
    foreign = {
        "sd.safetensors": ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, "Stable Diffusion"),
        "t5.safetensors": ({"encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(2),
                            "shared.weight": torch.zeros(2)}, "T5 text encoder"),
        "imagen.safetensors": ({"unets.0.init_conv.weight": torch.zeros(2)}, "records no Imagen settings.*imagen.json"),
        "misc.safetensors": ({"foo.weight": torch.zeros(2)}, "not an Imagen / DeepFloyd IF stage"),
        "orig_if.safetensors": ({"input_blocks.0.0.weight": torch.zeros(2), "encoder_proj.weight": torch.zeros(2)},
                                "original deepfloyd_if layout"),
    }
    for name, (tensors, match) in foreign.items():
        save_file(tensors, str(tmp_path / name))
        with pytest.raises(CheckpointError, match=match) as info:
            load_stage(tmp_path / name)
        assert name in str(info.value)


def test_truncated_and_garbage_safetensors(tmp_path):
    good = tmp_path / "good.safetensors"
    save_stage(good, _unet(TINY_BASE), BASE)
    data = good.read_bytes()
    for name, blob in (("cut.safetensors", data[: len(data) // 2]), ("junk.safetensors", b"\x00" * 64),
                       ("tiny.safetensors", b"12")):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match=f"{name}.*truncated or corrupt"):
            load_stage(tmp_path / name)


class _Payload:
    """Unpickling this runs open(path, 'w'): the attack a weights_only load must refuse."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_with_code_payload_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned.txt"
    for name in ("evil.bin", "evil.ckpt"):
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"conv_in.weight": torch.zeros(1), "x": _Payload(marker)}, f)
        with pytest.raises(CheckpointError, match="weights_only"):
            load_stage(tmp_path / name)
        torch.save({"state_dict": {"conv_in.weight": torch.zeros(1)}, "hook": _Payload(marker)}, tmp_path / name)
        with pytest.raises(CheckpointError, match="weights_only"):
            load_stage(tmp_path / name)
    assert not marker.exists()


def test_pickled_if_state_dict_loads(tmp_path):
    from comfyui_imagen.checkpoints.stage import if_stage_config

    config = infer_unet_config({k: tuple(v.shape) for k, v in _state(TINY_BASE.replace(
        out_channels=6, text_embed_dim=64, pool_heads=64, head_dim=64, cond_dim=64)).items()})
    unet = _unet(config)
    torch.save({"state_dict": unet.state_dict(), "epoch": 3}, tmp_path / "if.pt")
    assert set(load_pickle_state_dict(tmp_path / "if.pt")) == set(unet.state_dict())
    stage = load_stage(tmp_path / "if.pt")
    assert stage.config == if_stage_config(config, name="if")
    for k, v in unet.state_dict().items():
        assert torch.equal(stage.unet.state_dict()[k], v)


def test_shapes_that_fit_no_config(tmp_path):
    state = _state(TINY_BASE.replace(out_channels=6, text_embed_dim=64, pool_heads=64, head_dim=64, cond_dim=64))
    state["down_blocks.0.resnets.0.conv1.weight"] = torch.zeros(48, 32, 3, 3)  # 48 channels: not a group multiple
    save_file(state, str(tmp_path / "odd.safetensors"))
    with pytest.raises(CheckpointError, match="odd.safetensors.*match no IF U-Net"):
        load_stage(tmp_path / "odd.safetensors")
    state = _state(TINY_BASE.replace(out_channels=6, text_embed_dim=64, pool_heads=64, head_dim=64, cond_dim=64))
    state["down_blocks.1.resnets.0.conv2.weight"] = torch.zeros(64, 64, 1, 1)
    save_file(state, str(tmp_path / "bent.safetensors"))
    with pytest.raises(CheckpointError, match=r"bent.safetensors.*wrong shape \['down_blocks.1.resnets.0.conv2"):
        load_stage(tmp_path / "bent.safetensors")


def test_nan_weights_are_refused(tmp_path):
    unet = _unet(TINY_BASE)
    with torch.no_grad():
        unet.conv_out.weight[0, 0, 0, 0] = float("nan")
    path = save_stage(tmp_path / "nan.safetensors", unet, BASE)
    with pytest.raises(CheckpointError, match="nan.safetensors.*'conv_out.weight' contains NaN or Inf"):
        load_stage(path)


def test_native_metadata_errors(tmp_path):
    meta = {"comfyui_imagen.format": "stage-v9", "comfyui_imagen.stage": "{}"}
    save_file(_state(), str(tmp_path / "future.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="update the custom node"):
        load_stage(tmp_path / "future.safetensors")
    meta = {"comfyui_imagen.format": "stage-v1", "comfyui_imagen.stage": json.dumps({**BASE.to_dict(), "role": "x"})}
    save_file(_state(), str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="bad.safetensors.*role"):
        load_stage(tmp_path / "bad.safetensors")


def test_diffusers_configs_of_other_families_are_refused(tmp_path):
    sd_like = {"_class_name": "UNet2DConditionModel", "down_block_types": ["CrossAttnDownBlock2D"],
               "resnet_time_scale_shift": "default"}
    with pytest.raises(CheckpointError, match="resnet_time_scale_shift"):
        unet_config_from_diffusers(sd_like)
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps(sd_like))
    with pytest.raises(CheckpointError, match="config.json.*not a DeepFloyd IF U-Net setting"):
        load_stage(tmp_path)


# an IF-family U-Net unlike IF's releases: 8 norm groups, 8-wide heads, additive time conditioning, an unmirrored
# decoder (what a diffusers config.json can say and tensor shapes cannot)
_FINETUNE = dict(
    _class_name="UNet2DConditionModel", block_out_channels=[24, 48], layers_per_block=[1, 2], in_channels=3,
    out_channels=6, down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
    up_block_types=["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D"],
    mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32, encoder_hid_dim=16, attention_head_dim=8,
    addition_embed_type="text", addition_embed_type_num_heads=4, cross_attention_norm="group_norm",
    resnet_time_scale_shift="default", act_fn="gelu", norm_num_groups=8, sample_size=32)


def test_lone_file_shapes_that_contradict_if_defaults_ask_for_its_config(tmp_path):
    config = unet_config_from_diffusers(_FINETUNE)
    assert (config.norm_groups, config.head_dim, config.time_shift) == (8, 8, "add")
    assert config.up_attention == ("self_cross", "self_cross") and config.attention == ("none", "self_cross")
    unet = _unet(config)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(tmp_path / "ft.safetensors"))
    with pytest.raises(CheckpointError, match=r"ft.safetensors: the tensor shapes match no IF U-Net.*24, 48.*IF's 32 "
                                              r"norm groups.*config.json beside the file.*ft.json.*diffusers folder"):
        load_stage(tmp_path / "ft.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(_FINETUNE))
    stage = load_stage(tmp_path / "ft.safetensors")
    assert stage.config.unet == config and stage.config.resolution == 32
    for k, v in unet.state_dict().items():
        assert torch.equal(stage.unet.state_dict()[k], v)


def test_unet_options_are_written_only_when_used(tmp_path):
    assert not {"up_attention", "time_shift", "cross_norm_groups"} & set(TINY_BASE.to_dict())  # old readers read it
    config = unet_config_from_diffusers(_FINETUNE)
    written = config.to_dict()
    assert (written["time_shift"], written["up_attention"], written["cross_norm_groups"]) == ("add", [
        "self_cross", "self_cross"], 32)
    stage = StageConfig(role="base", resolution=32, unet=config, variance_type="learned_range", name="ft")
    unet = _unet(config)
    loaded = load_stage(save_stage(tmp_path / "ft.safetensors", unet, stage))
    assert loaded.config == stage
    x, text = torch.randn(1, 3, 16, 16), torch.randn(1, 5, 16)
    with torch.no_grad():
        assert torch.equal(loaded.unet(x, torch.tensor([5.0]), text), unet(x, torch.tensor([5.0]), text))
