"""Building a U-Net straight from its file: `build_on_meta` allocates each tensor once, in the compute dtype and the
model's own memory layout, and fills it from the file (`Weights.read_into`, the materialised mode of the file layer),
so the peak memory of a stage load stays at about one copy of the weights.

Reading files is `comfyui_imagen.files`; its `Weights`, `open_weights` and `load_pickle_state_dict` stay importable
from here.
"""
from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import nn

from ..checks import all_finite
from ..files import Weights, load_pickle_state_dict, open_weights
from .errors import CheckpointError

__all__ = ["Weights", "build_on_meta", "check_finite", "load_pickle_state_dict", "open_weights", "shapes_only",
           "storage_dtype"]

_SHAPES_ONLY = contextvars.ContextVar("comfyui_imagen_shapes_only", default=False)


@contextlib.contextmanager
def shapes_only() -> Iterator[None]:
    """Inside: `build_on_meta` checks keys and shapes and returns the model on the meta device, reading no weights
    (what a stage is, from its config and file header alone: `checkpoints.peek_stage`)."""
    token = _SHAPES_ONLY.set(True)
    try:
        yield
    finally:
        _SHAPES_ONLY.reset(token)


def storage_dtype(weights: Weights) -> torch.dtype:
    """`Weights.storage_dtype` (kept under its earlier name)."""
    return weights.storage_dtype()


def check_finite(key: str, tensor: torch.Tensor, source: Path) -> None:
    """CheckpointError if a floating-point tensor holds NaN or Inf (a diverged or damaged checkpoint); the test is
    `checks.all_finite` (one min/max pass, no tensor-sized temporary)."""
    if not all_finite(tensor):
        raise CheckpointError(f"{source}: tensor {key!r} contains NaN or Inf values; the checkpoint is damaged or "
                              "comes from a diverged training run. Use another copy or an earlier checkpoint")


def build_on_meta(factory: Callable[[], nn.Module], weights: Weights, *, dtype: torch.dtype | None = None) -> nn.Module:
    """``factory()`` built on the meta device, then every tensor assigned from `weights` (``assign=True``): no
    random initialisation, no second copy. Floating tensors keep the stored dtype (`Weights.storage_dtype`) unless
    `dtype` is given; key sets and shapes must match exactly (CheckpointError naming the differences otherwise)."""
    dtype = dtype or weights.storage_dtype()
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
    if _SHAPES_ONLY.get():
        return model.eval().requires_grad_(False)
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
