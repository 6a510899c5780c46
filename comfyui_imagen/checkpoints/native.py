"""Our own stage format: one ``.safetensors`` per stage, the `StageConfig` as JSON in the file's metadata.

Tensor names are the U-Net's state-dict keys (diffusers' names, see `comfyui_imagen.unet.model`), so a native file
and a DeepFloyd IF file differ only in where the config comes from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError
from .stage import Stage, StageConfig
from .tensors import Weights, build_on_meta

FORMAT_KEY = "comfyui_imagen.format"
STAGE_KEY = "comfyui_imagen.stage"
FORMAT = "stage-v1"


def is_native(weights: Weights) -> bool:
    return STAGE_KEY in weights.metadata


def save_stage(path: str | os.PathLike, unet: nn.Module, config: StageConfig) -> Path:
    """Write `unet`'s weights and `config` to `path` (``.safetensors``), atomically (a temporary file, then rename:
    a reader of the old file never sees a half-written one). Tensors keep their dtype. Returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix not in (".safetensors", ".sft"):
        raise ValueError(f"save_stage writes safetensors; give a path ending in .safetensors, not {path.name!r}")
    if not isinstance(config, StageConfig):
        raise ValueError(f"save_stage needs a StageConfig, got {type(config).__name__}")
    own = getattr(unet, "config", None)
    if own is not None and own != config.unet:
        raise ValueError("save_stage: the U-Net's own config differs from config.unet; pass the StageConfig it was "
                         "built from (or config.replace(unet=unet.config))")
    state = {k: v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}
    metadata = {"format": "pt", FORMAT_KEY: FORMAT, STAGE_KEY: json.dumps(config.to_dict(), sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_stage_config(weights: Weights) -> StageConfig:
    """The `StageConfig` stored in a native file's metadata (CheckpointError if it is unreadable)."""
    fmt = weights.metadata.get(FORMAT_KEY)
    if fmt != FORMAT:
        raise CheckpointError(f"{weights.path} is a comfyui-imagen stage of format {fmt!r}, which this version does "
                              f"not read (it reads {FORMAT!r}); update the custom node")
    try:
        return StageConfig.from_dict(json.loads(weights.metadata[STAGE_KEY]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{weights.path}: the stage config in its metadata is invalid: {e}") from e


def load_native(weights: Weights, dtype: torch.dtype | None = None) -> Stage:
    from ..unet import ImagenUNet

    config = read_stage_config(weights)
    unet = build_on_meta(lambda: ImagenUNet(config.unet), weights, dtype=dtype)
    return Stage(unet=unet, config=config, source=str(weights.path))
