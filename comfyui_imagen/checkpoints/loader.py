"""`load_stage`: one entry point for every stage format. What a file or folder is comes from the file layer's one
classifier (`comfyui_imagen.files.identify` / `folder_family`), so a wrong file gets "this looks like X: do Y"
instead of a wall of missing keys; which reader reads it, from `FILE_READERS` / `FOLDER_READERS` (one entry per
model family)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import files
from ..stage import Stage
from .deepfloyd import load_diffusers_folder, load_if_file
from .errors import CheckpointError
from .native import is_native, load_native

# load_stage's dtype choices by name ("default" keeps the stored dtype): what the loader node offers
STAGE_DTYPES = {"default": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPUTE_DTYPES = (*STAGE_DTYPES.values(), torch.float64)  # what a U-Net can compute in (float64: parity work)

# The seam of the file side: each stage family's reader, by what `files.identify` / `files.folder_family` call it.
# A new model family adds its reader here (and its key test in `files.families`); nothing else changes.
FILE_READERS: dict[str, Callable[[files.Weights, Optional[torch.dtype]], Stage]] = {
    files.NATIVE.name: load_native, files.DEEPFLOYD.name: load_if_file}
FOLDER_READERS: dict[str, Callable[[Path, Optional[torch.dtype]], Stage]] = {
    files.IF_PIPELINE.name: load_diffusers_folder, files.UNET_FOLDER.name: load_diffusers_folder}


def classify(weights: files.Weights) -> str:
    """The name of the stage family of `weights` (a key of `FILE_READERS`: "native", "deepfloyd"); CheckpointError
    naming the family of anything else."""
    family = files.NATIVE if is_native(weights) else files.identify(weights.keys(), weights.metadata)
    if family is not None and family.name in FILE_READERS:
        return family.name
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
    ``weights_only=True``), its config inferred from tensor shapes (or read from a config.json beside it). dtype:
    cast floating weights to it (one of `COMPUTE_DTYPES`; default: keep the stored dtype, e.g. fp16 stays fp16;
    the node offers `STAGE_DTYPES`). The weights are read into memory (materialised), not mapped. Raises `CheckpointError` (a
    ValueError) naming the file and the fix.
    """
    if dtype not in COMPUTE_DTYPES:
        raise CheckpointError(f"dtype must be one of {[str(d) for d in COMPUTE_DTYPES]} (None keeps the file's); "
                              f"got {dtype!r}")
    p = Path(path).expanduser()
    with files.raised_as(CheckpointError):
        if not p.exists():
            raise CheckpointError(f"{p} does not exist: put the stage file in ComfyUI's models/imagen folder (or give "
                                  "the full path to a DeepFloyd IF model folder)")
        if p.is_dir():
            family = files.folder_family(p)
            if family is not None and family.name not in FOLDER_READERS:
                raise CheckpointError(f"{p} looks like {family.what}: {family.advice}")
            return FOLDER_READERS[family.name if family else files.UNET_FOLDER.name](p, dtype)
        weights = files.open_weights(p)
        return FILE_READERS[classify(weights)](weights, dtype)
