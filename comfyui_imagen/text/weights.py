"""Find and read T5 encoder weights: a single safetensors file (ComfyUI's models/text_encoders) or a Hugging Face
folder (config.json + model.safetensors, sharded index or .bin), without copying them.

safetensors' ``safe_open`` maps the file and hands out tensors that live in that map, so a weight that keeps its
stored dtype costs no memory beyond the page cache it occupies; the decoder of an encoder-decoder checkpoint is never
touched. Pickles (``.bin``) load as every checkpoint does, with ``weights_only=True`` (`checkpoints.tensors`).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoints.errors import CheckpointError
from ..checkpoints.tensors import (PICKLE_SUFFIXES, SAFETENSORS_DTYPES, SAFETENSORS_SUFFIXES,
                                   load_pickle_state_dict)
from . import fp8
from .config import ENCODER_PROBE, T5EncoderConfig, config_from_hf, expected_shapes, infer_config
from .errors import TextEncoderError, TextEncoderWarning

# Weight files of a Hugging Face folder, in order of preference (diffusers' "variant" names included: DeepFloyd IF's
# text_encoder/ ships model.fp16-0000N-of-00002.safetensors with model.safetensors.index.fp16.json).
FOLDER_CANDIDATES = ("model.safetensors", "model.safetensors.index.json", "model.fp16.safetensors",
                     "model.safetensors.index.fp16.json", "model.bf16.safetensors", "model.safetensors.index.bf16.json",
                     "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model.fp16.bin",
                     "pytorch_model.bin.index.fp16.json")
_FOREIGN_HINTS = {"down_blocks.": "a diffusion U-Net (diffusers layout)", "input_blocks.": "a diffusion U-Net",
                  "unets.": "an imagen-pytorch checkpoint", "model.diffusion_model.": "a diffusion model",
                  "text_model.encoder.layers.": "a CLIP text encoder", "double_blocks.": "a Flux transformer",
                  "joint_blocks.": "an SD3 transformer", "first_stage_model.": "a VAE / SD checkpoint"}


@dataclass
class TensorSource:
    """Tensors of one checkpoint (one or several files), by key, read lazily."""

    path: Path                                 # what the user gave (file or folder)
    files: dict[str, Path]                     # key -> file holding it
    hf_config: dict | None = None
    metadata: dict = field(default_factory=dict)
    _readers: dict = field(default_factory=dict, repr=False)
    _shapes: dict = field(default_factory=dict, repr=False)
    _dtypes: dict = field(default_factory=dict, repr=False)

    def keys(self) -> list[str]:
        return list(self.files)

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype | None:
        return self._dtypes.get(key)

    def get(self, key: str) -> torch.Tensor:
        return self._readers[self.files[key]](key)

    def fingerprint(self) -> str:
        """Path, sizes and modification times of the files: identifies these weights for caches."""
        parts = [str(self.path.resolve())]
        for f in sorted(set(self.files.values())):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
        return "|".join(parts)

    def nbytes(self) -> int:
        return sum(f.stat().st_size for f in set(self.files.values()))


def _add_safetensors(source: TensorSource, file: Path) -> None:
    from safetensors import safe_open
    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
        keys = list(handle.keys())
        meta = handle.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise TextEncoderError(f"{file} is not a readable safetensors file ({e}); re-download it") from e
    source.metadata.update(meta)
    for key in keys:
        sl = handle.get_slice(key)
        source.files[key] = file
        source._shapes[key] = tuple(sl.get_shape())
        source._dtypes[key] = SAFETENSORS_DTYPES.get(sl.get_dtype())
    source._readers[file] = handle.get_tensor


def _add_torch_bin(source: TensorSource, file: Path) -> None:
    """A PyTorch pickle, opened as every checkpoint here is (`load_pickle_state_dict`: ``weights_only=True``)."""
    try:
        tensors = load_pickle_state_dict(file)
    except CheckpointError as e:
        raise TextEncoderError(f"{e}. For T5, use the .safetensors version of these weights") from e
    for key, value in tensors.items():
        source.files[key] = file
        source._shapes[key] = tuple(value.shape)
        source._dtypes[key] = value.dtype
    source._readers[file] = tensors.__getitem__


def _add_file(source: TensorSource, file: Path) -> None:
    if not file.is_file():
        raise TextEncoderError(f"weight file {file} is missing; download it again next to the other files")
    if file.suffix in SAFETENSORS_SUFFIXES:
        _add_safetensors(source, file)
    elif file.suffix in PICKLE_SUFFIXES:
        _add_torch_bin(source, file)
    elif file.suffix == ".gguf":
        raise TextEncoderError(f"{file} is a GGUF file; this loader reads safetensors (fp16, bf16, fp8) T5 files. "
                               "Use t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn(_scaled).safetensors instead")
    else:
        raise TextEncoderError(f"{file}: unknown weight file type {file.suffix!r}; expected .safetensors")


def _add_index(source: TensorSource, index: Path) -> None:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, OSError) as e:
        raise TextEncoderError(f"{index} is not a valid sharded-checkpoint index ({e})") from e
    for shard in sorted(set(weight_map.values())):
        _add_file(source, index.parent / shard)


def open_source(path: str | Path) -> TensorSource:
    """Open a T5 checkpoint: a single weights file, or a Hugging Face folder holding config.json and weights."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TextEncoderError(f"T5 weights not found at {path}; put the file in ComfyUI/models/text_encoders/ "
                               "(e.g. t5xxl_fp16.safetensors) or pass a Hugging Face folder such as IF's text_encoder/")
    source = TensorSource(path=path, files={})
    if path.is_file():
        _add_file(source, path)
        return source
    config_file = path / "config.json"
    if config_file.is_file():
        try:
            source.hf_config = json.loads(config_file.read_text())
        except ValueError as e:
            raise TextEncoderError(f"{config_file} is not valid JSON ({e})") from e
    for name in FOLDER_CANDIDATES:
        if (path / name).is_file():
            (_add_index if name.endswith(".json") else _add_file)(source, path / name)
            return source
    singles = sorted(p for p in path.iterdir() if p.suffix in SAFETENSORS_SUFFIXES)
    if len(singles) == 1:
        _add_file(source, singles[0])
        return source
    raise TextEncoderError(f"{path} holds no T5 weights: expected model.safetensors, a "
                           "model.safetensors.index.json with its shards, or pytorch_model.bin (plus config.json)")


def find_prefix(keys: list[str], *, source: str) -> str:
    """The key prefix in front of ``encoder.block.0...`` ('' for plain files, 'text_encoders.t5xxl.transformer.' in
    an SD3 all-in-one checkpoint)."""
    prefixes = sorted({k[: -len(ENCODER_PROBE)] for k in keys if k.endswith(ENCODER_PROBE)})
    if len(prefixes) == 1:
        return prefixes[0]
    if len(prefixes) > 1:
        raise TextEncoderError(f"{source} holds several T5 encoders (prefixes {prefixes}); extract one of them")
    hint = next((what for marker, what in _FOREIGN_HINTS.items() if any(marker in k for k in keys)), None)
    sample = ", ".join(repr(k) for k in keys[:3]) or "no tensors at all"
    what = f" It looks like {hint}, not a T5 text encoder." if hint else ""
    raise TextEncoderError(f"{source} is not a T5 text encoder: no {ENCODER_PROBE!r} key (found {sample}).{what} "
                           "Put a T5 file such as t5xxl_fp16.safetensors in ComfyUI/models/text_encoders/ and "
                           "load diffusion models with the Imagen stage loader")


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


def read_encoder(source: TensorSource, *, dtype: torch.dtype | None = None) -> tuple[T5EncoderConfig, dict]:
    """The encoder's config and state dict (keys as our `T5Encoder` names them, ``<layer>.weight_scale`` added for
    scaled weights), big weights in ``dtype`` (None: as stored), the rest as stored."""
    name = str(source.path)
    keys = source.keys()
    prefix = find_prefix(keys, source=name)
    ours = [k[len(prefix):] for k in keys if k.startswith(prefix)]
    dropped = [k for k in ours if k.startswith(("decoder.", "lm_head."))]
    if dropped:
        warnings.warn(f"{name} is an encoder-decoder checkpoint: using its encoder, ignoring {len(dropped)} "
                      "decoder/lm_head tensors (they are not read into memory)", TextEncoderWarning, stacklevel=3)
    weight_shapes = {k: source.shape(prefix + k) for k in ours
                     if not k.endswith(fp8.WEIGHT_SCALE_SUFFIXES + fp8.IGNORED_SUFFIXES)}
    if source.hf_config is not None:
        config = config_from_hf(source.hf_config, weight_shapes, source=name)
    else:
        config = infer_config(weight_shapes, source=name)
    fp8.check_quant_formats([prefix + k for k in ours], source.metadata, source.get, source=name)

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
        if source.dtype(full) not in (torch.float32, torch.float16, torch.bfloat16, torch.float64, *fp8.FP8_DTYPES):
            raise TextEncoderError(f"{name}: tensor {full!r} is stored as {source.dtype(full)}, which is not a float "
                                   "type this loader reads; use an fp16, bf16 or fp8 T5 file")
        tensor = source.get(full)
        scale_key = fp8.scale_key_for(full, present)
        scale = source.get(scale_key) if scale_key else None
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
    return config, state
