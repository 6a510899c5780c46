"""Shapes domain: caption grammar both ways, scene validation, sampling by split, dataset determinism."""
import itertools
from collections import Counter

import numpy as np
import pytest

from comfyui_imagen.data import (HELDOUT_PAIRS, ShapesDataset, Scene, SceneObject, format_caption, parse_caption,
                                 sample_scene)
from comfyui_imagen.data.scenes import resolved_background, resolved_layout


def test_spec_examples_parse_to_the_stated_scene():
    assert parse_caption("a red circle") == Scene((SceneObject("red", "circle"),))
    assert parse_caption("a small blue square in the top left on a black background") == Scene(
        (SceneObject("blue", "square", "small", "top left"),), "black")
    assert parse_caption("a yellow triangle to the left of a purple square") == Scene(
        (SceneObject("yellow", "triangle"), SceneObject("purple", "square")), None, "left of")
    s = parse_caption("a green circle above a green square on a gray background")
    assert (s.relation, s.background, [o.shape for o in s.objects]) == ("above", "gray", ["circle", "square"])
    assert parse_caption("a large red circle at the center").objects[0].position == "center"


def test_unstated_attributes_are_none_but_resolve_to_the_defaults():
    s = parse_caption("a red circle")
    assert (s.objects[0].size, s.objects[0].position, s.background) == (None, None, None)
    assert resolved_background(s) == "white"
    assert resolved_layout(s) == [(0.5, 0.5, 0.375)]
    assert resolved_layout(parse_caption("a small red circle in the bottom right")) == [(0.72, 0.72, 0.25)]
    assert resolved_layout(parse_caption("a red circle above a blue circle")) == [(0.5, 0.28, 0.3), (0.5, 0.72, 0.3)]
    # "at the center" is stated, and captions differently from the unstated default
    assert parse_caption("a red circle at the center") != s


def test_every_one_object_caption_round_trips():
    n = 0
    for colour, shape, size, pos, bg in itertools.product(
            ["red", "green", "blue", "yellow", "purple", "orange"], ["circle", "square", "triangle"],
            [None, "small", "large"], [None, "center", "top left", "top right", "bottom left", "bottom right"],
            [None, "white", "gray", "black"]):
        scene = Scene((SceneObject(colour, shape, size, pos),), bg)
        text = format_caption(scene)
        assert parse_caption(text) == scene and scene.caption == text
        n += 1
    assert n == 6 * 3 * 3 * 6 * 4


def test_two_object_captions_round_trip_and_parser_normalises_case_and_spaces():
    scene = Scene((SceneObject("orange", "square"), SceneObject("orange", "circle")), "black", "above")
    assert scene.caption == "a orange square above a orange circle on a black background"
    assert parse_caption(scene.caption) == scene
    assert parse_caption("  A Red  Circle   to the left of a blue circle ") == Scene(
        (SceneObject("red", "circle"), SceneObject("blue", "circle")), None, "left of")


@pytest.mark.parametrize("text", ["a red", "a pink circle", "red circle", "a red circle in the middle",
                                  "a small red circle to the left of a blue square", "a red circle on black",
                                  "a red circle in the top left at the center", "a red circle."])
def test_text_outside_the_grammar_raises_naming_it(text):
    with pytest.raises(ValueError, match="not in the shapes grammar"):
        parse_caption(text)


def test_invalid_scenes_raise_helpful_errors():
    with pytest.raises(ValueError, match="differ in colour or shape"):
        parse_caption("a red circle above a red circle")
    with pytest.raises(ValueError, match="unknown colour"):
        SceneObject("pink", "circle")
    with pytest.raises(ValueError, match="relation"):
        Scene((SceneObject("red", "circle"), SceneObject("blue", "circle")))
    with pytest.raises(ValueError, match="no size or position"):
        Scene((SceneObject("red", "circle", "small"), SceneObject("blue", "circle")), None, "above")
    with pytest.raises(ValueError, match="1 or 2 objects"):
        Scene(())


def _pairs(scene):
    return {o.pair for o in scene.objects}


def test_heldout_pairs_never_sampled_in_train_and_always_in_heldout():
    rng = np.random.default_rng(0)
    train = [sample_scene(rng, "train") for _ in range(3000)]
    heldout = [sample_scene(rng, "heldout") for _ in range(600)]
    assert not any(_pairs(s) & HELDOUT_PAIRS for s in train)
    assert all(_pairs(s) & HELDOUT_PAIRS for s in heldout)
    # every other colour-shape pair does occur in training, and every held-out pair occurs in the held-out split
    seen = set().union(*(_pairs(s) for s in train))
    assert len(seen) == 18 - 3
    assert set().union(*(_pairs(s) for s in heldout)) >= HELDOUT_PAIRS
    # both one- and two-object scenes in each split, in the same proportion (~35% two-object)
    for scenes in (train, heldout):
        two = sum(len(s.objects) == 2 for s in scenes) / len(scenes)
        assert 0.28 < two < 0.42


def test_training_captions_use_every_phrase():
    ds = ShapesDataset(seed=3, split="train")
    words = Counter()
    for i in range(1500):
        text = ds.item(i).caption
        for phrase in ("small", "large", "at the center", "in the top left", "in the top right",
                       "in the bottom left", "in the bottom right", "to the left of", "above", "on a white",
                       "on a gray", "on a black", "red", "green", "blue", "yellow", "purple", "orange",
                       "circle", "square", "triangle"):
            words[phrase] += phrase in text
        words["bare"] += text.count(" ") == 2          # "a <colour> <shape>": everything left unstated
    assert min(words.values()) >= 20, words


def test_dataset_is_deterministic_by_seed_split_and_index():
    a, b = ShapesDataset(seed=5), ShapesDataset(seed=5)
    assert [a.item(i).caption for i in range(40)] == [b.item(i).caption for i in range(40)]
    img_a, cap_a = a[7]
    img_b, cap_b = b[7]
    assert cap_a == cap_b and np.array_equal(img_a, img_b) and img_a.shape == (256, 256, 3)
    assert img_a.dtype == np.uint8
    assert a.item(7).caption == ShapesDataset(seed=5).item(7).caption          # random access, any order
    other = ShapesDataset(seed=6)
    assert [a.item(i).caption for i in range(40)] != [other.item(i).caption for i in range(40)]
    small = ShapesDataset(seed=5, resolution=64)
    assert small[7][0].shape == (64, 64, 3) and small[7][1] == cap_a
    assert np.array_equal(small[7][0], a.item(7).image(64))
    assert sample_scene(11, "all") == sample_scene(np.random.default_rng(11), "all")


def test_dataset_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown split"):
        ShapesDataset(split="test")
    with pytest.raises(ValueError, match="unknown split"):
        sample_scene(0, "valid")
    ds = ShapesDataset(length=3)
    assert len(ds) == 3 and ds[-1][1] == ds[2][1]
    with pytest.raises(IndexError):
        ds[3]
