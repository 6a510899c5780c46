"""Everything the nodes need from ComfyUI, imported lazily, with plain fallbacks when ComfyUI is absent.

Inside ComfyUI: model folders come from ``folder_paths`` (``models/imagen`` is registered here, merged with an
``imagen:`` entry of the user's ``extra_model_paths.yaml``), models are wrapped in ``comfy.model_patcher.ModelPatcher``
and loaded through ``comfy.model_management`` (so ComfyUI offloads them when another model needs the memory),
progress and JPEG previews go to ``comfy.utils.ProgressBar`` and an interrupt raises within one sampler step.
Without ComfyUI (tests, scripts) the same calls use the folders given to :func:`set_fallback_folders`, the CPU,
and no progress bar. This is the only module of the pack that imports ``comfy``, ``comfy_api`` or ``folder_paths``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
from typing import Callable

import torch

from comfyui_imagen.files import WEIGHT_SUFFIXES

IMAGEN_FOLDER = "imagen"
TEXT_ENCODER_FOLDER = "text_encoders"
CLIP_FOLDER = "clip"  # where ComfyUI-GGUF users keep T5 GGUF files (newer ComfyUI lists it under text_encoders too)
MODEL_EXTENSIONS = frozenset(WEIGHT_SUFFIXES)  # what ComfyUI lists in models/imagen: the files the loaders read

_fallback_folders: dict[str, list[str]] = {IMAGEN_FOLDER: [], TEXT_ENCODER_FOLDER: [], CLIP_FOLDER: []}


@functools.lru_cache(maxsize=None)
def _comfy(module: str):
    """Import a ComfyUI module (``comfy.utils``, ``folder_paths``...), or None outside ComfyUI (remembered: the
    cancel hook asks at every sampler step)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


# ---------------------------------------------------------------------------------------------------- node API
def v3_api():
    """ComfyUI's V3 node API as ``(io, ComfyExtension)`` from ``comfy_api.latest``; None where the server has none
    (ComfyUI before V3, or a ``comfy_api.latest`` of before ``io.ComfyNode`` and ``ComfyExtension``) or outside it."""
    latest = _comfy("comfy_api.latest")
    io = getattr(latest, "io", None)
    extension = getattr(latest, "ComfyExtension", None)
    if extension is None or not all(hasattr(io, name) for name in ("ComfyNode", "Schema", "NodeOutput", "Custom")):
        return None
    return io, extension


# ---------------------------------------------------------------------------------------------------- model folders
def register_model_folder() -> None:
    """Register ``models/imagen`` with ComfyUI (no-op outside it); keeps paths from ``extra_model_paths.yaml``."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is None:
        return
    folder_paths.add_model_folder_path(IMAGEN_FOLDER, os.path.join(folder_paths.models_dir, IMAGEN_FOLDER))
    paths, _ = folder_paths.folder_names_and_paths[IMAGEN_FOLDER]
    folder_paths.folder_names_and_paths[IMAGEN_FOLDER] = (paths, set(MODEL_EXTENSIONS))


def set_fallback_folders(kind: str, paths: list[str]) -> None:
    """Outside ComfyUI: the folders searched for ``kind`` (``"imagen"``, ``"text_encoders"`` or ``"clip"``)."""
    if kind not in _fallback_folders:
        raise ValueError(f"unknown model folder kind {kind!r}; expected one of {sorted(_fallback_folders)}")
    _fallback_folders[kind] = [os.fspath(p) for p in paths]


def model_folders(kind: str) -> list[str]:
    """The folders searched for ``kind``: ComfyUI's registered ones, or the fallback list outside ComfyUI."""
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None:
        if kind == IMAGEN_FOLDER and kind not in folder_paths.folder_names_and_paths:
            register_model_folder()
        return folder_paths.get_folder_paths(kind)
    if kind not in _fallback_folders:
        raise ValueError(f"unknown model folder kind {kind!r}; expected one of {sorted(_fallback_folders)}")
    return list(_fallback_folders[kind])


def comfy_t5_tokenizer_dir() -> str | None:
    """ComfyUI's bundled T5 (v1.1) tokenizer folder ``comfy/text_encoders/t5_tokenizer``, if present.

    ``comfy`` is a namespace package in real ComfyUI (no ``__init__.py``: ``comfy.__file__`` is None), so the folder
    is looked for under every entry of its ``__path__``, then under ``folder_paths.base_path``.
    """
    roots: list[str] = []
    comfy = _comfy("comfy")
    if comfy is not None:
        if getattr(comfy, "__file__", None):
            roots.append(os.path.dirname(comfy.__file__))
        roots.extend(os.fspath(p) for p in getattr(comfy, "__path__", ()) or ())
    folder_paths = _comfy("folder_paths")
    if folder_paths is not None and getattr(folder_paths, "base_path", None):
        roots.append(os.path.join(folder_paths.base_path, "comfy"))
    for root in roots:
        path = os.path.join(root, "text_encoders", "t5_tokenizer")
        if os.path.isfile(os.path.join(path, "tokenizer.json")) or os.path.isfile(
                os.path.join(path, "tokenizer_config.json")):
            return path
    return None


# ---------------------------------------------------------------------------------------------------- devices
def intermediate_device() -> torch.device:
    """Where node outputs live between nodes (ComfyUI's intermediate device; the CPU outside ComfyUI)."""
    mm = _comfy("comfy.model_management")
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


def device_context(device: torch.device):
    """ComfyUI's ``cuda_device_context`` (0.33: the current CUDA device while a model runs on it), else a no-op."""
    mm = _comfy("comfy.model_management")
    context = getattr(mm, "cuda_device_context", None)
    return context(device) if context is not None else contextlib.nullcontext()


def free_memory(device: torch.device) -> int | None:
    """Bytes a run on ``device`` may still allocate (the library's memory ceiling, `comfyui_imagen.memory`): ComfyUI's
    own query (``model_management.get_free_memory``: free device memory plus PyTorch's unused cache) inside ComfyUI,
    the library's (`memory.free_bytes`: MemAvailable on the CPU, ``torch.cuda.mem_get_info`` on CUDA) outside it."""
    mm = _comfy("comfy.model_management")
    if mm is not None and hasattr(mm, "get_free_memory"):
        return int(mm.get_free_memory(torch.device(device)))
    from comfyui_imagen.memory import free_bytes

    return free_bytes(device)


class ImagenWeights(torch.nn.Module):
    """Holds the real module so that ModelPatcher can set its bookkeeping attributes (``device``...) freely."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module


def run_device(*, text_encoder: bool = False) -> torch.device:
    """Where a model runs: ComfyUI's torch device (or text-encoder device) inside ComfyUI, the CPU outside it."""
    mm = _comfy("comfy.model_management")
    if mm is None:
        return torch.device("cpu")
    return torch.device(mm.text_encoder_device() if text_encoder else mm.get_torch_device())


class ManagedModel:
    """A module that ComfyUI's model management moves to the GPU for a run and offloads when memory is needed.

    ``load()`` returns the module on its run device. Outside ComfyUI it stays where it is (the CPU).
    ``text_encoder=True`` uses ComfyUI's text-encoder devices instead of the diffusion-model ones.

    A U-Net follows ``comfy.ops``' convention (`comfyui_imagen.layercast.enable`: ``comfy_cast_weights`` and cast
    hooks on every layer), so ModelPatcher may load it partially: what does not fit the GPU stays on the CPU and is
    moved layer by layer while sampling (ComfyUI's low-VRAM mode; an IF-I-XL in fp16 on an 8 GB card). The T5's
    layers cast their own dtype but not their device, so it loads whole.
    """

    def __init__(self, module: torch.nn.Module, *, text_encoder: bool = False):
        self.module = module
        self.text_encoder = text_encoder
        self.patcher = None
        mm = _comfy("comfy.model_management")
        model_patcher = _comfy("comfy.model_patcher")
        if mm is not None and model_patcher is not None:
            if text_encoder:
                load, offload = mm.text_encoder_device(), mm.text_encoder_offload_device()
            else:
                from comfyui_imagen import layercast

                layercast.enable(module)
                load, offload = mm.get_torch_device(), mm.unet_offload_device()
            module.to(offload)
            self.patcher = model_patcher.ModelPatcher(ImagenWeights(module), load_device=load, offload_device=offload)

    def load(self) -> torch.nn.Module:
        if self.patcher is not None:
            mm = _comfy("comfy.model_management")
            mm.load_models_gpu([self.patcher], force_full_load=self.text_encoder)
            device = torch.device(self.patcher.load_device)
            if self.text_encoder:
                # whatever a low-VRAM mode left behind is moved too: the T5 must sit whole on one device
                if any(t.device != device for t in (*self.module.parameters(), *self.module.buffers())):
                    self.module.to(device)
            else:
                place_first_layer(self.module, device)
        return self.module


def place_first_layer(module: torch.nn.Module, device: torch.device) -> None:
    """After a partial load: the layer holding the module's first parameter on ``device`` (a stage's device is its
    first parameter's, where the sampler puts its tensors); the offloaded rest follows layer by layer."""
    first = next(module.parameters(), None)
    if first is None or first.device == device:
        return
    owner = next(m for m in module.modules() if any(p is first for p in m._parameters.values()))
    owner.to(device)


# ---------------------------------------------------------------------------------------------------- progress
def interrupted() -> bool:
    """The library's ``cancel`` hook: raises ComfyUI's interrupt exception when the user pressed Cancel (within one
    sampler step), else returns False. Outside ComfyUI it never cancels."""
    mm = _comfy("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()
    return False


def progress_callback(total: int) -> Callable[[dict], None] | None:
    """A sampler ``callback(info)`` that drives ComfyUI's progress bar; None outside ComfyUI.

    Each step updates the bar and sends the first image of the current x0 prediction as a JPEG preview. In pixel
    space a preview costs no decoder, so it is sent whatever ``--preview-method`` says (that flag picks a latent
    decoder for latent models).
    """
    utils = _comfy("comfy.utils")
    if utils is None:
        return None
    from comfyui_imagen.images import to_pil

    bar = utils.ProgressBar(total)
    max_size = getattr(getattr(_comfy("comfy.cli_args"), "args", None), "preview_size", 512)

    def callback(info: dict) -> None:
        x0 = info.get("x0")
        preview = ("JPEG", to_pil(x0), max_size) if x0 is not None else None
        bar.update_absolute(int(info["step"]) + 1, int(info["total"]), preview)

    return callback
