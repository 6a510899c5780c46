"""Shared helpers for the tests/test_text_*.py files (no tests here): tiny random T5 encoders built by transformers
(the oracle), written in every layout users have, and the real T5 v1.1 tokenizer from ../shared/t5-v1_1-xxl."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from comfyui_imagen.text import T5EncoderConfig

SHARED_T5 = Path(__file__).resolve().parents[2] / "shared" / "t5-v1_1-xxl"
needs_real_tokenizer = pytest.mark.skipif(
    not (SHARED_T5 / "tokenizer.json").is_file(),
    reason=f"the T5 v1.1 tokenizer is not at {SHARED_T5} (CI keeps it there, beside the repository)")

# vocab 400 > 259 so the byte tokenizer's ids fit; tiny enough that every test runs in milliseconds
TINY_GATED = T5EncoderConfig(vocab_size=400, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4)
TINY_RELU = T5EncoderConfig(vocab_size=400, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=2, gated=False,
                            activation="relu")


@functools.lru_cache(maxsize=None)
def oracle(config: T5EncoderConfig = TINY_GATED, seed: int = 0):
    """transformers' T5EncoderModel with seeded random weights (fp32, eval)."""
    from transformers import T5Config, T5EncoderModel
    torch.manual_seed(seed)
    model = T5EncoderModel(T5Config(**config.to_hf_dict())).eval()
    with torch.no_grad():  # T5's init gives near-zero norms' effect; make every weight matter
        for name, p in model.named_parameters():
            if name.endswith("layer_norm.weight"):
                p.copy_(1 + 0.2 * torch.randn_like(p))
    return model


def encoder_state(config: T5EncoderConfig = TINY_GATED) -> dict[str, torch.Tensor]:
    """The oracle's weights keyed as HF writes a T5 encoder (``shared.weight``, no tied duplicate)."""
    state = oracle(config).state_dict()
    return {k: v.clone() for k, v in state.items() if k != "encoder.embed_tokens.weight"}


def oracle_hidden(ids: torch.Tensor, mask: torch.Tensor, config: T5EncoderConfig = TINY_GATED,
                  state: dict | None = None) -> torch.Tensor:
    """Oracle output, optionally with other weights (e.g. the dequantized fp8 ones) loaded into it."""
    from transformers import T5Config, T5EncoderModel
    model = oracle(config)
    if state is not None:
        model = T5EncoderModel(T5Config(**config.to_hf_dict())).eval()
        full = dict(state, **{"encoder.embed_tokens.weight": state["shared.weight"]})
        model.load_state_dict({k: v.float() for k, v in full.items()}, strict=True)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


def sample_batch(config: T5EncoderConfig = TINY_GATED, length: int = 12):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, config.vocab_size, (3, length), generator=g)
    mask = torch.ones(3, length, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2, 2:] = False
    ids[~mask] = 0
    return ids, mask


def write_hf_folder(folder: Path, state: dict, config: T5EncoderConfig, *, shards: int = 1,
                    variant: str = "") -> Path:
    """config.json + model.safetensors, or a sharded index (``variant`` "fp16" writes IF's file names)."""
    from safetensors.torch import save_file
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config.to_hf_dict()))
    infix = f".{variant}" if variant else ""
    if shards == 1:
        save_file(state, folder / f"model{infix}.safetensors")
        return folder
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"model{infix}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, folder / name)
        weight_map.update({k: name for k in part})
    index = "model.safetensors.index" + (f".{variant}" if variant else "") + ".json"
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder
