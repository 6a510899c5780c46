"""Files that hold several stages: an imagen-pytorch checkpoint holds one U-Net per cascade stage.

Each is named ``"file.pt [unet N]"`` (N from 1, as imagen-pytorch numbers its U-Nets; ``"[unet N, online]"`` picks
the trained rather than the EMA weights), so a loader list, a saved workflow and the CLI name one stage the same way.
`stage_names` lists a file's stages from its keys alone (a safetensors header; a pickle loaded with
``weights_only=True`` and memory-mapped, its tensors unread), remembered per file size and modification time.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Optional

from .families import IMAGEN_PYTORCH, identify

_NAME = re.compile(r"^(?P<path>.*?)\s*\[unet (?P<n>\d+)(?P<online>, online)?\]$")
_UNET_KEY = re.compile(r"(?:unets\.(\d+)\.|(\d+)\.(?:ema|online)_model\.)")
_CACHE: dict[tuple[str, int, int], list[int]] = {}
_LOCK = threading.Lock()


def unet_name(path: str, number: int, online: bool = False) -> str:
    """``"path [unet N]"`` (``"path [unet N, online]"``): one U-Net of a file that holds several."""
    return f"{path} [unet {number}{', online' if online else ''}]"


def split_unet_name(name: str) -> tuple[str, Optional[int], bool]:
    """(path, U-Net number or None, online) of a name that may end in ``" [unet N]"`` / ``" [unet N, online]"``."""
    m = _NAME.match(str(name))
    if m is None:
        return str(name), None, False
    return m.group("path"), int(m.group("n")), m.group("online") is not None


def unet_numbers(keys, metadata=None) -> list[int]:
    """The numbers (from 1) of the real U-Nets among an imagen-pytorch file's keys (``unets.{i}.*``, a trainer's
    ``{i}.ema_model.*``); NullUnet placeholders (only ``dummy_parameter``) are not stages. [] for other files and
    for a lone U-Net's state dict."""
    keys = list(keys)
    if identify(keys, metadata or {}) is not IMAGEN_PYTORCH:
        return []
    found: dict[int, set[str]] = {}
    for key in keys:
        m = _UNET_KEY.match(key)
        if m:
            found.setdefault(int(m.group(1) or m.group(2)), set()).add(key[m.end():])
    return [i + 1 for i in sorted(found) if found[i] != {"dummy_parameter"}]


def stage_names(path: str | Path, shown: str) -> list[str]:
    """`shown` (the listed name of `path`), or one ``"shown [unet N]"`` per U-Net when `path` holds several
    stages. A file that cannot be read is listed as it is (loading it then says what is wrong)."""
    from .reader import open_weights

    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return [shown]
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _LOCK:
        numbers = _CACHE.get(key)
    if numbers is None:
        try:
            weights = open_weights(path)
            numbers = unet_numbers(weights.keys(), weights.metadata)
        except Exception:  # listing never fails on one bad file
            numbers = []
        with _LOCK:
            _CACHE[key] = numbers
    return [unet_name(shown, n) for n in numbers] if numbers else [shown]
