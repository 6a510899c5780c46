"""The native stage format across versions: frozen stage-v1 files (tests/fixtures, written by the code of the
stage-v1 era) keep loading bit for bit, the shipped demo stages' metadata keeps parsing, the version written now
carries the TrainConfig, and damaged or future metadata gives a CheckpointError that says what is wrong."""
import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from comfyui_imagen.checkpoints import CheckpointError, StageConfig, load_stage, save_stage
from comfyui_imagen.checkpoints.native import (FORMAT, FORMAT_KEY, STAGE_KEY, TRAIN_KEY, read_train_config,
                                               stage_config_from_metadata, train_config_from_metadata)
from comfyui_imagen.train.config import TINY_TRAIN, TrainConfig

FIXTURES = Path(__file__).resolve().parent / "fixtures"
V1 = json.loads((FIXTURES / "stage-v1-tiny.json").read_text())
DEMO_V1 = json.loads((FIXTURES / "stage-v1-demo-metadata.json").read_text())


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes, in name order (as tests/fixtures/README.md)."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().reshape(-1)
        h.update(f"{k}|{str(t.dtype).removeprefix('torch.')}|{tuple(state[k].shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


@pytest.mark.parametrize("name", sorted(V1))
def test_frozen_v1_files_load_bit_exact(name):
    record, path = V1[name], FIXTURES / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"], "the frozen fixture was rewritten"
    assert metadata(path)[FORMAT_KEY] == "stage-v1"
    stage = load_stage(path)
    assert stage.config == StageConfig.from_dict(record["stage_config"])
    sr = stage.config.role == "sr"
    assert (stage.config.resolution, stage.config.lowres_resolution) == ((256, 64) if sr else (64, None))
    assert stage.config.prediction_type == "v_prediction" and stage.config.unet.channels == (8, 16)
    assert {p.dtype for p in stage.unet.parameters()} == {getattr(torch, record["dtype"])}
    assert weights_digest(stage.unet.state_dict()) == record["weights_sha256"]
    assert stage.train_config is None and read_train_config(path) is None


@pytest.mark.parametrize("role, resolution, channels", [("base", 64, (16, 32, 64, 128)), ("sr", 256, (16, 32, 64))])
def test_shipped_v1_demo_metadata_still_parses(role, resolution, channels):
    meta = DEMO_V1[role]["metadata"]
    assert meta[FORMAT_KEY] == "stage-v1"
    config = stage_config_from_metadata(meta, DEMO_V1[role]["file"])
    assert (config.role, config.resolution, config.unet.channels) == (role, resolution, channels)
    assert config.prediction_type == "v_prediction" and config.text_embed_dim == 256
    assert config.name == DEMO_V1[role]["file"].removesuffix(".safetensors")
    assert train_config_from_metadata(meta) is None


def _rewrite(tmp_path: Path, name: str, change) -> Path:
    """The base fixture's tensors under new metadata `change(old metadata)`."""
    src = FIXTURES / "stage-v1-tiny-base.safetensors"
    out = tmp_path / name
    save_file(load_file(src), str(out), metadata=change(dict(metadata(src))))
    return out


def test_a_future_format_asks_for_an_update(tmp_path):
    path = _rewrite(tmp_path, "future.safetensors", lambda m: {**m, FORMAT_KEY: "stage-v99"})
    with pytest.raises(CheckpointError, match="future.safetensors.*'stage-v99'.*update the custom node"):
        load_stage(path)


def test_a_stripped_stage_config_is_named_as_missing(tmp_path):
    path = _rewrite(tmp_path, "stripped.safetensors", lambda m: {k: v for k, v in m.items() if k != STAGE_KEY})
    with pytest.raises(CheckpointError, match="stripped.safetensors.*its stage config is missing"):
        load_stage(path)


def test_save_writes_the_oldest_format_that_reads_it_with_the_train_config(tmp_path):
    from comfyui_imagen.settings import DEFAULT_BASE

    stage = load_stage(FIXTURES / "stage-v1-tiny-base.safetensors")
    train = TINY_TRAIN.replace(lr=3e-4, weighting="p2", crop=16)
    v1 = save_stage(tmp_path / "v1.safetensors", stage.unet, stage.config, train_config=train)
    assert metadata(v1)[FORMAT_KEY] == "stage-v1"  # nothing a v1 reader refuses: the previous release opens it
    assert set(json.loads(metadata(v1)[STAGE_KEY])) == set(json.loads(metadata(FIXTURES / "stage-v1-tiny-base"
                                                                                ".safetensors")[STAGE_KEY]))
    path = save_stage(tmp_path / "v2.safetensors", stage.unet, stage.config.replace(sampling=DEFAULT_BASE),
                      train_config=train)
    meta = metadata(path)
    assert meta[FORMAT_KEY] == FORMAT == "stage-v2"  # the recommended settings are a field v1 readers refuse
    assert json.loads(meta[TRAIN_KEY]) == train.to_dict()
    again = load_stage(path)
    assert again.config == stage.config.replace(sampling=DEFAULT_BASE) and again.train_config == train
    assert read_train_config(path) == train and load_stage(v1).train_config == train
    assert weights_digest(again.unet.state_dict()) == V1["stage-v1-tiny-base.safetensors"]["weights_sha256"]
    assert TRAIN_KEY not in metadata(save_stage(tmp_path / "none.safetensors", stage.unet, stage.config))
    with pytest.raises(ValueError, match="TrainConfig"):
        save_stage(tmp_path / "x.safetensors", stage.unet, stage.config, train_config=train.to_dict())


def test_an_invalid_train_record_names_the_file(tmp_path):
    bad = {**TrainConfig().to_dict(), "weighting": "snr"}
    path = _rewrite(tmp_path, "badtrain.safetensors", lambda m: {**m, FORMAT_KEY: FORMAT, TRAIN_KEY: json.dumps(bad)})
    with pytest.raises(CheckpointError, match="badtrain.safetensors: the train config .*weighting"):
        read_train_config(path)


def test_a_file_stripped_of_all_metadata_says_its_stage_config_may_be_missing(tmp_path):
    path = _rewrite(tmp_path, "bare.safetensors", lambda m: {})
    with pytest.raises(CheckpointError, match="bare.safetensors.*its stage config is missing"):
        load_stage(path)
