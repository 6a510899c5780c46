"""Reading weights safely and leanly: safetensors (single or sharded) and pickles opened with ``weights_only=True``.

`open_weights` returns a `Weights`: keys, shapes and metadata up front, tensors one at a time on demand, so a model
built on the meta device can take each tensor straight from the file (`build_on_meta` + `load_state_dict(assign=True)`)
and the peak memory of a load stays at about one copy of the weights.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .errors import CheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# nesting used by training frameworks around a state dict
_STATE_DICT_WRAPPERS = ("state_dict", "model", "module", "ema")
CHUNK_BYTES = 1 << 20  # scratch for converting reads (cast, channels-last); small keeps the peak low


@dataclass
class Weights:
    """Tensors of one checkpoint, by key, read lazily: ``read_into(key, out)`` fills a preallocated tensor of the
    same shape (any dtype, any memory layout). ``path`` is what the user gave (file, or index file)."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, torch.dtype]
    metadata: dict[str, str] = field(default_factory=dict)
    reader: Callable[[str, torch.Tensor, torch.Tensor], None] = field(default=None, repr=False)
    nbytes: int = 0
    _scratch: torch.Tensor | None = field(default=None, repr=False)

    def read_into(self, key: str, out: torch.Tensor) -> None:
        if self._scratch is None:
            self._scratch = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        self.reader(key, out, self._scratch)

    def keys(self) -> list[str]:
        return list(self.shapes)


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                      "F8_E5M2": torch.float8_e5m2}


def _open_safetensors(file: Path, shapes: dict, dtypes: dict, readers: dict) -> dict[str, str]:
    """Add `file`'s keys to `shapes`/`dtypes`/`readers`; return its metadata. CheckpointError if it is damaged.

    The format is an 8-byte little-endian header length, a JSON header {key: {dtype, shape, data_offsets}} (plus
    "__metadata__"), then the data. Tensors are read with plain file reads into fresh memory rather than mapped: a
    memory map's touched pages count towards the process's memory on top of any converted copy (channels-last,
    another dtype), and a mapped file that is overwritten in place crashes the process.
    """
    def damaged(why: str) -> CheckpointError:
        return CheckpointError(f"{file} is not a readable safetensors file ({why}); it is probably truncated or "
                               "corrupt: download or copy it again")

    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise damaged("shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8 or n > 100_000_000:
            raise damaged(f"header length {n} exceeds the file size {size}")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise damaged(f"header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise damaged("header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    start = 8 + n
    for key, info in header.items():
        try:
            dtype = SAFETENSORS_DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(o) for o in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise damaged(f"bad header entry for {key!r}: {e}") from e
        nbytes = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0 or start + end > size:
            raise damaged(f"tensor {key!r} lies outside the file or has the wrong length")
        shapes[key], dtypes[key] = shape, dtype
        readers[key] = (file, start + begin)
    return meta


def _read_into(file: Path, offset: int, dtype: torch.dtype, out: torch.Tensor, scratch: torch.Tensor) -> None:
    """Fill `out` from `file` at `offset` (data stored contiguous in `dtype`). Straight into `out` when layouts and
    dtypes agree; otherwise slice by slice along dim 0 through `scratch` (CHUNK_BYTES of uint8, reused for every
    tensor), so that a cast or a channels-last layout never holds a second copy, nor fragments the heap."""
    if not out.numel():
        return
    with open(file, "rb") as f:
        f.seek(offset)
        if out.dtype == dtype and out.is_contiguous():
            _fill(f, out.view(-1).view(torch.uint8), file)
            return
        flat_out = out if out.ndim else out.view(1)
        row = flat_out[0].numel()
        itemsize = torch.empty((), dtype=dtype).element_size()
        rows = max(1, CHUNK_BYTES // (row * itemsize))
        for r0 in range(0, len(flat_out), rows):
            chunk = flat_out[r0:r0 + rows]
            raw = scratch[: chunk.numel() * itemsize] if chunk.numel() * itemsize <= scratch.numel() else \
                torch.empty(chunk.numel() * itemsize, dtype=torch.uint8)  # one row larger than the scratch
            _fill(f, raw, file)
            chunk.copy_(raw.view(dtype).view(chunk.shape))


def _file_reader(readers: dict, dtypes: dict) -> Callable:
    return lambda key, out, scratch: _read_into(*readers[key], dtypes[key], out, scratch)


def _fill(f, target: torch.Tensor, file: Path) -> None:
    buf = target.numpy()
    if f.readinto(memoryview(buf)) != buf.nbytes:
        raise CheckpointError(f"{file} ended early while reading a tensor; the file is truncated")


def _open_index(index: Path) -> Weights:
    """A sharded checkpoint: ``*.safetensors.index.json`` naming the file of every key."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index} is not a sharded-checkpoint index (JSON with a 'weight_map'): {e}") from e
    shapes, dtypes, readers, meta = {}, {}, {}, {}
    files = sorted({index.parent / name for name in weight_map.values()})
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"{index} lists the shard {f.name}, which is missing; put it in {index.parent}")
        if f.suffix not in SAFETENSORS_SUFFIXES:
            raise CheckpointError(f"{index} lists {f.name}; only safetensors shards are supported")
        meta.update(_open_safetensors(f, shapes, dtypes, readers))
    return Weights(index, shapes, dtypes, meta, _file_reader(readers, dtypes), sum(f.stat().st_size for f in files))


def load_pickle_state_dict(file: Path) -> dict[str, torch.Tensor]:
    """A state dict from a PyTorch pickle, with ``weights_only=True``: a payload that would run code is refused.

    Memory-maps zip-format files (``mmap=True``); unwraps one level of {"state_dict" | "model" | "module" | "ema"}.
    """
    try:
        try:
            obj = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) pickles cannot be memory-mapped
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{file} holds more than tensors (Python objects or code that torch.load(weights_only="
                              f"True) refuses to run: {str(e).splitlines()[0]}). Convert it to .safetensors with a "
                              "trusted tool, or get a safetensors copy") from e
    except Exception as e:
        raise CheckpointError(f"{file} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}); it may be "
                              "truncated or corrupt") from e
    for _ in range(2):
        if isinstance(obj, dict) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _STATE_DICT_WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise CheckpointError(f"{file} does not contain a state dict of tensors (found {type(obj).__name__})")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)


def open_weights(file: Path) -> Weights:
    """`Weights` of a safetensors file, a sharded index (``.index.json``) or a pickle (``weights_only=True``)."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file} does not exist (or is not a file)")
    if file.name.endswith(".index.json"):
        return _open_index(file)
    if file.suffix in SAFETENSORS_SUFFIXES:
        shapes, dtypes, readers = {}, {}, {}
        meta = _open_safetensors(file, shapes, dtypes, readers)
        return Weights(file, shapes, dtypes, meta, _file_reader(readers, dtypes), file.stat().st_size)
    if file.suffix in PICKLE_SUFFIXES:
        sd = load_pickle_state_dict(file)
        return Weights(file, {k: tuple(v.shape) for k, v in sd.items()}, {k: v.dtype for k, v in sd.items()}, {},
                       lambda k, out, scratch: out.copy_(sd[k]), file.stat().st_size)
    raise CheckpointError(f"{file}: unsupported file type {file.suffix!r}; expected one of "
                          f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES} or a sharded '.index.json'")


def check_finite(key: str, tensor: torch.Tensor, source: Path) -> None:
    """CheckpointError if a floating-point tensor holds NaN or Inf (a diverged or damaged checkpoint).

    Tested on the float64 sum, which any NaN or Inf makes non-finite and finite weights cannot overflow: a reduction
    with no tensor-sized temporaries (``isfinite(t).all()`` allocates a mask as large as the tensor)."""
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor.sum(dtype=torch.float64))):
        raise CheckpointError(f"{source}: tensor {key!r} contains NaN or Inf values; the checkpoint is damaged or "
                              "comes from a diverged training run. Use another copy or an earlier checkpoint")


def storage_dtype(weights: Weights) -> torch.dtype:
    """The floating dtype holding most of the weights (what "keep the stored dtype" means for a mixed file)."""
    totals: dict[torch.dtype, int] = {}
    for key, shape in weights.shapes.items():
        dt = weights.dtypes.get(key)
        if dt is not None and dt.is_floating_point:
            totals[dt] = totals.get(dt, 0) + int(torch.Size(shape).numel())
    return max(totals, key=totals.get) if totals else torch.float32


def build_on_meta(factory: Callable[[], nn.Module], weights: Weights, *, dtype: torch.dtype | None = None) -> nn.Module:
    """``factory()`` built on the meta device, then every tensor assigned from `weights` (``assign=True``): no
    random initialisation, no second copy. Floating tensors keep the stored dtype (`storage_dtype`) unless `dtype`
    is given; key sets and shapes must match exactly (CheckpointError naming the differences otherwise)."""
    dtype = dtype or storage_dtype(weights)
    with torch.device("meta"):
        model = factory()
    meta_state = model.state_dict()
    expected = {k: tuple(v.shape) for k, v in meta_state.items()}
    given = set(weights.keys())
    missing = sorted(set(expected) - given)
    unexpected = sorted(given - set(expected))
    wrong = sorted(k for k in set(expected) & given if weights.shapes[k] != expected[k])
    if missing or unexpected or wrong:
        detail = "; ".join(f"{what} {keys[:5]}{' ...' if len(keys) > 5 else ''}" for what, keys in (
            ("missing", missing), ("unexpected", unexpected),
            ("wrong shape", [f"{k} {weights.shapes[k]} != {expected[k]}" for k in wrong])) if keys)
        raise CheckpointError(f"{weights.path}: tensors do not fit the U-Net its config describes ({detail})")
    state = {}
    for key in weights.keys():
        like = meta_state[key]
        fmt = torch.channels_last if like.ndim == 4 and like.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format  # the model's own layout, so nothing converts it afterwards
        stored = weights.dtypes.get(key) or like.dtype
        out = torch.empty(expected[key], dtype=dtype if stored.is_floating_point else stored, memory_format=fmt)
        weights.read_into(key, out)
        check_finite(key, out, weights.path)
        state[key] = out
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)
