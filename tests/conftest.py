"""Shared fixtures for the node and workflow tests: a models folder with tiny random stages and a tiny T5
(`tests.comfy_helpers.write_tiny_stage` / `write_tiny_t5`), and the nodes pointed at it."""
from __future__ import annotations

import pytest
import torch

# Tiny models on a 2-core machine: one intra-op thread per process runs the suite several times faster than two
# threads contending (and keeps timings steady when other jobs share the machine).
torch.set_num_threads(1)

from tests.tiny_models import (DEMO_NAMES, IMAGEN_PYTORCH_NAME, write_if_folder,
                               write_tiny_imagen_pytorch, write_tiny_stage, write_tiny_t5)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """models/imagen (tiny base + SR under the demo names, an IF folder skeleton, a tiny imagen-pytorch trainer
    checkpoint) and models/text_encoders."""
    root = tmp_path_factory.mktemp("models")
    imagen, text = root / "imagen", root / "text_encoders"
    imagen.mkdir()
    text.mkdir()
    write_tiny_stage(imagen / DEMO_NAMES["base"], "base")
    write_tiny_stage(imagen / DEMO_NAMES["sr"], "sr")
    write_tiny_t5(text / DEMO_NAMES["t5"])
    write_if_folder(imagen / "IF-I-M-v1.0")
    write_tiny_imagen_pytorch(imagen / IMAGEN_PYTORCH_NAME)
    return root


@pytest.fixture()
def model_folders(models_dir, monkeypatch):
    """Point the nodes (outside ComfyUI) at the tiny models folder; hide the bundled demo files."""
    from nodes import comfy_compat, loaders

    before = {kind: comfy_compat.model_folders(kind) for kind in ("imagen", "text_encoders")}
    comfy_compat.set_fallback_folders("imagen", [models_dir / "imagen"])
    comfy_compat.set_fallback_folders("text_encoders", [models_dir / "text_encoders"])
    monkeypatch.setattr(loaders, "bundled_files", lambda: {})
    yield models_dir
    for kind, paths in before.items():
        comfy_compat.set_fallback_folders(kind, paths)
