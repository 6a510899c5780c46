"""The demo text encoder: loads through the project's T5 loader, matches transformers, separates captions."""
import itertools

import pytest
import torch

from comfyui_imagen.text import ByteTokenizer, load_t5
from comfyui_imagen.text.model import relative_position_bucket
from comfyui_imagen.train.demo_t5 import bucket_offset, build_demo_t5, local_window_bias, save_demo_t5

CAPTIONS = ["a red circle", "a blue circle", "a red square", "a red triangle", "a green circle",
            "a red circle in the top left", "a red circle in the top right", "a red circle in the bottom left",
            "a red circle to the left of a blue square", "a blue circle to the left of a red square",
            "a blue square to the left of a red circle", "a red circle above a blue square",
            "a blue square above a red circle", "a small red circle", "a large red circle",
            "a red circle on a black background", "a red circle on a gray background", "a red circle at the center"]


@pytest.fixture(scope="module")
def t5_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5") / "demo-t5.safetensors"
    save_demo_t5(path, ByteTokenizer().vocab_size, seed=0)
    return path


def chamfer(a: torch.Tensor, b: torch.Tensor) -> float:
    """Symmetric mean nearest-token distance between two token sets, relative to the token norm: what a
    cross-attention that retrieves tokens by content can tell apart."""
    d = torch.cdist(a, b)
    return float(0.5 * (d.min(1).values.mean() + d.min(0).values.mean()) / a.norm(dim=1).mean())


def min_separation(encoder) -> tuple[float, tuple[str, str]]:
    e = encoder.encode(CAPTIONS, max_length=77)
    tokens = [e.embeds[i][e.mask[i]] for i in range(len(CAPTIONS))]
    return min((chamfer(tokens[i], tokens[j]), (CAPTIONS[i], CAPTIONS[j]))
               for i, j in itertools.combinations(range(len(CAPTIONS)), 2))


def test_bucket_offsets_invert_the_bucket_function():
    for b in range(32):
        if b == 16:
            continue  # "distance 0 to the right" is never produced: distance 0 is bucket 0
        assert int(relative_position_bucket(torch.tensor(round(bucket_offset(b))))) == b


def test_local_window_bias_shape_and_sides():
    bias = local_window_bias(4)
    assert bias.shape == (32, 4)
    right_of_query = 16 + 3  # bucket of key position = query + 3
    assert bias[right_of_query, 0] == -30.0 and bias[3, 0] == -3.0  # head 0 only looks left


def test_loads_with_byte_tokenizer_and_matches_transformers(t5_file):
    encoder = load_t5(t5_file)
    assert encoder.tokenizer.name == "byte"
    batch = encoder.tokenize(["a red circle to the left of a blue square"], 77)
    ours = encoder.encode(["a red circle to the left of a blue square"], max_length=77).embeds[0]
    ref = build_demo_t5(ByteTokenizer().vocab_size, seed=0)(input_ids=batch.ids,
                                                             attention_mask=batch.mask.long()).last_hidden_state[0]
    m = batch.mask[0]
    torch.testing.assert_close(ours[m], ref[m], atol=1e-5, rtol=1e-5)


def test_captions_are_well_separated(t5_file, tmp_path):
    """Every pair of captions that differ in one attribute, or only in word order (which object is left), is far
    apart; T5's default random position bias would make the word-order pairs almost identical (measured 0.013)."""
    separation, pair = min_separation(load_t5(t5_file))
    assert separation > 0.1, pair
    from safetensors.torch import load_file, save_file

    state = load_file(t5_file)
    key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    state[key] = torch.randn(state[key].shape, generator=torch.Generator().manual_seed(0)) * 256 ** -0.5
    save_file(state, tmp_path / "uniform.safetensors")
    assert min_separation(load_t5(tmp_path / "uniform.safetensors"))[0] < 0.05


def test_caption_facts_and_byte_facts():
    from comfyui_imagen.data.scenes import parse_caption
    from comfyui_imagen.train.demo_t5 import _WORD_CLASSES, FACTS, IGNORE, byte_facts, caption_facts

    one = caption_facts(parse_caption("a small blue square in the top left on a black background"))
    assert one == [2, 1, 6, 3, 0, 1, 2]  # blue, square, no 2nd colour, no 2nd shape, small, top left, black
    assert caption_facts(parse_caption("a red circle")) == [0, 0, 6, 3, 2, 0, 0]  # unstated size, centre, white
    two = caption_facts(parse_caption("a yellow triangle above a purple square"))
    assert two == [3, 2, 4, 1, 3, 6, 0]
    assert all(0 <= v < n for v, n in zip(one + two, FACTS.values()))
    caption = "a red circle to the left of a blue square"
    labels = byte_facts(caption)
    assert len(labels) == len(caption)
    word = {w: _WORD_CLASSES[labels[caption.index(w)]] for w in ("red", "circle", "blue", "square")}
    assert word == {"red": ("c1", "red"), "circle": ("s1", "circle"), "blue": ("c2", "blue"),
                    "square": ("s2", "square")}
    assert len({labels[i] for i in range(caption.index("red"), caption.index("red") + 3)}) == 1
    assert labels[caption.index("to the")] == _WORD_CLASSES.index(("rel", "to the left of"))
    assert labels[0] == IGNORE and labels[1] == IGNORE  # "a" and the space carry nothing
    with pytest.raises(ValueError, match="grammar"):
        byte_facts("a pink circle")


def test_pretraining_teaches_the_facts_and_generalises_to_heldout_pairs(tmp_path):
    """A hundred steps on a small encoder already read back most facts of held-out captions (never trained on);
    the probe is dropped and the saved encoder is frozen, with the probe's held-out accuracy in its metadata."""
    from safetensors import safe_open

    from comfyui_imagen.train.demo_t5 import train_demo_t5

    shape = dict(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4)
    torch.manual_seed(0)
    _, before = train_demo_t5(ByteTokenizer().vocab_size, seed=0, steps=1, batch_size=8, **shape)
    model, after = train_demo_t5(ByteTokenizer().vocab_size, seed=0, steps=120, batch_size=32, lr=3e-3, **shape)
    assert sum(after.values()) > sum(before.values()) + 1.0, (before, after)
    assert min(after.values()) > 0.6 and sum(after.values()) / len(after) > 0.8, after
    assert not any(p.requires_grad for p in model.parameters())
    path = tmp_path / "t5.safetensors"
    save_demo_t5(path, ByteTokenizer().vocab_size, seed=0, train_steps=2, **shape)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["tokenizer"] == "byte" and "pre-training" in meta["note"]
    assert "colour_1=" in meta["probe_accuracy_heldout"]
    assert load_t5(path).encode(["a green triangle"]).embeds.shape[-1] == 64
