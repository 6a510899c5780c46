"""ComfyUI's own SAMPLER and SIGMAS driving Imagen stages in a real ComfyUI server (skipped unless COMFYUI_PATH).

    COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python pytest tests/test_interop_comfyui_server.py

Tiny random stages under the demo names (`tests.comfy_server.start_comfyui`). Parity: KSamplerSelect(dpmpp_2m) +
Imagen Sigmas -> Imagen Custom Sampler saves the same PNG as Imagen Base Sampler with dpmpp_2m on that schedule, to
one 8-bit level (the library tests measure the float difference: <= 1.3e-3 on -1..1).
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.comfy_helpers import DEMO_NAMES
from tests.comfy_server import COMFYUI, free_port, start_comfyui

pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the server tests")
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
