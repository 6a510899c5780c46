"""The demo cascade's text encoder: a small T5 v1.1-style encoder, randomly initialised with a fixed seed and frozen.

Nothing about it is trained. What makes a random encoder usable is its position bias: T5's relative-attention bias
table (shared by all layers) is set deterministically so that each head looks at a window of neighbouring bytes
(nearest left, nearest right, a wide symmetric window, a wide left window). With T5's default random bias (std
d_model^-0.5) attention is almost uniform and the output at a byte is nearly its byte identity alone (the 'e' of
"red" and of "blue" measured 0.9998 cosine-similar); with the local windows each byte's embedding mixes its
word and neighbours, a fixed random n-gram feature extractor (same comparison: 0.80), which lets the U-Net's
cross-attention tell "red circle" from "red square" and the first object from the second.
The weights are written with Hugging Face's key names (``shared.weight``, ``encoder.block.N...``) so any T5 loader
reads them; the tokenizer is the byte-level one (ByT5 style), so the file is all the demo needs.
"""
from __future__ import annotations

import os

import torch

# d_model 256, 3 layers, 4 heads of 64, gated-GELU feed-forward 512: ~2.0 M parameters, 8 MB in fp32.
DEMO_T5_SHAPE = dict(d_model=256, d_kv=64, d_ff=512, num_layers=3, num_heads=4, feed_forward_proj="gated-gelu",
                     relative_attention_num_buckets=32, relative_attention_max_distance=128)


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


def save_demo_t5(path: str | os.PathLike, vocab_size: int, seed: int = 0, **shape) -> None:
    """Write `build_demo_t5`'s weights as one .safetensors file (fp32, HF key names, the tied input embedding once as
    ``shared.weight``) with metadata saying how it was made and that it uses the byte tokenizer."""
    from safetensors.torch import save_file

    model = build_demo_t5(vocab_size, seed, **shape)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "encoder.embed_tokens.weight"}
    meta = {"tokenizer": "byte", "made_by": "comfyui_imagen.train.demo_t5.save_demo_t5",
            "seed": str(seed), "note": "random-init frozen T5 v1.1-style encoder with local-window position bias"}
    save_file(state, os.fspath(path), metadata=meta)
