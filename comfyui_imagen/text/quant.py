"""GGML block quantization as GGUF files store it, dequantized in torch one layer at a time while encoding.

A GGUF row of n values is n / block_size blocks of type_size bytes (`files.gguf.GGML_TYPES`); a quantized layer keeps
those bytes as a uint8 tensor [rows, bytes per row] (a view of the file's map) and turns them into a [rows, n] weight
in the compute dtype when it runs. The block layouts are ggml's (ggml-common.h, ``dequantize_row_*`` in
ggml-quants.c), with QK_K = 256 values per K-quant super-block:

    Q8_0  fp16 d, int8 q[32]                                    w = d * q
    Q4_K  fp16 d, fp16 dmin, scales[12], q[128] (4-bit)         8 sub-blocks of 32: w = d * sc_j * q - dmin * m_j
    Q5_K  fp16 d, fp16 dmin, scales[12], qh[32], q[128]         as Q4_K with a fifth bit from qh (bit j of qh[l])
    Q6_K  ql[128], qh[64], int8 scales[16], fp16 d               16 sub-blocks of 16: w = d * sc_j * (q - 32)

where Q4_K/Q5_K pack eight 6-bit (sc, m) pairs in 12 bytes ("get_scale_min_k4"). These four types are what
ComfyUI-GGUF's T5 files use (Q8_0; Q4_K_S/M, Q5_K_S/M, Q6_K mix Q4_K, Q5_K and Q6_K). Every other GGML type is
dequantized by the ``gguf`` package (numpy, one thread; 2.8-3.9x slower per core than these, measured on a T5-XXL FFN
weight: benchmarks/t5_gguf.py), an optional dependency: ``pip install "comfyui-imagen[gguf]"``.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable

import torch

from ..files.gguf import GGML_TYPE_IDS, GGML_TYPES
from .errors import TextEncoderError, TextEncoderWarning
from .fp8 import upcast

GGUF_EXTRA = 'pip install "comfyui-imagen[gguf]"'
F32 = torch.float32


def _split(blocks: torch.Tensor, *sizes: int) -> list[torch.Tensor]:
    """A block tensor [..., type_size] cut into its fields (the last takes the rest)."""
    return list(torch.split(blocks, [*sizes, blocks.shape[-1] - sum(sizes)], dim=-1))


def _f16(field: torch.Tensor) -> torch.Tensor:
    """A 2-byte field [..., 2] as fp32 [..., 1]."""
    return field.contiguous().view(torch.float16).to(F32)


def _scale_min_k4(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit (scale, min) pairs of a Q4_K / Q5_K block from its 12 bytes [..., 12] -> two [..., 8]:
    pairs 0-3 are the low 6 bits of bytes 0-3 / 4-7; pairs 4-7 take 4 bits from bytes 8-11 and their top 2 bits from
    the top of bytes 0-3 / 4-7 (ggml's get_scale_min_k4)."""
    lo, mid, hi = scales[..., 0:4], scales[..., 4:8], scales[..., 8:12]
    sc = torch.cat([lo & 63, (hi & 15) | ((lo >> 6) << 4)], dim=-1)
    mn = torch.cat([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], dim=-1)
    return sc.to(F32), mn.to(F32)


def _nibbles(q: torch.Tensor) -> torch.Tensor:
    """[..., k, 32] bytes -> [..., k, 2, 32]: low nibbles, then high nibbles (how K-quants order sub-blocks)."""
    return torch.stack([q & 15, q >> 4], dim=-2)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d, q = _split(blocks, 2)
    return _f16(d) * q.view(torch.int8).to(F32)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    d, dmin, scales, qs = _split(blocks, 2, 2, 12)
    sc, mn = _scale_min_k4(scales)
    q = _nibbles(qs.reshape(*qs.shape[:-1], 4, 32)).reshape(*qs.shape[:-1], 8, 32).to(F32)
    return ((_f16(d) * sc)[..., None] * q - (_f16(dmin) * mn)[..., None]).flatten(-2)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    d, dmin, scales, qh, qs = _split(blocks, 2, 2, 12, 32)
    sc, mn = _scale_min_k4(scales)
    low = _nibbles(qs.reshape(*qs.shape[:-1], 4, 32)).reshape(*qs.shape[:-1], 8, 32)
    shifts = torch.arange(8, dtype=torch.uint8, device=blocks.device)[:, None]
    high = (qh[..., None, :] >> shifts) & 1                   # sub-block j takes bit j of qh[l]
    q = (low | (high << 4)).to(F32)
    return ((_f16(d) * sc)[..., None] * q - (_f16(dmin) * mn)[..., None]).flatten(-2)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    ql, qh, scales, d = _split(blocks, 128, 64, 16)
    lead = ql.shape[:-1]
    # per half of 128 values: ql[0:32] low, ql[32:64] low, ql[0:32] high, ql[32:64] high nibbles, each 32 values,
    # with 2 bits each from qh[0:32] at shifts 0, 2, 4, 6
    ql = ql.reshape(*lead, 2, 2, 32)
    low = torch.stack([ql & 15, ql >> 4], dim=-3).reshape(*lead, 2, 4, 32)
    shifts = torch.tensor([0, 2, 4, 6], dtype=torch.uint8, device=blocks.device)[:, None]
    high = (qh.reshape(*lead, 2, 1, 32) >> shifts) & 3
    q = ((low | (high << 4)).view(torch.int8) - 32).to(F32).reshape(*lead, 16, 16)
    return ((_f16(d) * scales.view(torch.int8).to(F32))[..., None] * q).flatten(-2)


# GGML type name -> fp32 values [..., block_size] of blocks [..., type_size]
TORCH_DEQUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q8_0": _q8_0, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}
TORCH_NATIVE = ("F32", "F16", "BF16")  # held as torch tensors, cast like any float weight


CHUNK_VALUES = 1 << 18  # values per step on a CPU: the fp32 temporaries stay in cache, the output is written once


def dequantize_blocks(rows: torch.Tensor, qtype: str, dtype: torch.dtype = F32, *,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """GGML-quantized rows (uint8 [..., bytes per row]) -> values [..., values per row] in ``dtype`` (into ``out``,
    a contiguous tensor of that many values, when given)."""
    kind = GGML_TYPES[GGML_TYPE_IDS[qtype]]
    lead, row_bytes = rows.shape[:-1], rows.shape[-1]
    per_row = row_bytes // kind.type_size
    fn = TORCH_DEQUANTIZERS.get(qtype) or functools.partial(_numpy_dequantize, qtype=qtype)
    flat = rows.reshape(-1, per_row, kind.type_size)
    shape = (flat.shape[0], per_row * kind.block_size)
    out = torch.empty(shape, dtype=dtype, device=rows.device) if out is None else out.view(shape)
    step = max(1, CHUNK_VALUES // max(1, out.shape[1])) if rows.device.type == "cpu" else max(1, flat.shape[0])
    for r in range(0, flat.shape[0], step):
        out[r:r + step] = fn(flat[r:r + step]).reshape(-1, out.shape[1])
    return out.reshape(*lead, -1)


def _gguf_package(what: str):
    try:
        import gguf
    except ImportError as e:
        raise TextEncoderError(f"{what} need the gguf package to be dequantized: {GGUF_EXTRA}, or use a Q8_0, Q6_K, "
                               "Q5_K, Q4_K or F16 file, which need nothing") from e
    return gguf


def _numpy_dequantize(blocks: torch.Tensor, qtype: str) -> torch.Tensor:
    gguf = _gguf_package(f"{qtype} weights")
    raw = blocks.reshape(-1, blocks.shape[-1]).cpu().numpy()
    values = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    return torch.from_numpy(values).to(blocks.device).reshape(*blocks.shape[:-1], -1)


def check_quant_types(qtypes: set[str], *, source: str) -> None:
    """Raise `TextEncoderError` for types nothing here can dequantize; warn for those left to numpy (slow)."""
    slow = sorted(q for q in qtypes if q not in TORCH_DEQUANTIZERS and q not in TORCH_NATIVE)
    if not slow:
        return
    gguf = _gguf_package(f"{source} holds {slow} weights, which")
    unknown = [q for q in slow if not _numpy_dequantizes(gguf, q)]
    if unknown:
        raise TextEncoderError(f"{source} holds {sorted(unknown)} weights, which neither this loader nor the "
                               "installed gguf package can dequantize; use a Q8_0, Q6_K, Q5_K, Q4_K or F16 file")
    warnings.warn(f"{source}: {slow} weights are dequantized by the gguf package (numpy), several times slower "
                  "than the Q8_0 / K-quant types; encoding works, but a Q8_0, Q6_K, Q5_K or Q4_K file is faster",
                  TextEncoderWarning, stacklevel=3)


def _numpy_dequantizes(gguf, qtype: str) -> bool:
    """Whether the installed gguf package dequantizes ``qtype`` (tried on one zero block)."""
    if not hasattr(gguf.GGMLQuantizationType, qtype):
        return False
    try:
        gguf.quants.dequantize(torch.zeros(1, GGML_TYPES[GGML_TYPE_IDS[qtype]].type_size, dtype=torch.uint8).numpy(),
                               gguf.GGMLQuantizationType[qtype])
    except NotImplementedError:
        return False
    return True


def type_name(type_id: int) -> str:
    """The GGML type name ("Q8_0") of a type id as GGUF stores it."""
    if type_id not in GGML_TYPES:
        raise TextEncoderError(f"unknown GGML type id {type_id}; the state dict does not come from a GGUF file")
    return GGML_TYPES[type_id].name


def dequantize_weight(weight: torch.Tensor, qtype: str | None, dtype: torch.dtype, *,
                      out: torch.Tensor | None = None) -> torch.Tensor:
    """A layer's stored weight in ``dtype`` (into ``out``, a contiguous tensor of as many values, when given): GGML
    rows dequantized (``qtype`` their type), fp8 upcast (`fp8.upcast`: exactly ``Tensor.to``, faster), anything else
    cast; a weight already in ``dtype`` is returned as it is."""
    if qtype is not None:
        return dequantize_blocks(weight, qtype, dtype, out=out)
    if weight.dtype == dtype:
        return weight
    return upcast(weight, dtype, out=out)
