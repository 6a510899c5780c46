"""Loading T5 encoders from every layout users have, against transformers' T5EncoderModel on the same weights;
the fp8 upcast (bit for bit torch's cast) and CastLinear's block-by-block cast."""
from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from safetensors.torch import save_file

from comfyui_imagen.text import (T5EncoderConfig, TextEncoderError, TextEncoderWarning, dequantize, load_t5,
                                 quantize_fp8, to_fp8_state_dict)
from comfyui_imagen.text import fp8
from comfyui_imagen.text import model as t5_model
from comfyui_imagen.text.fp8 import FP8_DTYPES, upcast
from comfyui_imagen.text.model import CastLinear
from tests.test_text_support import (TINY_GATED, TINY_RELU, encoder_state, oracle_hidden, sample_batch,
                                     write_hf_folder)

F32 = torch.float32


def run(encoder, ids, mask):
    with torch.no_grad():
        return encoder.model(ids, mask).float()


def dequantized_state(fp8_state: dict) -> dict:
    """The weights an fp8 file really holds, in fp32: the oracle for the fp8 paths."""
    out = {}
    for key, value in fp8_state.items():
        if key.endswith((".scale_weight", ".weight_scale", ".comfy_quant")) or key == "scaled_fp8":
            continue
        layer = key[: -len(".weight")]
        scale = fp8_state.get(layer + ".scale_weight", fp8_state.get(layer + ".weight_scale"))
        out[key] = dequantize(value, scale, F32)
    return out


@pytest.mark.parametrize("config", [TINY_GATED, TINY_RELU], ids=["v1.1-gated-gelu", "original-relu"])
def test_single_fp32_file_matches_transformers(tmp_path, config):
    save_file(encoder_state(config), tmp_path / "t5.safetensors")
    t5 = load_t5(tmp_path / "t5.safetensors", tokenizer="byte", compute_dtype=F32)
    assert t5.config == config                       # inferred from shapes alone
    ids, mask = sample_batch(config)
    torch.testing.assert_close(run(t5, ids, mask), oracle_hidden(ids, mask, config), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_files_keep_their_dtype_and_match(tmp_path, dtype):
    state = {k: v.to(dtype) for k, v in encoder_state().items()}
    save_file(state, tmp_path / "t5.safetensors")
    t5 = load_t5(tmp_path / "t5.safetensors", tokenizer="byte", compute_dtype=F32)
    linears = [m for m in t5.model.modules() if isinstance(m, CastLinear)]
    assert linears and all(m.weight.dtype == dtype for m in linears)
    assert t5.model.shared.weight.dtype == dtype
    ids, mask = sample_batch()
    # oracle on exactly the rounded weights: only fp32 arithmetic differences remain
    torch.testing.assert_close(run(t5, ids, mask), oracle_hidden(ids, mask, state=state), atol=3e-5, rtol=1e-5)


@pytest.mark.parametrize("style", ["plain", "scaled_fp8", "comfy_quant"])
def test_fp8_files_stay_fp8_and_match_dequantized_oracle(tmp_path, style):
    fp8_state = to_fp8_state_dict(encoder_state(), style=style)
    save_file(fp8_state, tmp_path / "t5xxl_fp8_e4m3fn.safetensors")
    t5 = load_t5(tmp_path / "t5xxl_fp8_e4m3fn.safetensors", tokenizer="byte", compute_dtype=F32)
    linears = [m for m in t5.model.modules() if isinstance(m, CastLinear)]
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in linears)   # no full-precision copy
    assert all((m.weight_scale is not None) == (style != "plain") for m in linears)
    ids, mask = sample_batch()
    got = run(t5, ids, mask)
    torch.testing.assert_close(got, oracle_hidden(ids, mask, state=dequantized_state(fp8_state)),
                               atol=5e-5, rtol=1e-4)
    # and against the original fp32 weights: the fp8 quantisation error (measured ~5-15% of the output's spread on
    # this random tiny model; real T5 weights are far smoother). Scaled fp8 keeps it well under 25%.
    ref = oracle_hidden(ids, mask)
    rel = ((got - ref).norm() / ref.norm()).item()
    assert rel < (0.25 if style != "plain" else 0.4), rel


def test_umt5_position_bias_in_every_layer(tmp_path):
    from transformers import UMT5Config, UMT5EncoderModel
    config = T5EncoderConfig(vocab_size=400, d_model=32, d_kv=8, d_ff=48, num_layers=3, num_heads=4,
                             bias_every_layer=True)
    torch.manual_seed(0)
    peer = UMT5EncoderModel(UMT5Config(**config.to_hf_dict())).eval()
    save_file({k: v for k, v in peer.state_dict().items() if k != "encoder.embed_tokens.weight"},
              tmp_path / "umt5.safetensors")
    t5 = load_t5(tmp_path / "umt5.safetensors", tokenizer="byte", compute_dtype=F32)
    assert t5.config == config
    ids, mask = sample_batch(config)
    with torch.no_grad():
        want = peer(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(run(t5, ids, mask), want, atol=2e-5, rtol=1e-5)


def test_comfy_quant_header_metadata_layout(tmp_path):
    state = to_fp8_state_dict(encoder_state(), style="comfy_quant")
    layers = {k[: -len(".comfy_quant")]: {"format": "float8_e4m3fn"} for k in state if k.endswith(".comfy_quant")}
    state = {k: v for k, v in state.items() if not k.endswith(".comfy_quant")}
    save_file(state, tmp_path / "t5.safetensors",
              metadata={"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})})
    t5 = load_t5(tmp_path / "t5.safetensors", tokenizer="byte", compute_dtype=F32)
    ids, mask = sample_batch()
    torch.testing.assert_close(run(t5, ids, mask), oracle_hidden(ids, mask, state=dequantized_state(state)),
                               atol=5e-5, rtol=1e-4)


def test_unsupported_quant_format_is_a_clear_error(tmp_path):
    state = to_fp8_state_dict(encoder_state(), style="comfy_quant")
    key = next(k for k in state if k.endswith(".comfy_quant"))
    state[key] = torch.tensor(list(json.dumps({"format": "nvfp4"}).encode()), dtype=torch.uint8)
    save_file(state, tmp_path / "t5.safetensors")
    with pytest.raises(TextEncoderError, match="nvfp4"):
        load_t5(tmp_path / "t5.safetensors", tokenizer="byte")


def test_hf_folder_single_and_sharded_with_if_variant_names(tmp_path):
    from transformers import T5EncoderModel
    state = encoder_state()
    ids, mask = sample_batch()
    ref = oracle_hidden(ids, mask)
    plain = write_hf_folder(tmp_path / "plain", state, TINY_GATED)
    # the folder is a valid HF folder: transformers itself loads it to the same outputs
    with torch.no_grad():
        peer = T5EncoderModel.from_pretrained(plain, local_files_only=True).eval()
        torch.testing.assert_close(peer(input_ids=ids, attention_mask=mask).last_hidden_state, ref)
    sharded = write_hf_folder(tmp_path / "IF" / "text_encoder", {k: v.half() for k, v in state.items()},
                              TINY_GATED, shards=3, variant="fp16")
    for folder, tol in ((plain, 2e-5), (sharded, 4e-3)):
        t5 = load_t5(folder, tokenizer="byte", compute_dtype=F32)
        torch.testing.assert_close(run(t5, ids, mask), ref, atol=tol, rtol=tol)


def test_pytorch_bin_folder_loads_weights_only(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_RELU.to_hf_dict()))
    torch.save(encoder_state(TINY_RELU), folder / "pytorch_model.bin")
    ids, mask = sample_batch(TINY_RELU)
    t5 = load_t5(folder, tokenizer="byte", compute_dtype=F32)
    torch.testing.assert_close(run(t5, ids, mask), oracle_hidden(ids, mask, TINY_RELU), atol=2e-5, rtol=1e-5)


def test_pytorch_bin_with_code_payload_is_refused_without_running(tmp_path):
    from tests.test_checkpoints import _Payload

    marker = tmp_path / "pwned.txt"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TINY_RELU.to_hf_dict()))
    torch.save(dict(encoder_state(TINY_RELU), hook=_Payload(marker)), folder / "pytorch_model.bin")
    with pytest.raises(TextEncoderError, match="weights_only.*safetensors version"):
        load_t5(folder, tokenizer="byte")
    assert not marker.exists()


def test_prefixed_and_encoder_decoder_checkpoints(tmp_path):
    state = encoder_state()
    ids, mask = sample_batch()
    ref = oracle_hidden(ids, mask)
    sd3 = {"text_encoders.t5xxl.transformer." + k: v for k, v in state.items()}
    sd3["model.diffusion_model.x_embedder.proj.weight"] = torch.zeros(4, 4)
    save_file(sd3, tmp_path / "sd3_all_in_one.safetensors")
    t5 = load_t5(tmp_path / "sd3_all_in_one.safetensors", tokenizer="byte", compute_dtype=F32)
    torch.testing.assert_close(run(t5, ids, mask), ref, atol=2e-5, rtol=1e-5)

    full = dict(state, **{"decoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(32, 32),
                          "lm_head.weight": torch.zeros(400, 32)})
    save_file(full, tmp_path / "t5_full.safetensors")
    with pytest.warns(TextEncoderWarning, match="encoder-decoder checkpoint.*2 decoder"):
        t5 = load_t5(tmp_path / "t5_full.safetensors", tokenizer="byte", compute_dtype=F32)
    torch.testing.assert_close(run(t5, ids, mask), ref, atol=2e-5, rtol=1e-5)


def test_storage_dtype_option(tmp_path):
    save_file({k: v.half() for k, v in encoder_state().items()}, tmp_path / "t5.safetensors")
    ids, mask = sample_batch()
    as_fp32 = load_t5(tmp_path / "t5.safetensors", dtype=F32, tokenizer="byte", compute_dtype=F32)
    assert as_fp32.model.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == F32
    to_fp8 = load_t5(tmp_path / "t5.safetensors", dtype=torch.float8_e4m3fn, tokenizer="byte", compute_dtype=F32)
    q = to_fp8.model.encoder.block[0].layer[0].SelfAttention.q
    assert q.weight.dtype == torch.float8_e4m3fn and q.weight_scale is not None
    rel = (run(to_fp8, ids, mask) - run(as_fp32, ids, mask)).norm() / run(as_fp32, ids, mask).norm()
    assert 0 < rel < 0.25
    save_file(to_fp8_state_dict(encoder_state(), style="scaled_fp8"), tmp_path / "f8.safetensors")
    up = load_t5(tmp_path / "f8.safetensors", dtype=torch.bfloat16, tokenizer="byte")
    q = up.model.encoder.block[0].layer[0].SelfAttention.q
    assert q.weight.dtype == torch.bfloat16 and q.weight_scale is None    # scale folded into the weight
    with pytest.raises(TextEncoderError, match="dtype must be one of"):
        load_t5(tmp_path / "t5.safetensors", dtype=torch.int8, tokenizer="byte")


def test_quantize_fp8_known_answer():
    w = torch.tensor([[0.5, -1.0], [0.25, 2.0]])
    q, scale = quantize_fp8(w)
    assert q.dtype == torch.float8_e4m3fn and scale.item() == pytest.approx(2.0 / 448)
    torch.testing.assert_close(dequantize(q, scale, F32), w, rtol=0.07, atol=0)   # e4m3: 3 mantissa bits
    assert float(q.float().abs().max()) == 448.0
    assert all(d in FP8_DTYPES for d in (torch.float8_e4m3fn, torch.float8_e5m2))


# -- bad input: a clear TextEncoderError naming the file and the fix, never a crash -----------------------------------

def test_unet_passed_as_t5(tmp_path):
    save_file({"down_blocks.0.resnets.0.conv1.weight": torch.zeros(4, 4, 3, 3), "conv_in.weight": torch.zeros(4)},
              tmp_path / "unet.safetensors")
    with pytest.raises(TextEncoderError, match=r"unet\.safetensors is not a T5 text encoder.*diffusion U-Net"):
        load_t5(tmp_path / "unet.safetensors", tokenizer="byte")


@pytest.mark.parametrize("case", ["missing", "empty_dir", "gguf", "damaged", "truncated_model", "wrong_config"])
def test_bad_files(tmp_path, case):
    target = tmp_path / "t5.safetensors"
    if case == "missing":
        match = "not found.*models/text_encoders"
    elif case == "empty_dir":
        target = tmp_path / "folder"
        target.mkdir()
        match = "holds no T5 weights"
    elif case == "gguf":
        target = tmp_path / "t5.gguf"
        target.write_bytes(b"GGUF" + bytes(64))
        match = "GGUF"
    elif case == "damaged":
        target.write_bytes(b"\xff" * 8 + b"{not json")
        match = "not a readable safetensors file"
    elif case == "truncated_model":
        state = encoder_state()
        del state["encoder.block.1.layer.1.DenseReluDense.wo.weight"]
        save_file(state, target)
        match = "not hold a consistent T5 encoder"
    else:
        target = write_hf_folder(tmp_path / "hf", encoder_state(), TINY_GATED)
        cfg = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps(dict(cfg, num_heads=8)))
        match = "config.json does not match the weights"
    with pytest.raises(TextEncoderError, match=match):
        load_t5(target, tokenizer="byte")


def test_weights_are_not_copied_from_the_file_map(tmp_path):
    """An fp16 file loaded as stored: the weights live in the file's memory map (safetensors), not in new memory."""
    save_file({k: v.half() for k, v in encoder_state().items()}, tmp_path / "t5.safetensors")
    t5 = load_t5(tmp_path / "t5.safetensors", tokenizer="byte")
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("no /proc/self/maps on this platform")
    maps = open("/proc/self/maps").read()
    ranges = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in maps.splitlines()
              if str(tmp_path / "t5.safetensors") in line]
    ptr = t5.model.encoder.block[1].layer[1].DenseReluDense.wo.weight.data_ptr()
    assert any(lo <= ptr < hi for lo, hi in ranges)
    with warnings.catch_warnings():
        warnings.simplefilter("error")               # loading a well-formed file warns about nothing
        load_t5(tmp_path / "t5.safetensors", tokenizer="byte")


# -- the fp8 upcast: bit for bit torch's cast, faster -----------------------------------------------------------------
TARGETS = (torch.bfloat16, F32, torch.float16, torch.float64)


def bits(t: torch.Tensor) -> torch.Tensor:
    """A float tensor's bit pattern (NaN payloads included)."""
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def all_codes(fmt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """All 256 codes of an fp8 format, and the finite ones (254 e4m3fn, 248 e5m2) that the integer path takes."""
    codes = torch.arange(256, dtype=torch.uint8).view(fmt)
    return codes, codes[torch.isfinite(codes.float())]


@pytest.mark.parametrize("fmt", FP8_DTYPES, ids=str)
def test_upcast_is_the_torch_cast_bit_for_bit_on_every_code(fmt, monkeypatch):
    codes, finite = all_codes(fmt)
    assert len(finite) == {torch.float8_e4m3fn: 254, torch.float8_e5m2: 248}[fmt]
    for dtype in TARGETS:
        backwards = finite.view(torch.uint8).flip(0).view(fmt)
        for t in (codes, finite, backwards, finite.repeat(4)[:960].view(30, 32).t()):   # last: not contiguous
            assert torch.equal(bits(upcast(t, dtype)), bits(t.to(dtype))), (dtype, t.shape)
        out = torch.full((len(finite),), 7.0, dtype=dtype)
        assert upcast(finite, dtype, out=out).data_ptr() == out.data_ptr()
        assert torch.equal(bits(out), bits(finite.to(dtype)))
    monkeypatch.setattr(fp8, "UPCAST_CHUNK", 64)      # step by step; a NaN / inf code only in the last step
    many = torch.cat([finite.repeat(3), codes])
    for dtype in TARGETS:
        for t in (finite.repeat(3), many, many.view(-1, 2)):
            assert torch.equal(bits(upcast(t, dtype)), bits(t.to(dtype))), (dtype, t.shape)


def test_upcast_while_subnormals_are_flushed():
    """The integer path multiplies fp8 subnormals into range; with flush-to-zero on that would zero them."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormals")
    try:
        for fmt in FP8_DTYPES:
            _, finite = all_codes(fmt)
            for dtype in (torch.bfloat16, F32):
                assert torch.equal(bits(upcast(finite, dtype)), bits(finite.to(dtype)))
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("fmt", FP8_DTYPES, ids=str)
def test_dequantize_with_and_without_scales_is_the_torch_cast(fmt):
    _, finite = all_codes(fmt)
    w = finite.repeat(2)[:480].view(30, 16)
    per_tensor, per_row = torch.tensor(0.0123), torch.linspace(0.5, 2.0, 30)
    for dtype in (torch.bfloat16, F32, torch.float16):
        assert torch.equal(bits(dequantize(w, None, dtype)), bits(w.to(dtype)))
        for scale, shaped in ((per_tensor, per_tensor), (per_row, per_row[:, None])):
            assert torch.equal(bits(dequantize(w, scale, dtype)), bits((w.float() * shaped).to(dtype)))


def fp8_linear(rows: int, cols: int, scale: torch.Tensor | None, fmt=torch.float8_e4m3fn) -> CastLinear:
    g = torch.Generator().manual_seed(rows)
    layer = CastLinear(cols, rows)
    layer.weight = torch.nn.Parameter((torch.randn(rows, cols, generator=g) * 20).to(fmt), requires_grad=False)
    layer.weight_scale = scale
    return layer


@pytest.mark.parametrize("scale", [None, torch.tensor(0.01), torch.linspace(0.01, 0.02, 37)],
                         ids=["no scale", "per tensor", "per row"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, F32], ids=str)
def test_cast_linear_is_the_layer_on_the_torch_cast_weight(monkeypatch, scale, dtype):
    """CastLinear on an fp8 weight: F.linear on ``weight.to(dtype)`` times the scale, whole or block by block."""
    layer = fp8_linear(37, 24, scale)
    x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(1)).to(dtype)
    want = torch.nn.functional.linear(x, layer.weight.to(dtype))
    if scale is not None:
        want = want * scale.to(dtype)
    with torch.no_grad():
        assert torch.equal(layer(x), want)                          # one block: the same matmul
        monkeypatch.setattr(t5_model, "BLOCK_VALUES", 24 * 5)       # blocks of 5 rows, the last one of 2
        # every output is still one dot product over all 24 inputs, but a narrower matmul may sum in another order
        tolerance = (1e-5 if dtype == F32 else 1e-2) * float(want.abs().max())
        torch.testing.assert_close(layer(x), want, atol=tolerance, rtol=0)


def test_cast_linear_under_autograd_casts_the_whole_weight(monkeypatch):
    """Autograd keeps the weight a matmul saw, so no block buffer is reused then; the gradients are exact."""
    monkeypatch.setattr(t5_model, "BLOCK_VALUES", 16)               # one row per block, were blocks used
    layer = fp8_linear(8, 16, torch.tensor(0.05))
    x = torch.randn(3, 16, requires_grad=True)
    layer(x).square().sum().backward()
    x_ref = x.detach().clone().requires_grad_(True)
    (torch.nn.functional.linear(x_ref, layer.weight.to(F32)) * 0.05).square().sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("style", ["plain", "scaled_fp8"])
def test_fp8_t5_block_by_block_matches_whole_weights(tmp_path, monkeypatch, style):
    save_file(to_fp8_state_dict(encoder_state(), style=style), tmp_path / "t5.safetensors")
    t5 = load_t5(tmp_path / "t5.safetensors", tokenizer="byte", compute_dtype=F32)
    ids, mask = sample_batch()
    whole = run(t5, ids, mask)
    monkeypatch.setattr(t5_model, "BLOCK_VALUES", 32 * 7)           # 7 rows of the d_model-wide weights
    torch.testing.assert_close(run(t5, ids, mask), whole, atol=1e-5, rtol=1e-5)   # (measured 1.7e-6)
