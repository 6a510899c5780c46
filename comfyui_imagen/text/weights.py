"""Find and read T5 encoder weights: a single weights file (ComfyUI's models/text_encoders: safetensors, .bin, or a
GGUF file as ComfyUI-GGUF users keep it) or a Hugging Face folder (config.json + model.safetensors, sharded index or
.bin), without copying them.

Files are read by the model-file layer (`comfyui_imagen.files`) in its memory-mapped mode: a weight that keeps its
stored dtype is a view of the file's map and costs no memory beyond the page cache it occupies; the decoder of an
encoder-decoder checkpoint is never touched. A GGUF file's quantized weights stay its GGML blocks, dequantized
layer by layer while encoding (`quant`). What a file that is not a T5 is comes from the layer's classifier.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from .. import files
from . import fp8, quant
from .config import ENCODER_PROBE, T5EncoderConfig, config_from_gguf, config_from_hf, expected_shapes, infer_config
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
    scaled weights, ``<layer>.weight_qtype`` for GGUF blocks), big weights in ``dtype`` (None: as stored,
    memory-mapped), the rest as stored."""
    if isinstance(weights, files.GGUFWeights):
        return _read_gguf(weights, dtype)
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
    _check_shapes(wanted, {k: weight_shapes.get(alias.get(k, k)) for k in wanted}, source=name)
    state: dict[str, torch.Tensor] = {}
    present = set(keys)
    for key in wanted:
        full = prefix + alias.get(key, key)
        _check_float(weights.dtypes[full], full, source=name)
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


def _check_shapes(wanted: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...] | None], *, source: str):
    wrong = [f"{k}: {found.get(k)} instead of {shape}" for k, shape in wanted.items() if found.get(k) != shape]
    if wrong:
        raise TextEncoderError(f"{source} does not hold a consistent T5 encoder ({len(wrong)} tensors missing or of "
                               f"the wrong shape, e.g. {wrong[:3]}); the file is damaged or incomplete")


def _check_float(stored: torch.dtype | None, key: str, *, source: str) -> None:
    if stored not in (torch.float32, torch.float16, torch.bfloat16, torch.float64, *fp8.FP8_DTYPES):
        raise TextEncoderError(f"{source}: tensor {key!r} is stored as {stored}, which is not a float type this "
                               "loader reads; use an fp16, bf16 or fp8 T5 file")


# -- GGUF (llama.cpp's tensor names for T5, gguf-py's tensor_mapping.py; what ComfyUI-GGUF's T5 files hold) ----------
GGUF_PROBE = "enc.blk.0.attn_q.weight"
_GGUF_NAMES = {"token_embd.weight": "shared.weight", "enc.output_norm.weight": "encoder.final_layer_norm.weight"}
_GGUF_BLOCK_PARTS = {"attn_norm": "layer.0.layer_norm", "attn_q": "layer.0.SelfAttention.q",
                     "attn_k": "layer.0.SelfAttention.k", "attn_v": "layer.0.SelfAttention.v",
                     "attn_o": "layer.0.SelfAttention.o",
                     "attn_rel_b": "layer.0.SelfAttention.relative_attention_bias", "ffn_norm": "layer.1.layer_norm",
                     "ffn_gate": "layer.1.DenseReluDense.wi_0", "ffn_down": "layer.1.DenseReluDense.wo"}
_GGUF_BLOCK = re.compile(r"^enc\.blk\.(\d+)\.(\w+)\.weight$")
_GGUF_OTHER_HALF = ("dec.", "output.")  # an encoder-decoder file's decoder and LM head


def gguf_names(keys: list[str], *, source: str) -> dict[str, str]:
    """Our (Hugging Face) key for each encoder tensor of a GGUF T5: ``enc.blk.N.attn_q.weight`` ->
    ``encoder.block.N.layer.0.SelfAttention.q.weight``, ``token_embd`` -> ``shared``, ``ffn_up`` -> ``wi_1`` beside a
    ``ffn_gate`` (``wi_0``, T5 v1.1) or ``wi`` without one (original T5). Decoder and LM-head tensors are left out."""
    gated = any(k.startswith("enc.blk.") and k.endswith(".ffn_gate.weight") for k in keys)
    up = "layer.1.DenseReluDense." + ("wi_1" if gated else "wi")
    names, unknown = {}, []
    for key in keys:
        m = _GGUF_BLOCK.match(key)
        if key in _GGUF_NAMES:
            names[key] = _GGUF_NAMES[key]
        elif m and (m.group(2) in _GGUF_BLOCK_PARTS or m.group(2) == "ffn_up"):
            names[key] = f"encoder.block.{m.group(1)}.{_GGUF_BLOCK_PARTS.get(m.group(2), up)}.weight"
        elif not key.startswith(_GGUF_OTHER_HALF):
            unknown.append(key)
    if unknown:
        raise TextEncoderError(f"{source} holds tensors a T5 encoder does not have ({unknown[:3]}...); it is another "
                               "model in T5's GGUF layout. Use a T5 v1.1 encoder such as t5-v1_1-xxl-encoder-Q8_0.gguf")
    return names


def _read_gguf(weights: files.GGUFWeights, dtype: torch.dtype | None) -> Encoder:
    """`read_encoder` for a GGUF file: quantized big weights stay GGML blocks (a view of the file's map) unless a
    ``dtype`` is asked for; small quantized tensors (never seen in practice) are dequantized to fp32."""
    name, keys = str(weights.path), weights.keys()
    if weights.architecture not in files.GGUF_T5_ARCHITECTURES or GGUF_PROBE not in weights.shapes:
        family = files.identify(keys, weights.metadata)
        what = f" It looks like {family.what}: {family.advice}." if family and family is not files.T5 else ""
        raise TextEncoderError(f"{name} is not a T5 text encoder (GGUF architecture {weights.architecture!r}, no "
                               f"{GGUF_PROBE!r}).{what} Put a T5 file such as t5-v1_1-xxl-encoder-Q8_0.gguf in "
                               "ComfyUI/models/text_encoders/")
    ours = gguf_names(keys, source=name)
    if len(ours) < len(keys):
        warnings.warn(f"{name} is an encoder-decoder checkpoint: using its encoder, ignoring {len(keys) - len(ours)} "
                      "decoder/output tensors (they are not read into memory)", TextEncoderWarning, stacklevel=3)
    theirs = {ours_key: key for key, ours_key in ours.items()}
    config = config_from_gguf(weights.metadata, {k: weights.shapes[g] for k, g in theirs.items()}, source=name)
    wanted = expected_shapes(config)
    _check_shapes(wanted, {k: weights.shapes[theirs[k]] for k in wanted if k in theirs}, source=name)
    quant.check_quant_types({weights.qtypes[theirs[k]] for k in wanted if weights.dtypes[theirs[k]] is None},
                            source=name)
    state: dict[str, torch.Tensor] = {}
    for key, shape in wanted.items():
        full, qtype = theirs[key], weights.qtypes[theirs[key]]
        big = _is_big(key, shape)
        if weights.dtypes[full] is not None:
            _check_float(weights.dtypes[full], full, source=name)
            tensor = weights.mapped(full)
        elif big and dtype is None:
            state[key] = weights.blocks(full)
            state[key[: -len(".weight")] + ".weight_qtype"] = torch.tensor(files.GGML_TYPE_IDS[qtype])
            continue
        else:
            tensor = quant.dequantize_blocks(weights.blocks(full), qtype).view(shape)
        tensor, scale = _convert(tensor, None, dtype) if big else (tensor, None)
        state[key] = tensor
        if scale is not None:
            state[key[: -len(".weight")] + ".weight_scale"] = scale
    if dtype is not None:
        return Encoder(config, state, dtype)
    stored = {weights.dtypes[theirs[k]] for k, shape in wanted.items() if _is_big(k, shape)}
    return Encoder(config, state, stored.pop() if len(stored) == 1 and None not in stored else torch.float16)
