"""The loader sockets hold one model at a time inside ComfyUI (issue #13): the T5 releases its weights before a stage
loads and reloads them when it next encodes (same embeddings, its cache kept), a stage reads its weights when a
sampler first needs it and releases them when another model loads, and "keep loaded" keeps either. No ComfyUI: the
nodes run on the tiny models of tests/conftest.py."""
from __future__ import annotations

import gc
import threading
import weakref

import pytest
import torch

import comfyui_imagen.checkpoints as checkpoints
from nodes import loaders, sampling, text
from tests.tiny_models import DEMO_NAMES

FAST = dict(seed=0, steps=1, cfg=2.0, sampler="euler", schedule="karras", dynamic_threshold=0.95)


@pytest.fixture(autouse=True)
def nothing_loaded():
    for held in list(loaders._LOADED):
        held.release()
    yield
    for held in list(loaders._LOADED):
        held.release()


def alive(ref: weakref.ref) -> bool:
    gc.collect()
    return ref() is not None


def base_sample(model, embeds):
    return sampling.ImagenBaseSampler().sample(model, embeds, width=0, height=0, batch_size=1, **FAST)


def test_new_inputs_are_optional_and_last_so_saved_widgets_keep_their_places():
    for cls, required in ((loaders.ImagenT5Loader, ["t5_name", "dtype"]),
                          (loaders.ImagenModelLoader, ["model_name", "dtype"])):
        spec = cls.INPUT_TYPES()
        assert list(spec["required"]) == required
        assert list(spec["optional"]) == ["keep_loaded"] and spec["optional"]["keep_loaded"][1]["default"] is False


def test_the_t5_gives_its_memory_back_before_a_stage_loads_and_reloads_to_the_same_embeddings(model_folders,
                                                                                                monkeypatch):
    (t5,) = loaders.ImagenT5Loader().load(DEMO_NAMES["t5"])
    (embeds,) = text.ImagenTextEncode().encode(t5, "a red circle", "", 77)
    first = weakref.ref(t5.encoder.model)
    model, info, _ = loaders.ImagenModelLoader().load(DEMO_NAMES["base"])
    assert not model.loaded and alive(first) and "base stage" in info  # the loader node reads no weights
    seen = []
    real = checkpoints.load_stage

    def spy(*args, **kwargs):
        seen.append(alive(first))
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints, "load_stage", spy)
    model, _, _ = loaders.ImagenModelLoader().load(DEMO_NAMES["base"])
    (image,) = base_sample(model, embeds)
    assert seen == [False] and not t5.loaded and model.loaded  # the T5 was gone before the stage's weights came
    hits = t5.cache.hits
    (again,) = text.ImagenTextEncode().encode(t5, "a red circle", "", 77)
    assert t5.loaded and t5.cache.hits == hits + 2  # reloaded, and both prompts came from the kept cache
    assert torch.equal(again.positive.embeds, embeds.positive.embeds)
    (fresh,) = text.ImagenTextEncode().encode(t5, "a blue square", "", 77)  # a new prompt runs the reloaded T5
    loaded_again = loaders.ImagenT5Loader().load(DEMO_NAMES["t5"])[0]
    (reference,) = text.ImagenTextEncode().encode(loaded_again, "a blue square", "", 77)
    assert torch.equal(fresh.positive.embeds, reference.positive.embeds)


def test_each_stage_releases_the_other_and_keep_loaded_keeps_them(model_folders):
    (t5,) = loaders.ImagenT5Loader().load(DEMO_NAMES["t5"], keep_loaded=True)
    (embeds,) = text.ImagenTextEncode().encode(t5, "a red circle", "", 77)
    base, _, _ = loaders.ImagenModelLoader().load(DEMO_NAMES["base"])
    sr, _, _ = loaders.ImagenModelLoader().load(DEMO_NAMES["sr"])
    (image,) = base_sample(base, embeds)
    unet = weakref.ref(base.stage.unet)
    sampling.ImagenSuperResolution().upscale(sr, embeds, image, noise_level=-1, width=0, height=0, **FAST)
    assert sr.loaded and not base.loaded and not alive(unet) and t5.loaded  # the kept T5 stays
    kept, _, _ = loaders.ImagenModelLoader().load(DEMO_NAMES["base"], keep_loaded=True)
    base_sample(kept, embeds)
    sampling.ImagenSuperResolution().upscale(sr, embeds, image, noise_level=-1, width=0, height=0, **FAST)
    assert kept.loaded and sr.loaded and t5.loaded


def test_a_released_stage_samples_the_same_pictures_when_reloaded(model_folders):
    (t5,) = loaders.ImagenT5Loader().load(DEMO_NAMES["t5"])
    (embeds,) = text.ImagenTextEncode().encode(t5, "a red circle", "", 77)
    base, _, _ = loaders.ImagenModelLoader().load(DEMO_NAMES["base"])
    (first,) = base_sample(base, embeds)
    base.release()
    assert not base.loaded
    (second,) = base_sample(base, embeds)
    assert torch.equal(first, second)


def test_encoding_and_releasing_from_several_threads(model_folders):
    (t5,) = loaders.ImagenT5Loader().load(DEMO_NAMES["t5"])
    (reference,) = text.ImagenTextEncode().encode(t5, "a red circle", "", 77)
    base, _, _ = loaders.ImagenModelLoader().load(DEMO_NAMES["base"])
    results, errors = [], []

    def work(k: int):
        try:
            for _ in range(3):
                if k % 2:
                    base.load()  # releases the T5 (not kept) while others encode
                else:
                    results.append(t5.encode(["a red circle"], 77).embeds)
        except Exception as e:  # noqa: BLE001  (any failure is the test's)
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 6
    assert all(torch.equal(r, reference.positive.embeds) for r in results)
