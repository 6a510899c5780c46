"""One lazy reader for every weight file: safetensors (one file, or shards named by an ``*.index*.json``), PyTorch
pickles and GGUF (its header parsed in gguf.py), opened as `Weights`: keys, shapes, dtypes and metadata up front
(headers only), tensors on demand in one of two ways, chosen per use:

* materialised, ``read_into(key, out)``: plain file reads into a tensor the caller allocated in the compute dtype and
  memory layout (a cast or a channels-last layout goes through a small reused scratch buffer), so a load peaks at
  about one copy of the weights, and the file may be replaced afterwards. Stage loading uses this.
* memory-mapped, ``mapped(key)``: a tensor viewing a private (copy-on-write) map of the file. It costs no anonymous
  memory: its pages are the page cache's, which the kernel can drop and read again. The T5 loader uses this and
  casts one layer at a time while encoding. A mapped file must not be truncated or rewritten in place while a
  tensor of it lives (true of every memory map: the process would crash on the next touch).

Safetensors headers are parsed and checked here (length, JSON, every tensor's dtype, length and position inside the
file) before anything is read. Pickles are loaded only with ``torch.load(weights_only=True)`` (memory-mapped when
zip), so a pickle that would run code is refused; both read modes then hand out the loaded tensors.
"""
from __future__ import annotations

import json
import math
import mmap
import pickle
import re
from pathlib import Path
from typing import Iterable

import torch

from .errors import ModelFileError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES
GGUF_SUFFIXES = (".gguf",)  # llama.cpp's format (files/gguf.py); only T5 encoders are read from it
CHUNK_BYTES = 1 << 20  # scratch for converting reads (cast, channels-last); small keeps the peak low
# A safetensors header is ~150 bytes per tensor: 30 KB for T5-XXL, ~0.5 MB for the largest all-in-one checkpoints.
# 8 MiB (~50,000 tensors) refuses a hostile or corrupt length in ~1 s; the format's own cap, 100 MB, cost 5 s and
# 456 MB of Python objects for a 20 MB header before it was refused.
MAX_HEADER_BYTES = 8 * 2**20
_STATE_DICT_WRAPPERS = ("state_dict", "model", "module", "ema")  # nesting used by training frameworks

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn,
                      "F8_E5M2": torch.float8_e5m2,
                      **{name: getattr(torch, attr) for name, attr in (("U16", "uint16"), ("U32", "uint32"),
                                                                       ("U64", "uint64")) if hasattr(torch, attr)}}


def is_index(path: Path) -> bool:
    """Whether `path` names a sharded-checkpoint index (``model.safetensors.index.json``, diffusers' variant
    ``diffusion_pytorch_model.safetensors.index.fp16.json``, ``pytorch_model.bin.index.json``)."""
    return path.name.endswith(".json") and ".index" in path.name


class Weights:
    """Tensors of one checkpoint (a file, or the shards of an index), by key, read lazily.

    ``path``: what was opened (the file or the index); ``shapes`` / ``dtypes`` by key (dtype None: stored in a type
    this reader does not read); ``metadata``: the safetensors headers' ``__metadata__`` ({} for pickles); ``files``:
    the files holding the tensors.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.dtypes: dict[str, torch.dtype | None] = {}
        self.metadata: dict[str, str] = {}
        self.files: list[Path] = []
        self._located: dict[str, tuple[Path, int]] = {}  # safetensors: key -> (file, byte offset of its data)
        self._loaded: dict[str, torch.Tensor] = {}       # pickles: key -> the loaded tensor
        self._unread: dict[str, str] = {}                # key -> its safetensors dtype name that torch lacks
        self._sizes: dict[Path, int] = {}
        self._maps: dict[Path, mmap.mmap] = {}  # never closed here: tensors view them
        self._scratch: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"Weights({str(self.path)!r}, {len(self.shapes)} tensors)"

    @classmethod
    def from_tensors(cls, path: str | Path, tensors: dict[str, torch.Tensor],
                     metadata: dict[str, str] | None = None) -> "Weights":
        """`Weights` over tensors already loaded (one part of a pickle that holds several models), named `path`."""
        weights = cls(path)
        weights.metadata = dict(metadata or {})
        for key, value in tensors.items():
            weights.shapes[key], weights.dtypes[key] = tuple(value.shape), value.dtype
            weights._loaded[key] = value
        weights.files = [weights.path] if weights.path.is_file() else []
        weights._sizes = {f: f.stat().st_size for f in weights.files}
        return weights

    def subset(self, prefix: str) -> "Weights":
        """The tensors whose keys start with `prefix`, under the rest of their keys: a view (nothing is read) of one
        model in a file that holds several (imagen-pytorch's ``unets.0.``, ``unets.1.``...)."""
        view = Weights(self.path)
        view.metadata, view.files, view._sizes, view._maps = self.metadata, self.files, self._sizes, self._maps
        for key in self.shapes:
            if key.startswith(prefix):
                short = key[len(prefix):]
                view.shapes[short], view.dtypes[short] = self.shapes[key], self.dtypes[key]
                for mine, theirs in ((self._located, view._located), (self._loaded, view._loaded),
                                     (self._unread, view._unread)):
                    if key in mine:
                        theirs[short] = mine[key]
        return view

    def keys(self) -> list[str]:
        return list(self.shapes)

    @property
    def nbytes(self) -> int:
        """Bytes on disk of all files holding the tensors."""
        return sum(self._sizes.values())

    def fingerprint(self) -> str:
        """Path, sizes and modification times of the files: identifies these weights for caches."""
        parts = [str(self.path.resolve())]
        for f in sorted(set(self.files)):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)

    def storage_dtype(self, keys: Iterable[str] | None = None) -> torch.dtype:
        """The floating dtype holding most of the weights (of `keys`, default all): what "keep the stored dtype"
        means for a mixed file (fp16 weights with fp32 norms, fp8 weights with fp32 scales)."""
        totals: dict[torch.dtype, int] = {}
        for key in self.shapes if keys is None else keys:
            dt = self.dtypes.get(key)
            if dt is not None and dt.is_floating_point:
                totals[dt] = totals.get(dt, 0) + math.prod(self.shapes[key])
        return max(totals, key=totals.get) if totals else torch.float32

    # -- the two read modes -------------------------------------------------------------------------------------------
    def read_into(self, key: str, out: torch.Tensor) -> None:
        """Fill `out` (the tensor's shape; any dtype, any memory layout) with the stored tensor `key`."""
        dtype = self._readable(key)
        if tuple(out.shape) != self.shapes[key]:
            raise ModelFileError(f"{self.path}: tensor {key!r} has shape {self.shapes[key]}, not {tuple(out.shape)}")
        if key in self._loaded:
            out.copy_(self._loaded[key])
            return
        if self._scratch is None:
            self._scratch = torch.empty(CHUNK_BYTES, dtype=torch.uint8)
        _read_into(*self._located[key], dtype, out, self._scratch)

    def mapped(self, key: str) -> torch.Tensor:
        """The stored tensor `key`, as stored, viewing a private map of its file (no anonymous memory; writing to it
        copies the touched pages, never the file). A tensor stored at an offset its dtype cannot be aligned to, or
        an empty one, is read into fresh memory instead; a pickle's tensor is the loaded one."""
        dtype = self._readable(key)
        if key in self._loaded:
            return self._loaded[key]
        shape = self.shapes[key]
        file, offset = self._located[key]
        numel = math.prod(shape)
        if numel == 0 or offset % dtype.itemsize:
            out = torch.empty(shape, dtype=dtype)
            self.read_into(key, out)
            return out
        return self._view(file, offset, numel * dtype.itemsize).view(dtype).view(shape)

    def _view(self, file: Path, offset: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` bytes of `file` from ``offset`` as a uint8 tensor viewing its private map."""
        try:
            if file not in self._maps:
                with open(file, "rb") as f:  # copy-on-write: the map is writable, the file never written
                    self._maps[file] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
            # the tensor holds a reference to the map, which is unmapped when the last such tensor goes
            return torch.frombuffer(self._maps[file], dtype=torch.uint8, count=nbytes, offset=offset)
        except (OSError, ValueError) as e:
            raise ModelFileError(f"{file} cannot be memory-mapped ({e}); it changed since it was opened, or the file "
                                 "system does not allow it: copy the file again") from e

    def _readable(self, key: str) -> torch.dtype:
        dtype = self.dtypes[key]
        if dtype is None:
            raise ModelFileError(f"{self.path}: tensor {key!r} {self._unreadable(key)}")
        return dtype

    def _unreadable(self, key: str) -> str:
        return (f"is stored as {self._unread.get(key)!r}, which this version of PyTorch cannot hold; use a file with "
                "float or integer tensors")

    # -- opening ------------------------------------------------------------------------------------------------------
    def _add_file(self, file: Path) -> None:
        suffix = file.suffix.lower()
        if suffix in SAFETENSORS_SUFFIXES:
            self._add_safetensors(file)
        elif suffix in PICKLE_SUFFIXES:
            self._add_pickle(file)
        else:
            raise ModelFileError(f"{file}: unsupported file type {file.suffix!r}; expected one of {WEIGHT_SUFFIXES} "
                                 "or a sharded '.index.json'")

    def _add_safetensors(self, file: Path) -> None:
        """The format: an 8-byte little-endian header length, a JSON header {key: {dtype, shape, data_offsets}}
        (plus "__metadata__"), then the data. Nothing but the header is read here."""
        size = file.stat().st_size
        header, start = _read_header(file, size)
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise _damaged(file, "its __metadata__ is not a JSON object")
        for key, info in header.items():
            try:
                name = info["dtype"]
                shape = tuple(int(d) for d in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError) as e:
                raise _damaged(file, f"bad header entry for {key!r}: {e}") from e
            dtype = SAFETENSORS_DTYPES.get(name)
            wrong_length = dtype is not None and end - begin != math.prod(shape) * dtype.itemsize
            if wrong_length or begin < 0 or end < begin or start + end > size:
                raise _damaged(file, f"tensor {key!r} lies outside the file or has the wrong length")
            self.shapes[key], self.dtypes[key] = shape, dtype
            self._located[key] = (file, start + begin)
            if dtype is None:
                self._unread[key] = str(name)
        self.metadata.update(meta)
        self._sizes[file] = size
        self.files.append(file)

    def _add_pickle(self, file: Path) -> None:
        for key, value in load_pickle_state_dict(file).items():
            self.shapes[key], self.dtypes[key] = tuple(value.shape), value.dtype
            self._loaded[key] = value
        self._sizes[file] = file.stat().st_size
        self.files.append(file)

    def _add_index(self, index: Path) -> None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted({index.parent / name for name in weight_map.values()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelFileError(f"{index} is not a sharded-checkpoint index (JSON with a 'weight_map'): {e}") from e
        for shard in shards:
            if not shard.is_file():
                raise ModelFileError(f"{index} lists the shard {shard.name}, which is missing; put it in "
                                     f"{index.parent} (download it again next to the other files)")
            self._add_file(shard)


def open_weights(path: str | Path) -> Weights:
    """`Weights` of a safetensors file, a sharded index (``*.index*.json``), a pickle (``weights_only=True``) or a
    GGUF file (`GGUFWeights`);
    `ModelFileError` naming the file and the fix if it is missing, damaged or of another type."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} does not exist (or is not a file)")
    if path.suffix.lower() in GGUF_SUFFIXES:
        from .gguf import open_gguf  # (gguf.py builds on this module)
        return open_gguf(path)
    weights = Weights(path)
    if is_index(path):
        weights._add_index(path)
    else:
        weights._add_file(path)
    return weights


def _damaged(file: Path, why: str) -> ModelFileError:
    return ModelFileError(f"{file} is not a readable safetensors file ({why}); it is probably truncated or corrupt: "
                          "download or copy it again")


def _read_header(file: Path, size: int) -> tuple[dict, int]:
    """The parsed JSON header of a safetensors file and where its data starts."""
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _damaged(file, "shorter than the 8-byte header length")
        n = int.from_bytes(head, "little")
        if n > size - 8:
            raise _damaged(file, f"header length {n} exceeds the file size {size}")
        if n > MAX_HEADER_BYTES:
            raise _damaged(file, f"its header claims {n / 2**20:.1f} MiB; real ones are far smaller, and at most "
                                 f"{MAX_HEADER_BYTES // 2**20} MiB are read")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise _damaged(file, f"header is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise _damaged(file, "header is not a JSON object")
    return header, 8 + n


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
        rows = max(1, CHUNK_BYTES // (row * dtype.itemsize))
        for r0 in range(0, len(flat_out), rows):
            chunk = flat_out[r0:r0 + rows]
            nbytes = chunk.numel() * dtype.itemsize
            raw = scratch[:nbytes] if nbytes <= scratch.numel() else torch.empty(nbytes, dtype=torch.uint8)
            _fill(f, raw, file)  # (a single row larger than the scratch gets its own buffer)
            chunk.copy_(raw.view(dtype).view(chunk.shape))


def _fill(f, target: torch.Tensor, file: Path) -> None:
    buf = target.numpy()
    if f.readinto(memoryview(buf)) != buf.nbytes:
        raise ModelFileError(f"{file} ended early while reading a tensor; the file is truncated: copy it again")


def load_pickle_state_dict(file: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a PyTorch pickle, with ``weights_only=True``: a payload that would run code is refused.

    Memory-maps zip-format files (``mmap=True``); unwraps up to two levels of {"state_dict" | "model" | "module" |
    "ema"}; keeps the tensors only.
    """
    file = Path(file)
    obj = load_pickle(file)
    for _ in range(2):
        if isinstance(obj, dict) and not _is_state_dict(obj):
            inner = next((obj[k] for k in _STATE_DICT_WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict) or not _is_state_dict(obj):
        raise ModelFileError(f"{file} does not contain a state dict of tensors (found {type(obj).__name__})")
    return tensors_of(obj)


def tensors_of(state: dict) -> dict[str, torch.Tensor]:
    """The tensor entries of a loaded dict (a pickled state dict may carry other values beside them)."""
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


SAFE_UNPICKLER_TORCH = (2, 6)  # torch.load(weights_only=True) runs no code from 2.6 on (CVE-2025-32434 before)


def _torch_version() -> tuple[int, int]:
    major, minor = (int(re.match(r"\d+", part).group()) for part in torch.__version__.split(".")[:2])
    return major, minor


def load_pickle(file: str | Path):
    """Whatever a PyTorch pickle holds, loaded with ``weights_only=True`` (tensors and plain Python only: a payload
    that would run code is refused unrun, `ModelFileError`); zip-format files are memory-mapped."""
    file = Path(file)
    if _torch_version() < SAFE_UNPICKLER_TORCH:
        raise ModelFileError(f"{file} is a pickle, and torch {torch.__version__}'s weights_only loader can be made to "
                             f"run code (CVE-2025-32434, fixed in torch 2.6): update torch to 2.6 or later, or use "
                             f"the .safetensors version of these weights")
    try:
        try:
            obj = torch.load(str(file), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:  # legacy (non-zip) pickles cannot be memory-mapped
            if "mmap" not in str(e) and "zip" not in str(e):
                raise
            obj = torch.load(str(file), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _refused_pickle(file, str(e)) from e
    except Exception as e:
        if "weights_only" in str(e):
            raise _refused_pickle(file, str(e)) from e
        raise ModelFileError(f"{file} is not a readable PyTorch checkpoint ({type(e).__name__}: {e}); it may be "
                             "truncated or corrupt") from e
    return obj


def _refused_pickle(file: Path, message: str) -> ModelFileError:
    """What torch.load(weights_only=True) refusing a file means, without torch's advice to retry with
    weights_only=False or to allowlist the global (either would run whatever the file holds)."""
    code = re.search(r"GLOBAL [\w.]+", message)
    if code is not None:
        return ModelFileError(f"{file} refers to Python code or objects, not only tensors ({code.group(0)}); "
                              "torch.load(weights_only=True) refused it unrun. Use the .safetensors version of these "
                              "weights, or convert it with a tool you trust")
    operand = re.search(r"Unsupported operand \d+", message)
    why = operand.group(0) if operand else "not a pickle of tensors"
    return ModelFileError(f"{file} is not a PyTorch checkpoint that can be read safely ({why}): it is truncated, "
                          "corrupt, or not a torch.save file (e.g. a plain Python pickle); nothing in it was run "
                          "(torch.load with weights_only=True). Download or copy it again, or use the .safetensors "
                          "version of these weights")


def _is_state_dict(obj: dict) -> bool:
    return bool(obj) and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= max(1, len(obj) // 2)
