"""The pack inside a real ComfyUI server. Skipped unless ``COMFYUI_PATH`` names a ComfyUI checkout.

    COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python pytest tests/test_workflows_comfyui_server.py

Starts ``main.py --cpu`` on a free port with an ``--extra-model-paths-config`` that adds this repository as a
custom-nodes folder and a models folder of tiny random stages under the demo's file names (so it runs in seconds on a
CPU), and an empty ``--input-directory`` (a fresh install's). Checks: the pack imports without failure; ``/object_info`` lists
every node; every workflow runs via ``/prompt`` to a saved image (the DeepFloyd one only where IF's files and the SD x4
upscaler are installed; its stages I and II on IF-sized files, within the memory of one stage, where
``IMAGEN_IF_FILES`` names them); progress and preview events arrive on the websocket; ``/interrupt`` stops a long
run; bad input gives a node error with our message and the server keeps serving.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from tests import comfy_helpers as ch
from tests.tiny_models import DEMO_NAMES
from tests.comfy_server import COMFYUI, T5XXL_TINY, free_port, start_comfyui

pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the server tests")
PREVIEW_IMAGE = 1  # ComfyUI's BinaryEventTypes.PREVIEW_IMAGE


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """ComfyUI with this pack, tiny models under the demo names and an empty input folder."""
    with start_comfyui(tmp_path_factory.mktemp("comfy"), tmp_path_factory.mktemp("input"),
                       port=free_port(8300, 8399)) as srv:
        yield srv


def test_pack_imports_and_lists_every_node(server):
    log = server.log.read_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not [line for line in failed if "comfyui-imagen" in line], log[-4000:]
    info = server.get("/object_info")
    from nodes import NODE_CLASS_MAPPINGS

    for node_id in NODE_CLASS_MAPPINGS:
        assert node_id in info, node_id
        assert info[node_id]["category"].startswith("imagen/")
    assert DEMO_NAMES["base"] in combo_choices(info["ImagenModelLoader"]["input"]["required"]["model_name"])
    assert DEMO_NAMES["t5"] in combo_choices(info["ImagenT5Loader"]["input"]["required"]["t5_name"])


def _quick(name: str) -> dict:
    from tests.test_workflows import quick

    return quick(ch.load_json(ch.API_DIR / f"{name}.json"))


@pytest.mark.parametrize("path", sorted(ch.API_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_workflow_runs_to_a_saved_image(server, path):
    prompt = ch.load_json(path)
    missing = {n["class_type"] for n in prompt.values()} - set(server.get("/object_info"))
    if missing:  # ImageCropV2 (the crop template) arrived in ComfyUI 0.14
        pytest.skip(f"this ComfyUI has no {sorted(missing)}")
    clip = [n for n in prompt.values() if n["class_type"] == "DualCLIPLoader"]
    if "DeepFloyd" in path.stem and not clip:
        info = server.get("/object_info")
        wanted = {n["inputs"].get("ckpt_name") or n["inputs"].get("model_name") or n["inputs"].get("t5_name")
                  for n in prompt.values() if n["class_type"].endswith(("Loader", "LoaderSimple"))}
        offered = {v for node in ("ImagenModelLoader", "ImagenT5Loader", "CheckpointLoaderSimple")
                   for v in combo_choices(next(iter(info[node]["input"]["required"].values())))}
        if not wanted <= offered:
            pytest.skip(f"needs {sorted(wanted - offered)} installed in ComfyUI's models folders")
    else:  # the tiny stages under the demo names; a core CLIP of the tiny T5-v1.1-shaped file for Flux's
        prompt = _quick(path.stem)
        for node in prompt.values():
            if node["class_type"] == "DualCLIPLoader":
                node.update(class_type="ImagenTestTinyT5CLIP", inputs={"clip_name": T5XXL_TINY})
    prompt_id, events = server.run(prompt)
    assert events[-1]["type"] == "execution_success", events[-3:]
    outputs = server.history(prompt_id)["outputs"]
    saved = [img for out in outputs.values() for img in out.get("images", []) if img["type"] == "output"]
    assert saved and all((server.output / s["subfolder"] / s["filename"]).is_file() for s in saved)


def test_progress_and_previews_arrive(server):
    prompt = _quick("Imagen text to image")
    for node in prompt.values():
        if node["class_type"] == "ImagenBaseSampler":
            node["inputs"]["steps"] = 4
    _, events = server.run(prompt)
    progress = [e for e in events if isinstance(e, dict) and e["type"] == "progress"]
    previews = [e for e in events if isinstance(e, tuple) and e[0] == PREVIEW_IMAGE]
    assert [p["data"]["value"] for p in progress][-4:] == [1, 2, 3, 4]
    # each preview: a 4-byte image type (1 = JPEG), then the JPEG itself
    assert len(previews) >= 4 and all(p[1][:4] == b"\x00\x00\x00\x01" and p[1][4:6] == b"\xff\xd8"
                                      for p in previews)


def test_interrupt_stops_a_long_run_and_the_server_keeps_serving(server):
    prompt = _quick("Imagen text to image")
    for node in prompt.values():
        if node["class_type"] == "ImagenBaseSampler":
            node["inputs"].update(steps=1000, seed=123)
    start = time.time()
    _, events = server.run(prompt, interrupt_after_progress=True)
    assert events[-1]["type"] == "execution_interrupted"
    assert time.time() - start < 120
    assert server.get("/system_stats")


def test_t5xxl_file_without_a_tokenizer_uses_comfyuis_bundled_one(server):
    """Real ComfyUI's ``comfy`` is a namespace package (no ``__init__.py``): the T5 Loader must still find the
    bundled ``comfy/text_encoders/t5_tokenizer`` for a t5xxl file that has no tokenizer beside it."""
    prompt = {
        "1": {"class_type": "ImagenT5Loader", "inputs": {"t5_name": T5XXL_TINY, "dtype": "default"}},
        "2": {"class_type": "ImagenTextEncode",
              "inputs": {"t5": ["1", 0], "prompt": "a red circle", "negative_prompt": "", "max_length": 77}},
        "3": {"class_type": "ImagenModelLoader", "inputs": {"model_name": DEMO_NAMES["base"], "dtype": "default"}},
        "4": {"class_type": "ImagenBaseSampler",
              "inputs": {"model": ["3", 0], "embeds": ["2", 0], "seed": 1, "steps": 1, "cfg": 4.0,
                         "sampler": "euler_ancestral", "schedule": "karras", "dynamic_threshold": 0.95, "width": 0,
                         "height": 0, "batch_size": 1}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "imagen/t5xxl"}},
    }
    prompt_id, events = server.run(prompt)
    assert events[-1]["type"] == "execution_success", events[-1]["data"].get("exception_message", events[-3:])
    saved = [img for out in server.history(prompt_id)["outputs"].values() for img in out.get("images", [])
             if img["type"] == "output"]
    assert len(saved) == 1 and (server.output / saved[0]["subfolder"] / saved[0]["filename"]).is_file()


def test_bad_input_is_a_node_error_and_the_server_keeps_serving(server):
    prompt = _quick("Imagen cascade to 1024 px")
    base_loader = next(k for k, n in prompt.items() if n["inputs"].get("model_name") == DEMO_NAMES["base"])
    for node in prompt.values():
        if node["class_type"] == "ImagenSuperResolution":
            node["inputs"]["model"] = [base_loader, 0]
    _, events = server.run(prompt)
    assert events[-1]["type"] == "execution_error"
    assert events[-1]["data"]["exception_message"].startswith("Imagen Super-Resolution needs a super-resolution stage")
    _, events = server.run(_quick("Imagen text to image"))
    assert events[-1]["type"] == "execution_success"


def test_a_missing_model_is_refused_naming_its_folder(server):
    """Our loaders' own check runs instead of ComfyUI's "Value not in list", so the refusal says where the file goes
    (and names earlier versions listed still run)."""
    prompt = _quick("Imagen text to image")
    loader = next(n for n in prompt.values() if n["class_type"] == "ImagenModelLoader")
    loader["inputs"]["model_name"] = "IF-I-XL-v1.0/unet/diffusion_pytorch_model.fp16.safetensors"
    status, answer = server.post("/prompt", {"prompt": prompt})
    assert status == 400, answer
    assert "Imagen Model Loader: " in json.dumps(answer) and "models/imagen" in json.dumps(answer), answer
    _, events = server.run(_quick("Imagen text to image"))
    assert events[-1]["type"] == "execution_success"


# ------------------------------------------------------------------------------------------------ node API
def combo_choices(spec: list) -> list:
    """A combo input's entries in /object_info: V1 serves [entries, options], V3 ["COMBO", {"options": entries}]."""
    kind, options = (list(spec) + [{}])[:2]
    return list(options.get("options", ())) if kind == "COMBO" else list(kind)


def _text_to_image(**model_loader_inputs) -> dict:
    """T5 -> text encode -> base sampler (2 steps) -> SaveImage on the tiny models, independent of the workflow
    files; inputs not given here get their declared defaults."""
    from nodes import NODE_CLASS_MAPPINGS

    graph = {"1": ("ImagenT5Loader", {"t5_name": DEMO_NAMES["t5"]}),
             "2": ("ImagenTextEncode", {"t5": ["1", 0], "prompt": "a red circle"}),
             "3": ("ImagenModelLoader", {"model_name": DEMO_NAMES["base"], **model_loader_inputs}),
             "4": ("ImagenBaseSampler", {"model": ["3", 0], "embeds": ["2", 0], "steps": 2}),
             "5": ("SaveImage", {"images": ["4", 0], "filename_prefix": "imagen/node-api"})}
    prompt = {}
    for key, (class_type, given) in graph.items():
        declared = NODE_CLASS_MAPPINGS[class_type].INPUT_TYPES()["required"] if class_type.startswith("Imagen") else {}
        defaults = {name: spec[1].get("default", spec[0][0] if isinstance(spec[0], list) else None)
                    for name, spec in declared.items() if name not in given}
        prompt[key] = {"class_type": class_type, "inputs": {**defaults, **given}}
    return prompt


def test_nodes_are_loaded_with_v3_where_the_server_has_it_else_v1(server):
    """The pack exports comfy_entrypoint where the server has comfy_api.latest and NODE_CLASS_MAPPINGS where it does
    not; either way /object_info lists our ids with the inputs of the V1 declaration, in its order. A V3 combo is
    served as ["COMBO", {"options": ..., "multiselect": false}], a V1 one (our declarations) as [entries, {...}]."""
    from nodes import NODE_CLASS_MAPPINGS
    from tests.test_nodes_v3 import server_has_v3

    info = server.get("/object_info")
    forms = set()
    for node_id, cls in NODE_CLASS_MAPPINGS.items():
        declared = cls.INPUT_TYPES()
        served = {section: names for section, names in info[node_id]["input_order"].items() if section != "hidden"}
        assert served == {section: list(inputs) for section, inputs in declared.items()}, node_id
        for inputs in info[node_id]["input"].values():
            forms |= {"v3" if spec[0] == "COMBO" and "multiselect" in spec[1] else "v1"
                      for spec in inputs.values() if spec[0] == "COMBO" or isinstance(spec[0], list)}
    assert forms == {"v3" if server_has_v3(COMFYUI) else "v1"}
    ours = [line for line in server.log.read_text().splitlines() if "comfyui-imagen" in line]
    assert not [line for line in ours if "comfy_entrypoint" in line or "Skip" in line], ours


def test_model_lists_are_reread_when_the_node_list_is_refreshed(server):
    """A stage file added while the server runs is listed by the next /object_info (the browser's R) and runs."""
    folder = server.log.parent / "models" / "imagen"
    added = folder / "imagen-added-while-running.safetensors"
    shutil.copy(folder / DEMO_NAMES["base"], added)
    try:
        info = server.get("/object_info/ImagenModelLoader")["ImagenModelLoader"]
        assert added.name in combo_choices(info["input"]["required"]["model_name"])
        _, events = server.run(_text_to_image(model_name=added.name))
        assert events[-1]["type"] == "execution_success", events[-1]["data"].get("exception_message")
    finally:
        added.unlink()
    info = server.get("/object_info/ImagenModelLoader")["ImagenModelLoader"]
    assert added.name not in combo_choices(info["input"]["required"]["model_name"])


def test_a_value_not_among_a_combos_choices_is_refused_naming_the_choices(server):
    """Refused before the run (V1; V3 on servers that check V3 combos) or by the node (V3 on 0.3.64, which does
    not): either way with the choices, and the server keeps serving."""
    status, answer = server.post("/prompt", {"prompt": _text_to_image(dtype="fp12")})
    if status == 200:
        deadline = time.time() + 120
        while not (entry := server.get(f"/history/{answer['prompt_id']}").get(answer["prompt_id"])):
            assert time.time() < deadline, "the prompt did not finish"
            time.sleep(0.2)
        assert entry["status"]["status_str"] == "error"
        answer = entry["status"]["messages"]
    else:
        assert status == 400
    assert "fp12" in json.dumps(answer) and "bf16" in json.dumps(answer), answer
    _, events = server.run(_text_to_image())
    assert events[-1]["type"] == "execution_success"


# ------------------------------------------------------------------------------------------------ IF at real size
IF_FILES = os.environ.get("IMAGEN_IF_FILES")  # a folder as benchmarks/real_scale.py writes it (random weights)
IF_FOLDERS = ("IF-I-XL-v1.0", "IF-II-L-v1.0")
IF_PEAK_RSS_LIMIT = 10.5e9  # issue #13: T5-XXL fp8 + IF-I-XL + IF-II-L in the server on a CPU


def _if_links(folder: Path) -> tuple[dict[str, Path], str]:
    """The synthesised files where users put IF's: every file of IF-I-XL-v1.0/ and IF-II-L-v1.0/ under
    models/imagen/ (real folders of links), the T5 under models/text_encoders/ (``t5xxl_fp16.safetensors`` where the
    folder has one, else the fp8-scaled file under its own name); returns (links, the T5's name)."""
    missing = [name for name in IF_FOLDERS if not (folder / name / "unet" / "config.json").is_file()]
    t5 = next((n for n in ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors") if (folder / n).is_file()),
              None)
    if missing or t5 is None:
        pytest.fail(f"IMAGEN_IF_FILES={folder} lacks {missing or 't5xxl_fp16/t5xxl_fp8_e4m3fn_scaled.safetensors'}: "
                    f"write them with benchmarks/real_scale.py --only files --dir {folder}")
    links = {f"imagen/{path.relative_to(folder).as_posix()}": path
             for name in IF_FOLDERS for path in sorted((folder / name).rglob("*")) if path.is_file()}
    links[f"text_encoders/{t5}"] = folder / t5
    return links, t5


def _if_stages_only(prompt: dict, t5_name: str, steps: int = 1) -> dict:
    """The DeepFloyd template without its SD x4 part (the checkpoint loader and every node fed by it), its 256 px
    preview saved instead, ``steps`` steps per stage on a non-preset schedule (as tests/test_workflows.py's quick:
    IF's presets fix the step count) and ``t5_name`` for the T5."""
    drop = {k for k, n in prompt.items() if n["class_type"] == "CheckpointLoaderSimple"}
    while more := {k for k, n in prompt.items() if k not in drop and any(
            isinstance(v, list) and len(v) == 2 and v[0] in drop for v in n["inputs"].values())}:
        drop |= more
    prompt = {k: n for k, n in prompt.items() if k not in drop}
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"].startswith("Imagen") and "steps" in inputs:
            inputs.update(steps=steps, schedule="karras")
        if node["class_type"] == "ImagenT5Loader":
            inputs["t5_name"] = t5_name
        if node["class_type"] == "PreviewImage":
            node.update(class_type="SaveImage", inputs={**inputs, "filename_prefix": "imagen/deepfloyd_256"})
    return prompt


@pytest.mark.skipif(not IF_FILES, reason="set IMAGEN_IF_FILES to a folder of IF-sized files "
                                         "(benchmarks/real_scale.py --only files writes them)")
def test_deepfloyd_workflow_runs_on_if_sized_files_within_the_memory_of_one_stage(tmp_path, capsys):
    """The shipped DeepFloyd template, stage I and II, on IF-sized files in a server of its own.

        IMAGEN_IF_FILES=/work/scratch-realsize COMFYUI_PATH=... COMFYUI_PYTHON=... pytest -s \\
            tests/test_workflows_comfyui_server.py -k if_sized

    ``IMAGEN_IF_FILES`` names a folder as ``benchmarks/real_scale.py`` writes it: random weights in the published
    shapes (IF-I-XL-v1.0/, IF-II-L-v1.0/ diffusers folders, a T5-XXL file), ~16 GB. Links to them lie in the
    server's models folders where users put IF's files, and the loaders' lists must offer the template's names. The
    template runs without its SD x4 upscaler (not installed) to a saved 256 px image, one step per stage, with the
    fp8-scaled T5 in place of ``t5xxl_fp16.safetensors`` where the folder has no fp16 one. The ComfyUI process's
    memory is sampled meanwhile: its peak RSS (the kernel's VmHWM) must stay under IF_PEAK_RSS_LIMIT (T5, stage I
    and stage II take turns), and the figures are printed. Takes a few minutes on a 2-core CPU; needs ~11 GB RAM.
    """
    from PIL import Image

    from comfyui_imagen.memory import process_memory
    from tests.comfy_server import memory_peaks

    links, t5 = _if_links(Path(IF_FILES))
    template = ch.load_json(ch.API_DIR / "DeepFloyd IF to 1024 px.json")
    for folder in ("comfy", "input"):
        (tmp_path / folder).mkdir()
    with start_comfyui(tmp_path / "comfy", tmp_path / "input", port=free_port(8500, 8599), links=links) as srv:
        info = srv.get("/object_info")
        stages = combo_choices(info["ImagenModelLoader"]["input"]["required"]["model_name"])
        t5s = combo_choices(info["ImagenT5Loader"]["input"]["required"]["t5_name"])
        wanted = [n["inputs"]["model_name"] for n in template.values() if n["class_type"] == "ImagenModelLoader"]
        assert set(wanted) <= set(stages), (wanted, stages)
        assert t5 in t5s, (t5, t5s)
        prompt = _if_stages_only(template, t5)
        idle, start = process_memory(srv.pid), time.perf_counter()
        with memory_peaks(srv.pid) as peaks:
            prompt_id, events = srv.run(prompt)
        wall = time.perf_counter() - start
        assert events[-1]["type"] == "execution_success", events[-1]["data"].get("exception_message", events[-3:])
        saved = [img for out in srv.history(prompt_id)["outputs"].values() for img in out.get("images", [])
                 if img["type"] == "output"]
        assert len(saved) == 1
        with Image.open(srv.output / saved[0]["subfolder"] / saved[0]["filename"]) as image:
            assert image.size == (256, 256)
        released = [line.split("Imagen: released ", 1)[1] for line in srv.log.read_text().splitlines()
                    if "Imagen: released " in line]
    figures = (f"DeepFloyd stage I + II in ComfyUI ({t5}, 1 step each): {wall:.0f} s, peak RSS "
               f"{peaks.get('VmHWM', 0) / 1e9:.2f} GB (sampled VmRSS {peaks.get('VmRSS', 0) / 1e9:.2f}), peak RssAnon "
               f"{peaks.get('RssAnon', 0) / 1e9:.2f} GB, peak RssFile {peaks.get('RssFile', 0) / 1e9:.2f} GB "
               f"(the idle server before: RSS {idle.get('VmRSS', 0) / 1e9:.2f}, RssAnon "
               f"{idle.get('RssAnon', 0) / 1e9:.2f}); released in turn: {released}")
    with capsys.disabled():
        print(f"\n{figures}")
    assert peaks.get("VmHWM", 0) <= IF_PEAK_RSS_LIMIT, (
        f"the server held more than {IF_PEAK_RSS_LIMIT / 1e9} GB: {figures}. The T5, stage I and stage II should "
        f"take turns (nodes/loaders.py _make_room releases every model not kept before another loads)")
