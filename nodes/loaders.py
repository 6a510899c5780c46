"""Loader nodes: a T5 text encoder (``IMAGEN_T5``) and one cascade stage (``IMAGEN_MODEL``), adapters only.

The folders are ComfyUI's (`comfy_compat.model_folders`: ``models/text_encoders`` and ``models/clip`` for T5 files,
ComfyUI-GGUF's T5 GGUFs living in either; ``models/imagen`` for stages, DeepFloyd IF folders and their
``text_encoder/``); listing and resolving names is `comfyui_imagen.files`, loading is `load_t5` / `load_stage`. The
bundled demo files are listed under their own names when they exist.
"""
from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from typing import Any, Callable

from comfyui_imagen import files
from comfyui_imagen.checkpoints import STAGE_DTYPES
from comfyui_imagen.demo import present_files as bundled_files
from comfyui_imagen.memory import release_memory
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


def missing_model(name, kinds: tuple[str, ...], bundled_roles: tuple[str, ...], node_title: str) -> bool | str:
    """True when ``name`` resolves, else the message ComfyUI shows for the node (`VALIDATE_INPUTS`): which file
    is missing and which folder it goes in. Declaring this check makes ComfyUI skip its own "Value not in list",
    which would hide that advice, and lets names earlier versions listed keep resolving."""
    try:
        resolve(name, kinds, bundled_roles)
    except ValueError as e:
        return f"{node_title}: {e}"
    return True


T5_KINDS = (cc.TEXT_ENCODER_FOLDER, cc.CLIP_FOLDER, cc.IMAGEN_FOLDER)


# Loaded models hold memory one at a time (issue #13). Node outputs stay cached in ComfyUI, and on a CPU its model
# management frees nothing when it unloads (the offload device is the CPU too), so the sockets release their own
# weights: before one of them loads, every other that is loaded and not kept lets go (`_make_room`); the next use
# loads it again (a T5 maps its file again: cheap; its EmbeddingCache survives, so repeated prompts cost nothing).
# One lock for loading, encoding and releasing: a T5 is never released mid-encode, two loads never overlap.
_LOCK = threading.RLock()
_LOADED: "weakref.WeakSet[_Held]" = weakref.WeakSet()
KEEP_TIP = ("Keep the weights in memory between runs. Off (default): released when another Imagen model loads, so "
            "the T5 and the stages take turns (peak memory: the largest of them, not their sum) and are reloaded "
            "when next needed. On: faster reruns, if the memory holds them all.")


class _Held:
    """A model the socket loads on first use and releases when another needs the memory, unless ``keep``."""

    def __init__(self, load: Callable[[], Any], name: str, keep: bool):
        self._load, self.name, self.keep = load, name, keep
        self._value = self._managed = None

    @property
    def loaded(self) -> bool:
        return self._value is not None

    @property
    def managed(self):
        """The `comfy_compat.ManagedModel` of the loaded weights (loaded now if they are not)."""
        with _LOCK:
            self._get()
            return self._managed

    def _get(self):
        with _LOCK:
            if self._value is None:
                _make_room(self)
                self._set(self._load())
            return self._value

    def _set(self, value) -> None:
        self._managed, self._value = self._manage(value), value
        _LOADED.add(self)

    def _manage(self, value):
        raise NotImplementedError

    def release(self) -> None:
        """Drop the weights (the next use loads them again)."""
        with _LOCK:
            if self._value is None:
                return
            self._value = self._managed = None
            _LOADED.discard(self)
            release_memory()
            log.info("Imagen: released %s", self.name)


def _make_room(coming: _Held) -> None:
    """Release every loaded model other than ``coming`` that is not kept."""
    with _LOCK:
        for held in [h for h in _LOADED if h is not coming and not h.keep]:
            held.release()


class ImagenModel(_Held):
    """The ``IMAGEN_MODEL`` socket: a stage under ComfyUI's model management, its weights read when a sampler first
    needs them (``stage`` / `load`); until then ``config_stage`` (the U-Net on the meta device) says what it is."""

    def __init__(self, load: Callable[[], Any], name: str, *, keep: bool = False, config_stage: Any = None):
        super().__init__(load, name, keep)
        self.config_stage = config_stage

    @property
    def stage(self):
        """The loaded stage (loaded now if it is not)."""
        return self._get()

    def _manage(self, stage):
        return cc.ManagedModel(stage.unet)

    def load(self):
        """The stage with its U-Net on the device it runs on (loaded by ComfyUI's model management)."""
        with _LOCK:
            stage, managed = self._get(), self._managed
        managed.load()
        return stage


class ImagenT5(_Held):
    """The ``IMAGEN_T5`` socket: a T5TextEncoder under ComfyUI's model management (text-encoder devices), released
    when a stage loads unless kept; its `EmbeddingCache` (``cache``) outlives the reloads."""

    def __init__(self, load: Callable[..., Any], name: str, *, keep: bool = False, encoder: Any = None):
        from comfyui_imagen.text import EmbeddingCache

        self.cache = encoder.cache if encoder is not None else EmbeddingCache()
        super().__init__(lambda: load(cache=self.cache), name, keep)
        if encoder is not None:
            with _LOCK:
                _make_room(self)
                self._set(encoder)

    @property
    def encoder(self):
        """The loaded T5TextEncoder (loaded now if it is not)."""
        return self._get()

    def _manage(self, encoder):
        return cc.ManagedModel(encoder.model, text_encoder=True)

    def encode(self, prompts: list[str], max_length: int):
        with _LOCK:
            encoder = self._get()
            self._managed.load()
            return encoder.encode(prompts, max_length=max_length)

    def encode_for_guidance(self, prompt: str, negative_prompt: str, max_length: int, **options):
        """The encoder's `encode_for_guidance` under the lock: never released mid-encode."""
        with _LOCK:
            encoder = self._get()
            self._managed.load()
            return encoder.encode_for_guidance(prompt, negative_prompt, max_length, **options)


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
        }, "optional": {
            "keep_loaded": ("BOOLEAN", {"default": False, "tooltip": KEEP_TIP}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, t5_name):
        return missing_model(t5_name, T5_KINDS, ("t5",), "Imagen T5 Loader")

    def load(self, t5_name: str, dtype: str = "default", keep_loaded: bool = False):
        from comfyui_imagen.text import load_t5

        path = resolve(t5_name, T5_KINDS, ("t5",))
        tokenizer = cc.comfy_t5_tokenizer_dir()

        def load(cache=None):
            return load_t5(path, dtype=T5_DTYPES[dtype], fallback_tokenizer=tokenizer, cache=cache)

        with _LOCK:
            _make_room(None)  # the first load happens here, so that a bad file shows on this node
            encoder = load()
        log.info("Imagen: loaded T5 %s (%s)", t5_name, encoder)
        return (ImagenT5(load, t5_name, keep=keep_loaded, encoder=encoder),)


@node("Imagen Model Loader (stage)", CATEGORY,
      "Loads one stage of a cascade from models/imagen: a base stage (64 px from text) or a super-resolution stage "
      "(64 -> 256, 256 -> 1024). Reads comfyui-imagen stage files, DeepFloyd IF stage I/II U-Nets (a diffusers "
      "folder such as IF-I-XL-v1.0, or a lone U-Net file) and imagen-pytorch checkpoints, one U-Net each ('imagen.pt "
      "[unet 1]'). The info output states the role and sizes.",
      "load", (("IMAGEN_MODEL", "model", "The stage; base stages go to Imagen Base Sampler, SR stages to Imagen "
                                          "Super-Resolution."),
               ("STRING", "info", "What was loaded: role, resolutions, prediction type, T5 width, size."),
               ("INT", "resolution", "The stage's output resolution in pixels.")))
class ImagenModelLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (list_stages(), {"tooltip": "A stage file or DeepFloyd IF folder in models/imagen, one "
                                                      "U-Net of an imagen-pytorch checkpoint ('file.pt [unet 2]'), "
                                                      "or a bundled demo stage."}),
            "dtype": (list(STAGE_DTYPES), {"default": "default",
                                           "tooltip": "Weight type. 'default': the device's choice: fp32 files stay "
                                                      "fp32; fp16 files (DeepFloyd IF) run in fp16 on a GPU, in bf16 "
                                                      "on a CPU with native bf16, else in fp32 with the weights kept "
                                                      "in fp16 and cast layer by layer."}),
        }, "optional": {
            "keep_loaded": ("BOOLEAN", {"default": False, "tooltip": KEEP_TIP}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        return missing_model(model_name, (cc.IMAGEN_FOLDER,), ("base", "sr"), "Imagen Model Loader")

    def load(self, model_name: str, dtype: str = "default", keep_loaded: bool = False):
        from comfyui_imagen.checkpoints import AUTO, load_stage, peek_stage, stage_plan
        from comfyui_imagen.dtypes import DtypePlan, describe

        path = resolve(model_name, (cc.IMAGEN_FOLDER,), ("base", "sr"))
        device, choice = cc.run_device(), STAGE_DTYPES[dtype]
        config_stage = peek_stage(path)  # config and shapes checked now; the weights are read when sampling
        plan = stage_plan(path, device) if choice == AUTO else DtypePlan(choice, choice)
        model = ImagenModel(lambda: load_stage(path, dtype=choice, device=device), model_name, keep=keep_loaded,
                            config_stage=config_stage)
        info = f"{config_stage.describe(model_name)}, {describe(plan)} on {device.type}"
        log.info("Imagen: %s", info)
        return model, info, int(config_stage.config.resolution)
