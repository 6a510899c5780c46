"""The "shapes" demo domain: its vocabulary, structured scenes, and captions in both directions.

Everything here follows /work/shared/demo-domain.md (reproduced in the README). A `Scene` records what a caption
*states*: an attribute the caption leaves out is ``None`` (unstated), and the `resolved_*` helpers give the value
the renderer draws and the judge expects (white background, centre position, size 0.375).

Caption grammar (one object, then the two two-object forms)::

    a [small |large ]<colour> <shape>[ in the <top left|top right|bottom left|bottom right>| at the center][ on a <bg> background]
    a <c1> <s1> to the left of a <c2> <s2>[ on a <bg> background]
    a <c1> <s1> above a <c2> <s2>[ on a <bg> background]
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Colour = Literal["red", "green", "blue", "yellow", "purple", "orange"]
Shape = Literal["circle", "square", "triangle"]
Background = Literal["white", "gray", "black"]
Size = Literal["small", "large"]
Position = Literal["center", "top left", "top right", "bottom left", "bottom right"]
Relation = Literal["left of", "above"]

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245), "gray": (128, 128, 128), "black": (20, 20, 20)}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220),
    "yellow": (240, 210, 40), "purple": (140, 60, 180), "orange": (245, 130, 30)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Size = side of the bounding box as a fraction of the canvas side.
SIZES: dict[str, float] = {"small": 0.25, "large": 0.5}
DEFAULT_SIZE = 0.375
TWO_OBJECT_SIZE = 0.3
# Centre of the bounding box, (x, y) fractions of width and height, y down.
POSITIONS: dict[str, tuple[float, float]] = {
    "center": (0.5, 0.5), "top left": (0.28, 0.28), "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72), "bottom right": (0.72, 0.72)}
DEFAULT_POSITION = "center"
DEFAULT_BACKGROUND = "white"
# Relation -> (centre of the first object, centre of the second).
RELATIONS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "left of": ((0.28, 0.5), (0.72, 0.5)), "above": ((0.5, 0.28), (0.5, 0.72))}
RELATION_WORDS = {"left of": "to the left of", "above": "above"}
# Colour-shape pairs that never appear in training scenes, alone or in two-object scenes.
HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset({("green", "triangle"), ("purple", "circle"),
                                                        ("orange", "square")})

GRAMMAR = ("a [small |large ]<colour> <shape>[ in the <top left|top right|bottom left|bottom right>| at the center]"
           "[ on a <white|gray|black> background], or a <colour> <shape> <to the left of|above> a <colour> <shape>"
           "[ on a <bg> background], with <colour> one of " + "|".join(COLOURS) + " and <shape> one of "
           + "|".join(SHAPES))


def _check(value, allowed, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {list(allowed)}")


@dataclass(frozen=True)
class SceneObject:
    """One shape. `size` and `position` are None when unstated (and always None in two-object scenes, whose size
    and placement the relation fixes)."""

    colour: Colour
    shape: Shape
    size: Size | None = None
    position: Position | None = None

    def __post_init__(self):
        _check(self.colour, COLOURS, "colour")
        _check(self.shape, SHAPES, "shape")
        if self.size is not None:
            _check(self.size, SIZES, "size")
        if self.position is not None:
            _check(self.position, POSITIONS, "position")

    @property
    def pair(self) -> tuple[str, str]:
        return self.colour, self.shape

    @property
    def is_heldout(self) -> bool:
        return self.pair in HELDOUT_PAIRS


@dataclass(frozen=True)
class Scene:
    """One or two objects on a background. `background` None = unstated (drawn white); `relation` is required for
    two objects ("left of": first object left; "above": first object on top) and must be None for one."""

    objects: tuple[SceneObject, ...]
    background: Background | None = None
    relation: Relation | None = None

    def __post_init__(self):
        object.__setattr__(self, "objects", tuple(self.objects))
        if self.background is not None:
            _check(self.background, BACKGROUNDS, "background")
        if len(self.objects) == 1:
            if self.relation is not None:
                raise ValueError(f"a one-object scene has no relation, got {self.relation!r}; use relation=None")
        elif len(self.objects) == 2:
            _check(self.relation, RELATIONS, "relation of a two-object scene")
            a, b = self.objects
            if any(o.size is not None or o.position is not None for o in self.objects):
                raise ValueError("objects of a two-object scene have no size or position of their own (the relation "
                                 "fixes them at 0.3 of the canvas); set size=None and position=None")
            if a.pair == b.pair:
                raise ValueError(f"the two objects must differ in colour or shape, got two {a.colour} {a.shape}s")
        else:
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")

    @property
    def is_heldout(self) -> bool:
        """True when the scene includes at least one held-out colour-shape pair."""
        return any(o.is_heldout for o in self.objects)

    @property
    def caption(self) -> str:
        return format_caption(self)


def resolved_background(scene: Scene) -> str:
    return scene.background or DEFAULT_BACKGROUND


def resolved_layout(scene: Scene) -> list[tuple[float, float, float]]:
    """(centre x, centre y, size) of each object as fractions of the canvas, unstated attributes at their defaults."""
    if scene.relation is not None:
        return [(x, y, TWO_OBJECT_SIZE) for x, y in RELATIONS[scene.relation]]
    obj = scene.objects[0]
    x, y = POSITIONS[obj.position or DEFAULT_POSITION]
    return [(x, y, SIZES[obj.size] if obj.size else DEFAULT_SIZE)]


def format_caption(scene: Scene) -> str:
    """The caption of a scene, word for word in the domain's grammar."""
    tail = f" on a {scene.background} background" if scene.background else ""
    if scene.relation is not None:
        a, b = scene.objects
        return f"a {a.colour} {a.shape} {RELATION_WORDS[scene.relation]} a {b.colour} {b.shape}{tail}"
    obj = scene.objects[0]
    size = f"{obj.size} " if obj.size else ""
    if obj.position is None:
        where = ""
    elif obj.position == "center":
        where = " at the center"
    else:
        where = f" in the {obj.position}"
    return f"a {size}{obj.colour} {obj.shape}{where}{tail}"


_C = "|".join(COLOURS)
_S = "|".join(SHAPES)
_BG = rf"(?: on a (?P<bg>{'|'.join(BACKGROUNDS)}) background)?"
_ONE = re.compile(rf"a (?:(?P<size>small|large) )?(?P<c>{_C}) (?P<s>{_S})"
                  rf"(?: in the (?P<pos>top left|top right|bottom left|bottom right)| at the (?P<center>center))?{_BG}")
_TWO = re.compile(rf"a (?P<c1>{_C}) (?P<s1>{_S}) (?P<rel>to the left of|above) a (?P<c2>{_C}) (?P<s2>{_S}){_BG}")


def caption_match(text: str) -> re.Match | None:
    """The grammar's regex match of an exact (lower-case, single-spaced) caption, None if it is not one: named
    groups c, s, size, pos, center, bg (one object) or c1, s1, rel, c2, s2, bg (two), with their character spans."""
    return _TWO.fullmatch(text) or _ONE.fullmatch(text)


def parse_caption(text: str) -> Scene:
    """The Scene a caption states; case and runs of spaces are ignored. Raises ValueError quoting the grammar."""
    if not isinstance(text, str):
        raise ValueError(f"a caption is a string, got {type(text).__name__}")
    norm = " ".join(text.lower().split())
    m = _TWO.fullmatch(norm)
    if m:
        relation = "left of" if m["rel"] == "to the left of" else "above"
        objects = (SceneObject(m["c1"], m["s1"]), SceneObject(m["c2"], m["s2"]))
        return Scene(objects, m["bg"], relation)
    m = _ONE.fullmatch(norm)
    if m:
        position = m["pos"] or m["center"]
        return Scene((SceneObject(m["c"], m["s"], m["size"], position),), m["bg"])
    raise ValueError(f"caption {text!r} is not in the shapes grammar: {GRAMMAR} "
                     f"(e.g. 'a small blue square in the top left on a black background')")


def as_scene(scene_or_caption: Scene | str) -> Scene:
    return parse_caption(scene_or_caption) if isinstance(scene_or_caption, str) else scene_or_caption
