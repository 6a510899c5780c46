"""Captioned image folders, the layouts people fine-tune other model families on, as training items.

Two layouts, found recursively under the root and mixed freely:

* an image beside a same-name ``.txt`` caption (``cat.png`` + ``cat.txt``), the common fine-tuning layout;
* a ``metadata.jsonl`` (Hugging Face's imagefolder layout): one JSON object a line with ``file_name`` (relative to
  that file's folder) and ``text``; it wins over a ``.txt`` for the images it names.

Images of any format PIL reads (``IMAGE_SUFFIXES``) are checked once while scanning (`Image.verify`: the whole file
is read); unreadable files, images smaller than the resolution on their short side and images without a caption are
skipped and counted (`CaptionedFolder.skipped`), never raised mid-training. Transparent images are composited on
white. An item is the image resized (aspect kept, area-averaged) so that its short side is the resolution, then
cropped square: centred, or at a random offset drawn from the item's seed. Map-style like `ShapesDataset`: items are
``(uint8 [R, R, 3] image, caption)``; `CaptionedFolder.pair` gives a super-resolution stage its matching low-res
crop (the same crop area-averaged down).
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
METADATA = "metadata.jsonl"
Crop = Literal["center", "random"]


@dataclass(frozen=True)
class FolderItem:
    path: Path
    caption: str


class CaptionedFolder:
    """The captioned images under `root`, served at `resolution` (module docstring)."""

    def __init__(self, root: str | Path, resolution: int, crop: Crop = "center", seed: int = 0):
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"resolution must be a whole number of pixels >= 8, got {resolution!r}")
        self.root, self.resolution, self.crop, self.seed = Path(root).expanduser(), resolution, crop, seed
        if not self.root.is_dir():
            raise ValueError(f"{self.root} is not a folder: give the folder that holds the images and captions")
        self.items, self.skipped = _scan(self.root, resolution)
        if not self.items:
            raise ValueError(f"{self.root} has no usable captioned images ({_counts(self.skipped)}); put each image "
                             f"beside a same-name .txt caption, or list them in a {METADATA} (file_name, text)")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[np.ndarray, str]:
        item = self.items[index]
        return self._crop(_load(item.path), index), item.caption

    def pair(self, index: int, lowres_resolution: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(high-res crop, the same crop area-averaged to `lowres_resolution`, caption): a super-resolution pair."""
        if not 0 < lowres_resolution <= self.resolution:
            raise ValueError(f"lowres_resolution must be in 1..{self.resolution}, got {lowres_resolution}")
        image, caption = self[index]
        return image, _resize(image, lowres_resolution, lowres_resolution), caption

    def summary(self) -> str:
        return f"{len(self.items)} captioned images under {self.root}" + (
            f"; skipped {_counts(self.skipped)}" if self.skipped else "")

    def _crop(self, image: np.ndarray, index: int) -> np.ndarray:
        r = self.resolution
        h, w = image.shape[:2]
        scale = r / min(h, w)
        nh, nw = max(r, round(h * scale)), max(r, round(w * scale))
        image = _resize(image, nh, nw)
        if self.crop == "center":
            top, left = (nh - r) // 2, (nw - r) // 2
        else:
            rng = np.random.default_rng((self.seed, index))
            top, left = int(rng.integers(0, nh - r + 1)), int(rng.integers(0, nw - r + 1))
        return np.ascontiguousarray(image[top:top + r, left:left + r])


def _counts(skipped: Counter) -> str:
    return ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "nothing found"


def _scan(root: Path, resolution: int) -> tuple[list[FolderItem], Counter]:
    from PIL import Image

    listed: dict[Path, str] = {}
    skipped: Counter = Counter()
    for meta in sorted(root.rglob(METADATA)):
        for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                listed[(meta.parent / row["file_name"]).resolve()] = str(row["text"])
            except (ValueError, KeyError, TypeError):
                skipped[f"unreadable {METADATA} line(s)"] += 1
    items = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()):
        caption = listed.get(path.resolve())
        if caption is None and path.with_suffix(".txt").is_file():
            caption = path.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip()
        if caption is None:
            skipped["without a caption"] += 1
            continue
        try:
            with Image.open(path) as image:
                size = image.size
                image.verify()
        except Exception:  # PIL raises many kinds for a broken file
            skipped["unreadable"] += 1
            continue
        if min(size) < resolution:
            skipped[f"smaller than {resolution} px"] += 1
            continue
        items.append(FolderItem(path, caption))
    return items, skipped


def _load(path: Path) -> np.ndarray:
    """uint8 [H, W, 3]: transparency composited on white."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            image = Image.alpha_composite(white, rgba)
        return np.asarray(image.convert("RGB"))


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area-averaged (PIL's box filter) when shrinking, bicubic when growing."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    shrink = height <= image.shape[0] and width <= image.shape[1]
    resample = Image.BOX if shrink else Image.BICUBIC
    return np.asarray(Image.fromarray(image).resize((width, height), resample))
