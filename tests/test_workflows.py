"""The shipped workflows: UI format sound (node types exist, links type-check, widget values line up with the inputs
in order), API copies generated from them, thumbnails present, and the template-browser layout ComfyUI serves."""
from __future__ import annotations

import json

import pytest

from tests import comfy_helpers as ch

UI_FILES = sorted(ch.WORKFLOWS.glob("*.json"))
NAMES = [p.stem for p in UI_FILES]
REQUIRED = {"imagen_base_64", "imagen_cascade_64_256_1024", "imagen_deepfloyd_if_sd_x4_1024",
            "imagen_cascade_crop_between_stages", "imagen_img2img", "imagen_inpaint"}


@pytest.fixture(scope="module")
def classes():
    return ch.all_node_classes()


def test_every_required_workflow_ships_with_thumbnail_and_api_copy():
    assert REQUIRED <= set(NAMES)
    for name in NAMES:
        assert (ch.WORKFLOWS / f"{name}.jpg").is_file(), f"{name}.jpg thumbnail missing"
        assert (ch.API_DIR / f"{name}.json").is_file(), f"api/{name}.json missing"


@pytest.mark.parametrize("path", UI_FILES, ids=NAMES)
def test_ui_workflow_is_sound(path, classes):
    ui = ch.load_json(path)
    assert ui.get("version") == 0.4 and ui["nodes"] and ui["links"]
    assert ch.check_ui_workflow(ui, classes) == []
    assert any(n["type"] == "SaveImage" for n in ui["nodes"])


@pytest.mark.parametrize("path", UI_FILES, ids=NAMES)
def test_api_copy_is_generated_from_the_ui_file(path, classes):
    assert ch.load_json(ch.API_DIR / path.name) == json.loads(json.dumps(ch.ui_to_api(ch.load_json(path), classes)))


def test_the_checker_catches_misaligned_widgets_and_bad_links(classes):
    ui = ch.load_json(ch.WORKFLOWS / "imagen_base_64.json")
    sampler = next(n for n in ui["nodes"] if n["type"] == "ImagenBaseSampler")
    sampler["widgets_values"].pop(1)  # the seed's control_after_generate value
    ui["links"][0][5] = "IMAGE"
    errors = "\n".join(ch.check_ui_workflow(ui, classes))
    assert "widget values" in errors and "IMAGE" in errors


def test_core_nodes_used_are_the_stated_ones():
    used = {n["type"] for p in UI_FILES for n in ch.load_json(p)["nodes"]}
    core = used - {t for t in used if t.startswith("Imagen")} - ch.VIRTUAL_NODES
    assert core <= set(ch.CORE_NODES), core
    assert {"LoadImage", "SaveImage", "ImageScale", "SD_4XUpscale_Conditioning", "KSampler"} <= core


def test_template_browser_serves_the_folder():
    # ComfyUI (app/custom_node_manager.py) serves <pack>/{example_workflows,example,examples,workflow,workflows}/
    # *.json as templates, each with an optional same-name .jpg thumbnail; API copies live one folder deeper so that
    # they are not listed as templates.
    assert ch.WORKFLOWS.name in ("example_workflows", "example", "examples", "workflow", "workflows")
    assert ch.API_DIR.parent == ch.WORKFLOWS
    for image in ("imagen_example.png", "imagen_example_masked.png"):
        assert (ch.INPUT_DIR / image).is_file()


# ------------------------------------------------------------------------------------------------ running them
# Final image size of each workflow (the tiny test stages have the demo's sizes).
OUTPUT_SIZES = {"imagen_base_64": (4, 64, 64), "imagen_cascade_64_256_1024": (1, 1024, 1024),
                "imagen_deepfloyd_if_sd_x4_1024": (1, 1024, 1024), "imagen_cascade_crop_between_stages": (1, 256, 256),
                "imagen_img2img": (1, 256, 256), "imagen_inpaint": (1, 256, 256)}
# The DeepFloyd workflow names IF's files; on the tiny models they stand in for them.
TINY_FOR = {"IF-I-XL-v1.0": "imagen-demo-base64.safetensors", "IF-II-L-v1.0": "imagen-demo-sr256.safetensors",
            "t5xxl_fp16.safetensors": "imagen-demo-t5.safetensors"}


def quick(prompt: dict) -> dict:
    """The workflow with one sampler step per stage (a 1-step spacing instead of IF's fixed presets), RePaint
    without resampling, and the tiny models in place of IF's files; everything else as shipped."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"].startswith("Imagen") and "steps" in inputs:
            inputs.update(steps=1, schedule="karras")
        if "resample" in inputs:
            inputs["resample"] = 1
        for key in ("t5_name", "model_name"):
            if key in inputs:
                inputs[key] = TINY_FOR.get(inputs[key], inputs[key])
    return prompt


@pytest.mark.parametrize("name", sorted(OUTPUT_SIZES))
def test_workflow_runs_through_the_nodes_on_tiny_models(name, classes, model_folders):
    ch.SaveImage.saved.clear()
    ch.run_api_workflow(quick(ch.load_json(ch.API_DIR / f"{name}.json")), classes)
    (prefix, images), = [s for s in ch.SaveImage.saved if s[0] != "preview"]
    assert prefix.startswith("imagen/")
    assert tuple(images.shape) == (*OUTPUT_SIZES[name], 3)
    # drawn by the tiny stages (measured std 0.48), or ComfyUI's stub VAE decode (all 0.5) after SD x4
    assert images.std() > 0.1 if "sd_x4" not in name else bool((images == 0.5).all())
