"""Loader nodes: a T5 text encoder (``IMAGEN_T5``) and one cascade stage (``IMAGEN_MODEL``).

Where files are found:
* T5: ``models/text_encoders`` (the t5xxl files ComfyUI users already have for Flux and SD3), Hugging Face T5 folders
  under ``models/imagen`` (e.g. DeepFloyd IF's ``IF-I-XL-v1.0/text_encoder``), and the bundled demo T5.
* Stages: ``models/imagen`` (native files, DeepFloyd IF diffusers folders such as ``IF-I-M-v1.0``, lone
  files) plus any ``imagen:`` paths of ``extra_model_paths.yaml``, and the bundled demo stages.
Bundled files (``comfyui_imagen/demo/``) are listed under their own names when they exist; a user file of the
same name wins.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import comfy_compat as cc

log = logging.getLogger(__name__)

DTYPES = {"default": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
T5_DTYPES = {**DTYPES, "fp8_e4m3fn": torch.float8_e4m3fn}
IF_PIPELINE_FILE = "model_index.json"


# ------------------------------------------------------------------------------------------------ listing
@dataclass(frozen=True)
class Found:
    """Names offered by the loaders: stage entries and T5 entries (relative to their folder)."""

    stages: tuple[str, ...]
    t5: tuple[str, ...]


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _folder_kind(path: str, files: list[str]) -> str | None:
    """"pipeline" (an IF diffusers folder), "unet" (a diffusers U-Net folder), "t5" (a HF T5 folder) or None."""
    if IF_PIPELINE_FILE in files:
        return "pipeline"
    if "config.json" not in files:
        return None
    config = _read_json(os.path.join(path, "config.json"))
    if config.get("_class_name") == "UNet2DConditionModel":
        return "unet"
    if config.get("model_type") in ("t5", "umt5") or any("T5" in a for a in config.get("architectures", [])):
        return "t5"
    return None


def scan_imagen_folder(root: str) -> Found:
    """Stage entries (files, IF pipeline and U-Net folders) and T5 folders under one ``models/imagen`` folder."""
    stages, t5 = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        kind = _folder_kind(dirpath, filenames) if rel != "." else None
        if kind in ("pipeline", "unet"):
            stages.append(rel)
            text_encoder = os.path.join(dirpath, "text_encoder")
            if kind == "pipeline" and os.path.isfile(os.path.join(text_encoder, "config.json")):
                t5.append(rel + "/text_encoder")
            dirnames[:] = []
            continue
        if kind == "t5":
            t5.append(rel)
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            if os.path.splitext(name)[1].lower() in cc.MODEL_EXTENSIONS:
                stages.append(name if rel == "." else f"{rel}/{name}")
    return Found(tuple(stages), tuple(t5))


def bundled_files() -> dict[str, Path]:
    """The bundled demo cascade's files that exist, by role ("t5", "base", "sr")."""
    from comfyui_imagen import demo

    return {role: path for role, path in demo.FILES.items() if path.is_file()}


def _unique(names) -> list[str]:
    return list(dict.fromkeys(names))


def list_stages() -> list[str]:
    found = [scan_imagen_folder(root) for root in cc.model_folders(cc.IMAGEN_FOLDER) if os.path.isdir(root)]
    bundled = [p.name for role, p in bundled_files().items() if role != "t5"]
    return _unique([name for f in found for name in f.stages] + bundled)


def list_t5() -> list[str]:
    files = []
    for root in cc.model_folders(cc.TEXT_ENCODER_FOLDER):
        if os.path.isdir(root):
            files += [n for n in _walk_files(root) if os.path.splitext(n)[1].lower() in cc.MODEL_EXTENSIONS]
    folders = [n for root in cc.model_folders(cc.IMAGEN_FOLDER) if os.path.isdir(root)
               for n in scan_imagen_folder(root).t5]
    bundled = [p.name for role, p in bundled_files().items() if role == "t5"]
    return _unique(sorted(files) + folders + bundled)


def _walk_files(root: str) -> list[str]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        out += [n if rel == "." else os.path.join(rel, n).replace(os.sep, "/") for n in sorted(filenames)]
    return out


def resolve(name: str, kinds: tuple[str, ...], bundled_roles: tuple[str, ...]) -> Path:
    """The path of a listed name: searched in the folders of ``kinds``, then among the bundled files."""
    if not name or ".." in Path(name).parts or os.path.isabs(name):
        raise ValueError(f"invalid model name {name!r}; pick one from the list")
    searched = []
    for kind in kinds:
        for root in cc.model_folders(kind):
            path = Path(root) / name
            searched.append(root)
            if path.exists():
                return path
    for role, path in bundled_files().items():
        if role in bundled_roles and path.name == name:
            return path
    where = ", ".join(searched) or "no folder (ComfyUI's models/imagen is registered when the nodes load)"
    raise ValueError(f"{name!r} was not found (searched: {where}). Put stage files and DeepFloyd IF folders (e.g. "
                     f"IF-I-M-v1.0/, IF-II-M-v1.0/) in ComfyUI/models/imagen/ and T5 files (e.g. "
                     f"t5xxl_fp16.safetensors) in ComfyUI/models/text_encoders/, then press R to refresh the lists")


# ------------------------------------------------------------------------------------------------ socket values
class ImagenModel:
    """The ``IMAGEN_MODEL`` socket: a loaded stage under ComfyUI's model management."""

    def __init__(self, stage: Any, name: str):
        self.stage, self.name = stage, name
        self.managed = cc.ManagedModel(stage.unet)

    def load(self):
        """The stage with its U-Net on the device it runs on (loaded by ComfyUI's model management)."""
        self.managed.load()
        return self.stage

    def describe(self) -> str:
        c = self.stage.config
        size = (f"{c.resolution} px from text" if c.role == "base"
                else f"{c.lowres_resolution} -> {c.resolution} px super-resolution")
        return (f"{self.name}: {c.role} stage, {size}, {c.prediction_type}, T5 width {c.text_embed_dim}, "
                f"{sum(p.numel() for p in self.stage.unet.parameters()) / 1e6:.1f} M parameters")


class ImagenT5:
    """The ``IMAGEN_T5`` socket: a T5TextEncoder under ComfyUI's model management (text-encoder devices)."""

    def __init__(self, encoder: Any, name: str):
        self.encoder, self.name = encoder, name
        self.managed = cc.ManagedModel(encoder.model, text_encoder=True)

    def encode(self, prompts: list[str], max_length: int):
        self.managed.load()
        return self.encoder.encode(prompts, max_length=max_length)


# ------------------------------------------------------------------------------------------------ tokenizer choice
def _is_byte_level(path: Path) -> bool:
    """Whether a T5 checkpoint has a byte-sized vocabulary (read from the tensor shapes, no weights loaded)."""
    from comfyui_imagen.text.encoder import BYTE_VOCAB_LIMIT
    from comfyui_imagen.text.weights import open_source

    source = open_source(path)
    rows = [source.shape(k)[0] for k in source.keys() if k.endswith(("shared.weight", "embed_tokens.weight"))]
    return bool(rows) and min(rows) <= BYTE_VOCAB_LIMIT


def choose_tokenizer(path: Path):
    """None when the model brings its own tokenizer folder or is byte-level (load_t5 then finds or picks it);
    otherwise ComfyUI's bundled T5 tokenizer, which every standard T5 v1.1 (t5xxl files, IF's encoder) shares."""
    from comfyui_imagen.text import find_tokenizer

    if find_tokenizer(path) is not None or _is_byte_level(path):
        return None
    comfy_dir = cc.comfy_t5_tokenizer_dir()
    if comfy_dir is None:
        raise ValueError(f"no tokenizer for {path.name}: put a T5 tokenizer folder named "
                         f"'{path.name.split('.')[0]}_tokenizer' (tokenizer.json ...) beside it; inside ComfyUI the "
                         f"bundled comfy/text_encoders/t5_tokenizer is used automatically")
    return comfy_dir


# ------------------------------------------------------------------------------------------------ nodes
class ImagenT5Loader:
    DISPLAY_NAME = "Imagen T5 Loader (text encoder)"
    CATEGORY = "imagen/loaders"
    DESCRIPTION = ("Loads a frozen T5 encoder: a t5xxl file from models/text_encoders (fp16, bf16, fp8, scaled fp8), "
                   "a Hugging Face T5 folder under models/imagen (e.g. IF-I-XL-v1.0/text_encoder) or the bundled "
                   "demo T5. The tokenizer is found automatically.")
    RETURN_TYPES = ("IMAGEN_T5",)
    RETURN_NAMES = ("t5",)
    OUTPUT_TOOLTIPS = ("The T5 text encoder; connect it to Imagen Text Encode.",)
    FUNCTION = "load"

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

        path = resolve(t5_name, (cc.TEXT_ENCODER_FOLDER, cc.IMAGEN_FOLDER), ("t5",))
        encoder = load_t5(path, dtype=T5_DTYPES[dtype], tokenizer=choose_tokenizer(path))
        log.info("Imagen: loaded T5 %s (%s)", t5_name, encoder)
        return (ImagenT5(encoder, t5_name),)


class ImagenModelLoader:
    DISPLAY_NAME = "Imagen Model Loader (stage)"
    CATEGORY = "imagen/loaders"
    DESCRIPTION = ("Loads one stage of a cascade from models/imagen: a base stage (64 px from text) or a "
                   "super-resolution stage (64 -> 256, 256 -> 1024). Reads native files, DeepFloyd IF folders "
                   "(diffusers layout) and imagen-pytorch checkpoints. The info output states the role and sizes.")
    RETURN_TYPES = ("IMAGEN_MODEL", "STRING", "INT")
    RETURN_NAMES = ("model", "info", "resolution")
    OUTPUT_TOOLTIPS = ("The stage; base stages go to Imagen Base Sampler, SR stages to Imagen Super-Resolution.",
                       "What was loaded: role, resolutions, prediction type, T5 width, size.",
                       "The stage's output resolution in pixels.")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (list_stages(), {"tooltip": "A stage file or DeepFloyd IF folder in models/imagen, or a "
                                                      "bundled demo stage."}),
            "dtype": (list(DTYPES), {"default": "default",
                                     "tooltip": "Weight type; 'default' keeps the file's. fp16/bf16 halve the "
                                                "memory on a GPU."}),
        }}

    def load(self, model_name: str, dtype: str = "default"):
        from comfyui_imagen.checkpoints import load_stage

        path = resolve(model_name, (cc.IMAGEN_FOLDER,), ("base", "sr"))
        stage = load_stage(path, dtype=DTYPES[dtype])
        stage.unet.eval().requires_grad_(False)
        model = ImagenModel(stage, model_name)
        info = model.describe()
        log.info("Imagen: %s", info)
        return model, info, int(stage.config.resolution)
