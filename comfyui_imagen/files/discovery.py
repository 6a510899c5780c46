"""Finding model files in folders: what a models folder offers, and the path behind a listed name.

The names are relative to the folder searched (``sub/my_stage.safetensors``), so a saved workflow names a model the
same way on every machine. A DeepFloyd IF model folder is listed by its U-Net weight files
(``IF-I-XL-v1.0/unet/diffusion_pytorch_model.fp16.safetensors``: ComfyUI's frontend checks a workflow's models only
by names that end in a weights suffix, and then names the file and its folder in its Missing Models panel); the
names earlier versions listed (``IF-I-XL-v1.0``, ``IF-I-XL-v1.0/unet``) still resolve. A DeepFloyd IF root also
offers its ``text_encoder/`` as a T5. Bundled files (the demo cascade) are passed in by the caller and listed after the user's
own; a user file of the same name wins. Folders are given by the caller too: nothing here knows ComfyUI.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from .errors import ModelFileError
from .families import IF_PIPELINE, T5_FOLDER, UNET_FOLDER, folder_family
from .multi import split_unet_name, stage_names, unet_name
from .reader import GGUF_SUFFIXES, SAFETENSORS_SUFFIXES, WEIGHT_SUFFIXES

UNET_WEIGHTS = "diffusion_pytorch_model"  # how diffusers names a U-Net's weight files (and its .fp16 variants)
T5_SUFFIXES = WEIGHT_SUFFIXES + GGUF_SUFFIXES  # a T5 file is also read from GGUF (ComfyUI-GGUF's T5 encoders)

WHERE_MODELS_GO = ("Put stage files and DeepFloyd IF folders (e.g. IF-I-XL-v1.0/ with its unet/ and text_encoder/, "
                   "from huggingface.co/DeepFloyd after accepting its license) in ComfyUI/models/imagen/ and T5 "
                   "files (e.g. t5xxl_fp16.safetensors) in ComfyUI/models/text_encoders/, then press R to refresh "
                   "the lists")


@dataclass(frozen=True)
class Found:
    """What one models folder offers: ``stages`` (weight files, IF model roots, U-Net folders) and ``t5`` (Hugging
    Face T5 folders, IF roots' ``text_encoder``), as names relative to the folder."""

    stages: tuple[str, ...]
    t5: tuple[str, ...]


def is_weight_file(name: str, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> bool:
    return os.path.splitext(name)[1].lower() in suffixes


def _walk(root: str | Path) -> Iterator[tuple[str, str, list[str], list[str]]]:
    """os.walk with sorted folders, following links except back into a folder it is inside of (a link cycle): a
    second name for a folder is listed too, as saved workflows may hold it. Yields (rel, dirpath, dirnames,
    filenames); prune by emptying ``dirnames``."""
    chains: dict[str, tuple[str, ...]] = {}  # dirpath -> the real paths of it and its ancestors
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real, above = os.path.realpath(dirpath), chains.get(os.path.dirname(dirpath), ())
        if real in above:
            dirnames[:] = []
            continue
        chains[dirpath] = (*above, real)
        dirnames.sort()
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        yield rel, dirpath, dirnames, sorted(filenames)


def _join(rel: str, name: str) -> str:
    return name if rel == "." else f"{rel}/{name}"


def _unet_entries(rel: str, unet: str, dirpath: str) -> list[str]:
    """A model folder's entries: the weight files of its U-Net folder ``unet`` (``IF-I-XL-v1.0/unet/diffusion_
    pytorch_model.fp16.safetensors``; a .bin only where no .safetensors of that variant exists), so that every entry
    names a file; the folder ``rel`` itself when they are sharded (or absent)."""
    folder = os.path.join(dirpath, unet)
    present = os.listdir(folder) if os.path.isdir(folder) else []
    if any(n.startswith(UNET_WEIGHTS) and ".index" in n for n in present):
        return [rel]  # sharded: the folder reader joins the shards
    names = sorted(n for n in present if n.startswith(UNET_WEIGHTS) and is_weight_file(n))
    safetensors = [n for n in names if is_weight_file(n, SAFETENSORS_SUFFIXES)]
    # a Hugging Face snapshot may hold each variant as .safetensors and as .bin: the .safetensors one only
    names = [n for n in names if n in safetensors or os.path.splitext(n)[0] not in
             {os.path.splitext(m)[0] for m in safetensors}]
    return [_join(_join(rel, unet) if unet != "." else rel, n) for n in names] or [rel]


def scan_folder(root: str | Path) -> Found:
    """Stage entries and T5 folders under one models folder (``models/imagen``); nothing when it is missing."""
    stages, t5 = [], []
    for rel, dirpath, dirnames, filenames in _walk(root):
        family = folder_family(dirpath) if rel != "." else None
        if family is IF_PIPELINE:
            stages += _unet_entries(rel, "unet", dirpath)
            if folder_family(os.path.join(dirpath, "text_encoder")) is T5_FOLDER:
                t5.append(rel + "/text_encoder")
        elif family is UNET_FOLDER:
            stages += _unet_entries(rel, ".", dirpath)
        elif family is T5_FOLDER:
            t5.append(rel)
        else:
            stages += [_join(rel, n) for n in filenames if is_weight_file(n)]
            continue
        dirnames[:] = []  # a model folder's own files are not listed again
    return Found(tuple(stages), tuple(t5))


def weight_files(root: str | Path, suffixes: tuple[str, ...] = WEIGHT_SUFFIXES) -> list[str]:
    """Every weight file (of one of `suffixes`) under `root` (``models/text_encoders``), relative names, sorted."""
    return sorted(_join(rel, n) for rel, _, _, filenames in _walk(root) for n in filenames
                  if is_weight_file(n, suffixes))


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def list_stages(roots: Iterable[str | Path], bundled: Iterable[Path] = ()) -> list[str]:
    """Stage names offered by the models folders `roots`, then the `bundled` files' names; a file that holds
    several stages (an imagen-pytorch checkpoint) is listed once per stage, ``"name [unet N]"`` (`multi`)."""
    found = [entry for root in roots for name in scan_folder(root).stages
             for entry in (stage_names(Path(root) / name, name) if is_weight_file(name) else [name])]
    return _unique(found + [Path(p).name for p in bundled])


def list_t5(text_roots: Iterable[str | Path], model_roots: Iterable[str | Path],
            bundled: Iterable[Path] = ()) -> list[str]:
    """T5 names: weight and GGUF files under `text_roots` (``models/text_encoders``, ``models/clip``), T5 folders
    under `model_roots` (``models/imagen``), then the `bundled` files' names."""
    files = sorted(name for root in text_roots for name in weight_files(root, T5_SUFFIXES))
    folders = [name for root in model_roots for name in scan_folder(root).t5]
    return _unique(files + folders + [Path(p).name for p in bundled])


def resolve(name: str, roots: Iterable[str | Path], bundled: Iterable[Path] = (), *,
            advice: str = WHERE_MODELS_GO) -> Path:
    """The path of a listed `name`: the first of `roots` holding it, else the `bundled` file of that name. One stage
    of a file holding several keeps its ``" [unet N]"`` after the path (`load_stage` reads it).

    A name is relative and stays inside its folder: an absolute path or a ``..`` part is refused, so a workflow can
    only name models that were offered. `ModelFileError` naming the folders searched (and `advice`) when absent.
    """
    parts = Path(name).parts if isinstance(name, str) else ()
    if not parts or ".." in parts or os.path.isabs(name) or Path(name).drive:
        raise ModelFileError(f"invalid model name {name!r}; pick one from the list")
    searched = [str(root) for root in roots]
    file, number, online = split_unet_name(name)
    for root in searched:
        path = Path(root) / name
        if path.exists():
            return path
        if number is not None and (Path(root) / file).is_file():  # one stage of a file holding several
            return Path(unet_name(str(Path(root) / file), number, online))
    for path in bundled:
        if Path(path).name == name:
            return Path(path)
    raise ModelFileError(f"{name!r} was not found (searched: {', '.join(searched) or 'no folder'}). {advice}")
