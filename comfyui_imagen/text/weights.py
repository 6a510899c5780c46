"""Find and read T5 encoder weights: a single weights file (ComfyUI's models/text_encoders) or a Hugging Face folder
(config.json + model.safetensors, sharded index or .bin), without copying them.

Files are read by the model-file layer (`comfyui_imagen.files`) in its memory-mapped mode: a weight that keeps its
stored dtype is a view of the file's map and costs no memory beyond the page cache it occupies; the decoder of an
encoder-decoder checkpoint is never touched. What a file that is not a T5 is comes from the layer's classifier.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from .. import files
from . import fp8
from .config import ENCODER_PROBE, T5EncoderConfig, config_from_hf, expected_shapes, infer_config
from .errors import TextEncoderError, TextEncoderWarning

# Weight files of a Hugging Face folder, in order of preference (diffusers' "variant" names included: DeepFloyd IF's
# text_encoder/ ships model.fp16-0000N-of-00002.safetensors with model.safetensors.index.fp16.json).
FOLDER_CANDIDATES = ("model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors",
                     "model.safetensors.index.fp16.json", "model.bf16.safetensors", "model.safetensors.index.bf16.json",
                     "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model.fp16.bin",
                     "pytorch_model.bin.index.fp16.json")


def open_source(path: str | Path) -> tuple[files.Weights, dict | None]:
    """Open a T5 checkpoint: a single weights file, or a Hugging Face folder holding config.json and weights.
    Returns the weights (headers read, tensors not) and the folder's config.json (None for a single file)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TextEncoderError(f"T5 weights not found at {path}; put the file in ComfyUI/models/text_encoders/ "
                               "(e.g. t5xxl_fp16.safetensors) or pass a Hugging Face folder such as IF's text_encoder/")
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            raise TextEncoderError(f"{path} is a GGUF file; this loader reads safetensors (fp16, bf16, fp8) T5 files. "
                                   "Use t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn(_scaled).safetensors instead")
        return files.open_weights(path), None
    family = files.folder_family(path)
    if family in (files.IF_PIPELINE, files.UNET_FOLDER):
        raise TextEncoderError(f"{path} looks like {family.what}, not a T5: "
                               + ("pass its text_encoder/ folder" if family is files.IF_PIPELINE else family.advice))
    hf_config = None
    if (path / "config.json").is_file():
        hf_config = files.read_json(path / "config.json")
        if not hf_config:
            raise TextEncoderError(f"{path / 'config.json'} is not a valid JSON object; download it again")
    for name in FOLDER_CANDIDATES:
        if (path / name).is_file():
            return files.open_weights(path / name), hf_config
    singles = sorted(p for p in path.iterdir() if p.suffix.lower() in files.SAFETENSORS_SUFFIXES)
    if len(singles) == 1:
        return files.open_weights(singles[0]), hf_config
    raise TextEncoderError(f"{path} holds no T5 weights: expected model.safetensors, a "
                           "model.safetensors.index.json with its shards, or pytorch_model.bin (plus config.json)")


def find_prefix(keys: list[str], *, source: str, metadata: dict | None = None) -> str:
    """The key prefix in front of ``encoder.block.0...`` ('' for plain files, 'text_encoders.t5xxl.transformer.' in
    an SD3 all-in-one checkpoint)."""
    prefixes = sorted({k[: -len(ENCODER_PROBE)] for k in keys if k.endswith(ENCODER_PROBE)})
    if len(prefixes) == 1:
        return prefixes[0]
    if len(prefixes) > 1:
        raise TextEncoderError(f"{source} holds several T5 encoders (prefixes {prefixes}); extract one of them")
    family = files.identify(keys, metadata)
    sample = ", ".join(repr(k) for k in keys[:3]) or "no tensors at all"
    what = f" It looks like {family.what}: {family.advice}." if family and family is not files.T5 else ""
    raise TextEncoderError(f"{source} is not a T5 text encoder: no {ENCODER_PROBE!r} key (found {sample}).{what} "
                           "Put a T5 file such as t5xxl_fp16.safetensors in ComfyUI/models/text_encoders/")


def _is_big(key: str, shape: tuple[int, ...]) -> bool:
    """Embedding and linear weights take the requested storage dtype; norms and the position bias (tiny) do not."""
    return len(shape) == 2 and "relative_attention_bias" not in key


def _convert(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype | None):
    """(tensor, scale) in the requested storage dtype: None keeps it as stored (fp8 stays fp8 with its scale)."""
    if dtype is None or (weight.dtype == dtype and scale is None):
        return weight, scale
    if fp8.is_fp8(dtype):
        if weight.dtype == dtype:
            return weight, scale
        return fp8.quantize_fp8(fp8.dequantize(weight, scale, torch.float32), dtype)
    return fp8.dequantize(weight, scale, dtype), None


class Encoder(NamedTuple):
    """What `read_encoder` found: the config, the state dict and the dtype holding most of its weights."""

    config: T5EncoderConfig
    state: dict[str, torch.Tensor]
    weight_dtype: torch.dtype


def read_encoder(weights: files.Weights, hf_config: dict | None = None, *,
                 dtype: torch.dtype | None = None) -> Encoder:
    """The encoder's config and state dict (keys as our `T5Encoder` names them, ``<layer>.weight_scale`` added for
    scaled weights), big weights in ``dtype`` (None: as stored, memory-mapped), the rest as stored."""
    name = str(weights.path)
    keys = weights.keys()
    prefix = find_prefix(keys, source=name, metadata=weights.metadata)
    ours = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    dropped = [k for k in ours if k.startswith(("decoder.", "lm_head."))]
    if dropped:
        warnings.warn(f"{name} is an encoder-decoder checkpoint: using its encoder, ignoring {len(dropped)} "
                      "decoder/lm_head tensors (they are not read into memory)", TextEncoderWarning, stacklevel=3)
    weight_shapes = {k: weights.shapes[prefix + k] for k in ours
                     if not k.endswith(fp8.WEIGHT_SCALE_SUFFIXES + fp8.IGNORED_SUFFIXES)}
    if hf_config is not None:
        config = config_from_hf(hf_config, weight_shapes, source=name)
    else:
        config = infer_config(weight_shapes, source=name)
    fp8.check_quant_formats([prefix + k for k in ours], weights.metadata, weights.mapped, source=name)

    wanted = expected_shapes(config)
    if "shared.weight" not in weight_shapes and "encoder.embed_tokens.weight" in weight_shapes:
        alias = {"shared.weight": "encoder.embed_tokens.weight"}
    else:
        alias = {}
    wrong = [f"{k}: {weight_shapes.get(alias.get(k, k))} instead of {s}" for k, s in wanted.items()
             if weight_shapes.get(alias.get(k, k)) != s]
    if wrong:
        raise TextEncoderError(f"{name} does not hold a consistent T5 encoder ({len(wrong)} tensors missing or of "
                               f"the wrong shape, e.g. {wrong[:3]}); the file is damaged or incomplete")
    state: dict[str, torch.Tensor] = {}
    present = set(keys)
    for key in wanted:
        full = prefix + alias.get(key, key)
        stored = weights.dtypes[full]
        if stored not in (torch.float32, torch.float16, torch.bfloat16, torch.float64, *fp8.FP8_DTYPES):
            raise TextEncoderError(f"{name}: tensor {full!r} is stored as {stored}, which is not a float type this "
                                   "loader reads; use an fp16, bf16 or fp8 T5 file")
        tensor = weights.mapped(full)
        scale_key = fp8.scale_key_for(full, present)
        scale = weights.mapped(scale_key) if scale_key else None
        if scale is not None and scale.numel() not in (1, wanted[key][0]):
            raise TextEncoderError(f"{name}: {scale_key!r} has {scale.numel()} values; expected 1 (per tensor) or "
                                   f"{wanted[key][0]} (per output row)")
        if _is_big(key, wanted[key]) and not (key == "shared.weight" and scale is not None and scale.numel() > 1):
            tensor, scale = _convert(tensor, scale, dtype)
        elif scale is not None:  # scaled norm or per-row scaled embedding: dequantize (small or rare)
            tensor, scale = fp8.dequantize(tensor, scale, torch.float32), None
        state[key] = tensor
        if scale is not None:
            state[key[: -len(".weight")] + ".weight_scale"] = scale.float()
    read = [prefix + alias.get(key, key) for key in wanted]
    return Encoder(config, state, dtype or weights.storage_dtype(read))
