"""The demo cascade's text encoder: a small T5 v1.1-style encoder over bytes, pre-trained on captions, then frozen.

Initialisation: random with a fixed seed, except T5's relative-attention bias table (shared by all layers), which is
set so that each head looks at a window of neighbouring bytes (nearest left, nearest right, a wide symmetric window,
a wide left window). With T5's default random bias (std d_model^-0.5) attention is almost uniform and the output at
a byte is nearly its byte identity alone (the 'e' of "red" and of "blue" measured 0.9998 cosine-similar); with the
local windows each byte's embedding mixes its word and neighbours (same comparison: 0.80).

Pre-training (`train_demo_t5`), the stand-in for T5's web-scale pre-training that a frozen encoder relies on: the
encoder learns to make every stated fact of a caption retrievable by attention. A probe of one learned query per
fact (first and second object's colour and shape, size, position or relation, background) attends over the token
outputs, as the U-Net's cross-attention will, and classifies; encoder and probe train together on random training
captions (never a held-out colour-shape pair), then the probe is dropped and the encoder frozen. A random encoder
leaves the U-Net to untangle bytes; the demo base stage trained on it drew the right colour but scattered blobs.
The weights are written with Hugging Face's key names (``shared.weight``, ``encoder.block.N...``) so any T5 loader
reads them; the tokenizer is the byte-level one (ByT5 style), so the file is all the demo needs.
"""
from __future__ import annotations

import math
import os
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.scenes import (BACKGROUNDS, COLOURS, DEFAULT_POSITION, POSITIONS, RELATIONS, SHAPES, SIZES, Scene,
                           caption_match, resolved_background)
from ..text.tokenizers import ByteTokenizer, pad_and_truncate
from .config import warmup_cosine

# d_model 256, 3 layers, 4 heads of 64, gated-GELU feed-forward 512: ~2.0 M parameters, 8 MB in fp32.
DEMO_T5_SHAPE = dict(d_model=256, d_kv=64, d_ff=512, num_layers=3, num_heads=4, feed_forward_proj="gated-gelu",
                     relative_attention_num_buckets=32, relative_attention_max_distance=128)
T5_WARMUP_STEPS = 100  # pre-training: a cosine to zero over the run, its first steps scaled by a linear warm-up


def bucket_offset(bucket: int, num_buckets: int = 32, max_distance: int = 128) -> float:
    """A representative signed key-minus-query distance of one of T5's bidirectional relative-position buckets:
    half the buckets per direction (the upper half for keys to the right), the first half of those exact distances,
    the rest log-spaced up to `max_distance`, represented by their geometric midpoint (the inverse of
    ``comfyui_imagen.text.model.relative_position_bucket``)."""
    half = num_buckets // 2
    right, b = bucket >= half, bucket % half
    exact = half // 2
    n = b if b < exact else exact * (max_distance / exact) ** ((b - exact + 0.5) / (half - exact))
    return float(n if right else -n)


def local_window_bias(num_heads: int, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """The [num_buckets, num_heads] relative-attention bias of the demo encoder: heads cycle through four windows
    (left neighbour, right neighbour, wide symmetric, wide left), each a bias falling linearly with distance and
    -30 (no attention) on the excluded side."""
    bias = torch.zeros(num_buckets, num_heads)
    for b in range(num_buckets):
        d = bucket_offset(b, num_buckets, max_distance)
        n = abs(d)
        windows = ((-n if d <= 0 else -30.0), (-n if d >= 0 else -30.0), -0.25 * n, (-0.25 * n if d <= 0 else -30.0))
        for h in range(num_heads):
            bias[b, h] = windows[h % 4]
    return bias


def build_demo_t5(vocab_size: int, seed: int = 0, **shape):
    """A frozen, randomly initialised (torch.manual_seed(seed)) T5EncoderModel with the local-window bias."""
    from transformers import T5Config, T5EncoderModel

    dims = {**DEMO_T5_SHAPE, **shape}
    config = T5Config(vocab_size=vocab_size, dropout_rate=0.0, is_encoder_decoder=False, use_cache=False,
                      pad_token_id=0, eos_token_id=1, **dims)
    torch.manual_seed(seed)
    model = T5EncoderModel(config).eval().requires_grad_(False)
    attention = model.encoder.block[0].layer[0].SelfAttention
    attention.relative_attention_bias.weight.copy_(
        local_window_bias(dims["num_heads"], dims["relative_attention_num_buckets"],
                          dims["relative_attention_max_distance"]))
    return model


# The facts the pre-training probe reads back from a caption, and their number of classes. An unstated size is its
# own class (it draws 0.375); a two-object scene has size and layout classes of its own and a one-object scene a
# "none" second object.
_SIZE_CLASSES = (*SIZES, "unstated", "two objects")
_LAYOUTS = (*POSITIONS, *RELATIONS)
FACTS: dict[str, int] = {"colour 1": len(COLOURS), "shape 1": len(SHAPES), "colour 2": len(COLOURS) + 1,
                         "shape 2": len(SHAPES) + 1, "size": len(_SIZE_CLASSES), "layout": len(_LAYOUTS),
                         "background": len(BACKGROUNDS)}


def caption_facts(scene: Scene) -> list[int]:
    """The class index of each of `FACTS` for a scene (unstated position and background at their defaults)."""
    first = scene.objects[0]
    second = scene.objects[1] if len(scene.objects) == 2 else None
    colours = list(COLOURS)
    if second is None:
        size = first.size or "unstated"
        layout = first.position or DEFAULT_POSITION
        colour2, shape2 = len(colours), len(SHAPES)
    else:
        size, layout = "two objects", scene.relation
        colour2, shape2 = colours.index(second.colour), SHAPES.index(second.shape)
    return [colours.index(first.colour), SHAPES.index(first.shape), colour2, shape2, _SIZE_CLASSES.index(size),
            _LAYOUTS.index(layout), list(BACKGROUNDS).index(resolved_background(scene))]


# What each byte of a caption's meaningful words states: (word class, value) per regex group of the grammar, the
# object's role (first or second) included, so that a byte's output says which object its word describes.
_WORD_CLASSES = ([("c1", c) for c in COLOURS] + [("c2", c) for c in COLOURS] + [("s1", s) for s in SHAPES]
                 + [("s2", s) for s in SHAPES] + [("size", s) for s in SIZES] + [("pos", p) for p in POSITIONS]
                 + [("rel", r) for r in ("to the left of", "above")] + [("bg", b) for b in BACKGROUNDS])
_GROUP_ALIASES = {"c": "c1", "s": "s1", "center": "pos"}
IGNORE = -100


def byte_facts(caption: str) -> list[int]:
    """One class index of `_WORD_CLASSES` per byte of a grammar caption (`IGNORE` on filler words and spaces)."""
    m = caption_match(caption)
    if m is None:
        raise ValueError(f"not a shapes-grammar caption: {caption!r}")
    labels = [IGNORE] * len(caption.encode("utf-8"))
    for group, value in m.groupdict().items():
        if value is not None:
            start, end = m.span(group)
            labels[start:end] = [_WORD_CLASSES.index((_GROUP_ALIASES.get(group, group), value))] * (end - start)
    return labels


class FactProbe(nn.Module):
    """Reads the facts back from the encoder's token outputs: one learned query per fact attends (single head, scaled
    dot product, text mask honoured), as the U-Net's cross-attention will, and a linear classifier reads the fact
    from its query's result; a linear classifier per token reads its word's class (`byte_facts`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(len(FACTS), dim) * dim ** -0.5)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.classifiers = nn.ModuleList(nn.Linear(dim, n) for n in FACTS.values())
        self.per_token = nn.Linear(dim, len(_WORD_CLASSES))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        scores = torch.einsum("qd,bld->bql", self.queries, self.key(tokens)) / math.sqrt(tokens.shape[-1])
        read = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(-1) @ self.value(tokens)
        return [head(read[:, i]) for i, head in enumerate(self.classifiers)], self.per_token(tokens)


def _caption_batch(rng: np.random.Generator, n: int, split: str):
    from ..data.sampling import sample_scene

    scenes = [sample_scene(rng, split) for _ in range(n)]
    tok = ByteTokenizer()
    ids = tok.tokenize([s.caption for s in scenes])
    length = max(map(len, ids)) + 1
    batch = pad_and_truncate(ids, length, pad_id=tok.pad_id, eos_id=tok.eos_id)
    per_byte = torch.full((n, length), IGNORE)
    for i, s in enumerate(scenes):
        labels = byte_facts(s.caption)
        per_byte[i, :len(labels)] = torch.tensor(labels)
    return batch, torch.tensor([caption_facts(s) for s in scenes]), per_byte


def _probe_loss(model, probe: FactProbe, batch, facts: torch.Tensor,
                per_byte: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the facts and the per-byte classes, and the per-fact accuracy [len(FACTS)]."""
    tokens = model(input_ids=batch.ids, attention_mask=batch.mask.long()).last_hidden_state
    logits, byte_logits = probe(tokens, batch.mask)
    loss = sum(F.cross_entropy(out, facts[:, i]) for i, out in enumerate(logits))
    loss = loss + F.cross_entropy(byte_logits.flatten(0, 1), per_byte.flatten(), ignore_index=IGNORE)
    accuracy = torch.stack([(out.argmax(-1) == facts[:, i]).float().mean() for i, out in enumerate(logits)])
    return loss, accuracy


def train_demo_t5(vocab_size: int, seed: int = 0, steps: int = 600, batch_size: int = 64, lr: float = 1e-3,
                  log: Callable[[str], None] | None = None, **shape):
    """`build_demo_t5`'s encoder after `steps` of caption pre-training (module docstring; AdamW at `lr` on a cosine
    to zero over the run, its start warmed up over `T5_WARMUP_STEPS`: `warmup_cosine(overlap=True)`), frozen, and
    the probe's per-fact accuracy on 512 held-out captions ({fact: fraction})."""
    model = build_demo_t5(vocab_size, seed, **shape).train().requires_grad_(True)
    torch.manual_seed(seed)
    probe = FactProbe(model.config.d_model)
    params = list(model.parameters()) + list(probe.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = warmup_cosine(step, steps=steps, lr=lr, warmup_steps=T5_WARMUP_STEPS, overlap=True)
        loss, accuracy = _probe_loss(model, probe, *_caption_batch(rng, batch_size, "train"))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if log and (step + 1) % 100 == 0:
            log(f"t5 step {step + 1}: loss {loss.item():.4f}, worst fact accuracy {accuracy.min().item():.3f}")
    model.eval().requires_grad_(False)
    with torch.no_grad():
        _, accuracy = _probe_loss(model, probe, *_caption_batch(np.random.default_rng(seed + 1), 512, "heldout"))
    return model, dict(zip(FACTS, accuracy.tolist()))


def save_demo_t5(path: str | os.PathLike, vocab_size: int, seed: int = 0, train_steps: int = 0,
                 log: Callable[[str], None] | None = None, **shape) -> None:
    """Write the demo encoder as one .safetensors file (fp32, HF key names, the tied input embedding once as
    ``shared.weight``) with metadata saying how it was made and that it uses the byte tokenizer. `train_steps` 0
    writes the random-init encoder (`build_demo_t5`), otherwise `train_demo_t5`'s."""
    from safetensors.torch import save_file

    meta = {"tokenizer": "byte", "made_by": "comfyui_imagen.train.demo_t5.save_demo_t5", "seed": str(seed)}
    if train_steps:
        model, heldout = train_demo_t5(vocab_size, seed, train_steps, log=log, **shape)
        meta["note"] = (f"T5 v1.1-style byte encoder, local-window position bias at init, {train_steps} steps of "
                        "caption-fact pre-training (train captions only), frozen")
        meta["probe_accuracy_heldout"] = " ".join(f"{k}={v:.3f}".replace(" ", "_", 1) for k, v in heldout.items())
    else:
        model = build_demo_t5(vocab_size, seed, **shape)
        meta["note"] = "random-init frozen T5 v1.1-style encoder with local-window position bias"
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    save_file(state, os.fspath(path), metadata=meta)
