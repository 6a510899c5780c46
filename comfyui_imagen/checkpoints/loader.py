"""`load_stage`: one entry point for every stage format, and the family check that turns a wrong file into a
clear error instead of a wall of missing keys."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from .deepfloyd import IF_PROBE_KEYS, load_diffusers_folder, load_if_file
from .errors import CheckpointError
from .native import is_native, load_native
from .stage import Stage
from .tensors import Weights, open_weights

# (test on the key set, what the file is, what to do instead); first match wins
_FOREIGN = (
    (lambda ks: any(k.startswith("unets.") for k in ks) or {"init_conv.weight", "final_conv.weight"} <= ks
     or any(k.startswith(("downs.0.", "init_resnet_block.")) for k in ks),
     "an imagen-pytorch checkpoint", "imagen-pytorch checkpoints are not yet supported; export the stage's U-Net "
     "to DeepFloyd IF's diffusers layout or retrain it with `python -m comfyui_imagen.train`"),
    (lambda ks: "encoder_pooling.1.q_proj.weight" in ks or {"input_blocks.0.0.weight", "encoder_proj.weight"} <= ks,
     "a DeepFloyd IF U-Net in the original deepfloyd_if layout", "use the diffusers layout from the Hugging Face "
     "repo instead (unet/config.json + unet/diffusion_pytorch_model[.fp16].safetensors)"),
    (lambda ks: any(k.startswith(("model.diffusion_model.", "first_stage_model.")) for k in ks)
     or any(".transformer_blocks." in k for k in ks) or any(k.startswith("input_blocks.") for k in ks),
     "a Stable Diffusion-family U-Net or checkpoint", "load it with ComfyUI's own checkpoint loaders; the Imagen "
     "stage loader takes DeepFloyd IF stage I/II or comfyui-imagen stage files"),
    (lambda ks: any(k.startswith(("encoder.block.", "shared.", "encoder.final_layer_norm")) for k in ks),
     "a T5 text encoder", "load it with the Imagen T5 loader (comfyui_imagen.text.load_t5), not as a stage"),
    (lambda ks: any(k.startswith(("text_model.", "vision_model.")) for k in ks),
     "a CLIP model", "it is not a diffusion stage"),
    (lambda ks: any(k.startswith(("encoder.down.", "decoder.up.", "quant_conv.")) for k in ks),
     "a VAE", "Imagen works in pixel space and takes no VAE"),
)


def classify(weights: Weights) -> str:
    """"native" or "deepfloyd"; CheckpointError naming the family of anything else."""
    if is_native(weights):
        return "native"
    keys = set(weights.keys())
    if all(k in keys for k in IF_PROBE_KEYS):
        return "deepfloyd"
    for test, what, advice in _FOREIGN:
        if test(keys):
            raise CheckpointError(f"{weights.path} looks like {what}: {advice}")
    sample = sorted(keys)[:6]
    raise CheckpointError(f"{weights.path} is not an Imagen / DeepFloyd IF stage: expected a comfyui-imagen stage "
                          f"file or IF U-Net weights in diffusers layout (keys like {IF_PROBE_KEYS[:3]}), found keys "
                          f"like {sample}")


def load_stage(path: str | os.PathLike, dtype: torch.dtype | None = None) -> Stage:
    """Load a cascade stage from any supported source, on the CPU, in eval mode, without gradients.

    path: a comfyui-imagen ``.safetensors`` stage (config in its metadata); a DeepFloyd IF diffusers folder (the model
    root or its ``unet/``); or a lone IF U-Net file (``.safetensors``, or a ``.bin``/``.pt`` pickle read with
    ``weights_only=True``), its config inferred from tensor shapes. dtype: cast floating weights to it (default: keep
    the stored dtype, e.g. fp16 stays fp16). Raises `CheckpointError` (a ValueError) naming the file and the fix.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p} does not exist: put the stage file in ComfyUI's models/imagen folder (or give "
                              "the full path to a DeepFloyd IF model folder)")
    if p.is_dir():
        return load_diffusers_folder(p, dtype)
    weights = open_weights(p)
    if classify(weights) == "native":
        return load_native(weights, dtype)
    return load_if_file(weights, dtype)
