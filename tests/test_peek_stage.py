"""`peek_stage`: what a stage is from its config and file header alone (the model loader node's info), no weights."""
from __future__ import annotations

import pytest
from safetensors.torch import load_file, save_file

from comfyui_imagen import files
from comfyui_imagen.checkpoints import CheckpointError, load_stage, peek_stage
from comfyui_imagen.demo import demo_files


def test_peek_reads_the_config_and_no_weights(monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("a weight was read")

    path = demo_files()["sr"]
    monkeypatch.setattr(files.Weights, "read_into", no_reading)
    peeked = peek_stage(path)
    monkeypatch.undo()
    loaded = load_stage(path)
    assert peeked.config == loaded.config and peeked.describe("x") == loaded.describe("x")
    assert {p.device.type for p in peeked.unet.parameters()} == {"meta"}


def test_peek_checks_the_shapes(tmp_path):
    path = demo_files()["base"]
    state = load_file(str(path))
    key = next(k for k in state if k.endswith("conv_in.weight"))
    state[key] = state[key][:-1].clone()
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata=files.open_weights(path).metadata)
    with pytest.raises(CheckpointError, match="wrong shape"):
        peek_stage(bad)
