"""The shipped workflows: written by `tests.templates`, UI format sound (node types exist, links type-check, widget
values line up with the inputs in order), laid out without overlaps, API copies generated from them, thumbnails
present, the template-browser layout ComfyUI serves, and every one run through the nodes on tiny models."""
from __future__ import annotations

import json

import pytest

from tests import comfy_helpers as ch

UI_FILES = sorted(ch.WORKFLOWS.glob("*.json"))
NAMES = [p.stem for p in UI_FILES]
REQUIRED = {"Imagen text to image", "Imagen cascade to 1024 px", "DeepFloyd IF to 1024 px", "Imagen crop and upscale",
            "Imagen image to image", "Imagen inpaint", "Imagen custom sampler", "DeepFloyd IF with Flux T5",
            "imagen-pytorch cascade"}
DEMO_TEMPLATES = sorted(name for name in REQUIRED if not name.startswith(ch.NEEDS_USER_MODELS))


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
    ui = ch.load_json(ch.WORKFLOWS / "Imagen text to image.json")
    sampler = next(n for n in ui["nodes"] if n["type"] == "ImagenBaseSampler")
    sampler["widgets_values"].pop(1)  # the seed's control_after_generate value
    ui["links"][0][5] = "IMAGE"
    errors = "\n".join(ch.check_ui_workflow(ui, classes))
    assert "widget values" in errors and "IMAGE" in errors


def test_core_nodes_used_are_the_stated_ones():
    used = {n["type"] for p in UI_FILES for n in ch.load_json(p)["nodes"]}
    core = used - {t for t in used if t.startswith("Imagen")} - ch.VIRTUAL_NODES
    assert core <= set(ch.CORE_NODES), core
    assert {"SaveImage", "PreviewImage", "ImageCropV2", "SolidMask", "MaskComposite", "SD_4XUpscale_Conditioning",
            "KSampler"} <= core
    assert "ImageCrop" not in core  # "Crop Image (DEPRECATED)" in ComfyUI 0.33: ImageCropV2 is the current one


def test_template_browser_serves_the_folder():
    # ComfyUI (app/custom_node_manager.py) serves <pack>/{example_workflows,example,examples,workflow,workflows}/
    # *.json as templates, each with an optional same-name .jpg thumbnail, titled by file stem; API copies live one
    # folder deeper so that they are not listed as templates.
    assert ch.WORKFLOWS.name in ("example_workflows", "example", "examples", "workflow", "workflows")
    assert ch.API_DIR.parent == ch.WORKFLOWS
    assert all(len(name) <= 28 for name in NAMES), NAMES  # the browser's cards cut longer titles


def test_templates_are_written_by_the_builder(classes):
    from tests import templates

    built = {t.name: json.loads(json.dumps(templates.build(t, classes))) for t in templates.templates()}
    assert set(built) == set(NAMES)
    for path in UI_FILES:
        assert ch.load_json(path) == built[path.stem], f"{path.name}: run python -m tests.templates"


def _bounds(node: dict) -> tuple[float, float, float, float]:
    """A node's rectangle on the canvas, its title bar included (LiteGraph draws the title above ``pos``)."""
    from tests.templates import TITLE_HEIGHT

    (x, y), (w, h) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + w, y + h


@pytest.mark.parametrize("path", UI_FILES, ids=NAMES)
def test_no_two_nodes_overlap(path):
    nodes = ch.load_json(path)["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = _bounds(a), _bounds(b)
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 or by1 <= ay0, \
                f"{path.stem}: node {a['id']} ({a['type']}) overlaps node {b['id']} ({b['type']})"


SAMPLER_NODES = {"ImagenBaseSampler", "ImagenSuperResolution", "ImagenImageToImage", "ImagenInpaint",
                 "ImagenSamplerCustom", "KSampler"}


@pytest.mark.parametrize("path", UI_FILES, ids=NAMES)
def test_nothing_is_placed_under_a_sampler(path):
    # a sampler grows by its step preview, and the frontend may draw it taller than declared: nothing below it
    nodes = ch.load_json(path)["nodes"]
    for a in (n for n in nodes if n["type"] in SAMPLER_NODES):
        ax0, ay0, ax1, _ = _bounds(a)
        below = [b for b in nodes if b is not a and _bounds(b)[1] >= ay0 and not (_bounds(b)[2] <= ax0 or
                                                                                  ax1 <= _bounds(b)[0])]
        assert not below, f"{path.stem}: {[b['type'] for b in below]} under {a['type']} (node {a['id']})"


@pytest.mark.parametrize("name", DEMO_TEMPLATES)
def test_demo_templates_need_nothing_a_fresh_install_lacks(name, classes):
    # no LoadImage (a fresh input/ is empty), only the bundled models, every sampling widget on "auto"
    from tests.templates import AUTO_SAMPLING, DEMO

    prompt = ch.load_json(ch.API_DIR / f"{name}.json")
    assert not [n for n in prompt.values() if n["class_type"] == "LoadImage"]
    for node in prompt.values():
        inputs = node["inputs"]
        for key in ("t5_name", "model_name"):
            assert inputs.get(key, DEMO["t5"]) in DEMO.values()
        if node["class_type"].startswith("Imagen") and "steps" in inputs:
            assert {k: inputs[k] for k in AUTO_SAMPLING if k in inputs and k != "steps"} == \
                {k: v for k, v in AUTO_SAMPLING.items() if k in inputs and k != "steps"}


def test_models_a_fresh_install_lacks_carry_their_folder_for_the_missing_models_panel():
    # the frontend (Missing Models) checks combo values that end in a weights suffix against the list, and takes
    # name / directory / url from the node's properties.models (0.3.64's requires the url); IF's files are gated: the
    # note names their pages too
    ui = ch.load_json(ch.WORKFLOWS / "DeepFloyd IF to 1024 px.json")
    expected = {"t5xxl_fp16.safetensors": "text_encoders", "x4-upscaler-ema.safetensors": "checkpoints",
                "IF-I-XL-v1.0/unet/diffusion_pytorch_model.fp16.safetensors": "imagen",
                "IF-II-L-v1.0/unet/diffusion_pytorch_model.fp16.safetensors": "imagen"}
    found = {}
    for node in ui["nodes"]:
        for model in node["properties"].get("models", []):
            assert model["name"] in node["widgets_values"]
            assert model["url"].startswith("https://huggingface.co/") and model["url"].endswith(model["name"].split("/")[-1])
            found[model["name"]] = model["directory"]
    assert found == expected
    note = next(n for n in ui["nodes"] if n["type"] == "Note")["widgets_values"][0]
    assert "huggingface.co/DeepFloyd/IF-I-XL-v1.0" in note


# ------------------------------------------------------------------------------------------------ running them
# Final image size of each workflow (the tiny test stages have the demo's sizes).
OUTPUT_SIZES = {"Imagen text to image": (4, 64, 64), "Imagen cascade to 1024 px": (1, 1024, 1024),
                "DeepFloyd IF to 1024 px": (1, 1024, 1024), "Imagen crop and upscale": (1, 256, 256),
                "Imagen image to image": (1, 256, 256), "Imagen inpaint": (1, 256, 256),
                "Imagen custom sampler": (1, 256, 256), "DeepFloyd IF with Flux T5": (1, 256, 256),
                "imagen-pytorch cascade": (1, 256, 256)}
# The DeepFloyd workflow names IF's files; on the tiny models they stand in for them.
TINY_FOR = {"IF-I-XL-v1.0/unet/diffusion_pytorch_model.fp16.safetensors": "imagen-demo-base64.safetensors",
            "IF-II-L-v1.0/unet/diffusion_pytorch_model.fp16.safetensors": "imagen-demo-sr256.safetensors",
            "IF-I-XL-v1.0": "imagen-demo-base64.safetensors", "IF-II-L-v1.0": "imagen-demo-sr256.safetensors",
            "t5xxl_fp16.safetensors": "imagen-demo-t5.safetensors", "t5-v1_1-base": "imagen-demo-t5.safetensors"}
SAVED = sorted((ch.ROOT / "tests" / "fixtures" / "saved_workflows").glob("*.json"))


def quick(prompt: dict) -> dict:
    """The workflow with one sampler step per stage (a 1-step spacing instead of IF's fixed presets, SplitSigmas
    passing the whole grid), RePaint without resampling, and the tiny models in place of IF's files; everything else
    as shipped."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"].startswith("Imagen") and "steps" in inputs:
            inputs.update(steps=1, schedule="karras")
        if "resample" in inputs:
            inputs["resample"] = 1
        if node["class_type"] == "SplitSigmas":
            inputs["step"] = 0  # a 1-step grid has nothing to split: the whole of it
        for key in ("t5_name", "model_name"):
            if key in inputs:
                inputs[key] = TINY_FOR.get(inputs[key], inputs[key])
    return prompt


@pytest.mark.parametrize("name", sorted(OUTPUT_SIZES))
def test_workflow_runs_through_the_nodes_on_tiny_models(name, classes, model_folders, monkeypatch):
    from nodes import comfy_clip
    from tests.test_files import SHARED_T5

    monkeypatch.setattr(comfy_clip.cc, "comfy_t5_tokenizer_dir", lambda: str(SHARED_T5))  # ComfyUI's bundled one
    ch.SaveImage.saved.clear()
    ch.run_api_workflow(quick(ch.load_json(ch.API_DIR / f"{name}.json")), classes)
    (prefix, images), = [s for s in ch.SaveImage.saved if s[0] != "preview"]
    assert prefix.startswith("imagen/")
    assert tuple(images.shape) == (*OUTPUT_SIZES[name], 3)
    # drawn by the tiny stages (measured std 0.48), or ComfyUI's stub VAE decode (all 0.5) after SD x4
    assert images.std() > 0.1 if "1024" not in name or "DeepFloyd" not in name else bool((images == 0.5).all())


@pytest.mark.parametrize("path", SAVED, ids=[p.stem for p in SAVED])
def test_workflows_saved_before_still_line_up_and_run(path, classes, model_folders):
    # the widgets kept their order and types: every saved value lands in the widget it was saved from
    ui = ch.load_json(path)
    assert ch.check_ui_workflow(ui, classes) == []
    prompt = ch.ui_to_api(ui, classes)
    sampler = next(n["inputs"] for n in prompt.values() if n["class_type"] == "ImagenBaseSampler")
    assert (sampler["sampler"], sampler["schedule"], sampler["dynamic_threshold"]) in (
        ("euler_ancestral", "karras", 0.95), ("ddpm", "smart100", 0.95))
    ch.SaveImage.saved.clear()
    ch.run_api_workflow(quick(prompt), classes)
    (prefix, images), = [s for s in ch.SaveImage.saved if s[0] != "preview"]
    assert images.shape[0] >= 1 and images.shape[-1] == 3
