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
