"""Tokenizers, padding/truncation and prompt cleaning: the real T5 v1.1 tokenizer against transformers, ByT5 bytes
against transformers' ByT5Tokenizer, and known answers."""
from __future__ import annotations

import shutil

import pytest
import torch

from comfyui_imagen.text import (ByteTokenizer, TextEncoderError, clean_caption, find_tokenizer, load_tokenizer,
                                 pad_and_truncate, preprocess)
from tests.test_text_support import SHARED_T5, needs_real_tokenizer

PROMPTS = ["A red circle to the left of a blue square", "", "一只红色的猫坐在桌子上",
           "Ünïcödé café — “quotes”, 123,456 & <b>html</b>  double  spaces\n", "a photo of " * 60]


@pytest.fixture(scope="module")
def real():
    return load_tokenizer(SHARED_T5)


@needs_real_tokenizer
@pytest.mark.parametrize("max_length", [77, 256, 8])
def test_real_tokenizer_matches_t5_tokenizer_fast(real, max_length):
    from transformers import T5TokenizerFast
    ref = T5TokenizerFast.from_pretrained(str(SHARED_T5), local_files_only=True)
    want = ref(PROMPTS, padding="max_length", max_length=max_length, truncation=True)
    got = pad_and_truncate(real.tokenize(PROMPTS), max_length, pad_id=real.pad_id, eos_id=real.eos_id)
    assert got.ids.tolist() == want["input_ids"]
    assert got.mask.long().tolist() == want["attention_mask"]
    full = [len(ids) for ids in ref(PROMPTS)["input_ids"]]
    assert got.dropped == [max(0, n - max_length) for n in full]
    assert (real.pad_id, real.eos_id, real.unk_id, real.vocab_size) == (0, 1, 2, 32100)


@needs_real_tokenizer
def test_tokenizer_json_alone_gives_the_same_ids(tmp_path, real):
    shutil.copy(SHARED_T5 / "tokenizer.json", tmp_path / "tokenizer.json")
    for source in (tmp_path, tmp_path / "tokenizer.json"):      # a bare folder, and the file itself
        alone = load_tokenizer(source)
        assert alone.tokenize(PROMPTS) == real.tokenize(PROMPTS)
        assert (alone.pad_id, alone.eos_id, alone.unk_id) == (0, 1, 2)


@needs_real_tokenizer
def test_chinese_and_very_long_prompts(real):
    chinese = real.tokenize(["一只红色的猫"])[0]
    assert chinese and set(chinese) <= {3, real.unk_id}          # "▁" + <unk>: T5 has no CJK vocabulary
    long = real.tokenize(["word " * 2000])[0]                    # 10,000 characters
    assert len(long) == 2000
    batch = pad_and_truncate([long], 77, pad_id=0, eos_id=1)
    assert batch.ids.shape == (1, 77) and batch.ids[0, -1] == 1 and batch.dropped == [2001 - 77]


def test_byte_tokenizer_matches_byt5():
    from transformers import ByT5Tokenizer
    texts = ["héllo €", "", "一只猫", "tab\tnew\nline"]
    ref = ByT5Tokenizer()
    tok = ByteTokenizer()
    got = [ids + [tok.eos_id] for ids in tok.tokenize(texts)]
    assert got == ref(texts)["input_ids"]
    assert (tok.pad_id, tok.eos_id, tok.unk_id) == (ref.pad_token_id, ref.eos_token_id, ref.unk_token_id)
    assert tok.decode(tok.tokenize(["一只猫"])[0]) == "一只猫"
    assert isinstance(load_tokenizer(None), ByteTokenizer) and isinstance(load_tokenizer("byte"), ByteTokenizer)


def test_pad_and_truncate_known_answer():
    batch = pad_and_truncate([[5, 6, 7], [], [8, 9, 10, 11, 12]], 4, pad_id=0, eos_id=1)
    assert batch.ids.tolist() == [[5, 6, 7, 1], [1, 0, 0, 0], [8, 9, 10, 1]]
    assert batch.mask.tolist() == [[True] * 4, [True, False, False, False], [True] * 4]
    assert batch.dropped == [0, 0, 2]
    assert batch.ids.dtype == torch.long and batch.mask.dtype == torch.bool
    with pytest.raises(TextEncoderError, match="max_length"):
        pad_and_truncate([[1]], 0, pad_id=0, eos_id=1)


def test_missing_tokenizers_are_clear_errors(tmp_path):
    with pytest.raises(TextEncoderError, match="tokenizer not found.*comfy/text_encoders/t5_tokenizer"):
        load_tokenizer(tmp_path / "nowhere")
    with pytest.raises(TextEncoderError, match="no tokenizer.json or spiece.model"):
        load_tokenizer(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(TextEncoderError, match="spiece.model"):
        load_tokenizer(tmp_path)


def test_find_tokenizer_where_people_put_it(tmp_path):
    repo = tmp_path / "IF-I-XL-v1.0"
    (repo / "text_encoder").mkdir(parents=True)
    (repo / "tokenizer").mkdir()
    (repo / "tokenizer" / "tokenizer.json").write_text("{}")
    assert find_tokenizer(repo / "text_encoder") == repo / "tokenizer"           # IF's layout
    models = tmp_path / "text_encoders"
    (models / "t5xxl_fp16_tokenizer").mkdir(parents=True)
    (models / "t5xxl_fp16_tokenizer" / "spiece.model").write_bytes(b"x")
    (models / "t5xxl_fp16.safetensors").write_bytes(b"")
    assert find_tokenizer(models / "t5xxl_fp16.safetensors") == models / "t5xxl_fp16_tokenizer"
    assert find_tokenizer(tmp_path / "elsewhere.safetensors") is None


# -- IF's prompt preprocessing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw, cleaned", [
    ("  A Photo of a CAT  ", "a photo of a cat"),
    ("Check https://example.com/cat.png now", "check now"),
    ("<b>Bold</b> &amp; brave", "bold brave"),
    ("@someone  loves   whitespace", "loves whitespace"),
    ("一只猫 a cat", "a cat"),
    ("“Quoted” — text", '"quoted" - text'),
    ("free shipping on this-is-my-cute-cat picture", "on this is my cute cat picture"),
    ("Ｆｕｌｌｗｉｄｔｈ letters", "fullwidth letters"),
    ("'a lone caption'", "a lone caption"),
])
def test_clean_caption_known_answers(raw, cleaned):
    assert clean_caption(raw) == cleaned


def test_preprocess_modes():
    assert preprocess("  Mixed Case  ", "none") == "  Mixed Case  "
    assert preprocess("  Mixed Case  ", "lower") == "mixed case"
    assert preprocess("  Mixed Case  ", "clean") == "mixed case"
    with pytest.raises(ValueError, match="unknown prompt preprocessing"):
        preprocess("x", "upper")
