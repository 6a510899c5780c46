"""Evaluation of a text-to-image model on the shapes domain: a fixed prompt list and a summary of judge verdicts.

Prompts come in four groups -- seen one-object, seen two-object, held-out one-object, held-out two-object -- where
"held-out" prompts name at least one colour-shape pair that training never shows (green triangle, purple circle,
orange square). Generalising to those is what the text conditioning is for, so they are reported apart.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .judge import ATTRIBUTES, Verdict
from .sampling import DEFAULT_DISTRIBUTION, sample_scene
from .scenes import Scene


@dataclass(frozen=True)
class EvalPrompt:
    caption: str
    scene: Scene
    split: str        # "seen" | "heldout"
    n_objects: int


def _group(split: str, n_objects: int, seed: int, n: int) -> list[EvalPrompt]:
    """n distinct prompts of one group (or fewer if the group has fewer distinct captions)."""
    p_two = 1.0 if n_objects == 2 else 0.0
    rng = np.random.default_rng([seed, n_objects, split == "heldout"])
    distribution = replace(DEFAULT_DISTRIBUTION, p_two=p_two)
    sample_split = "heldout" if split == "heldout" else "train"
    out: dict[str, EvalPrompt] = {}
    for _ in range(50 * n):
        if len(out) == n:
            break
        scene = sample_scene(rng, sample_split, distribution)
        out.setdefault(scene.caption, EvalPrompt(scene.caption, scene, split, n_objects))
    return list(out.values())


def evaluation_prompts(n_seen: int = 32, n_heldout: int = 32, seed: int = 0) -> list[EvalPrompt]:
    """`n_seen` seen and `n_heldout` held-out distinct prompts for each of one and two objects (2 * (n_seen +
    n_heldout) in all), fixed by `seed`, in the order seen/1, seen/2, heldout/1, heldout/2."""
    if n_seen < 0 or n_heldout < 0:
        raise ValueError(f"prompt counts must be >= 0, got n_seen={n_seen}, n_heldout={n_heldout}")
    return [p for split, n in (("seen", n_seen), ("heldout", n_heldout)) for k in (1, 2)
            for p in _group(split, k, seed, n)]


def _fractions(verdicts: list[Verdict]) -> dict[str, float | int | None]:
    row: dict[str, float | int | None] = {"n": len(verdicts)}
    row["correct"] = float(np.mean([v.correct for v in verdicts])) if verdicts else None
    for name in ATTRIBUTES:
        judged = [a[name] for a in (v.attributes() for v in verdicts) if name in a]
        row[name] = float(np.mean(judged)) if judged else None
    return row


def summarize(verdicts: list[Verdict]) -> dict[str, dict[str, float | int | None]]:
    """Fraction correct overall ("correct") and per attribute, for groups "all", "seen", "heldout", "1", "2",
    "seen/1", "seen/2", "heldout/1", "heldout/2" (the split read from each verdict's scene; a group's "n" counts its
    verdicts; size fractions count only prompts that state a size; None where nothing was judged)."""
    groups: dict[str, list[Verdict]] = {k: [] for k in ("all", "seen", "heldout", "1", "2",
                                                        "seen/1", "seen/2", "heldout/1", "heldout/2")}
    for v in verdicts:
        split, k = ("heldout" if v.scene.is_heldout else "seen"), str(len(v.scene.objects))
        for key in ("all", split, k, f"{split}/{k}"):
            groups[key].append(v)
    return {key: _fractions(vs) for key, vs in groups.items()}
