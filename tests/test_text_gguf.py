"""T5 encoders from GGUF files (ComfyUI-GGUF's form): the reader, the torch dequantizers against the gguf package's
numpy ones, encodings against transformers' T5EncoderModel on the same dequantized weights, the embedded vocabulary,
and the refusals. The files are written here with the gguf package's own writer, in llama.cpp's T5 layout."""
from __future__ import annotations

import json
import re
import sys
import warnings

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q  # noqa: E402

from comfyui_imagen import files  # noqa: E402
from comfyui_imagen.files import ModelFileError, open_weights  # noqa: E402
from comfyui_imagen.text import (T5EncoderConfig, TextEncoderError, TextEncoderWarning, expected_shapes,  # noqa: E402
                                 load_t5)
from comfyui_imagen.text.model import CastLinear  # noqa: E402
from comfyui_imagen.text.quant import dequantize_blocks  # noqa: E402
from comfyui_imagen.text.tokenizers import embedded_tokenizer, load_tokenizer  # noqa: E402
from tests.test_text_support import (SHARED_T5, TINY_RELU, encoder_state, needs_real_tokenizer,  # noqa: E402
                                     oracle_hidden, sample_batch)

F32 = torch.float32
# rows of 256 values everywhere, so every linear layer can hold K-quant super-blocks
TINY_K = T5EncoderConfig(vocab_size=400, d_model=256, d_kv=32, d_ff=512, num_layers=2, num_heads=8)
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")

# llama.cpp's T5 tensor names (gguf-py tensor_mapping.py), written from the HF names independently of the loader's map
_PARTS = {"layer.0.layer_norm": "attn_norm", "layer.0.SelfAttention.q": "attn_q", "layer.0.SelfAttention.k": "attn_k",
          "layer.0.SelfAttention.v": "attn_v", "layer.0.SelfAttention.o": "attn_o",
          "layer.0.SelfAttention.relative_attention_bias": "attn_rel_b", "layer.1.layer_norm": "ffn_norm",
          "layer.1.DenseReluDense.wi_0": "ffn_gate", "layer.1.DenseReluDense.wi_1": "ffn_up",
          "layer.1.DenseReluDense.wi": "ffn_up", "layer.1.DenseReluDense.wo": "ffn_down"}


def gguf_name(key: str) -> str:
    if key == "shared.weight":
        return "token_embd.weight"
    if key == "encoder.final_layer_norm.weight":
        return "enc.output_norm.weight"
    block, part = re.match(r"encoder\.block\.(\d+)\.(.+)\.weight$", key).groups()
    return f"enc.blk.{block}.{_PARTS[part]}.weight"


def kquant_blocks(qtype: str, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """Valid random K-quant rows (uint8 [rows, bytes]): random bytes with the fp16 super-block scales set so that the
    weights come out zero-mean with a spread of about 1/sqrt(cols) (every byte pattern is a valid block otherwise)."""
    block, size = GGML_QUANT_SIZES[Q[qtype]]
    g = np.random.default_rng(seed)
    raw = g.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    d = (g.uniform(0.5, 1.5, size=(rows, cols // block)) * cols ** -0.5).astype(np.float32)
    if qtype == "Q6_K":                                  # d * sc * (q - 32), sc int8: spread ~ 73 * 18
        raw[..., 208:210] = (d / 1300).astype(np.float16)[..., None].view(np.uint8)
    else:                                                # d * sc * q - dmin * m with q in 0..15 (Q4_K) / 0..31 (Q5_K)
        levels = 15 if qtype == "Q4_K" else 31
        raw[..., 0:2] = (d / (31.5 * levels)).astype(np.float16)[..., None].view(np.uint8)
        raw[..., 2:4] = (d / 31.5 / 2).astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(rows, -1)


def write_t5_gguf(path, state: dict, config: T5EncoderConfig, qtype: str = "Q8_0", *, arch: str = "t5encoder",
                  meta: dict | None = None, extra: dict | None = None) -> dict:
    """A GGUF T5 as llama.cpp's converter writes one: metadata, norms and the position bias in F32, the other 2-D
    weights in ``qtype`` where their rows fit its blocks (a {key: type} dict picks per tensor). Returns the weights
    the file really holds, dequantized by the gguf package: the oracle's."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(512)
    w.add_embedding_length(config.d_model)
    w.add_feed_forward_length(config.d_ff)
    w.add_block_count(config.num_layers)
    w.add_head_count(config.num_heads)
    w.add_key_length(config.d_kv)
    w.add_value_length(config.d_kv)
    w.add_layer_norm_eps(config.layer_norm_epsilon)
    w.add_relative_attn_buckets_count(config.relative_attention_num_buckets)
    w.add_layer_norm_rms_eps(config.layer_norm_epsilon)
    for key, value in (meta or {}).items():
        w.add_key_value(key, *value)
    held = {}
    for i, (key, tensor) in enumerate({**state, **(extra or {})}.items()):
        kind = qtype.get(key, "F32") if isinstance(qtype, dict) else qtype
        big = tensor.dim() == 2 and "relative_attention_bias" not in key
        block = GGML_QUANT_SIZES[Q[kind]][0]
        if not big or tensor.shape[1] % block:
            kind = "F32"
        name = key if key in (extra or {}) else gguf_name(key)
        if kind in K_QUANTS:
            data = kquant_blocks(kind, *tensor.shape, seed=i)
        else:
            data = gguf.quants.quantize(tensor.float().numpy(), Q[kind])
        w.add_tensor(name, data, raw_dtype=Q[kind] if kind not in ("F32", "F16") else None)
        if key in state:
            held[key] = torch.from_numpy(gguf.quants.dequantize(data, Q[kind]).copy()).reshape(tensor.shape)
    finish(w)
    return held


def finish(w) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run(t5, ids, mask):
    with torch.no_grad():
        return t5.model(ids, mask).float()


# -- dequantizers --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", K_QUANTS)
def test_torch_k_quants_match_the_gguf_package(qtype):
    raw = kquant_blocks(qtype, 48, 1024)
    expected = torch.from_numpy(gguf.quants.dequantize(raw, Q[qtype]))
    got = dequantize_blocks(torch.from_numpy(raw), qtype)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)     # same fp32 arithmetic, bit for bit
    torch.testing.assert_close(dequantize_blocks(torch.from_numpy(raw), qtype, torch.bfloat16),
                               expected.bfloat16(), rtol=0, atol=0)


def test_q8_0_round_trip_through_the_gguf_quantizer():
    x = torch.randn(40, 320, generator=torch.Generator().manual_seed(0))
    raw = gguf.quants.quantize(x.numpy(), Q.Q8_0)
    got = dequantize_blocks(torch.from_numpy(raw), "Q8_0")
    torch.testing.assert_close(got, torch.from_numpy(gguf.quants.dequantize(raw, Q.Q8_0)), rtol=0, atol=0)
    assert (got - x).abs().max() <= x.abs().max() / 127       # Q8_0: one int8 step of the block's absmax


# -- the reader ----------------------------------------------------------------------------------------------------
def test_reader_parses_what_the_gguf_writer_writes(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "t5encoder")
    w.add_uint32("t5encoder.block_count", 3)
    w.add_float32("x.eps", 0.25)
    w.add_bool("x.flag", True)
    w.add_array("x.words", ["a", "▁b"])
    w.add_array("x.scores", [0.5, -1.0])
    w.add_precompiled_charsmap(b"\x00\x07\xff")
    a = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    w.add_tensor("f32", a)
    w.add_tensor("f16", a.astype(np.float16))
    w.add_tensor("q8", gguf.quants.quantize(a, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("vec", a[0].copy())
    finish(w)
    weights = open_weights(tmp_path / "m.gguf")
    assert isinstance(weights, files.GGUFWeights) and weights.architecture == "t5encoder"
    assert {k: weights.metadata[k] for k in ("t5encoder.block_count", "x.eps", "x.flag", "x.words", "x.scores")} == {
        "t5encoder.block_count": 3, "x.eps": 0.25, "x.flag": True, "x.words": ["a", "▁b"], "x.scores": [0.5, -1.0]}
    assert weights.metadata["tokenizer.ggml.precompiled_charsmap"] == b"\x00\x07\xff"
    assert weights.shapes == {"f32": (3, 64), "f16": (3, 64), "q8": (3, 64), "vec": (64,)}
    assert weights.qtypes == {"f32": "F32", "f16": "F16", "q8": "Q8_0", "vec": "F32"}
    torch.testing.assert_close(weights.mapped("f32"), torch.from_numpy(a), rtol=0, atol=0)
    assert weights.mapped("f16").dtype == torch.float16 and weights.dtypes["q8"] is None
    assert torch.equal(weights.blocks("q8"), torch.from_numpy(gguf.quants.quantize(a, Q.Q8_0)))
    with pytest.raises(ModelFileError, match="Q8_0-quantized"):
        weights.mapped("q8")


# -- T5 encoders from GGUF files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("qtype", ["Q8_0", "F16", "BF16", *K_QUANTS, "Q4_K_M"])
def test_gguf_t5_stays_quantized_and_matches_transformers(tmp_path, qtype):
    state = encoder_state(TINY_K)
    if qtype == "Q4_K_M":   # llama.cpp's mix: Q4_K, with Q6_K for attn_v / ffn_down, the embedding Q8_0
        qtype = {k: "Q6_K" if ".v." in k or ".wo." in k else "Q8_0" if k == "shared.weight" else "Q4_K"
                 for k in state}
    held = write_t5_gguf(tmp_path / "t5.gguf", state, TINY_K, qtype)
    t5 = load_t5(tmp_path / "t5.gguf", tokenizer="byte", compute_dtype=F32)
    assert t5.config == TINY_K
    linears = [m for m in t5.model.modules() if isinstance(m, CastLinear)]
    if qtype in ("F16", "BF16"):
        assert all(m.weight.dtype == getattr(torch, {"F16": "float16", "BF16": "bfloat16"}[qtype]) for m in linears)
    else:   # GGML blocks, as stored: nothing dequantized at load
        assert all(m.weight.dtype == torch.uint8 and m.qtype for m in linears)
        assert t5.model.shared.weight.dtype == torch.uint8
    ids, mask = sample_batch(TINY_K)
    torch.testing.assert_close(run(t5, ids, mask), oracle_hidden(ids, mask, TINY_K, state=held), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_gguf_t5_block_by_block_matches_whole_weights(tmp_path, monkeypatch, qtype):
    """CastLinear dequantizes GGML rows a block of rows at a time on a CPU: the same model output."""
    from comfyui_imagen.text import model as t5_model
    write_t5_gguf(tmp_path / "t5.gguf", encoder_state(TINY_K), TINY_K, qtype)
    t5 = load_t5(tmp_path / "t5.gguf", tokenizer="byte", compute_dtype=F32)
    ids, mask = sample_batch(TINY_K)
    whole = run(t5, ids, mask)
    monkeypatch.setattr(t5_model, "BLOCK_VALUES", 256 * 48)      # 48 rows of the 256-wide weights, 24 of wo's
    torch.testing.assert_close(run(t5, ids, mask), whole, atol=1e-5, rtol=1e-5)


def test_original_t5_ffn_up_is_wi_and_dtype_dequantizes_at_load(tmp_path):
    held = write_t5_gguf(tmp_path / "t5.gguf", encoder_state(TINY_RELU), TINY_RELU, "Q8_0")
    ids, mask = sample_batch(TINY_RELU)
    want = oracle_hidden(ids, mask, TINY_RELU, state=held)
    t5 = load_t5(tmp_path / "t5.gguf", tokenizer="byte", compute_dtype=F32)
    assert t5.config == TINY_RELU                          # no ffn_gate: ReLU, ffn_up is wi
    torch.testing.assert_close(run(t5, ids, mask), want, atol=1e-4, rtol=1e-4)
    t5 = load_t5(tmp_path / "t5.gguf", dtype=torch.float32, tokenizer="byte", compute_dtype=F32)
    assert t5.model.encoder.block[0].layer[1].DenseReluDense.wi.weight.dtype == F32
    torch.testing.assert_close(run(t5, ids, mask), want, atol=1e-4, rtol=1e-4)


def test_encoder_decoder_gguf_uses_the_encoder(tmp_path):
    state = encoder_state(TINY_RELU)
    decoder = {"dec.blk.0.attn_q.weight": torch.randn(16, 32), "output.weight": torch.randn(400, 32)}
    held = write_t5_gguf(tmp_path / "t5.gguf", state, TINY_RELU, "Q8_0", arch="t5", extra=decoder)
    with pytest.warns(TextEncoderWarning, match="encoder-decoder checkpoint: using its encoder, ignoring 2"):
        t5 = load_t5(tmp_path / "t5.gguf", tokenizer="byte", compute_dtype=F32)
    ids, mask = sample_batch(TINY_RELU)
    torch.testing.assert_close(run(t5, ids, mask), oracle_hidden(ids, mask, TINY_RELU, state=held), atol=1e-4,
                               rtol=1e-4)


def test_other_types_go_through_the_gguf_package_or_say_how_to_get_it(tmp_path, monkeypatch):
    held = write_t5_gguf(tmp_path / "t5.gguf", encoder_state(TINY_RELU), TINY_RELU, "Q4_0")
    with pytest.warns(TextEncoderWarning, match=r"\['Q4_0'\] weights are dequantized by the gguf package"):
        t5 = load_t5(tmp_path / "t5.gguf", tokenizer="byte", compute_dtype=F32)
    ids, mask = sample_batch(TINY_RELU)
    torch.testing.assert_close(run(t5, ids, mask), oracle_hidden(ids, mask, TINY_RELU, state=held), atol=1e-4,
                               rtol=1e-4)
    monkeypatch.setitem(sys.modules, "gguf", None)          # the optional package not installed
    with pytest.raises(TextEncoderError, match=re.escape('pip install "comfyui-imagen[gguf]"')):
        load_t5(tmp_path / "t5.gguf", tokenizer="byte")


def test_gguf_config_metadata_must_match_the_shapes(tmp_path):
    write_t5_gguf(tmp_path / "t5.gguf", encoder_state(TINY_RELU), TINY_RELU, "Q8_0", meta={
        "t5encoder.feed_forward_length": (999, gguf.GGUFValueType.UINT32)})
    with pytest.raises(TextEncoderError, match="GGUF metadata does not match the weights .*d_ff"):
        load_t5(tmp_path / "t5.gguf", tokenizer="byte")


# -- damaged files and other models --------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "header cut", "magic", "counts"])
def test_damaged_gguf_is_named_damaged(tmp_path, damage):
    write_t5_gguf(tmp_path / "t5.gguf", encoder_state(TINY_RELU), TINY_RELU, "Q8_0")
    data = bytearray((tmp_path / "t5.gguf").read_bytes())
    if damage == "truncated":
        data = data[: len(data) - 1000]
    elif damage == "header cut":
        data = data[:300]
    elif damage == "magic":
        data[:4] = b"GGUX"
    else:
        data[8:16] = (1 << 40).to_bytes(8, "little")     # tensor count
    (tmp_path / "t5.gguf").write_bytes(bytes(data))
    with pytest.raises(TextEncoderError, match="t5.gguf is not a readable GGUF file .*truncated or corrupt"):
        load_t5(tmp_path / "t5.gguf", tokenizer="byte")


def write_other_gguf(path, arch: str, names: list[str]) -> None:
    w = gguf.GGUFWriter(str(path), arch)
    for name in names:
        w.add_tensor(name, np.zeros((4, 32), np.float32))
    finish(w)


@pytest.mark.parametrize("arch, names, what", [
    ("llama", ["token_embd.weight", "blk.0.attn_q.weight", "output_norm.weight"], "a language model"),
    ("qwen3", ["tok.weight"], "a GGUF 'qwen3' model"),
    ("flux", ["double_blocks.0.img_attn.qkv.weight"], "a Flux transformer"),
    ("sdxl", ["input_blocks.0.0.weight"], "a Stable Diffusion-family U-Net"),
    ("wan", ["blocks.0.self_attn.q.weight"], "a wan diffusion model"),
])
def test_gguf_that_is_not_a_t5_is_named(tmp_path, arch, names, what):
    write_other_gguf(tmp_path / "m.gguf", arch, names)
    with pytest.raises(TextEncoderError, match=f"not a T5 text encoder .*GGUF architecture '{arch}'.*{what}"):
        load_t5(tmp_path / "m.gguf", tokenizer="byte")


def test_stage_loader_names_a_gguf_t5(tmp_path):
    from comfyui_imagen.checkpoints import CheckpointError, load_stage
    write_t5_gguf(tmp_path / "t5.gguf", encoder_state(TINY_RELU), TINY_RELU, "Q8_0")
    with pytest.raises(CheckpointError, match="T5 text encoder"):
        load_stage(tmp_path / "t5.gguf")


# -- the embedded vocabulary ---------------------------------------------------------------------------------------
def vocab_metadata(tokenizer_json) -> dict:
    """What llama.cpp's converter writes for T5's spiece.model, from the same vocabulary's tokenizer.json (ids past
    the SentencePiece pieces are unused "[PADn]" rows, as the converter pads them to the embedding)."""
    import base64
    spec = json.loads(tokenizer_json.read_text())
    pieces = [p for p, _ in spec["model"]["vocab"] if not p.startswith("<extra_id_")]
    types = [3 if p in ("<pad>", "</s>") else 2 if p == "<unk>" else 1 for p in pieces]
    scores = [s for p, s in spec["model"]["vocab"] if not p.startswith("<extra_id_")]
    pad = 32128 - len(pieces)
    charsmap = base64.b64decode(spec["normalizer"]["normalizers"][0]["precompiled_charsmap"])
    A, V = gguf.GGUFValueType.ARRAY, gguf.GGUFValueType
    return {"tokenizer.ggml.model": ("t5", V.STRING),
            "tokenizer.ggml.tokens": (pieces + [f"[PAD{len(pieces) + i}]" for i in range(pad)], A),
            "tokenizer.ggml.scores": ([float(s) for s in scores] + [-10000.0] * pad, A),
            "tokenizer.ggml.token_type": (types + [5] * pad, A),
            "tokenizer.ggml.add_space_prefix": (True, V.BOOL), "tokenizer.ggml.remove_extra_whitespaces": (True, V.BOOL),
            "tokenizer.ggml.precompiled_charsmap": (charsmap, A),
            "tokenizer.ggml.eos_token_id": (1, V.UINT32), "tokenizer.ggml.unknown_token_id": (2, V.UINT32),
            "tokenizer.ggml.padding_token_id": (0, V.UINT32)}


@needs_real_tokenizer
def test_embedded_vocabulary_tokenizes_like_the_tokenizer_folder(tmp_path):
    tiny = T5EncoderConfig(vocab_size=32128, d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4)
    state = {k: torch.randn(s) * 0.1 for k, s in expected_shapes(tiny).items()}
    write_t5_gguf(tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf", state, tiny, "Q8_0",
                  meta=vocab_metadata(SHARED_T5 / "tokenizer.json"))
    t5 = load_t5(tmp_path / "t5-v1_1-xxl-encoder-Q8_0.gguf")       # no tokenizer given, none beside the file
    assert t5.tokenizer.name.endswith("#vocab") and t5.tokenizer.vocab_size == 32128
    folder = load_tokenizer(SHARED_T5)
    prompts = ["a red circle to the left of a blue square", "  Two   spaces, Ünïcödé ½ café…  ", "",
               "UPPER lower 12345 <pad> </s> tokens", "a photo of an astronaut riding a horse on mars, 4k"]
    assert t5.tokenizer.tokenize(prompts) == folder.tokenize(prompts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert t5.encode(prompts[:1]).embeds.shape == (1, 77, 32)


def test_no_vocabulary_means_the_usual_tokenizer_search(tmp_path):
    write_t5_gguf(tmp_path / "t5.gguf", encoder_state(TINY_RELU), TINY_RELU, "Q8_0")
    assert embedded_tokenizer(open_weights(tmp_path / "t5.gguf").metadata, "t5.gguf") is None
    assert load_t5(tmp_path / "t5.gguf", fallback_tokenizer="byte").tokenizer.name == "byte"


# -- listing -------------------------------------------------------------------------------------------------------
def test_loader_node_lists_gguf_in_text_encoders_and_clip(tmp_path, monkeypatch):
    from nodes import comfy_compat, loaders
    text, clip = tmp_path / "text_encoders", tmp_path / "clip"
    text.mkdir(), clip.mkdir()
    write_t5_gguf(clip / "t5-v1_1-xxl-encoder-Q8_0.gguf", encoder_state(TINY_RELU), TINY_RELU, "Q8_0")
    (text / "t5xxl_fp16.safetensors").write_bytes(b"")
    (clip / "notes.txt").write_text("")
    before = {kind: comfy_compat.model_folders(kind) for kind in ("imagen", "text_encoders", "clip")}
    monkeypatch.setattr(loaders, "bundled_files", lambda: {})
    try:
        comfy_compat.set_fallback_folders("imagen", [])
        comfy_compat.set_fallback_folders("text_encoders", [text])
        comfy_compat.set_fallback_folders("clip", [clip, text])      # newer ComfyUI: clip answers both
        assert loaders.list_t5() == ["t5-v1_1-xxl-encoder-Q8_0.gguf", "t5xxl_fp16.safetensors"]
        (t5,) = loaders.ImagenT5Loader().load("t5-v1_1-xxl-encoder-Q8_0.gguf")
        assert t5.encoder.config == TINY_RELU
    finally:
        for kind, paths in before.items():
            comfy_compat.set_fallback_folders(kind, paths)
