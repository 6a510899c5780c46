"""ComfyUI's prompt weights in T5 prompts (`comfyui_imagen.text.emphasis`): the parser against ComfyUI's answers, the
weighting against a hand computation, plain prompts bit-identical, both tokenizers, the cache, the node.

The expected parses below were taken from ComfyUI 0.33.0's ``comfy/sd1_clip.py`` (``parse_parentheses``,
``token_weights`` and the words ``SDTokenizer.tokenize_with_weights`` hands its tokenizer, T5XXLTokenizer's settings,
an empty embeddings folder), run on exactly these prompts. With COMFYUI_PATH pointing at a ComfyUI checkout, the
last tests run those functions themselves on thousands of random prompts.
"""
from __future__ import annotations

import ast
import logging
import os
import random
import re
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyui_imagen.text import EmbeddingCache, TextEncoderError, TextEncoderWarning, load_t5, pad_and_truncate
from comfyui_imagen.text.emphasis import (has_weights, is_plain, prompt_pieces, split_groups, token_weight_row,
                                          weigh_from_empty, weighted_segments)
from comfyui_imagen.text.tokenizers import VocabTokenizer
from tests.test_text_support import SHARED_T5, TINY_GATED, encoder_state

F32 = torch.float32
DEMO_T5 = Path(__file__).resolve().parents[1] / "comfyui_imagen" / "demo" / "imagen-demo-t5.safetensors"
COMFYUI = Path(os.environ["COMFYUI_PATH"]) if os.environ.get("COMFYUI_PATH") else None

# (prompt, parse_parentheses(prompt), token_weights(prompt, 1.0)) from ComfyUI 0.33.0's sd1_clip
GROUPS = [
    ('a red circle', ['a red circle'], [('a red circle', 1.0)]),
    ('(red:1.3) circle', ['(red:1.3)', ' circle'], [('red', 1.3), (' circle', 1.0)]),
    ('((a))', ['((a))'], [('a', 1.2100000000000002)]),
    ('((a:1.5))', ['((a:1.5))'], [('a', 1.5)]),                   # an explicit weight replaces, never multiplies
    ('(a:abc)', ['(a:abc)'], [('a:abc', 1.1)]),                   # not a number: text, and the group's 1.1
    ('(:1.5)', ['(:1.5)'], [(':1.5', 1.1)]),                      # ":" must follow a first character
    ('a (b', ['a ', '(b'], [('a ', 1.0), ('(b', 1.0)]),           # unclosed: text
    ('a) b', ['a) b'], [('a) b', 1.0)]),                          # unopened: text
    ('a)(b)c', ['a)(b)c'], [('a)(b)c', 1.0)]),                    # depth below 0 swallows the next group
    ('[a]', ['[a]'], [('[a]', 1.0)]),                             # brackets mean nothing in ComfyUI
    ('()', ['()'], []),
    ('(a(b)c)', ['(a(b)c)'], [('a', 1.1), ('b', 1.2100000000000002), ('c', 1.1)]),
    ('(a:1.2:1.3)', ['(a:1.2:1.3)'], [('a:1.2', 1.3)]),
    ('(a: 0.5 )', ['(a: 0.5 )'], [('a', 0.5)]),
    ('(a:-1)', ['(a:-1)'], [('a', -1.0)]),
    ('(a (b:0.5) c)', ['(a (b:0.5) c)'], [('a ', 1.1), ('b', 0.5), (' c', 1.1)]),
    ('(a)(b)', ['(a)', '(b)'], [('a', 1.1), ('b', 1.1)]),
    ('((a) b)', ['((a) b)'], [('a', 1.2100000000000002), (' b', 1.1)]),
]
# (prompt, the (word, weight) pairs ComfyUI 0.33.0's SDTokenizer tokenizes, in order)
PIECES = [
    ('a red circle', (('a red circle', 1.0),)),
    ('', ()),
    ('a (red:1.3) circle', (('a ', 1.0), ('red', 1.3), (' circle', 1.0))),
    ('\\(literal\\) (x)', (('(literal) ', 1.0), ('x', 1.1))),     # \( is a literal parenthesis, backslash dropped
    ('(\\(a\\):1.2)', (('(a)', 1.2),)),
    ('a cat embedding:foo, dog', (('a cat ', 1.0), (', dog', 1.0))),   # a missing embedding is left out
    ('embedding:bar<x> dog', (('<x> dog', 1.0),)),
    ('(embedding:q red:1.4)', (('red', 1.4),)),
    ('a embedding:cat', (('a ', 1.0),)),
    ('red(ball:1.2)s', (('red', 1.0), ('ball', 1.2), ('s', 1.0))),
    ('x  (y)  z', (('x  ', 1.0), ('y', 1.1), ('  z', 1.0))),
    ('(((deep)))', (('deep', 1.3310000000000004),)),
    ('((a:0.5) b)', (('a', 0.5), (' b', 1.1))),
]


# -- the parser ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, groups, segments", GROUPS, ids=[g[0] or "empty" for g in GROUPS])
def test_groups_and_weights_as_comfyui(prompt, groups, segments):
    assert split_groups(prompt) == groups
    assert weighted_segments(prompt) == segments


@pytest.mark.parametrize("prompt, pieces", PIECES, ids=[p[0] or "empty" for p in PIECES])
def test_pieces_as_comfyui_tokenizes_them(prompt, pieces):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextEncoderWarning)
        assert prompt_pieces(prompt) == pieces


def test_plain_prompts_are_one_piece_of_weight_one():
    for prompt in ["a red circle", "", "   ", "[square] 1:2, 3.5", "(a:1.0)", "\\(x\\)"]:
        assert is_plain(prompt_pieces(prompt))
    assert prompt_pieces("\\(x\\)") == (("(x)", 1.0),)
    assert not is_plain(prompt_pieces("(a)")) and has_weights(prompt_pieces("(a)"))
    assert not is_plain(prompt_pieces("a (b")) and not has_weights(prompt_pieces("a (b"))   # two pieces, weight 1


def test_embeddings_are_left_out_with_a_warning():
    with pytest.warns(TextEncoderWarning, match="embedding:foo: T5 has no textual-inversion embeddings"):
        assert prompt_pieces("a cat embedding:foo, dog") == (("a cat ", 1.0), (", dog", 1.0))
    with pytest.warns(TextEncoderWarning, match="embedding:dog: T5"):
        assert prompt_pieces("a embedding: dog") == (("a ", 1.0),)     # the next word is the name, as in ComfyUI
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert prompt_pieces("a embedding: \n") == (("a ", 1.0),)      # no name: ComfyUI raises IndexError
        assert prompt_pieces("xembedding:foo") == (("xembedding:foo", 1.0),)    # only after whitespace


@pytest.mark.parametrize("prompt", ["(a:nan)", "(a:inf)", "(a:-inf)", "(a:1e39)", "(a:101)", "(a:-100.5)",
                                    "(" * 49 + "a" + ")" * 49])
def test_unusable_weights_are_refused_with_the_fix(prompt):
    with pytest.raises(TextEncoderError, match=r"weights in \(text:weight\) must be numbers from -100 to 100"):
        prompt_pieces(prompt)


def test_lenient_where_comfyui_is():
    assert prompt_pieces("(a:100)") == (("a", 100.0),) and prompt_pieces("(a:-100)") == (("a", -100.0),)
    assert prompt_pieces("(a:1_5)") == (("a", 15.0),)              # Python's float(), as ComfyUI
    assert prompt_pieces("(" * 48 + "a" + ")" * 48)[0][1] == pytest.approx(1.1 ** 48)
    with pytest.raises(TextEncoderError, match="nests parentheses too deeply"):
        prompt_pieces("(" * 5000 + "a" + ")" * 5000)               # ComfyUI: RecursionError
    assert prompt_pieces("(" * 5000) == (("(" * 5000, 1.0),)       # unclosed: text, no recursion


# -- the arithmetic ------------------------------------------------------------------------------------------------
def test_token_weight_row_follows_truncation():
    assert token_weight_row([2, 1, 3], [1.5, 1.0, 0.5], 8).tolist() == [1.5, 1.5, 1.0, 0.5, 0.5, 0.5, 1.0, 1.0]
    assert token_weight_row([2, 4], [2.0, 0.5], 4).tolist() == [2.0, 2.0, 0.5, 1.0]   # cut to 3, then </s>
    assert token_weight_row([], [], 3).tolist() == [1.0, 1.0, 1.0]


def test_weighting_against_a_hand_computation():
    z = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])
    empty = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    out = weigh_from_empty(z, empty, torch.tensor([1.5, 1.0, -1.0]))
    # row 0: 0 + 1.5 * (1 - 0) = 1.5, 1 + 1.5 * (2 - 1) = 2.5; row 1 weight 1: as is; row 2: 2 - (0.5 - 2) = 3.5
    assert out.tolist() == [[1.5, 2.5], [3.0, -1.0], [3.5, 3.5]]
    same = weigh_from_empty(z, empty, torch.ones(3))
    assert same is z
    batched = weigh_from_empty(torch.stack([z, z]), empty, torch.tensor([[1.5, 1.0, -1.0], [1.0, 1.0, 1.0]]))
    assert torch.equal(batched[0], out) and torch.equal(batched[1], z)


# -- encoding ------------------------------------------------------------------------------------------------------
def tiny_sentencepiece() -> VocabTokenizer:
    """A small T5-style SentencePiece unigram vocabulary (metaspace "▁", control pad/eos, unk), built as a GGUF
    file's embedded vocabulary is: the same construction as T5's own tokenizer.json."""
    words = ["red", "circle", "blue", "square", "ball", "a", "of", "the", "cat"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789(),.:[]\\<>")
    tokens = ["<pad>", "</s>", "<unk>", "▁"] + ["▁" + w for w in words] + chars + ["▁" + c for c in chars]
    scores = [0.0, 0.0, 0.0, -3.0] + [-2.0] * len(words) + [-5.0] * len(chars) + [-4.5] * len(chars)
    types = [3, 3, 2] + [1] * (len(tokens) - 3)
    g = "tokenizer.ggml."
    return VocabTokenizer({g + "model": "t5", g + "tokens": tokens, g + "scores": scores, g + "token_type": types,
                           g + "eos_token_id": 1, g + "unknown_token_id": 2, g + "padding_token_id": 0},
                          "tiny-sentencepiece")


def real_t5_tokenizer() -> Path | None:
    for folder in (SHARED_T5, COMFYUI and COMFYUI / "comfy" / "text_encoders" / "t5_tokenizer"):
        if folder and (folder / "tokenizer.json").is_file():
            return folder
    return None


@pytest.fixture(scope="module")
def t5_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5") / "tiny_t5.safetensors"
    save_file(encoder_state(), path)
    return path


@pytest.fixture(params=["byte", "sentencepiece", "demo"])
def t5(request, t5_file):
    """A T5 with each kind of tokenizer: the tiny model with bytes and with a SentencePiece vocabulary, the demo T5."""
    if request.param == "demo":
        return load_t5(DEMO_T5, compute_dtype=F32)
    tokenizer = "byte" if request.param == "byte" else tiny_sentencepiece()
    return load_t5(t5_file, tokenizer=tokenizer, compute_dtype=F32)


def by_hand(t5, pieces, max_length=77):
    """ComfyUI's recipe written out: tokens of each piece concatenated, T5 on them and on "" (batch of one each),
    z_empty + w * (z - z_empty) at every position of weight w != 1."""
    ids = [t5.tokenizer.tokenize([text])[0] for text, _ in pieces]
    weights = [w for piece, (_, w) in zip(ids, pieces) for _ in piece][: max_length - 1]
    pad = dict(pad_id=t5.tokenizer.pad_id, eos_id=t5.tokenizer.eos_id)
    batch = pad_and_truncate([[i for piece in ids for i in piece]], max_length, **pad)
    empty = pad_and_truncate([[]], max_length, **pad)
    with torch.no_grad():
        z, z_empty = (t5.model(b.ids, b.mask).float()[0] for b in (batch, empty))
    want = z.clone()
    for j, w in enumerate(weights):
        if w != 1.0:
            want[j] = z_empty[j] + w * (z[j] - z_empty[j])
    return want, z, batch.mask[0]


def test_a_weighted_token_is_interpolated_from_the_empty_prompt(t5):
    t5.encode("")                                   # the empty prompt from the cache: the prompt is a batch of one
    out = t5.encode("a (red:1.5) circle", emphasis=True)
    want, z, mask = by_hand(t5, (("a ", 1.0), ("red", 1.5), (" circle", 1.0)))
    n_a, n_red = (len(t5.tokenizer.tokenize([t])[0]) for t in ("a ", "red"))
    assert torch.equal(out.embeds[0], want) and torch.equal(out.mask[0], mask)
    assert not torch.equal(out.embeds[0, n_a:n_a + n_red], z[n_a:n_a + n_red])
    keep = torch.ones(len(z), dtype=torch.bool)
    keep[n_a:n_a + n_red] = False
    assert torch.equal(out.embeds[0, keep], z[keep])   # unweighted tokens, </s> and padding: as encoded


def test_plain_prompts_are_bit_identical_with_emphasis_on(t5):
    prompts = ["a red circle", "", "  A Blue SQUARE  ", "[a] 1:2"]
    t5.cache = EmbeddingCache(0)                    # no cache: both calls run T5
    plain = t5.encode(prompts)
    weighted = t5.encode(prompts, emphasis=True)
    assert torch.equal(plain.embeds, weighted.embeds) and torch.equal(plain.mask, weighted.mask)
    with torch.no_grad():                           # the pre-emphasis computation, written out
        batch = t5.tokenize([p.lower().strip() for p in prompts])
        assert torch.equal(plain.embeds, t5.model(batch.ids, batch.mask).float())


def test_weight_one_is_the_plain_prompt(t5):
    t5.cache = EmbeddingCache(0)
    plain = t5.encode("red circle")
    for same in ("(red circle:1.0)", "((red circle:1))", "(red circle:1)"):
        out = t5.encode(same, emphasis=True)
        assert torch.equal(out.embeds, plain.embeds) and torch.equal(out.mask, plain.mask)
    literal = t5.encode("\\(red\\) circle", emphasis=True)       # escaped: the text "(red) circle", one piece
    assert torch.equal(literal.embeds, t5.encode("(red) circle").embeds)


def test_masks_and_padding_are_unchanged(t5):
    out = t5.encode(["(red:1.5) circle", "red circle"], max_length=24, emphasis=True, zero_padding=True)
    assert torch.equal(out.mask[0], out.mask[1])
    assert out.embeds[~out.mask].abs().max() == 0
    assert not torch.equal(out.embeds[0], out.embeds[1])


def test_sentencepiece_pieces_are_tokenized_one_by_one(t5_file):
    """ComfyUI tokenizes each weighted piece on its own: "red(ball:1.0)" is "▁red" + "▁ball", not "redball"."""
    t5 = load_t5(t5_file, tokenizer=tiny_sentencepiece(), compute_dtype=F32)
    tok = t5.tokenizer
    assert tok.tokenize(["redball"])[0] != tok.tokenize(["red"])[0] + tok.tokenize(["ball"])[0]
    out = t5.encode("red(ball:1.0)", emphasis=True)
    want, _, _ = by_hand(t5, (("red", 1.0), ("ball", 1.0)))
    assert torch.equal(out.embeds[0], want)
    assert not torch.equal(out.embeds, t5.encode("redball").embeds)


def test_truncation_cuts_the_weights_with_the_tokens(t5_file):
    t5 = load_t5(t5_file, tokenizer="byte", compute_dtype=F32)
    t5.encode("", max_length=6)
    with pytest.warns(TextEncoderWarning, match="prompt 1: 4 of 10 tokens dropped"):
        out = t5.encode("(abcdefghi:2)", max_length=6, emphasis=True)
    want, z, _ = by_hand(t5, (("abcdefghi", 2.0),), max_length=6)
    assert torch.equal(out.embeds[0], want) and torch.equal(out.embeds[0, 5], z[5])   # </s> weighs 1
    assert out.mask[0].all()


def test_cache_and_batches_give_the_same_numbers(t5_file):
    prompts = ["(red:1.5) circle", "a blue square", "(red:1.5) circle", "a ((cat))"]
    cold = load_t5(t5_file, tokenizer="byte", compute_dtype=F32, cache=EmbeddingCache(0))
    warm = load_t5(t5_file, tokenizer="byte", compute_dtype=F32)
    calls = []
    warm.model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    first = warm.encode(prompts, emphasis=True)
    assert calls == [1, 3]                          # "" on its own (as a plain ""), then the 3 distinct prompts
    again = warm.encode(prompts[::-1] + [""], emphasis=True)
    assert calls == [1, 3]                          # all from the cache, "" included
    assert torch.equal(again.embeds[-1], warm.encode("").embeds[0])
    assert torch.equal(again.embeds[:-1], first.embeds.flip(0))
    warm.encode("a (b", emphasis=True)              # two pieces of weight 1: no empty prompt needed
    assert calls == [1, 3, 1]
    one_by_one = torch.cat([cold.encode(p, emphasis=True).embeds for p in prompts])
    # each alone, no cache: the same numbers but for the last bits a batch's other GEMM blocking changes (measured
    # up to 1.4e-6 on this model, 0 on the demo T5), as for plain prompts
    torch.testing.assert_close(first.embeds, one_by_one, atol=3e-6, rtol=1e-6)


def test_clean_preprocessing_keeps_the_weights(t5_file):
    t5 = load_t5(t5_file, tokenizer="byte", compute_dtype=F32)
    plain = t5.encode("Red circle http://x.com", preprocess_mode="clean", emphasis=True)
    assert torch.equal(plain.embeds, t5.encode("Red circle http://x.com", preprocess_mode="clean").embeds)
    out = t5.encode("(Red:1.5) circle", preprocess_mode="clean", emphasis=True)
    want, _, _ = by_hand(t5, (("red", 1.5), (" circle", 1.0)))
    torch.testing.assert_close(out.embeds[0], want, atol=1e-6, rtol=0)


def test_emphasis_is_off_unless_asked(t5_file):
    """Training captions and the library's callers keep their parentheses as text."""
    t5 = load_t5(t5_file, tokenizer="byte", compute_dtype=F32)
    assert torch.equal(t5.encode("(red:1.5) circle").embeds[0], by_hand(t5, (("(red:1.5) circle", 1.0),))[0])


def test_guidance_pairs_read_weights_in_both(t5_file):
    """encode_for_guidance (what Imagen Text Encode calls): weights in the prompt and in the negative prompt."""
    t5 = load_t5(t5_file, tokenizer="byte", compute_dtype=F32)
    cond, uncond = t5.encode_for_guidance("(red:1.5) circle", "a (blue:0.7) square", 21, emphasis=True)
    assert torch.equal(cond.embeds, t5.encode("(red:1.5) circle", 21, emphasis=True).embeds)
    # both went through T5 in one batch of two, the recipe runs batches of one: equal to rounding
    for got, pieces in ((cond, (("red", 1.5), (" circle", 1.0))),
                        (uncond, (("a ", 1.0), ("blue", 0.7), (" square", 1.0)))):
        torch.testing.assert_close(got.embeds[0], by_hand(t5, pieces, 21)[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(TextEncoderError, match="negative_prompt is not valid text"):
        t5.encode_for_guidance("ok", "\udcff", emphasis=True)


@pytest.mark.skipif(real_t5_tokenizer() is None, reason="no T5 v1.1 tokenizer.json (shared/t5-v1_1-xxl or "
                                                         "COMFYUI_PATH)")
def test_real_t5_tokenizer(tmp_path):
    from dataclasses import replace
    save_file(encoder_state(replace(TINY_GATED, vocab_size=32128)), tmp_path / "t5.safetensors")
    t5 = load_t5(tmp_path / "t5.safetensors", tokenizer=real_t5_tokenizer(), compute_dtype=F32)
    t5.encode("")
    out = t5.encode("A photo of a (Red:1.3) circle, ((sharp))", emphasis=True)
    pieces = (("a photo of a ", 1.0), ("red", 1.3), (" circle, ", 1.0), ("sharp", 1.1 * 1.1))
    assert torch.equal(out.embeds[0], by_hand(t5, pieces)[0])
    t5.cache = EmbeddingCache(0)
    assert torch.equal(t5.encode("a red circle", emphasis=True).embeds, t5.encode("a red circle").embeds)


# -- the node ------------------------------------------------------------------------------------------------------
def test_node_reads_weights_and_keeps_plain_prompts(model_folders):
    from nodes import loaders, text

    (t5,) = loaders.ImagenT5Loader().load("imagen-demo-t5.safetensors")
    t5.encoder.cache = EmbeddingCache(0)
    (plain,) = text.ImagenTextEncode().encode(t5, "red circle", "", 77)
    (weighted,) = text.ImagenTextEncode().encode(t5, "(red:1.5) circle", "", 77)
    with torch.no_grad():                           # what the node computed before prompt weights: two passes
        before = [t5.encoder.model(b.ids, b.mask).float() for b in (t5.encoder.tokenize(p) for p in ("red circle",
                                                                                                     ""))]
    assert torch.equal(plain.positive.embeds, before[0]) and torch.equal(plain.negative.embeds, before[1])
    assert torch.equal(weighted.negative.embeds, before[1])
    assert torch.equal(weighted.positive.mask, plain.positive.mask)
    assert (weighted.positive.embeds - plain.positive.embeds).abs().max() > 1e-3


def test_node_prompt_tooltip_names_the_syntax():
    from nodes import text

    spec = text.ImagenTextEncode.INPUT_TYPES()["required"]
    assert list(spec) == ["t5", "prompt", "negative_prompt", "max_length"]
    assert [v[0] for v in spec.values()] == ["IMAGEN_T5", "STRING", "STRING", "INT"]
    assert "(word:1.2)" in spec["prompt"][1]["tooltip"]


# -- against ComfyUI itself (COMFYUI_PATH) -------------------------------------------------------------------------
def comfyui_functions(tmp_dir) -> dict:
    """ComfyUI's sd1_clip prompt functions and SDTokenizer, cut from its source into a module of their own (in
    ``tmp_dir``) and imported, so that comfy itself is not imported."""
    import importlib.util

    tree = ast.parse((COMFYUI / "comfy" / "sd1_clip.py").read_text())
    keep = {"parse_parentheses", "token_weights", "escape_important", "unescape_important", "load_embed",
            "expand_directory_list", "bundled_embed", "safe_load_embed_zip", "SDTokenizer"}
    body = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name in keep]
    path = Path(tmp_dir) / "comfyui_sd1_clip_part.py"
    path.write_text("import logging, os, re\nimport torch\nCLIPTokenizer = None\n\n"
                    + ast.unparse(ast.Module(body=body, type_ignores=[])))
    spec = importlib.util.spec_from_file_location("comfyui_sd1_clip_part", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return vars(module)


def comfyui_version() -> tuple[int, ...]:
    """The version of the ComfyUI at COMFYUI_PATH, e.g. (0, 33, 0)."""
    text = (COMFYUI / "comfyui_version.py").read_text()
    return tuple(int(part) for part in re.search(r'"([\d.]+)"', text).group(1).split("."))


def random_prompts(alphabet, n, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(n)]


needs_comfyui = pytest.mark.skipif(COMFYUI is None, reason="set COMFYUI_PATH to a ComfyUI checkout")


@needs_comfyui
def test_parser_equals_comfyui_on_random_prompts(tmp_path):
    ns = comfyui_functions(tmp_path)
    for prompt in [g[0] for g in GROUPS] + random_prompts(["a", "b", " ", ":", "(", ")", "1", ".", "\\"], 5000, 0):
        assert split_groups(prompt) == ns["parse_parentheses"](prompt)
        escaped = ns["escape_important"](prompt)
        assert weighted_segments(escaped) == ns["token_weights"](escaped, 1.0)


@needs_comfyui
def test_tokens_and_weights_equal_comfyui_t5_tokenizer(tmp_path):
    from transformers import T5TokenizerFast

    from comfyui_imagen.text import load_tokenizer

    folder = COMFYUI / "comfy" / "text_encoders" / "t5_tokenizer"
    ns = comfyui_functions(tmp_path)
    logging.disable(logging.WARNING)
    try:
        ref = ns["SDTokenizer"](str(folder), embedding_directory=tempfile.mkdtemp(), pad_with_end=False,
                                tokenizer_class=T5TokenizerFast, has_start_token=False, pad_to_max_length=False,
                                max_length=99999999, min_length=77)        # T5XXLTokenizer's settings (sd3_clip)
        ours = load_tokenizer(folder)
        words = ["red", "cat", "(", ")", ":1.3", " ", "embedding:", "\\(", "ball", ",", "(big:0.7)", "[x]"]
        for prompt in [p[0] for p in PIECES] + random_prompts(words, 500, 1):
            try:
                want = [(t, float(torch.tensor(w, dtype=F32))) for t, w in ns["SDTokenizer"].tokenize_with_weights(
                    ref, prompt)[0]]
            except IndexError:
                continue                                                   # ComfyUI's bare "embedding:" crash
            if "embedding:" in prompt and comfyui_version() < (0, 33):
                continue  # older ComfyUI (0.3.64) split names at "embedding:" otherwise: we follow 0.33.0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TextEncoderWarning)
                pieces = prompt_pieces(prompt)
            ids = ours.tokenize([t for t, _ in pieces]) if pieces else []
            length = max(77, sum(map(len, ids)) + 1)
            batch = pad_and_truncate([[i for p in ids for i in p]], length, pad_id=0, eos_id=1)
            weights = token_weight_row([len(p) for p in ids], [w for _, w in pieces], length)
            assert list(zip(batch.ids[0].tolist(), weights.tolist())) == want, prompt
    finally:
        logging.disable(logging.NOTSET)
