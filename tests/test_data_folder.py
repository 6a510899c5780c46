"""`data.CaptionedFolder`: image folders with .txt captions or a metadata.jsonl, checked once, cropped square."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from comfyui_imagen.data.folder import CaptionedFolder

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _halves(width: int, height: int, left=RED, right=BLUE) -> Image.Image:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2], pixels[:, width // 2:] = left, right
    return Image.fromarray(pixels)


@pytest.fixture()
def folder(tmp_path):
    _halves(32, 16).save(tmp_path / "wide.png")
    (tmp_path / "wide.txt").write_text("red left, blue right\n")
    (tmp_path / "sub").mkdir()
    see_through = np.zeros((20, 20, 4), np.uint8)
    see_through[:, 10:] = (0, 255, 0, 255)  # the left half fully transparent
    Image.fromarray(see_through, "RGBA").save(tmp_path / "sub" / "glass.png")
    (tmp_path / "sub" / "glass.txt").write_text("green on the right")
    (tmp_path / "hf").mkdir()
    _halves(24, 24, BLUE, BLUE).save(tmp_path / "hf" / "blue.jpg", quality=95)
    (tmp_path / "hf" / "blue.txt").write_text("overridden by the metadata")
    (tmp_path / "hf" / "metadata.jsonl").write_text(
        json.dumps({"file_name": "blue.jpg", "text": "all blue"}) + "\nnot json\n")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    (tmp_path / "broken.txt").write_text("never read")
    _halves(8, 8).save(tmp_path / "tiny.png")
    (tmp_path / "tiny.txt").write_text("too small")
    _halves(20, 20).save(tmp_path / "uncaptioned.png")
    return tmp_path


def test_a_folder_lists_its_captioned_images_and_counts_what_it_skips(folder):
    data = CaptionedFolder(folder, 16)
    assert {item.path.name: item.caption for item in data.items} == {
        "wide.png": "red left, blue right", "glass.png": "green on the right", "blue.jpg": "all blue"}
    assert dict(data.skipped) == {"unreadable": 1, "smaller than 16 px": 1, "without a caption": 1,
                                  "unreadable metadata.jsonl line(s)": 1}
    assert "3 captioned images" in data.summary() and "1 unreadable," in data.summary()
    for index in range(len(data)):
        image, caption = data[index]
        assert image.shape == (16, 16, 3) and image.dtype == np.uint8 and caption


def test_items_are_resized_on_the_short_side_and_cropped_square(folder):
    data = CaptionedFolder(folder, 16)
    index = [item.path.name for item in data.items].index("wide.png")
    image, _ = data[index]  # 32 x 16: no resize, the centre 16 columns: half red, half blue
    assert (image[:, :8] == RED).all() and (image[:, 8:] == BLUE).all()
    shifted = {tuple(CaptionedFolder(folder, 16, crop="random", seed=s)[index][0][0, :, 0] // 255)
               for s in range(8)}
    assert len(shifted) > 1  # random offsets differ by seed, and one seed always gives the same crop
    again = CaptionedFolder(folder, 16, crop="random", seed=3)
    assert np.array_equal(again[index][0], CaptionedFolder(folder, 16, crop="random", seed=3)[index][0])
    glass = data[[item.path.name for item in data.items].index("glass.png")][0]
    assert (glass[:, :7] == 255).all() and (glass[:, 9:] == (0, 255, 0)).all()  # transparency on white


def test_a_super_resolution_pair_is_the_crop_and_its_area_average(folder):
    data = CaptionedFolder(folder, 16)
    index = [item.path.name for item in data.items].index("wide.png")
    high, low, caption = data.pair(index, 4)
    assert high.shape == (16, 16, 3) and low.shape == (4, 4, 3) and caption == "red left, blue right"
    assert (low[:, :2] == RED).all() and (low[:, 2:] == BLUE).all()
    with pytest.raises(ValueError, match="lowres_resolution must be in 1..16"):
        data.pair(index, 32)


def test_a_folder_without_usable_images_says_what_to_put_there(tmp_path):
    _halves(20, 20).save(tmp_path / "alone.png")
    with pytest.raises(ValueError, match=r"no usable captioned images \(1 without a caption\).*same-name \.txt"):
        CaptionedFolder(tmp_path, 16)
    with pytest.raises(ValueError, match="is not a folder"):
        CaptionedFolder(tmp_path / "missing", 16)
