"""fp8 T5 weights as ComfyUI users keep them: plain fp8, legacy "scaled fp8" and the ``comfy_quant`` layout.

Three single-file layouts exist for ``t5xxl_fp8_*.safetensors`` (read from ComfyUI's comfy/ops.py and
comfy/utils.py ``convert_old_quants``):

* plain: weights cast to ``float8_e4m3fn`` with no scale (``t5xxl_fp8_e4m3fn.safetensors``); W = W_fp8.
* legacy scaled: a marker tensor ``scaled_fp8`` (its dtype names the fp8 type) and, per linear layer,
  ``<layer>.scale_weight`` (fp32 scalar) and optionally ``<layer>.scale_input``; W = W_fp8 * scale_weight.
* comfy_quant: per linear layer ``<layer>.weight_scale`` plus ``<layer>.comfy_quant`` (a uint8 tensor holding JSON
  such as ``{"format": "float8_e4m3fn"}``) or the same per-layer JSON under ``_quantization_metadata`` in the
  safetensors header; W = W_fp8 * weight_scale.

Input scales only matter for fp8 matmuls, which this package never does (it upcasts the weight), so they are read
past. Formats other than tensor-wise fp8 (nvfp4, int8 ...) raise `TextEncoderError`.

`upcast` is ``Tensor.to`` for fp8 -> bf16 / fp32, bit for bit, and an order of magnitude faster on a CPU, where torch
converts one value at a time: a T5-XXL FFN weight [10240, 4096] to bf16 on one AVX-512 core takes torch 205 ms, and
`upcast` 14 ms in cache-sized pieces, 50 ms into fresh memory (benchmarks/t5_speed.py --micro).
"""
from __future__ import annotations

import json
from typing import Mapping

import torch

from .errors import TextEncoderError

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
FP8_FORMATS = {"float8_e4m3fn": torch.float8_e4m3fn, "float8_e5m2": torch.float8_e5m2}
WEIGHT_SCALE_SUFFIXES = (".scale_weight", ".weight_scale")      # legacy, comfy_quant
IGNORED_SUFFIXES = (".scale_input", ".input_scale", ".comfy_quant")
SCALED_FP8_MARKER = "scaled_fp8"


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def quantize_fp8(weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmax fp8: scale = max|W| / fp8_max, W_fp8 = W / scale (ComfyUI's QUANTIZATION.md recipe).

    Returns (W_fp8, scale as an fp32 scalar tensor); W ~= W_fp8.float() * scale.
    """
    if not is_fp8(dtype):
        raise TextEncoderError(f"quantize_fp8 needs an fp8 dtype, got {dtype}; use torch.float8_e4m3fn")
    w = weight.float()
    amax = w.abs().max()
    scale = (amax / torch.finfo(dtype).max) if amax > 0 else torch.ones(())
    fmax = torch.finfo(dtype).max
    return (w / scale).clamp(-fmax, fmax).to(dtype), scale.reshape(()).float()


def _signed(mask: int, bits: int) -> int:
    return mask - (1 << bits) if mask >> (bits - 1) else mask


# fp8 -> wider float with integer ops: the code's sign and its 7 exponent-and-mantissa bits are moved into place
# (int8 sign-extended, shifted, masked), which reads as the same number under the target's exponent bias instead of
# the fp8 one; one multiply by 2^(bias difference) rescales it exactly -- fp8 subnormals are then the target's
# subnormals and come out normal (the exponent-scaling multiply of fp16_ieee_to_fp32_value in Marat Dukhan's FP16
# library, copied in torch/headeronly/util/Half.h). (fp8 dtype, target) -> (integer dtype of the target's width,
# shift, mask, 2^(127 - fp8 exponent bias))
_UPCAST = {(torch.float8_e4m3fn, torch.bfloat16): (torch.int16, 4, _signed(0x87F0, 16), 2.0 ** 120),
           (torch.float8_e5m2, torch.bfloat16): (torch.int16, 5, _signed(0x8FE0, 16), 2.0 ** 112),
           (torch.float8_e4m3fn, torch.float32): (torch.int32, 20, _signed(0x87F00000, 32), 2.0 ** 120),
           (torch.float8_e5m2, torch.float32): (torch.int32, 21, _signed(0x8FE00000, 32), 2.0 ** 112)}
# the 7 low bits of the first code past the finite range (e4m3fn: NaN; e5m2: inf, then NaN): such codes are the
# largest int8 values (positive ones) and the largest uint8 values (negative ones)
_FIRST_SPECIAL = {torch.float8_e4m3fn: 0x7F, torch.float8_e5m2: 0x7C}
UPCAST_CHUNK = 1 << 22  # values per step (8 MB in bf16): each step's passes run while its piece is in cache


def _subnormals_kept() -> bool:
    """False while this thread flushes subnormals to zero (``torch.set_flush_denormal(True)``): the multiply would
    then zero fp8 subnormals."""
    return bool(torch.full((), 2.0 ** -130).mul_(0.5) != 0)


def upcast(weight: torch.Tensor, dtype: torch.dtype, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``weight.to(dtype)``, bit for bit, into ``out`` when given (a contiguous tensor of as many values).

    fp8 -> bf16 / fp32 on a CPU runs on integer ops (see ``_UPCAST``; torch's own cast there converts one value at
    a time); a tensor holding NaN or inf codes, and every other case, is cast by torch."""
    spec = _UPCAST.get((weight.dtype, dtype))
    if spec is None or weight.device.type != "cpu" or not weight.is_contiguous() or not _subnormals_kept():
        return weight.to(dtype) if out is None else out.view(weight.shape).copy_(weight)
    int_dtype, shift, mask, factor = spec
    special = _FIRST_SPECIAL[weight.dtype]
    out = torch.empty(weight.shape, dtype=dtype) if out is None else out.view(weight.shape)
    codes, bits = weight.view(torch.int8).reshape(-1), out.view(int_dtype).view(-1)
    for start in range(0, codes.numel(), UPCAST_CHUNK):
        piece_codes, piece = codes[start:start + UPCAST_CHUNK], bits[start:start + UPCAST_CHUNK]
        piece.copy_(piece_codes)                    # (reads the codes into cache for the check)
        if int(piece_codes.max()) >= special or int(piece_codes.view(torch.uint8).max()) >= 0x80 | special:
            return out.copy_(weight)
        piece <<= shift
        piece &= mask
        piece.view(dtype).mul_(factor)
    return out


def dequantize(weight: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """W = W_stored * scale in fp32, returned in ``dtype`` (scale per tensor or per output row)."""
    if scale is None:
        return upcast(weight, dtype)
    w = upcast(weight, torch.float32)
    s = scale.float()
    s = s.reshape(()) if s.numel() == 1 else s.reshape(-1, *([1] * (w.dim() - 1)))
    return (w * s).to(dtype)


def _layer_formats(keys: list[str], metadata: Mapping[str, str] | None,
                   read_json_tensor) -> dict[str, str]:
    """Per-layer quantization format from ``<layer>.comfy_quant`` tensors and the ``_quantization_metadata`` header."""
    formats: dict[str, str] = {}
    if metadata and "_quantization_metadata" in metadata:
        try:
            layers = json.loads(metadata["_quantization_metadata"]).get("layers", {})
        except (ValueError, AttributeError) as e:
            raise TextEncoderError(f"unreadable _quantization_metadata in the file header: {e}") from e
        for layer, conf in layers.items():
            formats[layer] = conf.get("format", "?") if isinstance(conf, dict) else str(conf)
    for key in keys:
        if key.endswith(".comfy_quant"):
            try:
                conf = json.loads(bytes(read_json_tensor(key).to(torch.uint8).tolist()).decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as e:
                raise TextEncoderError(f"unreadable {key!r} quantization record: {e}") from e
            formats[key[: -len(".comfy_quant")]] = conf.get("format", "?")
    return formats


def check_quant_formats(keys: list[str], metadata: Mapping[str, str] | None, read_tensor, *, source: str) -> None:
    """Raise `TextEncoderError` if any layer is quantized in a format other than tensor-wise fp8."""
    formats = _layer_formats(keys, metadata, read_tensor)
    bad = sorted({f for f in formats.values() if f not in FP8_FORMATS})
    if bad:
        raise TextEncoderError(f"{source} uses quantization format(s) {bad}, which this loader does not read; "
                               "use the fp16, bf16 or fp8 (e4m3fn, scaled or not) version of the T5 file")


def scale_key_for(weight_key: str, keys) -> str | None:
    """The scale tensor's key for ``<layer>.weight`` if the file has one (legacy or comfy_quant naming)."""
    layer = weight_key[: -len(".weight")]
    for suffix in WEIGHT_SCALE_SUFFIXES:
        if layer + suffix in keys:
            return layer + suffix
    return None


def to_fp8_state_dict(state_dict: Mapping[str, torch.Tensor], *, style: str = "scaled_fp8",
                      dtype: torch.dtype = torch.float8_e4m3fn) -> dict[str, torch.Tensor]:
    """Write a T5 state dict in one of ComfyUI's fp8 layouts (to convert an fp16 file, and for tests/benchmarks).

    style "plain" casts every 2-D weight except the position bias (embedding included) with no scale;
    "scaled_fp8" and "comfy_quant" quantize the linear layers per tensor and store their scales as ComfyUI does.
    """
    styles = ("plain", "scaled_fp8", "comfy_quant")
    if style not in styles:
        raise TextEncoderError(f"unknown fp8 style {style!r}; expected one of {styles}")
    fmt = {v: k for k, v in FP8_FORMATS.items()}.get(dtype)
    if fmt is None:
        raise TextEncoderError(f"fp8 dtype must be one of {list(FP8_FORMATS)}, got {dtype}")
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        is_matrix = tensor.dim() == 2 and "relative_attention_bias" not in key
        is_linear = is_matrix and (".SelfAttention." in key or ".DenseReluDense." in key)
        if style == "plain" and is_matrix:
            out[key] = tensor.to(dtype)
        elif style != "plain" and is_linear:
            q, scale = quantize_fp8(tensor, dtype)
            layer = key[: -len(".weight")]
            out[key] = q
            if style == "scaled_fp8":
                out[layer + ".scale_weight"] = scale
            else:
                out[layer + ".weight_scale"] = scale
                out[layer + ".comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()),
                                                           dtype=torch.uint8)
        else:
            out[key] = tensor.contiguous()
    if style == "scaled_fp8":
        out[SCALED_FP8_MARKER] = torch.empty(0, dtype=dtype)
    return out
