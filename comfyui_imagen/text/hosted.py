"""`HostedT5`: a T5 encoder stack that another runtime loaded and places (ComfyUI's CLIP loaders), run with this
package's tokenization and mask semantics through `T5TextEncoder`.

The host gives two things: the module's tensor shapes keyed as Hugging Face writes them (ComfyUI's T5 uses those
names), from which the config is inferred as for a file (`config.infer_config`), and a ``run(ids, mask) -> hidden``
function that puts its module where it wants (a GPU, partly offloaded...) and returns the final hidden states
[B, L, D] after the last layer norm. Nothing is copied: the weights stay the host's, in the host's dtype and memory.

    encoder = T5TextEncoder(HostedT5(run, shapes, identity="clip@..."), tokenizer, cache=cache)
    cond, uncond = encoder.encode_for_guidance("a red circle", "")
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from .config import infer_config
from .errors import TextEncoderError

Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class HostedT5(nn.Module):
    """`T5Encoder`'s interface over a host's module: ``config``, ``device``, ``compute_dtype`` and
    ``forward(ids [B, L], mask [B, L]) -> hidden [B, L, D]`` (float32). Holds no parameters of its own, so
    `T5TextEncoder`'s ``eval()`` / ``requires_grad_(False)`` leave the host's module alone."""

    def __init__(self, run: Run, shapes: Mapping[str, Sequence[int]], *, source: str = "the host's T5",
                 device: torch.device | str = "cpu", compute_dtype: torch.dtype = torch.float32,
                 nan_fix: str | None = None):
        super().__init__()
        self.nan_fix = nan_fix  # what to tell a user whose T5 gives NaN / Inf (`T5TextEncoder`): it is the host's
        self.config = infer_config(shapes, source=source)
        self._run = run
        self._device = torch.device(device)
        self.compute_dtype = compute_dtype  # what the host computes in; part of the embedding cache's key
        self.source = source

    @property
    def device(self) -> torch.device:
        """Where token ids are put first; ``run`` moves them on if the host places its module elsewhere."""
        return self._device

    def set_compute_dtype(self, dtype: torch.dtype) -> "HostedT5":
        raise TextEncoderError(f"{self.source} computes in the dtype its host chose ({self.compute_dtype}); change "
                               f"it where the T5 was loaded")

    def to(self, *args, **kwargs) -> "HostedT5":
        raise TextEncoderError(f"{self.source} is placed by its host; move it there (for ComfyUI: its model "
                               f"management does)")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self._run(input_ids, attention_mask)
        want = (*input_ids.shape, self.config.d_model)
        if tuple(hidden.shape) != want:
            raise TextEncoderError(f"{self.source} returned hidden states {tuple(hidden.shape)}, expected {want}")
        return hidden.float()
