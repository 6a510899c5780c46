"""A core ComfyUI ``CLIP`` (Load CLIP, DualCLIPLoader, ComfyUI-GGUF's loaders...) as a T5 for Imagen: its T5 module
found, run on our tokens with IF's attention mask under ComfyUI's model management (`comfyui_imagen.text.hosted`).

ComfyUI builds every T5 the same way, whatever loader made the CLIP: ``clip.cond_stage_model`` is either a T5 model
itself or holds one as a child (``t5xxl`` in SD3, Flux, HiDream...); that model is an ``SDClipModel`` whose
``transformer`` is ``comfy.text_encoders.t5.T5`` (``shared`` embedding, ``encoder.block`` layers, Hugging Face key
names) called as ``transformer(ids, mask, dtype=float32) -> (hidden, intermediate)``. ``clip.load_model()`` loads it
(and any patches, e.g. a CLIP LoRA) where ComfyUI wants it; ``clip.patcher.load_device`` is where it runs.
"""
from __future__ import annotations

import functools

import torch

from comfyui_imagen.text import EmbeddingCache, T5TextEncoder, load_tokenizer
from comfyui_imagen.text.hosted import HostedT5

from . import comfy_compat as cc

T5_V1_1_VOCAB = 32128  # T5 v1.1's embedding rows (every t5xxl file, IF's text_encoder); its tokenizer has 32100
_CLIP_FIX = ("load a T5 v1.1 XXL such as t5xxl_fp16.safetensors with Load CLIP (type sd3) or DualCLIPLoader "
             "(clip_l + t5xxl, type flux), or use Imagen T5 Loader")


def _is_t5(model) -> bool:
    transformer = getattr(model, "transformer", None)
    return hasattr(getattr(transformer, "encoder", None), "block") and hasattr(transformer, "shared")


def find_t5(clip):
    """(name, model) of the T5 inside a CLIP: the model itself ("t5"), its ``t5xxl`` child, else its only T5 child.
    Raises ValueError naming what the CLIP holds when there is none."""
    model = getattr(clip, "cond_stage_model", None)
    if model is None or not hasattr(clip, "patcher"):
        raise ValueError(f"the clip input is a {type(clip).__name__}, not a ComfyUI CLIP; connect Load CLIP or "
                         f"DualCLIPLoader")
    if _is_t5(model):
        return "t5", model
    children = {name: child for name, child in model.named_children() if child is not None}
    t5s = {name: child for name, child in children.items() if _is_t5(child)}
    if "t5xxl" in t5s:
        return "t5xxl", t5s["t5xxl"]
    if len(t5s) == 1:
        return next(iter(t5s.items()))
    held = ", ".join(f"{name} ({type(getattr(c, 'transformer', c)).__name__})" for name, c in children.items())
    what = f"{len(t5s)} T5 encoders ({', '.join(t5s)})" if t5s else "no T5 encoder"
    raise ValueError(f"the CLIP ({type(model).__name__}: {held or 'nothing'}) holds {what}; {_CLIP_FIX}")


def _shapes(transformer) -> dict[str, tuple[int, ...]]:
    """Logical tensor shapes of a ComfyUI T5, from the live tensors: a GGUF weight (ComfyUI-GGUF's GGMLTensor) holds
    packed blocks and reports its real shape as ``tensor_shape`` (its state_dict copy would show the packed one)."""
    tensors = {**dict(transformer.named_parameters()), **dict(transformer.named_buffers())}
    return {key: tuple(getattr(value, "tensor_shape", None) or value.shape) for key, value in tensors.items()}


def _check_plain(clip) -> None:
    """CLIP hooks (Set CLIP Hooks: weights that change per clone or over the schedule) are not applied here."""
    hooks = getattr(clip.patcher, "forced_hooks", None)
    if (hooks is not None and len(getattr(hooks, "hooks", ()) or ())) or getattr(clip, "use_clip_schedule", False):
        raise ValueError("this CLIP carries CLIP hooks (Set CLIP Hooks / scheduled hooks), which Imagen Text Encode "
                         "does not apply; load the LoRA with LoraLoader or Load LoRA (CLIP) instead")


@functools.lru_cache(maxsize=1)
def _tokenizer():
    folder = cc.comfy_t5_tokenizer_dir()
    if folder is None:
        raise ValueError("ComfyUI's T5 tokenizer (comfy/text_encoders/t5_tokenizer) was not found; this ComfyUI "
                         "install is incomplete: reinstall it, or use Imagen T5 Loader")
    return load_tokenizer(folder)


_CACHE = EmbeddingCache()  # one for all CLIPs: keyed by the module and its patches


def clip_encoder(clip):
    """A `T5TextEncoder` over the CLIP's T5 (a CLIP with a LoRA applied never reuses the plain one's encodings:
    the cache key holds the patcher's ``patches_uuid``)."""
    name, model = find_t5(clip)
    _check_plain(clip)
    transformer = model.transformer
    source = f"the CLIP's T5 ({name})"
    # token ids start, and the embeddings come back (and are cached), on ComfyUI's intermediate device (the CPU),
    # never holding GPU memory that ComfyUI's model management does not see
    hosted = HostedT5(functools.partial(_run, clip, transformer), _shapes(transformer), source=source,
                      device=cc.intermediate_device(),
                      nan_fix="in the CLIP loader pick another copy of the t5xxl file (t5xxl_fp16 rather than an fp8 "
                              "or low-bit GGUF one), or use Imagen T5 Loader")
    config = hosted.config
    if config.vocab_size != T5_V1_1_VOCAB:
        raise ValueError(f"{source} has {config.vocab_size} token embeddings, not T5 v1.1's {T5_V1_1_VOCAB} (a "
                         f"ByT5, mT5 or umT5?): Imagen models read T5 v1.1 embeddings; {_CLIP_FIX}")
    if not config.gated:
        raise ValueError(f"{source} is an original T5 (v1.0: ReLU feed-forward, as Cosmos uses), not T5 v1.1 (gated "
                         f"GELU): Imagen models read T5 v1.1 embeddings; {_CLIP_FIX}")
    identity = f"comfy-clip:{id(transformer):x}:{getattr(clip.patcher, 'patches_uuid', '')}"
    return T5TextEncoder(hosted, _tokenizer(), identity=identity, cache=_CACHE)


def _run(clip, transformer, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The T5's final hidden states for our ids and mask, loaded and run where ComfyUI places it."""
    clip.load_model()
    device = torch.device(clip.patcher.load_device)
    with cc.device_context(device), torch.no_grad():
        hidden, _ = transformer(ids.to(device), mask.to(device), dtype=torch.float32)
    return hidden.to(ids.device)
