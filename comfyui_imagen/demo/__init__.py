"""The bundled demo cascade: a frozen byte-level T5, a 64 px base stage and a 64 -> 256 px SR stage, trained on the
procedural "shapes" domain (see `comfyui_imagen.data`) with ``python -m comfyui_imagen.train demo``.

Only paths live here (the one home of the file names: the trainer's ``demo`` command writes these); nothing is
read at import.
"""
from __future__ import annotations

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
T5_FILE = DEMO_DIR / "imagen-demo-t5.safetensors"
BASE_FILE = DEMO_DIR / "imagen-demo-base64.safetensors"
SR_FILE = DEMO_DIR / "imagen-demo-sr256.safetensors"
FILES = {"t5": T5_FILE, "base": BASE_FILE, "sr": SR_FILE}


def demo_files() -> dict[str, Path]:
    """The bundled files by role ("t5", "base", "sr"); raises ValueError naming the missing file and the command
    that rebuilds it."""
    missing = [str(p) for p in FILES.values() if not p.is_file()]
    if missing:
        raise ValueError(f"the bundled demo cascade is incomplete: {missing} not found; restore them from git "
                         f"(git checkout -- comfyui_imagen/demo) or rebuild them with "
                         f"`python -m comfyui_imagen.train demo --install comfyui_imagen/demo`")
    return dict(FILES)


def present_files() -> dict[str, Path]:
    """The bundled files that exist, by role: what the loaders list beside the user's own models."""
    return {role: path for role, path in FILES.items() if path.is_file()}
