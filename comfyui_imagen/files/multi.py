"""Files that hold several stages: an imagen-pytorch checkpoint holds one U-Net per cascade stage.

Each is named ``"file.pt [unet N]"`` (N from 1, as imagen-pytorch numbers its U-Nets; ``"[unet N, online]"`` picks
the trained rather than the EMA weights), so a loader list, a saved workflow and the CLI name one stage the same way.
`stage_names` lists a file's stages from its keys alone (a safetensors header; a zip-format pickle, torch.save's
format since torch 1.6, loaded with ``weights_only=True`` and memory-mapped, its tensors unread), remembered per file
size and modification time. A legacy (non-zip) pickle would be read whole to list it: it is listed as one name,
and loading it names its stages.
"""
from __future__ import annotations

import re
import threading
import zipfile
from pathlib import Path
from typing import Optional

from .families import IMAGEN_PYTORCH, identify

_NAME = re.compile(r"^(?P<path>.*?)\s*\[unet (?P<n>\d+)(?P<online>, online)?\]$")
# where U-Net i's keys live: an Imagen's state dict, a trainer's EMA dict (the averaged and the trained copies)
UNET_PREFIXES = {"imagen": "unets.{}.", "ema": "{}.ema_model.", "online": "{}.online_model."}
_UNET_KEY = re.compile(r"unets\.(?P<imagen>\d+)\.|(?P<ema>\d+)\.ema_model\.|(?P<online>\d+)\.online_model\.")
PLACEHOLDER_KEYS = {"dummy_parameter"}  # imagen-pytorch's NullUnet: a stage that holds no network
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
    for _, i, rest in _numbered(keys):
        found.setdefault(i, set()).add(rest)
    return [i + 1 for i in sorted(found) if found[i] != PLACEHOLDER_KEYS]


def unet_indices(keys) -> dict[str, set[int]]:
    """The U-Net indices (from 0) that each layout of `UNET_PREFIXES` has keys for."""
    found: dict[str, set[int]] = {layout: set() for layout in UNET_PREFIXES}
    for layout, i, _ in _numbered(keys):
        found[layout].add(i)
    return found


def _numbered(keys):
    """(layout, U-Net index, the U-Net's own key) of each key in a `UNET_PREFIXES` layout."""
    for key in keys:
        m = _UNET_KEY.match(key)
        if m:
            layout = m.lastgroup
            yield layout, int(m.group(layout)), key[m.end():]


def stage_names(path: str | Path, shown: str) -> list[str]:
    """`shown` (the listed name of `path`), or one ``"shown [unet N]"`` per U-Net when `path` holds several
    stages. A file that cannot be read is listed as it is (loading it then says what is wrong)."""
    from .reader import SAFETENSORS_SUFFIXES, open_weights

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
            cheap = path.suffix.lower() in SAFETENSORS_SUFFIXES or zipfile.is_zipfile(path)
            weights = open_weights(path) if cheap else None
            numbers = unet_numbers(weights.keys(), weights.metadata) if cheap else []
        except Exception:  # listing never fails on one bad file
            numbers = []
        with _LOCK:
            _CACHE[key] = numbers
    return [unet_name(shown, n) for n in numbers] if numbers else [shown]
