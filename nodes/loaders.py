"""Loader nodes: a T5 text encoder (``IMAGEN_T5``) and one cascade stage (``IMAGEN_MODEL``), adapters only.

The folders are ComfyUI's (`comfy_compat.model_folders`: ``models/text_encoders`` and ``models/clip`` for T5 files,
ComfyUI-GGUF's T5 GGUFs living in either; ``models/imagen`` for stages, DeepFloyd IF folders and their
``text_encoder/``); listing and resolving names is `comfyui_imagen.files`, loading is `load_t5` / `load_stage`. The
bundled demo files are listed under their own names when they exist.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from comfyui_imagen import files
from comfyui_imagen.checkpoints import STAGE_DTYPES
from comfyui_imagen.demo import present_files as bundled_files
from comfyui_imagen.text import T5_DTYPES

from . import comfy_compat as cc
from .declare import node

log = logging.getLogger(__name__)
CATEGORY = "imagen/loaders"


def _folders(*kinds: str) -> list[str]:
    """The folders of ``kinds``, each once (newer ComfyUI answers "clip" with the text_encoders folders)."""
    return list(dict.fromkeys(root for kind in kinds for root in cc.model_folders(kind)))


def _bundled(*roles: str) -> list[Path]:
    return [path for role, path in bundled_files().items() if role in roles]


def list_stages() -> list[str]:
    return files.list_stages(_folders(cc.IMAGEN_FOLDER), _bundled("base", "sr"))


def list_t5() -> list[str]:
    return files.list_t5(_folders(cc.TEXT_ENCODER_FOLDER, cc.CLIP_FOLDER), _folders(cc.IMAGEN_FOLDER), _bundled("t5"))


def resolve(name: str, kinds: tuple[str, ...], bundled_roles: tuple[str, ...]) -> Path:
    """The path of a listed name: searched in the folders of ``kinds``, then among the bundled files."""
    return files.resolve(name, _folders(*kinds), _bundled(*bundled_roles))


class ImagenModel:
    """The ``IMAGEN_MODEL`` socket: a loaded stage under ComfyUI's model management."""

    def __init__(self, stage: Any, name: str):
        self.stage, self.name = stage, name
        self.managed = cc.ManagedModel(stage.unet)

    def load(self):
        """The stage with its U-Net on the device it runs on (loaded by ComfyUI's model management)."""
        self.managed.load()
        return self.stage


class ImagenT5:
    """The ``IMAGEN_T5`` socket: a T5TextEncoder under ComfyUI's model management (text-encoder devices)."""

    def __init__(self, encoder: Any, name: str):
        self.encoder, self.name = encoder, name
        self.managed = cc.ManagedModel(encoder.model, text_encoder=True)

    def encode(self, prompts: list[str], max_length: int):
        self.managed.load()
        return self.encoder.encode(prompts, max_length=max_length)


@node("Imagen T5 Loader (text encoder)", CATEGORY,
      "Loads a frozen T5 encoder: a t5xxl file from models/text_encoders (fp16, bf16, fp8, scaled fp8) or a GGUF T5 "
      "from models/text_encoders or models/clip (Q8_0, Q6_K, Q5_K, Q4_K ..., kept quantized), a Hugging Face T5 "
      "folder under models/imagen (e.g. IF-I-XL-v1.0/text_encoder) or the bundled demo T5. The tokenizer is found "
      "automatically.",
      "load", (("IMAGEN_T5", "t5", "The T5 text encoder; connect it to Imagen Text Encode."),))
class ImagenT5Loader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "t5_name": (list_t5(), {"tooltip": "The T5 file or folder. DeepFloyd IF models need T5 v1.1 XXL "
                                               "(e.g. t5xxl_fp16.safetensors); the demo models need the bundled "
                                               "imagen-demo-t5.safetensors."}),
            "dtype": (list(T5_DTYPES), {"default": "default",
                                        "tooltip": "Weight storage type; 'default' keeps the file's (an fp8 file "
                                                   "stays fp8 and is upcast layer by layer)."}),
        }}

    def load(self, t5_name: str, dtype: str = "default"):
        from comfyui_imagen.text import load_t5

        path = resolve(t5_name, (cc.TEXT_ENCODER_FOLDER, cc.CLIP_FOLDER, cc.IMAGEN_FOLDER), ("t5",))
        encoder = load_t5(path, dtype=T5_DTYPES[dtype], fallback_tokenizer=cc.comfy_t5_tokenizer_dir())
        log.info("Imagen: loaded T5 %s (%s)", t5_name, encoder)
        return (ImagenT5(encoder, t5_name),)


@node("Imagen Model Loader (stage)", CATEGORY,
      "Loads one stage of a cascade from models/imagen: a base stage (64 px from text) or a super-resolution stage "
      "(64 -> 256, 256 -> 1024). Reads comfyui-imagen stage files and DeepFloyd IF stage I/II U-Nets (a diffusers "
      "folder such as IF-I-XL-v1.0, or a lone U-Net file). The info output states the role and sizes.",
      "load", (("IMAGEN_MODEL", "model", "The stage; base stages go to Imagen Base Sampler, SR stages to Imagen "
                                          "Super-Resolution."),
               ("STRING", "info", "What was loaded: role, resolutions, prediction type, T5 width, size."),
               ("INT", "resolution", "The stage's output resolution in pixels.")))
class ImagenModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (list_stages(), {"tooltip": "A stage file or DeepFloyd IF folder in models/imagen, or a "
                                                      "bundled demo stage."}),
            "dtype": (list(STAGE_DTYPES), {"default": "default",
                                           "tooltip": "Weight type; 'default' keeps the file's. fp16/bf16 halve the "
                                                      "memory on a GPU."}),
        }}

    def load(self, model_name: str, dtype: str = "default"):
        from comfyui_imagen.checkpoints import load_stage

        path = resolve(model_name, (cc.IMAGEN_FOLDER,), ("base", "sr"))
        stage = load_stage(path, dtype=STAGE_DTYPES[dtype])  # on the CPU, eval mode, no gradients
        model, info = ImagenModel(stage, model_name), stage.describe(model_name)
        log.info("Imagen: %s", info)
        return model, info, int(stage.config.resolution)
