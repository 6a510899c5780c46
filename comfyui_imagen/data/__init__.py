"""The procedural "shapes" demo domain: scenes and captions, renderer, seeded dataset, SR crop pairs, correctness judge,
evaluation; and users' own captioned image folders (`CaptionedFolder`, PIL imported when it reads them).

Importing this package only imports numpy (no torch, no PIL, no file I/O). The domain is specified in the README
("The shapes demo domain"); `scenes` holds its vocabulary and grammar.
"""
from .crops import CropCache, CropPair, CropSpec
from .dataset import ShapesDataset, ShapesItem
from .evaluation import EvalPrompt, evaluation_prompts, summarize
from .folder import CaptionedFolder
from .judge import ATTRIBUTES, Measurement, ObjectVerdict, Verdict, judge
from .render import downsample, render
from .sampling import SPLITS, SceneDistribution, sample_scene
from .scenes import (BACKGROUNDS, COLOURS, GRAMMAR, HELDOUT_PAIRS, POSITIONS, SHAPES, SIZES, Scene, SceneObject,
                     format_caption, parse_caption)

__all__ = ["CaptionedFolder", "CropCache", "CropPair", "CropSpec", "ShapesDataset", "ShapesItem", "EvalPrompt",
           "evaluation_prompts", "summarize", "ATTRIBUTES", "Measurement", "ObjectVerdict", "Verdict", "judge",
           "downsample", "render",
           "SPLITS", "SceneDistribution", "sample_scene", "BACKGROUNDS", "COLOURS", "GRAMMAR", "HELDOUT_PAIRS",
           "POSITIONS", "SHAPES", "SIZES", "Scene", "SceneObject", "format_caption", "parse_caption"]
