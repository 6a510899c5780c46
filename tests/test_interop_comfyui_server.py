"""ComfyUI's own SAMPLER and SIGMAS driving Imagen stages in a real ComfyUI server (skipped unless COMFYUI_PATH).

    COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python pytest tests/test_interop_comfyui_server.py

Tiny random stages under the demo names (`tests.comfy_server.start_comfyui`). Parity: KSamplerSelect(dpmpp_2m) +
Imagen Sigmas -> Imagen Custom Sampler saves the same PNG as Imagen Base Sampler with dpmpp_2m on that schedule, to
one 8-bit level (the library tests measure the float difference: <= 1.3e-3 on -1..1).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tiny_models import DEMO_NAMES
from tests.comfy_server import COMFYUI, T5XXL_TINY, free_port, start_comfyui
from tests.test_files import SHARED_T5

pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the server tests")
IF_FILES = os.environ.get("IMAGEN_IF_FILES")  # a folder as benchmarks/real_scale.py writes it (random weights)
WIDGETS = {"seed": 5, "cfg": 3.0, "dynamic_threshold": 0.95}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_comfyui(tmp_path_factory.mktemp("comfy"), tmp_path_factory.mktemp("input"),
                       port=free_port(8600, 8699)) as srv:
        yield srv


def _graph(sampler_name: str = "dpmpp_2m", schedule: str = "karras", steps: int = 4) -> dict:
    """Text, base stage, a core SAMPLER and Imagen Sigmas into Imagen Custom Sampler ("6"), and Imagen Base Sampler
    ("8") on the same settings; each saved."""
    return {
        "1": {"class_type": "ImagenT5Loader", "inputs": {"t5_name": DEMO_NAMES["t5"], "dtype": "default"}},
        "2": {"class_type": "ImagenTextEncode",
              "inputs": {"t5": ["1", 0], "prompt": "a red circle", "negative_prompt": "", "max_length": 77}},
        "3": {"class_type": "ImagenModelLoader", "inputs": {"model_name": DEMO_NAMES["base"], "dtype": "default"}},
        "4": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler_name}},
        "5": {"class_type": "ImagenSigmas", "inputs": {"model": ["3", 0], "schedule": schedule, "steps": steps}},
        "6": {"class_type": "ImagenSamplerCustom",
              "inputs": {"model": ["3", 0], "embeds": ["2", 0], "sampler": ["4", 0], "sigmas": ["5", 0],
                         "width": 0, "height": 0, "batch_size": 2, **WIDGETS}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "interop/custom"}},
        "8": {"class_type": "ImagenBaseSampler",
              "inputs": {"model": ["3", 0], "embeds": ["2", 0], "steps": steps, "sampler": "dpmpp_2m",
                         "schedule": schedule, "width": 0, "height": 0, "batch_size": 2, **WIDGETS}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "interop/ours"}},
    }


def _run(server, prompt: dict) -> dict:
    """Run; {node id: [saved images as uint8 arrays]}."""
    from PIL import Image

    prompt_id, events = server.run(prompt)
    assert events[-1]["type"] == "execution_success", events[-1]["data"].get("exception_message", events[-3:])
    saved = {}
    for node_id, out in server.history(prompt_id)["outputs"].items():
        saved[node_id] = [np.asarray(Image.open(server.output / img["subfolder"] / img["filename"]).convert("RGB"),
                                     dtype=np.int16) for img in out.get("images", []) if img["type"] == "output"]
    return saved


@pytest.mark.parametrize("schedule", ["karras", "smart27"])
def test_core_dpmpp_2m_sampler_and_imagen_sigmas_equal_our_dpmpp_2m(server, schedule):
    saved = _run(server, _graph(schedule=schedule))
    custom, ours = saved["7"], saved["9"]
    assert len(custom) == len(ours) == 2
    for a, b in zip(custom, ours):
        assert a.shape == b.shape == (64, 64, 3)
        assert np.abs(a - b).max() <= 1, np.abs(a - b).max()
        assert a.std() > 10  # a picture, not a flat field
    assert np.abs(custom[0] - custom[1]).max() > 0  # one start noise per item


@pytest.mark.parametrize("sampler_name", ["euler", "euler_ancestral", "heun", "dpmpp_2m_sde", "dpmpp_sde",
                                          "dpmpp_3m_sde", "lms", "uni_pc", "ddpm", "lcm"])
def test_core_samplers_run_over_an_imagen_stage(server, sampler_name):
    """Samplers that ask the model for its model_sampling (ancestral, SDE, uni_pc) find the VE one."""
    prompt = _graph(sampler_name=sampler_name, steps=3)
    del prompt["8"], prompt["9"]
    (images,) = _run(server, prompt).values()
    assert len(images) == 2 and images[0].std() > 10


def test_split_sigmas_chain_into_an_sr_stage(server):
    """Core SplitSigmas between Imagen Sigmas and the SR stage: the low half runs as SDEdit from the upsampling."""
    prompt = _graph(steps=3)
    del prompt["8"], prompt["9"]
    prompt.update({
        "10": {"class_type": "ImagenModelLoader", "inputs": {"model_name": DEMO_NAMES["sr"], "dtype": "default"}},
        "11": {"class_type": "ImagenSigmas", "inputs": {"model": ["10", 0], "schedule": "karras", "steps": 4}},
        "12": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["11", 0], "step": 2}},
        "13": {"class_type": "ImagenSamplerCustom",
               "inputs": {"model": ["10", 0], "embeds": ["2", 0], "sampler": ["4", 0], "sigmas": ["12", 1],
                          "width": 0, "height": 0, "batch_size": 1, "image": ["6", 0], "noise_level": 100,
                          **WIDGETS}},
        "14": {"class_type": "SaveImage", "inputs": {"images": ["13", 0], "filename_prefix": "interop/sr"}},
    })
    images = _run(server, prompt)["14"]
    assert len(images) == 2 and images[0].shape == (256, 256, 3)


def test_a_base_stage_given_an_image_is_a_node_error(server):
    prompt = _graph()
    del prompt["8"], prompt["9"]
    prompt["6"]["inputs"]["image"] = ["20", 0]
    prompt["20"] = {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}}
    _, events = server.run(prompt)
    assert events[-1]["type"] == "execution_error"
    assert events[-1]["data"]["exception_message"].startswith(
        "Imagen Custom Sampler: the image input is for super-resolution stages")


def test_cfg_pp_samplers_are_refused_with_a_message(server):
    prompt = _graph(sampler_name="euler_cfg_pp", steps=2)
    del prompt["8"], prompt["9"]
    _, events = server.run(prompt)
    assert events[-1]["type"] == "execution_error"
    assert events[-1]["data"]["exception_message"].startswith("Imagen Custom Sampler: this sampler hooks ComfyUI's")


# ---------------------------------------------------------------------------------------------- a core CLIP's T5
CLIP_PROMPT, CLIP_NEGATIVE = "a red circle to the left of a blue square", "blurry"


def _load_tensors(server, name: str) -> dict:
    from safetensors.torch import load_file

    return load_file(server.output / "tensors" / f"{name}.safetensors")


def _clip_graph(clip_loader: dict, *, sample: bool = True) -> dict:
    """A core CLIP (``clip_loader``, node "1") into Imagen Text Encode (CLIP's T5) and, on the same file, Imagen T5
    Loader + Imagen Text Encode; both embeddings and core CLIPTextEncode's conditioning saved as tensors; the CLIP's
    embeddings also drive the tiny base stage."""
    graph = {
        "1": clip_loader,
        "2": {"class_type": "ImagenTextEncodeCLIP", "inputs": {"clip": ["1", 0], "prompt": CLIP_PROMPT,
                                                               "negative_prompt": CLIP_NEGATIVE, "max_length": 77}},
        "3": {"class_type": "ImagenT5Loader", "inputs": {"t5_name": clip_loader["inputs"]["clip_name"],
                                                         "dtype": "default"}},
        "4": {"class_type": "ImagenTextEncode", "inputs": {"t5": ["3", 0], "prompt": CLIP_PROMPT,
                                                           "negative_prompt": CLIP_NEGATIVE, "max_length": 77}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 0], "text": CLIP_PROMPT}},
        "6": {"class_type": "ImagenTestSaveTensors", "inputs": {"name": "clip", "embeds": ["2", 0],
                                                                "conditioning": ["5", 0]}},
        "7": {"class_type": "ImagenTestSaveTensors", "inputs": {"name": "loader", "embeds": ["4", 0]}},
    }
    if sample:
        graph.update({
            "8": {"class_type": "ImagenModelLoader", "inputs": {"model_name": DEMO_NAMES["base"], "dtype": "default"}},
            "9": {"class_type": "ImagenBaseSampler",
                  "inputs": {"model": ["8", 0], "embeds": ["2", 0], "steps": 3, "sampler": "dpmpp_2m",
                             "schedule": "karras", "width": 0, "height": 0, "batch_size": 1, **WIDGETS}},
            "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "interop/clip"}},
        })
    return graph


def _compare_clip_encodings(server) -> dict:
    """Max abs differences: the CLIP's T5 through Imagen Text Encode (CLIP's T5) against our T5 loader on the same file
    (both masked), and core CLIPTextEncode (no mask) against ours on real tokens and on the padding."""
    clip, loader = _load_tensors(server, "clip"), _load_tensors(server, "loader")
    for side in ("positive", "negative"):
        assert torch.equal(clip[f"{side}.mask"], loader[f"{side}.mask"])
    mask = clip["positive.mask"][0].bool()
    assert 0 < int(mask.sum()) < 77
    core = clip["conditioning"][0]
    ours = clip["positive.embeds"][0]
    assert core.shape == ours.shape
    scale = float(loader["positive.embeds"].abs().max())
    return {"masked": max(float((clip[f"{s}.embeds"] - loader[f"{s}.embeds"]).abs().max())
                          for s in ("positive", "negative")) / scale,
            "core_tokens": float((core[mask] - ours[mask]).abs().max()) / scale,
            "core_padding": float((core[~mask] - ours[~mask]).abs().max()) / scale}


def test_a_core_clips_t5_drives_an_imagen_stage_with_ifs_mask(server):
    """A CLIP built by ComfyUI's classes (comfy.sd.CLIP over comfy.text_encoders.t5.T5) from a tiny T5-v1.1-shaped
    file: Imagen Text Encode (CLIP's T5) equals Imagen T5 Loader + Imagen Text Encode on that file (relative to the
    embeddings' largest value), and the base stage samples from it."""
    saved = _run(server, _clip_graph({"class_type": "ImagenTestTinyT5CLIP", "inputs": {"clip_name": T5XXL_TINY}}))
    (image,) = saved["10"]
    assert image.shape == (64, 64, 3) and image.std() > 10
    diffs = _compare_clip_encodings(server)
    assert diffs["masked"] <= 1e-3, diffs
    assert diffs["core_tokens"] > 1e-3, diffs  # ComfyUI's own encoding attends to the padding: not IF's numbers



@pytest.mark.skipif(not IF_FILES, reason="set IMAGEN_IF_FILES to a folder with a T5-XXL-sized file "
                                         "(benchmarks/real_scale.py --only files writes one)")
def test_core_clip_loader_t5xxl_sized_drives_imagen_text_encode(tmp_path, capsys):
    """ComfyUI's own Load CLIP (type sd3) of a T5-XXL-sized file (random weights in the published shapes):

        IMAGEN_IF_FILES=/work/scratch-realsize COMFYUI_PATH=... COMFYUI_PYTHON=... pytest -s \\
            tests/test_interop_comfyui_server.py -k t5xxl_sized

    Imagen Text Encode (CLIP's T5) equals this package's T5 on the same file computing in fp32 as ComfyUI's T5 does
    (<= 1e-3 of the largest value); the figures (our T5 loader in its own compute dtype, core CLIPTextEncode without a
    mask, times) are printed. Needs ~15 GB RAM and a few minutes on a 2-core CPU."""
    from comfyui_imagen.text import load_t5
    from tests.test_workflows_comfyui_server import _if_links

    links, t5 = _if_links(Path(IF_FILES))
    links = {k: v for k, v in links.items() if k.startswith("text_encoders/")}
    for folder in ("comfy", "input"):
        (tmp_path / folder).mkdir()
    with start_comfyui(tmp_path / "comfy", tmp_path / "input", port=free_port(8500, 8599), links=links) as srv:
        start = time.perf_counter()
        _run(srv, _clip_graph({"class_type": "CLIPLoader", "inputs": {"clip_name": t5, "type": "sd3"}},
                              sample=False))
        wall = time.perf_counter() - start
        diffs = _compare_clip_encodings(srv)
        clip = _load_tensors(srv, "clip")
    ours = load_t5(Path(IF_FILES) / t5, fallback_tokenizer=SHARED_T5, compute_dtype=torch.float32)
    positive, negative = ours.encode_for_guidance(CLIP_PROMPT, CLIP_NEGATIVE, 77)
    scale = float(positive.embeds.abs().max())
    fp32 = max(float((clip["positive.embeds"] - positive.embeds).abs().max()),
               float((clip["negative.embeds"] - negative.embeds).abs().max())) / scale
    with capsys.disabled():
        print(f"\nLoad CLIP (sd3) of {t5} -> Imagen Text Encode (CLIP's T5): {wall:.0f} s for the graph; relative "
              f"max abs difference to our T5 in fp32 {fp32:.2e}, to Imagen T5 Loader (its compute dtype) "
              f"{diffs['masked']:.2e}; core CLIPTextEncode (no mask) vs masked: real tokens "
              f"{diffs['core_tokens']:.2e}, padding {diffs['core_padding']:.2e}")
    assert fp32 <= 1e-3
