"""GGUF, llama.cpp's weight format (the form ComfyUI-GGUF users keep T5 encoders in), read without the ``gguf``
package: the header, metadata and tensor table are parsed and checked here, tensors are memory-mapped as stored.

The layout (versions 2 and 3, little-endian; ggml's docs/gguf.md):

    "GGUF", uint32 version, uint64 tensor count, uint64 metadata count
    metadata:     (string key, uint32 value type, value) per entry; a string is a uint64 length and UTF-8 bytes
    tensor infos: (string name, uint32 n_dims, uint64 ne[n_dims], uint32 GGML type, uint64 offset) per tensor
    padding to ``general.alignment`` (32 by default), then the data: each tensor at data start + its offset

``ne[0]`` is the innermost (contiguous) axis, so a torch shape is ``ne`` reversed, and a row of ``ne[0]`` values is
stored as ``ne[0] / block_size`` blocks of ``type_size`` bytes. Float and integer tensors come out of `mapped` as
torch tensors (F32, F16, BF16 ...); block-quantized ones (Q8_0, K-quants ...) out of `GGUFWeights.blocks` as uint8
rows [rows, bytes per row], which `comfyui_imagen.text.quant` dequantizes one layer at a time.
"""
from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .errors import ModelFileError
from .reader import Weights

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4          # GGML_MAX_DIMS
MAX_ENTRIES = 1 << 24  # more tensors or metadata entries than any real file: the counts are garbage
ARCHITECTURE = "general.architecture"


class GGMLType(NamedTuple):
    name: str
    block_size: int                     # values per block
    type_size: int                      # bytes per block
    dtype: torch.dtype | None = None    # the torch dtype of an unquantized type


# ggml.h's ggml_type ids with their block geometry (gguf-py's GGML_QUANT_SIZES); ids absent here are unknown types
GGML_TYPES: dict[int, GGMLType] = {t_id: GGMLType(*spec) for t_id, spec in {
    0: ("F32", 1, 4, torch.float32), 1: ("F16", 1, 2, torch.float16), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40), 10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110), 22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1, torch.int8), 25: ("I16", 1, 2, torch.int16),
    26: ("I32", 1, 4, torch.int32), 27: ("I64", 1, 8, torch.int64), 28: ("F64", 1, 8, torch.float64),
    29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2, torch.bfloat16), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17)}.items()}
GGML_TYPE_IDS = {t.name: t_id for t_id, t in GGML_TYPES.items()}

# metadata value types: struct format of the scalars; 7 is bool, 8 string, 9 array
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


class GGUFWeights(Weights):
    """`Weights` of one GGUF file. ``shapes`` are torch shapes (``ne`` reversed); ``dtypes`` the torch dtype of the
    unquantized tensors and None for block-quantized ones; ``qtypes`` every tensor's GGML type name ("Q8_0",
    "F16" ...); ``metadata`` the typed key-values (str, int, float, bool, bytes for uint8 arrays, lists);
    ``version`` the GGUF version."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.qtypes: dict[str, str] = {}
        self.version = 0
        self._row_bytes: dict[str, int] = {}

    @property
    def architecture(self) -> str | None:
        arch = self.metadata.get(ARCHITECTURE)
        return arch if isinstance(arch, str) else None

    def blocks(self, key: str) -> torch.Tensor:
        """Tensor `key` as stored, whatever its type: uint8 [rows, bytes per row] (rows = all axes but the last)
        viewing the file's private map."""
        file, offset = self._located[key]
        row_bytes = self._row_bytes[key]
        rows = math.prod(self.shapes[key][:-1])
        if not rows * row_bytes:
            return torch.empty(rows, row_bytes, dtype=torch.uint8)
        return self._view(file, offset, rows * row_bytes).view(rows, row_bytes)

    def _unreadable(self, key: str) -> str:
        return f"is {self.qtypes[key]}-quantized; read its blocks (GGUFWeights.blocks) and dequantize them"


def _damaged(file: Path, why: str) -> ModelFileError:
    return ModelFileError(f"{file} is not a readable GGUF file ({why}); it is probably truncated or corrupt: "
                          "download or copy it again")


class _Cursor:
    """Bounds-checked little-endian reads from the mapped header."""

    def __init__(self, buf, file: Path):
        self.buf, self.pos, self.file = buf, 0, file

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > len(self.buf):
            raise _damaged(self.file, f"it ends inside its header (at byte {start}, {n} more bytes wanted)")
        self.pos += n
        return start

    def unpack(self, fmt: str):
        return self.many(fmt, 1)[0]

    def many(self, fmt: str, count: int) -> list:
        return list(struct.unpack_from(f"<{count}{fmt}", self.buf, self.take(struct.calcsize("<" + fmt) * count)))

    def string(self) -> str:
        n = self.unpack("Q")
        start = self.take(n)
        return bytes(self.buf[start:start + n]).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item, count = self.unpack("I"), self.unpack("Q")
            if count > len(self.buf) - self.pos:   # every item takes at least a byte
                raise _damaged(self.file, f"an array of {count} items is longer than the file")
            if item == 0:
                start = self.take(count)
                return bytes(self.buf[start:start + count])
            if item in _SCALARS:
                return self.many(_SCALARS[item], count)
            return [self.value(item) for _ in range(count)]
        raise _damaged(self.file, f"unknown metadata value type {vtype}")


def open_gguf(path: str | Path) -> GGUFWeights:
    """`GGUFWeights` of a GGUF file: header, metadata and tensor table parsed and checked (every tensor's type, size
    and place inside the file), no tensor read. `ModelFileError` naming the file when it is damaged or truncated."""
    path = Path(path)
    size = path.stat().st_size
    weights = GGUFWeights(path)
    if size < 24:
        raise _damaged(path, f"{size} bytes, shorter than a GGUF header")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != MAGIC:
            raise _damaged(path, f"it starts with {bytes(buf[:4])!r}, not {MAGIC!r}")
        cur = _Cursor(buf, path)
        cur.take(4)
        version, n_tensors, n_kv = cur.unpack("I"), cur.unpack("Q"), cur.unpack("Q")
        if version not in (2, 3):
            hint = " (a big-endian file)" if version > 0xFFFF else ""
            raise ModelFileError(f"{path}: GGUF version {version}{hint} is not supported; this reader takes the "
                                 "little-endian versions 2 and 3 that llama.cpp and ComfyUI-GGUF write")
        if n_tensors > MAX_ENTRIES or n_kv > MAX_ENTRIES:
            raise _damaged(path, f"it claims {n_tensors} tensors and {n_kv} metadata entries")
        for _ in range(n_kv):
            key = cur.string()
            weights.metadata[key] = cur.value(cur.unpack("I"))
        infos = [_tensor_info(cur) for _ in range(n_tensors)]
        header_end = cur.pos
    alignment = weights.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _damaged(path, f"general.alignment is {alignment!r}, not a power of two")
    data_start = -(-header_end // alignment) * alignment
    weights.version = version
    for name, ne, type_id, offset in infos:
        _add_tensor(weights, path, size, data_start, alignment, name, ne, type_id, offset)
    weights._sizes[path] = size
    weights.files.append(path)
    return weights


def _tensor_info(cur: _Cursor) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string()
    n_dims = cur.unpack("I")
    if n_dims > MAX_DIMS:
        raise _damaged(cur.file, f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
    ne = tuple(cur.many("Q", n_dims))
    return name, ne, cur.unpack("I"), cur.unpack("Q")


def _add_tensor(weights: GGUFWeights, path: Path, size: int, data_start: int, alignment: int, name: str,
                ne: tuple[int, ...], type_id: int, offset: int) -> None:
    kind = GGML_TYPES.get(type_id)
    if kind is None:
        raise ModelFileError(f"{path}: tensor {name!r} has GGML type id {type_id}, which this reader does not know "
                             "(a newer llama.cpp format); use a file quantized as Q8_0, Q6_K, Q5_K, Q4_K or F16")
    if name in weights.shapes:
        raise _damaged(path, f"tensor {name!r} is listed twice")
    inner = ne[0] if ne else 1
    if inner % kind.block_size:
        raise _damaged(path, f"tensor {name!r} ({kind.name}) has rows of {inner} values, not a multiple of its "
                             f"block size {kind.block_size}")
    row_bytes = inner // kind.block_size * kind.type_size
    nbytes = math.prod(ne[1:]) * row_bytes
    if offset % alignment or data_start + offset + nbytes > size:
        raise _damaged(path, f"tensor {name!r} lies outside the file or off its {alignment}-byte alignment")
    weights.shapes[name] = tuple(reversed(ne)) if ne else ()
    weights.dtypes[name] = kind.dtype
    weights.qtypes[name] = kind.name
    weights._row_bytes[name] = row_bytes
    weights._located[name] = (path, data_start + offset)
    if kind.dtype is None:
        weights._unread[name] = kind.name
