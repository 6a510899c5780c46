"""Random scenes of the shapes domain, by split.

"train" scenes never contain a held-out colour-shape pair (green triangle, purple circle, orange square), neither
alone nor beside another object; "heldout" scenes contain at least one; "all" is the unrestricted domain. The number
of objects is drawn first, then the objects are redrawn until the scene belongs to the split, so every split has the
same one/two-object mix and, within it, the domain's distribution conditioned on the split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .scenes import BACKGROUNDS, COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES, Scene, SceneObject

Split = Literal["train", "heldout", "all"]
SPLITS: tuple[str, ...] = ("train", "heldout", "all")


@dataclass(frozen=True)
class SceneDistribution:
    """How often each phrase appears. Every optional phrase is sometimes stated and sometimes left out, so a model
    learns both the words and the defaults they replace. A stated position or background is drawn uniformly from all
    of them (so "at the center" and "on a white background" occur too)."""

    p_two: float = 0.35            # two-object captions
    p_size: float = 0.6            # one object: "small"/"large" stated (half each)
    p_position: float = 0.75       # one object: a position phrase stated
    p_background: float = 0.6      # "on a ... background" stated

    def __post_init__(self):
        for name in ("p_two", "p_size", "p_position", "p_background"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability in [0, 1], got {getattr(self, name)}")


DEFAULT_DISTRIBUTION = SceneDistribution()
_COLOURS, _SIZES, _POSITIONS = tuple(COLOURS), tuple(SIZES), tuple(POSITIONS)
_BACKGROUNDS, _RELATIONS = tuple(BACKGROUNDS), tuple(RELATIONS)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _in_split(objects: tuple[SceneObject, ...], split: str) -> bool:
    heldout = any(o.is_heldout for o in objects)
    if split == "train":
        return not heldout
    return heldout if split == "heldout" else True


def _draw_objects(rng: np.random.Generator, n: int, split: str) -> tuple[tuple[str, str], ...]:
    """n (colour, shape) pairs, distinct when n = 2, drawn until they belong to the split (expected <= 6 tries)."""
    while True:
        pairs = tuple((_pick(rng, _COLOURS), _pick(rng, SHAPES)) for _ in range(n))
        if len(set(pairs)) == n and _in_split(tuple(SceneObject(c, s) for c, s in pairs), split):
            return pairs


def sample_scene(rng: np.random.Generator | int, split: Split = "train",
                 distribution: SceneDistribution = DEFAULT_DISTRIBUTION) -> Scene:
    """A random scene of `split` ("train", "heldout" or "all"); `rng` a numpy Generator or an int seed."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    d = distribution
    background = _pick(rng, _BACKGROUNDS) if rng.random() < d.p_background else None
    if rng.random() < d.p_two:
        relation = _pick(rng, _RELATIONS)
        pairs = _draw_objects(rng, 2, split)
        return Scene(tuple(SceneObject(c, s) for c, s in pairs), background, relation)
    size = _pick(rng, _SIZES) if rng.random() < d.p_size else None
    position = _pick(rng, _POSITIONS) if rng.random() < d.p_position else None
    (colour, shape), = _draw_objects(rng, 1, split)
    return Scene((SceneObject(colour, shape, size, position),), background)
