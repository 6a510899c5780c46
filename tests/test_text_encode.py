"""T5TextEncoder.encode: IF-style padding and masks against transformers, truncation, negative prompts (one T5 batch
with the prompts), the cache, compute dtypes, the model's arithmetic pieces, config inference, and the speed
benchmark's tiny run."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from comfyui_imagen.text import (PRESETS, T5_V1_1_XXL, ByteTokenizer, EmbeddingCache, TextEmbeds,
                                 TextEncoderError, TextEncoderWarning, expected_shapes, infer_config, load_t5,
                                 pick_compute_dtype)
from comfyui_imagen.text.config import config_from_hf
from comfyui_imagen.text.model import relative_position_bucket
from tests.test_text_support import (SHARED_T5, TINY_GATED, encoder_state, needs_real_tokenizer, oracle)

TINY_SENTENCEPIECE = replace(TINY_GATED, vocab_size=32128)   # room for T5's 32100 SentencePiece tokens

F32 = torch.float32


@pytest.fixture(scope="module")
def t5_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5") / "tiny_t5.safetensors"
    save_file(encoder_state(), path)
    return path


@pytest.fixture()
def t5(t5_file):
    return load_t5(t5_file, tokenizer="byte", compute_dtype=F32)


def oracle_encode(prompts, max_length):
    """IF's encode_prompt on the oracle: byte ids padded to max_length, mask passed, padding embeddings kept."""
    tok = ByteTokenizer()
    rows = [(ids[: max_length - 1] + [1]) for ids in tok.tokenize(prompts)]
    ids = torch.tensor([r + [0] * (max_length - len(r)) for r in rows])
    mask = ids != 0
    with torch.no_grad():
        return oracle()(input_ids=ids, attention_mask=mask).last_hidden_state, mask


def test_encode_matches_if_style_oracle(t5):
    prompts = ["a red circle", "", "A Blue Square left of"]
    out = t5.encode(prompts, max_length=24, preprocess_mode="none")
    assert isinstance(out, TextEmbeds) and out.embeds.shape == (3, 24, 32) and out.embeds.dtype == F32
    want, mask = oracle_encode(prompts, 24)
    assert torch.equal(out.mask, mask) and out.mask.sum(1).tolist() == [13, 1, 22]
    torch.testing.assert_close(out.embeds, want, atol=2e-5, rtol=1e-5)
    assert out.embeds[:, 20:].abs().sum() > 0                                # IF keeps padding embeddings
    zeroed = t5.encode(prompts, max_length=24, preprocess_mode="none", zero_padding=True)
    assert zeroed.embeds[~zeroed.mask].abs().max() == 0                     # imagen-pytorch zeroes them
    torch.testing.assert_close(zeroed.embeds[zeroed.mask], want[mask], atol=2e-5, rtol=1e-5)


def test_batches_larger_than_the_model_batch(t5):
    prompts = [f"prompt number {i}" for i in range(7)]
    whole = t5.encode(prompts, preprocess_mode="none").embeds
    t5.batch_size, t5.cache = 3, EmbeddingCache()
    torch.testing.assert_close(t5.encode(prompts, preprocess_mode="none").embeds, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, oracle_encode(prompts, 77)[0], atol=2e-5, rtol=1e-5)


def test_default_preprocessing_lower_cases_like_if(t5):
    a = t5.encode(["  A RED Circle "])
    b = t5.encode(["a red circle"], preprocess_mode="none")
    torch.testing.assert_close(a.embeds, b.embeds, atol=0, rtol=0)


def test_truncation_warns_with_the_count(t5):
    with pytest.warns(TextEncoderWarning, match="prompt 2: 15 of 25 tokens dropped"):
        out = t5.encode(["short", "x" * 24], max_length=10)
    want, _ = oracle_encode(["short", "x" * 24], 10)
    torch.testing.assert_close(out.embeds, want, atol=2e-5, rtol=1e-5)
    assert out.mask[1].all()


def test_ten_thousand_characters_and_chinese(t5):
    with pytest.warns(TextEncoderWarning, match="dropped"):
        long = t5.encode(["a" * 10_000], max_length=256)
    assert long.embeds.shape == (1, 256, 32) and torch.isfinite(long.embeds).all()
    chinese = t5.encode(["一只红色的猫"], max_length=77)              # bytes: no unknowns, 18 bytes + eos
    assert chinese.mask.sum() == 19 and torch.isfinite(chinese.embeds).all()


def test_cache_hits_skip_the_model(t5):
    calls = []
    t5.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    t5.encode(["a cat", "a dog", "a cat"])
    assert calls == [2]                                   # duplicates encoded once
    t5.encode(["a dog", "a cat"])
    assert calls == [2]                                   # re-queued: all from cache
    t5.encode(["a cat"], max_length=32)
    assert calls == [2, 1]                                # other settings: new key
    assert (t5.cache.hits, t5.cache.misses) == (2, 3)
    cond, uncond = t5.encode_for_guidance(["a cat", "a bird"])
    assert calls == [2, 1, 2]                             # "a bird" and "" were new: one batch; "" serves both rows
    assert torch.equal(uncond.embeds[0], uncond.embeds[1])
    torch.testing.assert_close(uncond.embeds, t5.unconditional(2).embeds)


def test_cache_is_bounded_and_shared_by_identity(t5_file):
    cache = EmbeddingCache(max_entries=2)
    a = load_t5(t5_file, tokenizer="byte", compute_dtype=F32, cache=cache)
    a.encode(["one", "two", "three"])
    assert len(cache) == 2
    b = load_t5(t5_file, tokenizer="byte", compute_dtype=F32, cache=cache)    # same file reloaded
    hits = cache.hits
    b.encode(["three"])
    assert cache.hits == hits + 1


def test_negative_prompts(t5):
    cond, uncond = t5.encode_for_guidance(["a", "b"], ["not a", "not b"])
    torch.testing.assert_close(uncond.embeds, t5.encode(["not a", "not b"]).embeds)
    with pytest.raises(TextEncoderError, match="3 negative prompts for 2 prompts"):
        t5.encode_for_guidance(["a", "b"], ["x", "y", "z"])


def forward_rows(t5) -> list[int]:
    """Rows of every T5 pass the encoder makes from now on."""
    rows = []
    t5.model.register_forward_hook(lambda module, inputs, output: rows.append(inputs[0].shape[0]))
    return rows


def two_passes(t5_file, prompts, negatives, **options):
    """What encode_for_guidance returned before it batched both: encode(prompts), then encode(negatives), on a fresh
    encoder (one cache, so the second call finds what the first encoded)."""
    t5 = load_t5(t5_file, tokenizer="byte", compute_dtype=F32)
    prompts = [prompts] if isinstance(prompts, str) else prompts
    negatives = [negatives] * len(prompts) if isinstance(negatives, str) else negatives
    return t5.encode(prompts, **options), t5.encode(negatives, **options)


def assert_same_embeds(got: TextEmbeds, want: TextEmbeds) -> None:
    """Equal masks; embeddings equal to rounding (the batch a row shares changes fp32 sums by ~1e-6)."""
    assert torch.equal(got.mask, want.mask)
    torch.testing.assert_close(got.embeds, want.embeds, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("prompts, negatives, options, rows", [
    ("a red circle", "", {}, [2]),                                         # the usual pair: one pass
    (["a cat", "a dog", "a bird"], ["blurry", "", "a dog"], {}, [5]),      # "a dog" in both: one row
    (["a cat", "A Dog"], "low quality", {"zero_padding": True, "preprocess_mode": "none"}, [3]),
    ("a (red:1.5) circle", "a (blue:0.7) square", {"emphasis": True}, [1, 2]),   # "" first, alone, for the weights
    ("(red:1.3) circle", "", {"emphasis": True}, [1, 1]),
    ("(red:1.3) circle", "plain words", {"emphasis": True, "max_length": 24}, [1, 2]),
], ids=["pair", "lists", "options", "weighted both", "weighted and empty", "weighted and plain"])
def test_guidance_encodes_prompts_and_negatives_in_one_batch(t5_file, prompts, negatives, options, rows):
    t5 = load_t5(t5_file, tokenizer="byte", compute_dtype=F32)
    passes = forward_rows(t5)
    options = dict(options)
    max_length = options.pop("max_length", 77)
    cond, uncond = t5.encode_for_guidance(prompts, negatives, max_length, **options)
    assert passes == rows
    want_cond, want_uncond = two_passes(t5_file, prompts, negatives, max_length=max_length, **options)
    assert_same_embeds(cond, want_cond)
    assert_same_embeds(uncond, want_uncond)
    assert cond.embeds.shape[0] == uncond.embeds.shape[0] == (1 if isinstance(prompts, str) else len(prompts))


def test_guidance_batches_only_what_the_cache_lacks(t5_file):
    t5 = load_t5(t5_file, tokenizer="byte", compute_dtype=F32)
    passes = forward_rows(t5)
    t5.encode("a cat")
    cond, uncond = t5.encode_for_guidance(["a cat", "a fish"], "")
    assert passes == [1, 2]                                 # "a fish" and "" together; "a cat" from the cache
    again = t5.encode_for_guidance(["a fish", "a cat"], "")
    assert passes == [1, 2]                                 # all cached: no pass
    assert torch.equal(again[0].embeds, cond.embeds.flip(0)) and torch.equal(again[1].embeds, uncond.embeds)
    want = two_passes(t5_file, ["a cat", "a fish"], "")
    assert_same_embeds(cond, want[0])
    assert_same_embeds(uncond, want[1])
    t5.batch_size = 2                                       # six new rows, two per pass
    cond, uncond = t5.encode_for_guidance(["one", "two", "three"], ["not one", "not two", "not three"])
    assert passes == [1, 2, 2, 2, 2]
    want = two_passes(t5_file, ["one", "two", "three"], ["not one", "not two", "not three"])
    assert_same_embeds(cond, want[0])
    assert_same_embeds(uncond, want[1])


def test_speed_benchmark_runs_in_tiny_mode(capsys):
    """benchmarks/t5_speed.py end to end on one small layer: ours and transformers in child processes, the
    upcast candidates and the layer variants, every cast checked bit for bit."""
    from benchmarks import t5_speed
    threads = torch.get_num_threads()
    try:
        report = t5_speed.main(["--synthetic-layers", "1", "--preset", "t5_v1_1_small", "--micro", "--repeats", "1",
                                "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "ours / transformers: encode time" in printed and "upcast is" in printed
    synthetic = report["synthetic"]
    ours = synthetic["runs"]["ours"]
    assert ours["passes_per_encode"] == 1 and ours["rows_per_pass"] == [2]     # prompt and "" in one batch
    assert synthetic["time_ratio"] > 0 and 0 < synthetic["rss_ratio"]
    assert synthetic["max_abs_diff"] < 0.1 * synthetic["peer_abs_max"]        # the same weights, both in bf16
    assert all(report["micro"]["upcast_exact"].values())
    for label, layer in report["micro"]["layer_ms"].items():
        if label.startswith("now"):      # narrower matmuls per row block: the last bit may round otherwise
            assert layer["max_diff_to_before"] < 0.05, label
        else:                            # the same matmuls on the same weight values
            assert layer["equal_to_before"], label


@pytest.mark.parametrize("bad, match", [([], "non-empty list"), ([3], "must all be strings"),
                                        (None, "non-empty list")])
def test_bad_prompts(t5, bad, match):
    with pytest.raises(TextEncoderError, match=match):
        t5.encode(bad)


def test_bad_settings(t5):
    with pytest.raises(TextEncoderError, match="max_length"):
        t5.encode("x", max_length=0)
    with pytest.raises(TextEncoderError, match="preprocess_mode"):
        t5.encode("x", preprocess_mode="upper")


@needs_real_tokenizer
def test_real_tokenizer_end_to_end_like_if_pipeline(tmp_path):
    """IF's encode_prompt (T5TokenizerFast, padding="max_length", truncation, mask) on transformers' model vs ours,
    with a Chinese prompt (unknown characters) and a 10,000-character one (truncated)."""
    from transformers import T5TokenizerFast
    save_file(encoder_state(TINY_SENTENCEPIECE), tmp_path / "t5.safetensors")
    t5 = load_t5(tmp_path / "t5.safetensors", tokenizer=SHARED_T5, compute_dtype=F32)
    prompts = ["a red circle to the left of a blue square", "一只红色的猫", "a photo of a cat " * 600, ""]
    assert len(prompts[2]) > 10_000
    with pytest.warns(TextEncoderWarning) as caught:
        out = t5.encode(prompts, max_length=77)
    messages = " ".join(str(w.message) for w in caught)
    assert "prompt 3: 4124 of 4201 tokens dropped" in messages and "<unk> (prompt 2: 1)" in messages
    tok = T5TokenizerFast.from_pretrained(str(SHARED_T5), local_files_only=True)
    ref = tok([p.lower().strip() for p in prompts], padding="max_length", max_length=77, truncation=True,
              return_tensors="pt")
    with torch.no_grad():
        want = oracle(TINY_SENTENCEPIECE)(input_ids=ref.input_ids, attention_mask=ref.attention_mask)[0]
    assert torch.equal(out.mask, ref.attention_mask.bool())
    torch.testing.assert_close(out.embeds, want, atol=2e-5, rtol=1e-5)


@needs_real_tokenizer
def test_tokenizer_too_big_for_the_embedding_table(t5_file):
    with pytest.raises(TextEncoderError, match="32100 tokens but the T5 model's embedding table has 400 rows"):
        load_t5(t5_file, tokenizer=SHARED_T5)


def test_missing_tokenizer_for_a_sentencepiece_sized_model(tmp_path):
    state = encoder_state()
    state["shared.weight"] = torch.zeros(32128, 32)
    save_file(state, tmp_path / "t5xxl_fp16.safetensors")
    with pytest.raises(TextEncoderError, match="no tokenizer found.*comfy/text_encoders/t5_tokenizer"):
        load_t5(tmp_path / "t5xxl_fp16.safetensors")
    with pytest.warns(TextEncoderWarning, match="byte-level tokenizer used with a T5 of 32128 tokens"):
        load_t5(tmp_path / "t5xxl_fp16.safetensors", tokenizer="byte")


def test_small_vocab_model_gets_byte_tokens_automatically(tmp_path):
    save_file(encoder_state(), tmp_path / "mine.safetensors")
    assert isinstance(load_t5(tmp_path / "mine.safetensors").tokenizer, ByteTokenizer)


def test_compute_dtypes(t5, t5_file):
    assert pick_compute_dtype(F32) == F32
    assert pick_compute_dtype(torch.float8_e4m3fn) in (F32, torch.bfloat16)
    assert pick_compute_dtype(torch.float16, "meta") == F32
    ref = t5.encode(["a red circle"]).embeds
    bf = load_t5(t5_file, tokenizer="byte", compute_dtype=torch.bfloat16).encode(["a red circle"]).embeds
    assert bf.dtype == F32
    rel = ((bf - ref).norm() / ref.norm()).item()
    assert 1e-6 < rel < 0.03, rel                          # bf16 activations: ~1% off fp32
    half = load_t5(t5_file, tokenizer="byte", compute_dtype=torch.float16).encode(["a red circle"]).embeds
    assert ((half - ref).norm() / ref.norm()).item() < 0.01


# -- the model's pieces and the config ------------------------------------------------------------------------------

def test_relative_position_bucket_matches_t5():
    from transformers.models.t5.modeling_t5 import T5Attention
    rel = torch.arange(-300, 301)
    for buckets, distance in ((32, 128), (16, 64)):
        want = T5Attention._relative_position_bucket(rel, bidirectional=True, num_buckets=buckets,
                                                     max_distance=distance)
        assert torch.equal(relative_position_bucket(rel, buckets, distance), want)
    got = relative_position_bucket(torch.tensor([0, 1, -1, 7, 8, 127, 128, -1000]))
    assert got.tolist() == [0, 17, 1, 23, 8 + 16, 31, 31, 15]   # exact below 8, log-spaced up to 128, then shared


def test_infer_config_and_presets():
    for name, preset in PRESETS.items():
        assert infer_config(expected_shapes(preset)) == preset, name
    params = sum(math.prod(s) for s in expected_shapes(T5_V1_1_XXL).values())
    assert params == 4_762_310_656                         # T5 v1.1 XXL encoder: 4.76 B parameters
    if (SHARED_T5 / "config.json").is_file():
        hf = json.loads((SHARED_T5 / "config.json").read_text())
        assert config_from_hf(hf, expected_shapes(T5_V1_1_XXL), source="xxl") == T5_V1_1_XXL
    with pytest.raises(TextEncoderError, match="not a complete T5 encoder"):
        infer_config({"encoder.block.0.layer.0.SelfAttention.q.weight": (8, 8)})


def test_xxl_builds_on_meta_without_memory():
    from comfyui_imagen.text import T5Encoder
    model = T5Encoder(T5_V1_1_XXL, device="meta")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected_shapes(T5_V1_1_XXL)

