"""The ComfyUI nodes without ComfyUI: valid INPUT_TYPES, and every node run on tiny random models."""
from __future__ import annotations

import inspect

import pytest
import torch

import nodes
from nodes import comfy_compat, loaders, sampling, text
from tests.tiny_models import DEMO_NAMES, write_tiny_t5

NODE_IDS = ["ImagenT5Loader", "ImagenModelLoader", "ImagenTextEncode", "ImagenBaseSampler", "ImagenSuperResolution",
            "ImagenImageToImage", "ImagenInpaint", "ImagenSamplerCustom", "ImagenSigmas", "ImagenTextEncodeCLIP"]
OWN_TYPES = {"IMAGEN_T5", "IMAGEN_MODEL", "IMAGEN_TEXT_EMBEDS", "IMAGE", "MASK", "SAMPLER", "SIGMAS", "CLIP"}
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN"}
FAST = dict(seed=0, steps=2, cfg=3.0, sampler="euler", schedule="karras", dynamic_threshold=0.95)
ONE = {**FAST, "steps": 1, "cfg": 1.0}  # one evaluation per step: for the large SR outputs


def test_node_ids_are_permanent_and_named_for_imagen():
    assert list(nodes.NODE_CLASS_MAPPINGS) == NODE_IDS
    for node_id, cls in nodes.NODE_CLASS_MAPPINGS.items():
        assert "Imagen" in nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id]
        assert cls.CATEGORY.startswith("imagen/") and cls.DESCRIPTION


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_input_types_are_valid(node_id, model_folders):
    cls = nodes.NODE_CLASS_MAPPINGS[node_id]
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional"}
    names = []
    for section in spec.values():
        for name, entry in section.items():
            kind, opts = entry[0], entry[1]
            names.append(name)
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):
                assert kind and opts.get("default", kind[0]) in kind, f"{node_id}.{name}"
            else:
                assert kind in WIDGETS | OWN_TYPES, f"{node_id}.{name}: {kind}"
            if kind in ("INT", "FLOAT"):
                assert opts["min"] <= opts["default"] <= opts["max"], f"{node_id}.{name}"
            if name == "seed":
                assert opts.get("control_after_generate") is True
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    assert [p for p in params if p != "self"] == names


def test_loader_lists_files_folders_and_bundled(model_folders, monkeypatch, tmp_path):
    stages, t5 = loaders.list_stages(), loaders.list_t5()
    assert DEMO_NAMES["base"] in stages and DEMO_NAMES["sr"] in stages
    # an IF folder by its U-Net weights files (ComfyUI's frontend checks workflows' models by such names), or the
    # folder itself when unet/ holds none (this skeleton)
    assert [s for s in stages if s.startswith("IF-I-M-v1.0")] == ["IF-I-M-v1.0"]
    assert DEMO_NAMES["t5"] in t5 and "IF-I-M-v1.0/text_encoder" in t5
    bundled = tmp_path / "imagen-bundled-base.safetensors"
    bundled.write_bytes(b"")
    monkeypatch.setattr(loaders, "bundled_files", lambda: {"base": bundled})
    assert "imagen-bundled-base.safetensors" in loaders.list_stages()
    assert loaders.resolve("imagen-bundled-base.safetensors", ("imagen",), ("base", "sr")) == bundled


def test_missing_model_names_the_folder(model_folders):
    with pytest.raises(ValueError, match="models/imagen"):
        loaders.ImagenModelLoader().load("nope.safetensors")
    with pytest.raises(ValueError, match="invalid model name"):
        loaders.resolve("../secret.safetensors", ("imagen",), ())


@pytest.fixture()
def chain(model_folders):
    (t5,) = loaders.ImagenT5Loader().load(DEMO_NAMES["t5"])
    base, info, res = loaders.ImagenModelLoader().load(DEMO_NAMES["base"])
    sr, sr_info, sr_res = loaders.ImagenModelLoader().load(DEMO_NAMES["sr"])
    (embeds,) = text.ImagenTextEncode().encode(t5, "a red circle", "", 77)
    assert (res, sr_res) == (64, 256) and "base stage" in info and "64 -> 256" in sr_info
    return base, sr, embeds


def test_text_encode_preprocesses_as_chosen(model_folders):
    # 'lower' (the default, DeepFloyd IF's) and 'none' (imagen-pytorch: the text as typed) differ only on capitals
    (t5,) = loaders.ImagenT5Loader().load(DEMO_NAMES["t5"])
    encode = text.ImagenTextEncode().encode
    lower, typed = (encode(t5, "A Red Circle  ", "", 77, preprocess=mode)[0].positive for mode in ("lower", "none"))
    assert torch.equal(lower.embeds, encode(t5, "a red circle", "", 77)[0].positive.embeds)
    assert not torch.equal(lower.embeds, typed.embeds)


def test_text_to_image_then_super_resolution(chain):
    base, sr, embeds = chain
    (image,) = sampling.ImagenBaseSampler().sample(base, embeds, width=0, height=32, batch_size=2, **FAST)
    assert image.shape == (2, 32, 64, 3) and image.dtype == torch.float32
    assert image.std() > 0.1 and not torch.equal(image[0], image[1])  # a picture per seed (measured: std 0.49)
    (big,) = sampling.ImagenSuperResolution().upscale(sr, embeds, image, noise_level=100, width=0, height=0, **ONE)
    assert big.shape == (2, 256, 256, 3)
    (huge,) = sampling.ImagenSuperResolution().upscale(sr, embeds, big[:1], noise_level=100, width=512, height=512,
                                                       **ONE)
    assert huge.shape == (1, 512, 512, 3)


def test_image_to_image_and_inpaint_on_base_and_sr(chain):
    base, sr, embeds = chain
    image = torch.rand(1, 64, 64, 3)
    (edited,) = sampling.ImagenImageToImage().edit(base, embeds, image, strength=0.5, noise_level=100, **FAST)
    assert edited.shape == image.shape
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    fast = {k: v for k, v in FAST.items() if k != "sampler"}
    (filled,) = sampling.ImagenInpaint().inpaint(base, embeds, image, mask, resample=2, noise_level=100, **fast)
    keep = (mask[0] == 0)
    assert torch.allclose(filled[0][keep], image[0][keep], atol=1e-6)
    assert not torch.allclose(filled[0][~keep], image[0][~keep], atol=1e-2)
    big = torch.rand(1, 256, 256, 3)
    (edited_sr,) = sampling.ImagenImageToImage().edit(sr, embeds, big, strength=0.3, noise_level=100,
                                                      lowres_image=image, **ONE)
    assert edited_sr.shape == big.shape


@pytest.mark.parametrize("case, match", [
    ("base_into_sr", "base stage"), ("sr_into_base", "super-resolution stage"), ("size", "multiple of 8"),
    ("too_big", "far beyond"), ("mask", "mask is 32x32"), ("text_width", "T5"),
])
def test_bad_input_is_a_value_error_with_the_fix(chain, case, match):
    base, sr, embeds = chain
    image = torch.rand(1, 64, 64, 3)
    calls = {
        "base_into_sr": lambda: sampling.ImagenSuperResolution().upscale(base, embeds, image, noise_level=100,
                                                                         width=0, height=0, **FAST),
        "sr_into_base": lambda: sampling.ImagenBaseSampler().sample(sr, embeds, width=0, height=0, batch_size=1,
                                                                    **FAST),
        "size": lambda: sampling.ImagenBaseSampler().sample(base, embeds, width=60, height=64, batch_size=1, **FAST),
        "too_big": lambda: sampling.ImagenBaseSampler().sample(base, embeds, width=4096, height=64, batch_size=1,
                                                               **FAST),
        "mask": lambda: sampling.ImagenInpaint().inpaint(base, embeds, image, torch.ones(1, 32, 32), resample=1,
                                                         noise_level=100,
                                                         **{k: v for k, v in FAST.items() if k != "sampler"}),
        "text_width": lambda: sampling.ImagenBaseSampler().sample(base, _wide(embeds), width=0, height=0,
                                                                  batch_size=1, **FAST),
    }
    with pytest.raises(ValueError, match=match):
        calls[case]()


def _wide(embeds):
    from comfyui_imagen.cascade import Conditioning
    from comfyui_imagen.text import TextEmbeds

    pos = TextEmbeds(torch.zeros(1, 4, 64), torch.ones(1, 4, dtype=torch.bool))
    return Conditioning(pos, pos)


def test_progress_and_cancel_hooks_are_inert_without_comfyui():
    assert comfy_compat.progress_callback(10) is None
    assert comfy_compat.interrupted() is False
    assert comfy_compat.intermediate_device() == torch.device("cpu")


def test_t5xxl_file_gets_comfyuis_bundled_tokenizer_from_a_namespace_package(model_folders, tmp_path, monkeypatch):
    """Real ComfyUI's ``comfy`` has no ``__init__.py`` (``comfy.__file__`` is None): its bundled
    ``comfy/text_encoders/t5_tokenizer`` must still be found for a t5xxl file that has no tokenizer beside it."""
    import shutil
    import sys
    from pathlib import Path


    tokenizer_src = Path(__file__).resolve().parents[2] / "shared" / "t5-v1_1-xxl"
    comfy_root = tmp_path / "ComfyUI"
    bundled = comfy_root / "comfy" / "text_encoders" / "t5_tokenizer"
    bundled.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tokenizer_src / name, bundled / name)
    write_tiny_t5(model_folders / "text_encoders" / "t5xxl_tiny.safetensors", vocab_size=32128)

    for name in [m for m in sys.modules if m == "comfy" or m.startswith("comfy.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(comfy_root))
    comfy_compat._comfy.cache_clear()
    try:
        import comfy
        assert getattr(comfy, "__file__", None) is None  # a namespace package, as in ComfyUI
        assert comfy_compat.comfy_t5_tokenizer_dir() == str(bundled)
        (t5,) = loaders.ImagenT5Loader().load("t5xxl_tiny.safetensors")
        ids = t5.encoder.tokenizer.tokenize(["a red circle"])[0]
        assert ids == [3, 9, 1131, 8196]  # "▁", "a", "▁red", "▁circle": T5 v1.1's SentencePiece vocabulary
    finally:
        comfy_compat._comfy.cache_clear()
