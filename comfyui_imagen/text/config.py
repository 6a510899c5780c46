"""T5 encoder configuration: presets, reading a Hugging Face ``config.json`` or GGUF metadata, and inference from
tensor shapes.

A single-file T5 (``t5xxl_fp16.safetensors``, ``t5xxl_fp8_e4m3fn.safetensors``) carries no config; everything but the
activation is visible in the shapes of its tensors (key names as Hugging Face writes them):

    shared.weight                                              [vocab_size, d_model]
    encoder.block.N.layer.0.SelfAttention.q.weight             [num_heads * d_kv, d_model]
    encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight   [num_buckets, num_heads]
    encoder.block.N.layer.1.DenseReluDense.wi_0 / wi_1 / wo    gated FFN (T5 v1.1, "gated-gelu"), d_ff = wi_0 rows
    encoder.block.N.layer.1.DenseReluDense.wi / wo             plain FFN (original T5, ReLU)

Heads come from the relative attention bias (its second axis) and d_kv = inner_dim / heads. A gated FFN means T5 v1.1
(GELU, tanh approximation); a plain one means original T5 (ReLU) -- the two configurations T5 was released in.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal, Mapping, Sequence

from .errors import TextEncoderError

Activation = Literal["gelu_tanh", "gelu", "relu", "silu"]
ACTIVATIONS = ("gelu_tanh", "gelu", "relu", "silu")

# Hugging Face activation names (config.json's dense_act_fn / feed_forward_proj) -> ours.
_HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh",
                   "gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}

ENCODER_PROBE = "encoder.block.0.layer.0.SelfAttention.q.weight"
_BLOCK_RE = re.compile(r"^encoder\.block\.(\d+)\.")


@dataclass(frozen=True)
class T5EncoderConfig:
    """Shape and arithmetic of a T5 encoder stack (no decoder)."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    gated: bool = True                          # T5 v1.1: wi_0/wi_1 gated FFN; original T5: single wi
    activation: Activation = "gelu_tanh"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    bias_every_layer: bool = False              # umT5 gives every block its own relative attention bias

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise TextEncoderError(f"T5 config field {name} must be a positive integer, got {value!r}")
        if self.activation not in ACTIVATIONS:
            raise TextEncoderError(f"unknown T5 activation {self.activation!r}; expected one of {ACTIVATIONS}")

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    def to_hf_dict(self) -> dict:
        """The ``config.json`` fields transformers' ``T5Config`` reads for this encoder (used by tests/benchmarks)."""
        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}[self.activation]
        return {"model_type": "umt5" if self.bias_every_layer else "t5",
                "vocab_size": self.vocab_size, "d_model": self.d_model, "d_kv": self.d_kv, "d_ff": self.d_ff,
                "num_layers": self.num_layers, "num_decoder_layers": self.num_layers, "num_heads": self.num_heads,
                "feed_forward_proj": f"gated-{act}" if self.gated else act,
                "relative_attention_num_buckets": self.relative_attention_num_buckets,
                "relative_attention_max_distance": self.relative_attention_max_distance,
                "layer_norm_epsilon": self.layer_norm_epsilon, "dropout_rate": 0.0,
                "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}


# Published shapes (google/t5-v1_1-*, google-t5/t5-*). XXL is what DeepFloyd IF and Flux/SD3 ("t5xxl") use.
T5_V1_1_SMALL = T5EncoderConfig(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_heads=6)
T5_V1_1_BASE = T5EncoderConfig(vocab_size=32128, d_model=768, d_kv=64, d_ff=2048, num_layers=12, num_heads=12)
T5_V1_1_LARGE = T5EncoderConfig(vocab_size=32128, d_model=1024, d_kv=64, d_ff=2816, num_layers=24, num_heads=16)
T5_V1_1_XL = T5EncoderConfig(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_heads=32)
T5_V1_1_XXL = T5EncoderConfig(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64)
T5_SMALL = T5EncoderConfig(vocab_size=32128, d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_heads=8,
                           gated=False, activation="relu")
T5_BASE = replace(T5_SMALL, d_model=768, d_ff=3072, num_layers=12, num_heads=12)
T5_LARGE = replace(T5_SMALL, d_model=1024, d_ff=4096, num_layers=24, num_heads=16)
PRESETS = {"t5_v1_1_small": T5_V1_1_SMALL, "t5_v1_1_base": T5_V1_1_BASE, "t5_v1_1_large": T5_V1_1_LARGE,
           "t5_v1_1_xl": T5_V1_1_XL, "t5_v1_1_xxl": T5_V1_1_XXL,
           "t5_small": T5_SMALL, "t5_base": T5_BASE, "t5_large": T5_LARGE}


def expected_shapes(config: T5EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every weight of the encoder, by Hugging Face key, with its shape."""
    d, inner = config.d_model, config.inner_dim
    shapes: dict[str, tuple[int, ...]] = {"shared.weight": (config.vocab_size, d),
                                          "encoder.final_layer_norm.weight": (d,)}
    for i in range(config.num_layers):
        att = f"encoder.block.{i}.layer.0."
        shapes.update({att + "SelfAttention.q.weight": (inner, d), att + "SelfAttention.k.weight": (inner, d),
                       att + "SelfAttention.v.weight": (inner, d), att + "SelfAttention.o.weight": (d, inner),
                       att + "layer_norm.weight": (d,)})
        if i == 0 or config.bias_every_layer:
            shapes[att + "SelfAttention.relative_attention_bias.weight"] = (
                config.relative_attention_num_buckets, config.num_heads)
        ff = f"encoder.block.{i}.layer.1."
        names = ("wi_0", "wi_1") if config.gated else ("wi",)
        for name in names:
            shapes[f"{ff}DenseReluDense.{name}.weight"] = (config.d_ff, d)
        shapes[ff + "DenseReluDense.wo.weight"] = (d, config.d_ff)
        shapes[ff + "layer_norm.weight"] = (d,)
    return shapes


def infer_config(shapes: Mapping[str, Sequence[int]], *, source: str = "the checkpoint",
                 activation: Activation | None = None, layer_norm_epsilon: float = 1e-6,
                 relative_attention_max_distance: int = 128) -> T5EncoderConfig:
    """Infer a `T5EncoderConfig` from tensor shapes keyed as Hugging Face writes them (prefix already removed).

    Heads come from ``relative_attention_bias.weight`` ([num_buckets, heads]); d_kv = q rows / heads. Without an
    explicit ``activation`` a gated FFN gets T5 v1.1's GELU (tanh) and a plain one original T5's ReLU.
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise TextEncoderError(f"{source} has no {key!r}: it is not a complete T5 encoder "
                                   f"(expected keys like {ENCODER_PROBE!r}, 'shared.weight')")
        return tuple(int(s) for s in shapes[key])

    blocks = {int(m.group(1)) for m in map(_BLOCK_RE.match, shapes) if m}
    if not blocks or sorted(blocks) != list(range(max(blocks) + 1)):
        raise TextEncoderError(f"{source}: encoder blocks are not numbered 0..N-1 (found {sorted(blocks)[:8]}...)")
    embed_key = "shared.weight" if "shared.weight" in shapes else "encoder.embed_tokens.weight"
    vocab_size, d_model = shape(embed_key)
    buckets, heads = shape("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")
    inner, q_in = shape("encoder.block.0.layer.0.SelfAttention.q.weight")
    if inner % heads or q_in != d_model:
        raise TextEncoderError(f"{source}: attention width {inner} (d_model {q_in}) does not fit {heads} heads "
                               f"and embedding width {d_model}; the file is damaged or not a T5 encoder")
    gated = "encoder.block.0.layer.1.DenseReluDense.wi_0.weight" in shapes
    wi = "wi_0" if gated else "wi"
    d_ff = shape(f"encoder.block.0.layer.1.DenseReluDense.{wi}.weight")[0]
    every = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in shapes
    return T5EncoderConfig(vocab_size=vocab_size, d_model=d_model, d_kv=inner // heads, d_ff=d_ff,
                           num_layers=len(blocks), num_heads=heads, gated=gated,
                           activation=activation or ("gelu_tanh" if gated else "relu"),
                           relative_attention_num_buckets=buckets,
                           relative_attention_max_distance=relative_attention_max_distance,
                           layer_norm_epsilon=layer_norm_epsilon, bias_every_layer=every)


def hf_activation(hf: Mapping) -> tuple[bool | None, Activation]:
    """(gated or None if the config does not say, activation) from a Hugging Face T5/umT5 ``config.json`` dict.

    ``feed_forward_proj`` ("gated-gelu", "relu") wins; configs written without it (google/t5-v1_1-xxl's own) carry
    ``is_gated_act`` and ``dense_act_fn`` instead."""
    proj = hf.get("feed_forward_proj")
    if proj:
        parts = str(proj).split("-")
        gated, name = parts[0] == "gated", parts[-1]
        if name == "gelu" and gated:
            name = "gelu_new"  # transformers maps "gated-gelu" to the tanh approximation (T5 v1.1)
    else:
        gated, name = hf.get("is_gated_act"), hf.get("dense_act_fn", "relu")
    if name not in _HF_ACTIVATIONS:
        raise TextEncoderError(f"T5 config.json names activation {name!r}; supported: {sorted(_HF_ACTIVATIONS)}")
    return gated, _HF_ACTIVATIONS[name]


def config_from_hf(hf: Mapping, shapes: Mapping[str, Sequence[int]], *, source: str) -> T5EncoderConfig:
    """A config from ``config.json`` (activation, epsilon, max distance) cross-checked against the tensors' shapes;
    any disagreement is an error (a config.json that belongs to another model)."""
    gated, activation = hf_activation(hf)
    inferred = infer_config(shapes, source=source, activation=activation,
                            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-6)),
                            relative_attention_max_distance=int(hf.get("relative_attention_max_distance", 128)))
    fix = "put the config.json that came with these weights next to them"
    _check_declared({k: hf.get(k) for k in ("d_model", "num_heads", "d_kv", "d_ff", "num_layers")}, inferred,
                    source=source, where="config.json", fix=fix)
    if gated is not None and gated != inferred.gated:
        raise TextEncoderError(f"{source}: config.json says the FFN is {'gated' if gated else 'not gated'} but the "
                               f"weights say otherwise; {fix}")
    return inferred


def _check_declared(declared: Mapping, inferred: T5EncoderConfig, *, source: str, where: str, fix: str) -> None:
    """Raise `TextEncoderError` where a field ``where`` declares (None: not declared) differs from the shapes'."""
    wrong = {k: (v, getattr(inferred, k)) for k, v in declared.items() if v is not None and v != getattr(inferred, k)}
    if wrong:
        detail = ", ".join(f"{k}: {where} {a} vs weights {b}" for k, (a, b) in wrong.items())
        raise TextEncoderError(f"{source}: {where} does not match the weights ({detail}); {fix}")


# GGUF metadata keys (llama.cpp's convert_hf_to_gguf.py, T5 / T5EncoderModel), under "<general.architecture>."
_GGUF_FIELDS = {"d_model": "embedding_length", "d_ff": "feed_forward_length", "num_layers": "block_count",
                "num_heads": "attention.head_count", "d_kv": "attention.key_length",
                "relative_attention_num_buckets": "attention.relative_buckets_count"}


def config_from_gguf(metadata: Mapping, shapes: Mapping[str, Sequence[int]], *, source: str) -> T5EncoderConfig:
    """A config from the tensors' shapes (keyed as Hugging Face names them) cross-checked against a GGUF file's
    ``<arch>.embedding_length``, ``.feed_forward_length``, ``.block_count``, ``.attention.head_count`` /
    ``key_length`` / ``relative_buckets_count``, with the epsilon from ``.attention.layer_norm_rms_epsilon``. GGUF
    records neither the activation nor the maximum distance: a gated FFN runs T5 v1.1's GELU (tanh), as llama.cpp
    does, a plain one ReLU, and the distance is T5's 128."""
    arch = metadata.get("general.architecture")
    eps = metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", metadata.get(f"{arch}.attention.layer_norm_epsilon"))
    eps = float(f"{eps:.7g}") if eps is not None else 1e-6   # stored as float32: 1e-6 comes back as 9.9999997e-7
    inferred = infer_config(shapes, source=source, layer_norm_epsilon=eps)
    _check_declared({k: metadata.get(f"{arch}.{v}") for k, v in _GGUF_FIELDS.items()}, inferred, source=source,
                    where="its GGUF metadata", fix="the file is damaged or was edited: download it again")
    return inferred


def describe(config: T5EncoderConfig) -> str:
    """One line for logs: which preset this is, or its shape."""
    for name, preset in PRESETS.items():
        if preset == config:
            return name
    kind = "gated-" + config.activation if config.gated else config.activation
    return (f"T5 encoder d_model={config.d_model} layers={config.num_layers} heads={config.num_heads} "
            f"d_ff={config.d_ff} {kind} vocab={config.vocab_size}")
