"""A T5 encoder stack whose big weights stay in their storage dtype (fp8, fp16, bf16, fp32, or a GGUF file's GGML
blocks) and are cast or dequantized per layer.

Module names mirror transformers' ``T5EncoderModel`` (``shared``, ``encoder.block.N.layer.0.SelfAttention.q`` ...), so
a Hugging Face or ComfyUI state dict loads with ``load_state_dict(assign=True)``, and the arithmetic is T5's (Raffel
et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer"): RMS layer norm
without mean or bias, no 1/sqrt(d_kv) in attention (folded into the initialisation), a learned relative position bias
shared by all layers and added to the attention logits. transformers' ``T5EncoderModel`` is the test oracle.

Why not transformers' own module: its FFN casts activations to ``wo.weight.dtype`` (fp8 there would destroy them),
its internals change between releases (4.40 ... 5.x), and here every linear layer holds its weight as stored --
an fp8 file stays fp8 in memory and is upcast one layer at a time at compute time, so no full-precision copy of
the model ever exists.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import quant
from .config import T5EncoderConfig

BLOCK_VALUES = 1 << 22  # weight values a CPU `CastLinear` casts per matmul (8 MB in bf16: stays in L3)


class StoredWeight:
    """How a layer holds its weight: as stored in a float dtype (fp8 included, with an optional ``weight_scale``), or
    as GGML blocks from a GGUF file: ``weight`` uint8 [rows, bytes per row] and ``weight_qtype`` the GGML type id (a
    0-d int tensor; `quant` dequantizes the rows when the layer runs). Loading a state dict that holds
    ``weight_qtype`` reshapes the (meta) weight to the blocks it brings."""

    weight: torch.Tensor
    weight_qtype: torch.Tensor | None
    qtype: str | None = None  # the GGML type name of a quantized weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        qtype = state_dict.get(prefix + "weight_qtype")
        if qtype is not None:
            blocks = state_dict[prefix + "weight"]
            self.weight = nn.Parameter(torch.empty(blocks.shape, dtype=blocks.dtype, device="meta"),
                                       requires_grad=False)
            self.weight_qtype = torch.empty((), dtype=qtype.dtype, device="meta")
            self.qtype = quant.type_name(int(qtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class CastLinear(StoredWeight, nn.Linear):
    """``nn.Linear`` without bias whose weight keeps its storage dtype (fp8 and GGML blocks included) and is cast or
    dequantized to the input's dtype in ``forward``. An optional ``weight_scale`` (scaled fp8: W = W_stored * scale,
    per tensor or per output row) is applied to the output instead of the weight: x (W s)^T = (x W^T) s, one multiply
    of [.., out] instead of [out, in].

    On a CPU (without autograd) the weight is cast a block of output rows at a time, ~`BLOCK_VALUES` values, into one
    small buffer, and each block's matmul runs while the block is still in cache: casting a whole T5-XXL layer's
    weights to bf16 writes 386 MB to memory for the matmuls to read back, and block by block the layer runs 1.3x
    faster (400 against 530 ms on one AVX-512 core, benchmarks/t5_speed.py --micro). Every output is still one dot
    product over all the inputs; only the matmul's blocking may change with its width (last-bit rounding).
    """

    weight_scale: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, device=None):
        super().__init__(in_features, out_features, bias=False, device=device)
        self.weight.requires_grad_(False)
        self.register_buffer("weight_scale", None)
        self.register_buffer("weight_qtype", None)

    def reset_parameters(self) -> None:  # weights always come from a file; skip the random init
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, dtype = self.weight, x.dtype
        rows = max(1, BLOCK_VALUES // self.in_features)
        as_is = self.qtype is None and weight.dtype == dtype
        kept = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)  # autograd keeps the weight
        if as_is or kept or x.device.type != "cpu" or rows >= self.out_features:
            y = F.linear(x, quant.dequantize_weight(weight, self.qtype, dtype))
        else:
            buffer = torch.empty(rows * self.in_features, dtype=dtype)
            y = torch.cat([F.linear(x, quant.dequantize_weight(block, self.qtype, dtype,
                                                               out=buffer[:len(block) * self.in_features]))
                           for block in weight.split(rows)], dim=-1)
        if self.weight_scale is not None:
            y = y * self.weight_scale.to(y.dtype).reshape(-1)
        return y


class CastEmbedding(StoredWeight, nn.Embedding):
    """``nn.Embedding`` that looks rows up as stored (GGML blocks included: only the rows looked up are dequantized)
    and returns them in ``out_dtype`` (× optional scalar ``weight_scale``)."""

    weight_scale: torch.Tensor | None

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None):
        super().__init__(num_embeddings, embedding_dim, device=device)
        self.weight.requires_grad_(False)
        self.register_buffer("weight_scale", None)
        self.register_buffer("weight_qtype", None)

    def reset_parameters(self) -> None:
        pass

    def forward(self, ids: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        rows = quant.dequantize_weight(F.embedding(ids, self.weight), self.qtype, out_dtype)
        if self.weight_scale is not None:
            rows = rows * self.weight_scale.to(out_dtype).reshape(())
        return rows


class T5LayerNorm(nn.Module):
    """RMS norm: y = w * x / sqrt(mean(x^2) + eps), the mean of squares taken in fp32 (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, device=device), requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(self.weight.dtype)


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """T5's bidirectional relative-position buckets (Mesh TensorFlow ``_relative_position_bucket``).

    relative_position = key_position - query_position. Half the buckets hold the sign; within a half, distances below
    num_buckets/4 get a bucket each, larger ones share logarithmically wider buckets up to ``max_distance``, beyond
    which all share the last bucket: "we use 32 embeddings ... whose ranges increase in size logarithmically up to an
    offset of 128 beyond which we assign all relative positions to the same embedding" (Raffel et al. 2020, 2.1).
    """
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half
    distance = relative_position.abs()
    max_exact = half // 2
    log_ratio = torch.log(distance.float().clamp(min=1) / max_exact) / math.log(max_distance / max_exact)
    large = (max_exact + (log_ratio * (half - max_exact)).long()).clamp(max=half - 1)
    return bucket + torch.where(distance < max_exact, distance, large)


def _activation(name: str):
    if name == "gelu_tanh":
        return lambda x: F.gelu(x, approximate="tanh")
    return {"gelu": F.gelu, "relu": F.relu, "silu": F.silu}[name]


class T5Attention(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_bias: bool, device=None):
        super().__init__()
        self.num_heads, self.d_kv = config.num_heads, config.d_kv
        self.q = CastLinear(config.d_model, config.inner_dim, device)
        self.k = CastLinear(config.d_model, config.inner_dim, device)
        self.v = CastLinear(config.d_model, config.inner_dim, device)
        self.o = CastLinear(config.inner_dim, config.d_model, device)
        self.buckets, self.max_distance = config.relative_attention_num_buckets, config.relative_attention_max_distance
        if has_bias:
            # a CastEmbedding also because nn.Embedding's random init on the meta device imports ~800 modules (2 s)
            self.relative_attention_bias = CastEmbedding(self.buckets, config.num_heads, device)

    def position_bias(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """[1, heads, L, L] learned bias for key_position - query_position."""
        pos = torch.arange(length, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.buckets, self.max_distance)
        return self.relative_attention_bias(buckets, out_dtype=dtype).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, self.d_kv).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)),
                                             attn_mask=bias, scale=1.0)  # T5: no 1/sqrt(d_kv)
        return self.o(out.transpose(1, 2).reshape(b, n, self.num_heads * self.d_kv))


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_bias: bool, device=None):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_bias, device)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, device)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return x + self.SelfAttention(self.layer_norm(x), bias)


class T5DenseReluDense(nn.Module):
    """FFN: wo(act(wi x)) for original T5, wo(act(wi_0 x) * wi_1 x) for T5 v1.1 (gated GELU, Shazeer 2020)."""

    def __init__(self, config: T5EncoderConfig, device=None):
        super().__init__()
        self.gated = config.gated
        if self.gated:
            self.wi_0 = CastLinear(config.d_model, config.d_ff, device)
            self.wi_1 = CastLinear(config.d_model, config.d_ff, device)
        else:
            self.wi = CastLinear(config.d_model, config.d_ff, device)
        self.wo = CastLinear(config.d_ff, config.d_model, device)
        self.act = _activation(config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))
        return self.wo(h)


class T5LayerFF(nn.Module):
    def __init__(self, config: T5EncoderConfig, device=None):
        super().__init__()
        self.DenseReluDense = T5DenseReluDense(config, device)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """T5 activations can overflow fp16; clamp to the finite range as transformers' T5Block does."""
    if x.dtype != torch.float16:
        return x
    limit = torch.finfo(torch.float16).max - 1000
    return x.clamp(-limit, limit)


class T5Block(nn.Module):
    def __init__(self, config: T5EncoderConfig, has_bias: bool, device=None):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, has_bias, device), T5LayerFF(config, device)])

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = _clamp_fp16(self.layer[0](x, bias))
        return _clamp_fp16(self.layer[1](x))


class T5Stack(nn.Module):
    def __init__(self, config: T5EncoderConfig, device=None):
        super().__init__()
        self.block = nn.ModuleList([T5Block(config, i == 0 or config.bias_every_layer, device)
                                    for i in range(config.num_layers)])
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon, device)


class T5Encoder(nn.Module):
    """T5 encoder: token ids [B, L] and mask [B, L] -> hidden states [B, L, d_model] in ``compute_dtype``.

    Embedding, position-bias and linear weights keep whatever dtype they were loaded in; the norms and all
    activations use ``compute_dtype``; see `set_compute_dtype`. ``device="meta"`` builds it
    without memory, for ``load_state_dict(assign=True)``.
    """

    def __init__(self, config: T5EncoderConfig, compute_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.config = config
        self.compute_dtype = compute_dtype
        self.shared = CastEmbedding(config.vocab_size, config.d_model, device)
        self.encoder = T5Stack(config, device)

    @property
    def device(self) -> torch.device:
        return self.shared.weight.device

    def set_compute_dtype(self, dtype: torch.dtype) -> "T5Encoder":
        """Activations in ``dtype``; the norm weights follow, the others stay as stored and are cast when used."""
        self.compute_dtype = dtype
        for module in self.modules():
            if isinstance(module, T5LayerNorm):
                module.weight.data = module.weight.data.to(dtype)
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        dtype = self.compute_dtype
        x = self.shared(input_ids, out_dtype=dtype)
        n = input_ids.shape[1]
        mask_bias = torch.zeros(input_ids.shape[0], 1, 1, n, dtype=dtype, device=x.device)
        if attention_mask is not None:
            mask_bias = mask_bias.masked_fill(~attention_mask.bool()[:, None, None, :], torch.finfo(dtype).min)
        bias = None
        for block in self.encoder.block:
            attention = block.layer[0].SelfAttention
            if bias is None or hasattr(attention, "relative_attention_bias"):
                # finfo.min + bias can overflow to -inf in half precision: clamp so a row never becomes all -inf
                bias = (attention.position_bias(n, dtype) + mask_bias).clamp(min=torch.finfo(dtype).min)
            x = block(x, bias)
        return self.encoder.final_layer_norm(x)
