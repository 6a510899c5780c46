"""Shapes judge: clean renders are correct at 64 and 256 px; a wrong image fails exactly the wrong attribute;
evaluation prompts and the summary."""
import itertools

import numpy as np
import pytest

from comfyui_imagen.data import (COLOURS, POSITIONS, SHAPES, Scene, SceneObject, ShapesDataset, evaluation_prompts,
                                 judge, render, summarize)
from comfyui_imagen.data.judge import border_median, nearest

ONE_OBJECT_SCENES = [Scene((SceneObject(c, s, size, pos),), bg) for c, s, size, pos, bg in itertools.product(
    COLOURS, SHAPES, [None, "small", "large"], [None, *POSITIONS], [None, "white", "gray", "black"])]
TWO_OBJECT_SCENES = [Scene((SceneObject(*a), SceneObject(*b)), bg, rel) for ((a, b), rel), bg in zip(
    itertools.product(itertools.permutations(itertools.product(COLOURS, SHAPES), 2), ["left of", "above"]),
    itertools.cycle([None, "white", "gray", "black", "gray"]))]


def _failures(scenes, resolution):
    out = []
    for scene in scenes:
        verdict = judge(render(scene, resolution), scene)
        if not verdict.correct:
            out.append((scene.caption, verdict.attributes()))
    return out


def test_every_one_object_scene_renders_correct_at_64px():
    assert len(ONE_OBJECT_SCENES) == 1296
    assert _failures(ONE_OBJECT_SCENES, 64) == []


def test_every_two_object_scene_renders_correct_at_64px():
    assert len(TWO_OBJECT_SCENES) == 612                     # ordered pairs of distinct colour-shape pairs, x 2
    assert _failures(TWO_OBJECT_SCENES, 64) == []


def test_random_scenes_render_correct_at_256px_and_64px():
    ds = ShapesDataset(seed=9, split="all")
    scenes = [ds.scene(i) for i in range(200)]
    assert {len(s.objects) for s in scenes} == {1, 2} and any(s.is_heldout for s in scenes)
    assert _failures(scenes, 256) == []
    assert _failures(scenes, 64) == []


def _wrong(rendered: str, asked: str, resolution: int = 64) -> set[str]:
    """The attributes judged wrong when `rendered` is drawn and `asked` is the prompt."""
    verdict = judge(render(rendered, resolution), asked)
    return {k for k, ok in verdict.attributes().items() if not ok}


@pytest.mark.parametrize("rendered,asked,wrong", [
    ("a red circle", "a blue circle", {"colour"}),
    ("a purple square on a gray background", "a orange square on a gray background", {"colour"}),
    ("a red circle", "a red square", {"shape"}),
    ("a large green triangle", "a large green circle", {"shape"}),
    ("a small red circle in the top left", "a small red circle in the top right", {"position"}),
    ("a red circle in the bottom left", "a red circle", {"position"}),       # unstated position means centre
    ("a large yellow square", "a small yellow square", {"size"}),
    ("a small blue triangle in the top right", "a large blue triangle in the top right", {"size"}),
    ("a red circle on a black background", "a red circle", {"background"}),  # unstated background means white
    ("a red circle", "a red circle on a gray background", {"background"}),
    ("a large red circle", "a red circle", set()),                           # unstated size is not judged
    ("a red circle at the center on a white background", "a red circle", set()),
    ("a red circle to the left of a blue square", "a blue square to the left of a red circle", {"colour", "shape"}),
    ("a red circle above a red square", "a red square above a red circle", {"shape"}),
    ("a red circle above a blue circle on a black background", "a blue circle above a red circle",
     {"colour", "background"}),
])
def test_a_wrong_image_fails_exactly_the_wrong_attribute(rendered, asked, wrong):
    assert _wrong(rendered, asked) == wrong
    assert _wrong(rendered, asked, 256) == wrong


def test_empty_half_or_empty_canvas_fails_every_object_attribute():
    blank = np.full((64, 64, 3), 245, np.uint8)
    v = judge(blank, "a small red circle")
    assert v.attributes() == {"background": True, "colour": False, "shape": False, "position": False,
                              "size": False}
    assert v.objects[0].measured is None and not v.correct
    # one object only, where two are asked for side by side: the empty half fails the relation
    v = judge(render("a red circle in the top left", 64), "a red circle to the left of a blue square")
    assert v.objects[1].position is False and not v.correct


def test_measurements_have_known_values():
    v = judge(render("a large orange square in the bottom right on a black background", 256),
              "a large orange square in the bottom right on a black background")
    m = v.objects[0].measured
    assert m.rgb == COLOURS["orange"] and m.fill_ratio == pytest.approx(1.0, abs=0.01)
    assert m.centroid == pytest.approx((0.72, 0.72), abs=0.005) and m.size == pytest.approx(0.5, abs=0.01)
    assert (v.measured_background, m.colour, m.shape, m.position, m.size_name) == (
        "black", "orange", "square", "bottom right", "large")


def test_helpers_and_input_checks():
    assert nearest({"a": (0, 0, 0), "b": (10, 10, 10)}, (6, 6, 4)) == "b"
    # 8 x 8: outer ring 28 px (23 of value 10, 5 of 30), second ring 20 px of 30, interior 16 px of 0. The 2-pixel
    # frame's median is 30 (25 of 48); a 1-pixel frame or the whole image would give 10.
    img = np.zeros((8, 8, 3), np.uint8)
    img[:] = 30
    img[2:6, 2:6] = 0
    ring = [(0, j) for j in range(8)] + [(7, j) for j in range(8)] + [(i, 0) for i in range(1, 7)] + \
        [(i, 7) for i in range(1, 7)]
    for i, j in ring[:23]:
        img[i, j] = 10
    assert np.array_equal(border_median(img), [30, 30, 30])
    with pytest.raises(ValueError, match="uint8 RGB"):
        judge(np.zeros((64, 64, 3), np.float32), "a red circle")
    with pytest.raises(ValueError, match="grammar"):
        judge(np.zeros((64, 64, 3), np.uint8), "a red thing")


def test_evaluation_prompts_are_fixed_distinct_and_split():
    prompts = evaluation_prompts(n_seen=10, n_heldout=6, seed=1)
    assert len(prompts) == 2 * (10 + 6)
    assert len({p.caption for p in prompts}) == len(prompts)
    assert prompts == evaluation_prompts(n_seen=10, n_heldout=6, seed=1)
    assert [p.caption for p in prompts] != [p.caption for p in evaluation_prompts(10, 6, seed=2)]
    for p in prompts:
        assert p.scene.is_heldout == (p.split == "heldout") and len(p.scene.objects) == p.n_objects
    counts = {(s, k): sum(p.split == s and p.n_objects == k for p in prompts)
              for s in ("seen", "heldout") for k in (1, 2)}
    assert counts == {("seen", 1): 10, ("seen", 2): 10, ("heldout", 1): 6, ("heldout", 2): 6}


def test_summarize_counts_fractions_per_group():
    verdicts = [judge(render("a red circle", 64), "a red circle"),                           # seen/1, correct
                judge(render("a red circle", 64), "a small red square"),                     # seen/1, shape+size
                judge(render("a purple circle", 64), "a purple circle on a gray background"),  # heldout/1, bg
                judge(render("a red circle above a blue square", 64), "a red circle above a blue square")]
    s = summarize(verdicts)
    assert s["all"]["n"] == 4 and s["all"]["correct"] == 0.5
    assert s["seen/1"] == {"n": 2, "correct": 0.5, "background": 1.0, "colour": 1.0, "shape": 0.5,
                           "position": 1.0, "size": 0.0}
    assert s["heldout"]["n"] == 1 and s["heldout"]["background"] == 0.0 and s["heldout"]["size"] is None
    assert s["2"]["correct"] == 1.0 and s["seen/2"]["n"] == 1 and s["heldout/2"]["n"] == 0
    assert s["heldout/2"]["correct"] is None
