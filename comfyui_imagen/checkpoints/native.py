"""Our own stage format: one ``.safetensors`` per stage, the `StageConfig` as JSON in the file's metadata.

Tensor names are the U-Net's state-dict keys (diffusers' names, see `comfyui_imagen.unet.model`), so a native file
and a DeepFloyd IF file differ only in where the config comes from.

Metadata (all strings): ``comfyui_imagen.format`` the format version; ``comfyui_imagen.stage`` the `StageConfig` as
JSON; ``comfyui_imagen.train`` (optional) the `TrainConfig` that trained the stage, as JSON. Versions:

    stage-v1   format and stage keys (the files shipped until the Stage redesign; tests/fixtures keeps frozen ones);
               a v1 reader ignores other keys, so the optional train key may stand in a v1 file
    stage-v2   the stage config uses a field a v1 reader refuses: ``sampling`` (the stage's recommended settings)
               or a U-Net option added since (IF-family settings such as other time-embedding forms)

Every version stays readable. A file is written in the oldest version that can read it (`format_for`), so a stage
that needs nothing new still opens in the previous release: readers refuse fields they do not know.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch
from torch import nn

from ..stage import Stage, StageConfig
from .errors import CheckpointError
from .tensors import Weights, build_on_meta

if TYPE_CHECKING:
    from ..train.config import TrainConfig

FORMAT_KEY = "comfyui_imagen.format"
STAGE_KEY = "comfyui_imagen.stage"
TRAIN_KEY = "comfyui_imagen.train"
FORMAT = "stage-v2"  # the newest version, what a file that uses anything added since v1 is written as
READABLE_FORMATS = ("stage-v1", "stage-v2")
# the fields a stage-v1 reader knows (frozen: what the last v1 release's dataclasses had)
V1_STAGE_FIELDS = frozenset({"lowres_resolution", "name", "num_train_timesteps", "prediction_type", "resolution",
                             "role", "schedule", "text_embed_dim", "unet", "variance_type"})
V1_UNET_FIELDS = frozenset({"act", "attention", "channels", "cond_dim", "head_dim", "in_channels", "layers",
                            "lowres_cond", "mid_attention", "mid_scale", "norm_eps", "norm_groups", "out_channels",
                            "pool_heads", "resnet_scale", "text_embed_dim", "text_mask", "time_embed_dim"})


def format_for(config_dict: dict) -> str:
    """The oldest format whose readers read this stage config (`StageConfig.to_dict`)."""
    v1 = set(config_dict) <= V1_STAGE_FIELDS and set(config_dict["unet"]) <= V1_UNET_FIELDS
    return "stage-v1" if v1 else FORMAT


def is_native(weights: Weights) -> bool:
    """A comfyui-imagen stage file: its metadata names our format (or, without it, holds a stage config)."""
    return FORMAT_KEY in weights.metadata or STAGE_KEY in weights.metadata


def check_stage_path(path: Path) -> None:
    """A native stage file is written as ``.safetensors`` (ValueError otherwise): checked before anything runs."""
    if Path(path).suffix not in (".safetensors", ".sft"):
        raise ValueError(f"a native stage file is safetensors; give a path ending in .safetensors, not "
                         f"{Path(path).name!r}")


def save_stage(path: str | os.PathLike, unet: nn.Module, config: StageConfig,
               train_config: TrainConfig | None = None) -> Path:
    """Write `unet`'s weights and `config` to `path` (``.safetensors``), atomically (a temporary file, then rename:
    a reader of the old file never sees a half-written one). Tensors keep their dtype. `train_config`, the
    `comfyui_imagen.train.TrainConfig` that trained the stage, goes into the metadata beside it. Returns the path."""
    from safetensors.torch import save_file

    from ..train.config import TrainConfig

    path = Path(path)
    check_stage_path(path)
    if not isinstance(config, StageConfig):
        raise ValueError(f"save_stage needs a StageConfig, got {type(config).__name__}")
    if train_config is not None and not isinstance(train_config, TrainConfig):
        raise ValueError(f"save_stage: train_config must be a TrainConfig or None, got {type(train_config).__name__}")
    own = getattr(unet, "config", None)
    if own is not None and own != config.unet:
        raise ValueError("save_stage: the U-Net's own config differs from config.unet; pass the StageConfig it was "
                         "built from (or config.replace(unet=unet.config))")
    state = {k: v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}
    stage = config.to_dict()
    metadata = {"format": "pt", FORMAT_KEY: format_for(stage), STAGE_KEY: json.dumps(stage, sort_keys=True)}
    if train_config is not None:
        metadata[TRAIN_KEY] = json.dumps(train_config.to_dict(), sort_keys=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(state, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _check_format(metadata: Mapping[str, str], source) -> None:
    fmt = metadata.get(FORMAT_KEY)
    if fmt not in READABLE_FORMATS:
        raise CheckpointError(f"{source} is a comfyui-imagen stage of format {fmt!r}, which this version does not "
                              f"read (it reads {', '.join(map(repr, READABLE_FORMATS))}); update the custom node")


def stage_config_from_metadata(metadata: Mapping[str, str], source="the file") -> StageConfig:
    """The `StageConfig` in a native file's metadata; CheckpointError naming `source` if it is absent, of a format
    this version does not read, or invalid."""
    _check_format(metadata, source)
    if STAGE_KEY not in metadata:
        raise CheckpointError(f"{source} is a comfyui-imagen stage file, but its stage config is missing from its "
                              f"metadata (key {STAGE_KEY!r}; a tool that rewrote the file may have dropped it): "
                              "export the stage again with comfyui_imagen.checkpoints.save_stage")
    try:
        return StageConfig.from_dict(json.loads(metadata[STAGE_KEY]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: the stage config in its metadata is invalid: {e}") from e


def train_config_from_metadata(metadata: Mapping[str, str], source="the file") -> TrainConfig | None:
    """The `TrainConfig` that trained a native stage, from its metadata; None when the file records none (every
    stage-v1 file). CheckpointError naming `source` if the record is invalid."""
    from ..train.config import TrainConfig

    if TRAIN_KEY not in metadata:
        return None
    _check_format(metadata, source)
    try:
        return TrainConfig.from_dict(json.loads(metadata[TRAIN_KEY]))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: the train config in its metadata is invalid: {e}") from e


def read_stage_config(weights: Weights) -> StageConfig:
    """The `StageConfig` stored in a native file's metadata (CheckpointError if it is missing or unreadable)."""
    return stage_config_from_metadata(weights.metadata, weights.path)


def read_train_config(path: str | os.PathLike) -> TrainConfig | None:
    """The `TrainConfig` stored in stage file `path`, or None (a file without one: stage-v1, one not trained by
    `comfyui_imagen.train`, a DeepFloyd IF file). Reads the header only; CheckpointError for a missing or damaged
    file."""
    from ..files import open_weights, raised_as

    with raised_as(CheckpointError):
        weights = open_weights(Path(path).expanduser())
        return train_config_from_metadata(weights.metadata, weights.path)


def load_native(weights: Weights, dtype: torch.dtype | None = None) -> Stage:
    from ..unet import build_unet

    config = read_stage_config(weights)
    train_config = train_config_from_metadata(weights.metadata, weights.path)
    unet = build_on_meta(lambda: build_unet(config.unet), weights, dtype=dtype)
    return Stage(unet=unet, config=config, source=str(weights.path), train_config=train_config)
