"""`load_stage`: one entry point for every stage format. What a file or folder is comes from the file layer's one
classifier (`comfyui_imagen.files.identify` / `folder_family`), so a wrong file gets "this looks like X: do Y"
instead of a wall of missing keys; which reader reads it, from `FILE_READERS` / `FOLDER_READERS` (one entry per
model family)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import files, layercast
from ..dtypes import DtypePlan, stage_dtypes
from ..stage import Stage
from .deepfloyd import find_unet_folder, find_weight_file, load_diffusers_folder, load_if_file
from .errors import CheckpointError
from .imagen_pytorch import load_imagen_pytorch, split_unet_name
from .native import is_native, load_native
from .tensors import shapes_only

AUTO = "auto"  # load_stage's dtype for "the device's choice" (`comfyui_imagen.dtypes.stage_dtypes`)
# load_stage's dtype choices by name: what the loader node offers. "default" is the device's choice (bf16 for IF's
# fp16 files on a CPU with native bf16, fp32 cast per layer on other CPUs, fp16 on CUDA; fp32 files stay fp32)
STAGE_DTYPES = {"default": AUTO, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
COMPUTE_DTYPES = (None, torch.float32, torch.float16, torch.bfloat16, torch.float64)  # float64: parity work

def _load_imagen_pytorch(weights: files.Weights, dtype: Optional[torch.dtype], *, number: Optional[int] = None,
                         online: bool = False) -> Stage:
    return load_imagen_pytorch(weights.path, dtype, number=number, online=online)


# The seam of the file side: each stage family's reader, by what `files.identify` / `files.folder_family` call it.
# A new model family adds its reader here (and its key test in `files.families`); nothing else changes. A reader
# of files that hold several stages takes ``number`` / ``online`` (the name's "[unet N]", `split_unet_name`).
FILE_READERS: dict[str, Callable[..., Stage]] = {
    files.NATIVE.name: load_native, files.DEEPFLOYD.name: load_if_file,
    files.IMAGEN_PYTORCH.name: _load_imagen_pytorch}
MULTI_STAGE_READERS = frozenset({files.IMAGEN_PYTORCH.name})
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


def load_stage(path: str | os.PathLike, dtype: torch.dtype | str | None = None, *,
               device: str | torch.device = "cpu") -> Stage:
    """Load a cascade stage from any supported source, on the CPU, in eval mode, without gradients.

    path: a comfyui-imagen ``.safetensors`` stage (config in its metadata); a DeepFloyd IF diffusers folder (the model
    root or its ``unet/``); a lone IF U-Net file (``.safetensors``, or a ``.bin``/``.pt`` pickle read with
    ``weights_only=True``), its config inferred from tensor shapes (or read from a config.json beside it); or an
    imagen-pytorch checkpoint, one U-Net of it named ``"file.pt [unet N]"`` (``[unet N, online]``: its trained
    rather than its EMA weights; `comfyui_imagen.checkpoints.imagen_pytorch`). dtype:
    None keeps the stored dtype (fp16 stays fp16); one of `COMPUTE_DTYPES` casts the floating weights to it;
    ``"auto"`` (`AUTO`) is the choice for running on ``device`` (`stage_plan`: bf16 for fp16 files on a CPU with
    native bf16, fp32 compute with the weights kept as stored and cast per layer on other CPUs, fp16 on CUDA; fp32
    files stay fp32). The node offers `STAGE_DTYPES`. The weights are read into memory (materialised), not mapped.
    Raises `CheckpointError` (a ValueError) naming the file and the fix.
    """
    if dtype != AUTO and dtype not in COMPUTE_DTYPES:
        raise CheckpointError(f"dtype must be one of {[str(d) for d in COMPUTE_DTYPES]} (None keeps the file's) or "
                              f"{AUTO!r} (the device's choice); got {dtype!r}")
    p, number, online = _split(path)
    with files.raised_as(CheckpointError):
        if not p.exists():
            raise CheckpointError(f"{p} does not exist: put the stage file in ComfyUI's models/imagen folder (or give "
                                  "the full path to a DeepFloyd IF model folder)")
        plan = stage_plan(p, device) if dtype == AUTO else None
        storage = plan.storage if plan else dtype
        if p.is_dir():
            family = files.folder_family(p)
            if family is not None and family.name not in FOLDER_READERS:
                raise CheckpointError(f"{p} looks like {family.what}: {family.advice}")
            stage = FOLDER_READERS[family.name if family else files.UNET_FOLDER.name](p, storage)
        else:
            weights = files.open_weights(p)
            family = classify(weights)
            if family in MULTI_STAGE_READERS:
                stage = FILE_READERS[family](weights, storage, number=number, online=online)
            elif number is not None:
                raise CheckpointError(f"{p} holds one stage: '[unet {number}]' names one U-Net of an imagen-pytorch "
                                      f"checkpoint; load {p.name} without it")
            else:
                stage = FILE_READERS[family](weights, storage)
    if plan is not None and plan.cast_per_layer:
        # the U-Net computes in its input convolution's dtype: that (small) layer is converted, the rest cast per call
        layercast.cast_per_layer(stage.unet, plan.compute, resident=[input_layer(stage.unet)])
    return stage


def _split(path: str | os.PathLike) -> tuple[Path, Optional[int], bool]:
    """(file, U-Net number, online) of a stage name: a path, or an imagen-pytorch file's ``"path [unet N]"``."""
    p = Path(path).expanduser()
    if p.exists():
        return p, None, False
    name, number, online = split_unet_name(str(path))
    return Path(name).expanduser(), number, online


def input_layer(unet: torch.nn.Module) -> torch.nn.Module:
    """The U-Net's first layer, whose weights' dtype is the dtype it computes in (each family names its own)."""
    return unet.conv_in if hasattr(unet, "conv_in") else unet.init_conv


def peek_stage(path: str | os.PathLike) -> Stage:
    """What `load_stage` would load, without its weights: the config (and recommended settings) from the file's
    metadata or config.json, keys and shapes checked against the file's header, the U-Net on the meta device (no
    memory). For listing and describing a stage before it is needed (the loader node loads it when it samples)."""
    with shapes_only():
        return load_stage(path)


def stored_dtype(path: str | os.PathLike) -> torch.dtype:
    """The floating dtype a stage is stored in (most of its bytes), from the file's header alone. For a diffusers
    folder, the weights `load_stage` reads for a half-precision load (the ``.fp16`` variant when it is there)."""
    p = _split(path)[0]
    if p.is_dir():
        unet_dir, _ = find_unet_folder(p)
        p = find_weight_file(unet_dir, torch.float16)
    return files.open_weights(p).storage_dtype()


def stage_plan(path: str | os.PathLike, device: str | torch.device = "cpu") -> DtypePlan:
    """The storage and compute dtypes ``load_stage(path, "auto", device=device)`` uses (`dtypes.stage_dtypes`)."""
    with files.raised_as(CheckpointError):
        return stage_dtypes(stored_dtype(path), device)


def loaded_plan(stage: Stage) -> DtypePlan:
    """How a loaded stage holds and runs its weights: the dtype of most of its bytes, and the dtype it computes in
    (its input convolution's)."""
    sizes: dict[torch.dtype, int] = {}
    for param in stage.unet.parameters():
        sizes[param.dtype] = sizes.get(param.dtype, 0) + param.numel() * param.element_size()
    return DtypePlan(max(sizes, key=sizes.get), next(input_layer(stage.unet).parameters()).dtype)
