"""One declaration per node: `@node(...)` states a node's name, category, description and outputs once and sets the
attributes ComfyUI's node API reads (``DISPLAY_NAME``, ``CATEGORY``, ``DESCRIPTION``, ``RETURN_TYPES``,
``RETURN_NAMES``, ``OUTPUT_TOOLTIPS``, ``FUNCTION``). The class keeps ``INPUT_TYPES`` and its function; the node id
is the class name, permanent (saved workflows name it). This V1 declaration is the only one: `nodes.v3` derives the
node's V3 form (``comfy_api.latest``) from it, so both APIs show the same id, inputs, options and outputs.
"""
from __future__ import annotations

from typing import Callable


def node(display: str, category: str, description: str, function: str,
         outputs: tuple[tuple[str, str, str], ...]) -> Callable[[type], type]:
    """Class decorator; ``outputs`` are (type, name, tooltip) triples in socket order."""

    def declare(cls: type) -> type:
        cls.DISPLAY_NAME, cls.CATEGORY, cls.DESCRIPTION, cls.FUNCTION = display, category, description, function
        cls.RETURN_TYPES = tuple(kind for kind, _, _ in outputs)
        cls.RETURN_NAMES = tuple(name for _, name, _ in outputs)
        cls.OUTPUT_TOOLTIPS = tuple(tip for _, _, tip in outputs)
        return cls

    return declare


def image_output(tooltip: str) -> tuple[tuple[str, str, str], ...]:
    """The one IMAGE output of the stage nodes."""
    return (("IMAGE", "image", tooltip),)
