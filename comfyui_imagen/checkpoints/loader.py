"""`load_stage`: one entry point for every stage format. What a file or folder is comes from the file layer's one
classifier (`comfyui_imagen.files.identify` / `folder_family`), so a wrong file gets "this looks like X: do Y"
instead of a wall of missing keys."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .. import files
from .deepfloyd import load_diffusers_folder, load_if_file
from .errors import CheckpointError
from .native import is_native, load_native
from ..stage import Stage

# load_stage's dtype choices by name ("default" keeps the stored dtype): what the loader node offers
STAGE_DTYPES = {"default": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def classify(weights: files.Weights) -> str:
    """"native" or "deepfloyd"; CheckpointError naming the family of anything else."""
    family = files.identify(weights.keys(), weights.metadata)
    if family is files.NATIVE or is_native(weights):
        return "native"
    if family is files.DEEPFLOYD:
        return "deepfloyd"
    if family is not None:
        raise CheckpointError(f"{weights.path} looks like {family.what}: {family.advice}")
    sample = sorted(weights.keys())[:6]
    raise CheckpointError(f"{weights.path} is not an Imagen / DeepFloyd IF stage: expected a comfyui-imagen stage "
                          f"file or IF U-Net weights in diffusers layout (keys like {list(files.IF_PROBE_KEYS[:3])}), "
                          f"found keys like {sample}")


def load_stage(path: str | os.PathLike, dtype: torch.dtype | None = None) -> Stage:
    """Load a cascade stage from any supported source, on the CPU, in eval mode, without gradients.

    path: a comfyui-imagen ``.safetensors`` stage (config in its metadata); a DeepFloyd IF diffusers folder (the model
    root or its ``unet/``); or a lone IF U-Net file (``.safetensors``, or a ``.bin``/``.pt`` pickle read with
    ``weights_only=True``), its config inferred from tensor shapes. dtype: cast floating weights to it (one of
    `STAGE_DTYPES`; default: keep the stored dtype, e.g. fp16 stays fp16). The weights are read into memory
    (materialised), not mapped. Raises `CheckpointError` (a ValueError) naming the file and the fix.
    """
    if dtype not in STAGE_DTYPES.values():
        raise CheckpointError(f"dtype must be one of {[str(d) for d in STAGE_DTYPES.values()]}, got {dtype!r}")
    p = Path(path).expanduser()
    with files.raised_as(CheckpointError):
        if not p.exists():
            raise CheckpointError(f"{p} does not exist: put the stage file in ComfyUI's models/imagen folder (or give "
                                  "the full path to a DeepFloyd IF model folder)")
        if p.is_dir():
            family = files.folder_family(p)
            if family is files.T5_FOLDER:
                raise CheckpointError(f"{p} looks like {family.what}: {family.advice}")
            return load_diffusers_folder(p, dtype)
        weights = files.open_weights(p)
        if classify(weights) == "native":
            return load_native(weights, dtype)
        return load_if_file(weights, dtype)
