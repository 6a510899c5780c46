"""The V3 nodes (`nodes.v3`) generated from the V1 declarations.

Without ComfyUI: the neutral description of every node equals its declaration, the V1 -> V3 option mapping, the
refusals, the combo check, and an entry import that imports nothing. With ``COMFYUI_PATH`` (and ``COMFYUI_PYTHON``,
ComfyUI's interpreter) the pack is loaded by that ComfyUI's python with its real ``comfy_api.latest``
(tests/comfy_v3_probe.py), and every V3 node's /object_info entry is compared with its V1 declaration:

    COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python pytest tests/test_nodes_v3.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nodes import NODE_CLASS_MAPPINGS, v3
from nodes.v3 import COMBO, InputSpec, describe, invalid_choices, output_ids, v3_arguments
from tests import comfy_helpers as ch
from tests import tiny_models as tiny

COMFYUI = os.environ.get("COMFYUI_PATH")
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
# What a V3 input adds to the options of its V1 declaration, written whatever was declared.
V3_DEFAULTS = {"STRING": {"multiline": False}, COMBO: {"multiselect": False}}
# Constructor keywords of ComfyUI 0.33.0's io.Int.Input and of 0.3.64's (which has no raw_link, advanced, extra_dict).
INT_KEYWORDS_033 = {"id", "display_name", "optional", "tooltip", "lazy", "default", "min", "max", "step",
                    "control_after_generate", "display_mode", "socketless", "force_input", "extra_dict", "raw_link",
                    "advanced"}
INT_KEYWORDS_0364 = INT_KEYWORDS_033 - {"extra_dict", "raw_link", "advanced"}


def server_has_v3(comfyui: str | os.PathLike) -> bool:
    """Whether the ComfyUI checkout has the V3 node API the pack uses (comfy_api.latest with ComfyExtension)."""
    entry = Path(comfyui) / "comfy_api" / "latest" / "__init__.py"
    return entry.is_file() and "class ComfyExtension" in entry.read_text()


def as_declared(spec: v3.NodeSpec) -> dict:
    """INPUT_TYPES rebuilt from a neutral description (combos in the V1 list form)."""
    sections: dict = {}
    for item in spec.inputs:
        kind = list(item.choices) if item.kind == COMBO else item.kind
        sections.setdefault("optional" if item.optional else "required", {})[item.name] = (kind, dict(item.options))
    return sections


def v1_combo_as_list(item: tuple) -> tuple:
    """(name, V1 spec) with the spec as (type or entries, options), a ("COMBO", {"options": ...}) as entries."""
    name, (kind, *rest) = item
    options = dict(rest[0]) if rest else {}
    return name, ((list(options.pop("options", ())) if kind == COMBO else kind), options)


def normalized(value):
    return json.loads(json.dumps(value))


# ------------------------------------------------------------------------------------------------ without ComfyUI
@pytest.mark.parametrize("node_id", sorted(NODE_CLASS_MAPPINGS))
def test_description_equals_the_v1_declaration(model_folders, node_id):
    cls = NODE_CLASS_MAPPINGS[node_id]
    spec = describe(cls, node_id)
    declared = {section: dict(map(v1_combo_as_list, inputs.items())) for section, inputs in cls.INPUT_TYPES().items()}
    assert normalized(as_declared(spec)) == normalized(declared)
    assert [i.name for i in spec.inputs] == [*cls.INPUT_TYPES()["required"], *cls.INPUT_TYPES().get("optional", {})]
    assert (spec.node_id, spec.display_name, spec.category, spec.description) == (
        node_id, cls.DISPLAY_NAME, cls.CATEGORY, cls.DESCRIPTION)
    assert [(o.kind, o.name, o.tooltip, o.is_list) for o in spec.outputs] == [
        (kind, name, tip, False) for kind, name, tip in zip(cls.RETURN_TYPES, cls.RETURN_NAMES, cls.OUTPUT_TOOLTIPS)]
    assert len(set(output_ids(spec)) | {i.name for i in spec.inputs}) == len(spec.outputs) + len(spec.inputs)


def test_combo_spellings_and_one_element_specs():
    class Node:
        RETURN_TYPES = ("IMAGE",)

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"a": (["x", "y"], {"default": "y"}),
                                 "b": ("COMBO", {"options": ["p"], "tooltip": "t"}), "c": ("IMAGE",)}}

    a, b, c = describe(Node).inputs
    assert (a.kind, a.choices, dict(a.options)) == (COMBO, ("x", "y"), {"default": "y"})
    assert (b.kind, b.choices, dict(b.options)) == (COMBO, ("p",), {"tooltip": "t"})
    assert (c.kind, c.choices, dict(c.options)) == ("IMAGE", (), {})
    assert [o.name for o in describe(Node).outputs] == ["IMAGE"]  # V1: no RETURN_NAMES -> the type names


def test_v1_options_become_v3_keywords_or_extra_entries():
    spec = InputSpec("seed", "INT", options={"default": 0, "min": 0, "max": 9, "step": 1, "tooltip": "t",
                                             "control_after_generate": True, "display": "slider", "rawLink": True,
                                             "advanced": True, "forceInput": True, "unknown_option": [1]})
    keywords, extra = v3_arguments(spec, INT_KEYWORDS_033)
    assert keywords == {"default": 0, "min": 0, "max": 9, "step": 1, "tooltip": "t", "control_after_generate": True,
                        "display_mode": "slider", "raw_link": True, "advanced": True, "force_input": True}
    assert extra == {"unknown_option": [1]}
    keywords, extra = v3_arguments(spec, INT_KEYWORDS_0364)  # older constructor: the rest passes through
    assert extra == {"rawLink": True, "advanced": True, "unknown_option": [1]}
    assert "raw_link" not in keywords and keywords["display_mode"] == "slider"
    keywords, extra = v3_arguments(InputSpec("s", "STRING", options={"multiline": True, "dynamicPrompts": True}),
                                   {"multiline", "dynamic_prompts"})
    assert (keywords, extra) == ({"multiline": True, "dynamic_prompts": True}, {})
    keywords, extra = v3_arguments(InputSpec("c", COMBO, options={"default": "b", "image_upload": True},
                                             choices=("a", "b")), {"default", "options"})
    assert (keywords, extra) == ({"default": "b", "options": ["a", "b"]}, {"image_upload": True})
    keywords, extra = v3_arguments(InputSpec("m", "IMAGEN_MODEL", options={"tooltip": "t", "default": 1}),
                                   {"tooltip", "default"})
    assert (keywords, extra) == ({"tooltip": "t"}, {"default": 1})  # a socket has no widget keywords


def test_what_cannot_be_carried_is_refused_by_name():
    class Hidden:
        RETURN_TYPES = ()

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}, "hidden": {"unique_id": "UNIQUE_ID"}}

    class Lazy(Hidden):
        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {}}

        def check_lazy_status(self, **inputs):
            return []

    with pytest.raises(ValueError, match=r"sections \['hidden'\].*nodes/v3.py"):
        describe(Hidden)
    with pytest.raises(ValueError, match="check_lazy_status.*nodes/v3.py"):
        describe(Lazy)


def test_combo_values_are_checked_except_those_the_node_validates(model_folders):
    spec = describe(NODE_CLASS_MAPPINGS["ImagenModelLoader"], "ImagenModelLoader")
    assert spec.validated == {"model_name"}  # its VALIDATE_INPUTS names the file and its folder
    assert invalid_choices(spec, {"model_name": "not-listed.safetensors", "dtype": "default"}) == []
    [problem] = invalid_choices(spec, {"model_name": tiny.DEMO_NAMES["base"], "dtype": "fp12"})
    assert "dtype = 'fp12'" in problem and "'bf16'" in problem and "Imagen Model Loader" in problem


def test_outputs_named_like_an_input_get_another_id(model_folders):
    spec = describe(NODE_CLASS_MAPPINGS["ImagenSuperResolution"], "ImagenSuperResolution")
    assert [o.name for o in spec.outputs] == ["image"] and output_ids(spec) == ["image_output0"]
    assert output_ids(describe(NODE_CLASS_MAPPINGS["ImagenModelLoader"])) == ["model", "info", "resolution"]


def test_the_entry_outside_comfyui_exports_empty_v1_mappings_and_imports_nothing():
    code = ("import importlib.util, json, sys\n"
            f"spec = importlib.util.spec_from_file_location('pack', {str(ch.ROOT / '__init__.py')!r}, "
            f"submodule_search_locations=[{str(ch.ROOT)!r}])\n"
            "pack = importlib.util.module_from_spec(spec); spec.loader.exec_module(pack)\n"
            "print(json.dumps({'mappings': pack.NODE_CLASS_MAPPINGS, 'entry': hasattr(pack, 'comfy_entrypoint'),\n"
            "    'loaded': sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'pack', 'nodes', "
            "'comfyui_imagen', 'comfy_api'))}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"mappings": {}, "entry": False, "loaded": []}


# ------------------------------------------------------------------------------------------------ real comfy_api
@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """What tests/comfy_v3_probe.py reports with the ComfyUI at COMFYUI_PATH (its python, its comfy_api.latest)."""
    if not COMFYUI:
        pytest.skip("set COMFYUI_PATH (and COMFYUI_PYTHON) to a ComfyUI checkout to check the real V3 API")
    models = tmp_path_factory.mktemp("v3models")
    (models / "imagen").mkdir()
    (models / "text_encoders").mkdir()
    tiny.write_tiny_stage(models / "imagen" / tiny.DEMO_NAMES["base"], "base")
    tiny.write_tiny_t5(models / "text_encoders" / tiny.DEMO_NAMES["t5"])
    result = subprocess.run([PYTHON, str(ch.ROOT / "tests" / "comfy_v3_probe.py"), COMFYUI, str(models)],
                            capture_output=True, text=True, timeout=600, cwd=COMFYUI)
    lines = [line for line in result.stdout.splitlines() if line.startswith("PROBE-JSON ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("PROBE-JSON "))


@pytest.fixture(scope="module")
def v3_probe(probe):
    if not server_has_v3(COMFYUI):
        pytest.skip(f"{COMFYUI} has no V3 node API (comfy_api.latest with ComfyExtension)")
    return probe


def test_the_entry_exports_v3_where_the_server_has_it_and_v1_where_not(probe):
    if server_has_v3(COMFYUI):
        assert probe["exports"] == ["comfy_entrypoint"]
        assert sorted(probe["v3"]) == sorted([*NODE_CLASS_MAPPINGS, "ProbeEveryOption"])
    else:
        assert probe["exports"] == ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"] and probe["v3"] == {}
    assert sorted(probe["v1"]) == sorted([*NODE_CLASS_MAPPINGS, *(["ProbeEveryOption"] if probe["v3"] else [])])


def v3_differences(v1: dict, info: dict) -> list[str]:
    """How a V3 node's /object_info entry differs from its V1 declaration (both as JSON), beyond the V3 form of
    combos (["COMBO", {"options": entries}]) and the option defaults V3 writes (V3_DEFAULTS)."""
    problems = [f"{key}: {info[key]!r} != {v1[key]!r}" for key in ("display_name", "category", "description",
                                                                  "output", "output_name", "output_tooltips")
                if info[key] != v1[key]]
    order = {section: list(v1["input"][section]) for section in ("required", "optional") if v1["input"].get(section)}
    served = {section: names for section, names in info["input_order"].items() if names and section != "hidden"}
    if served != order:
        problems.append(f"input order {served} != {order}")
    if "hidden" in info["input"] and not info["output_node"]:
        problems.append(f"hidden inputs {info['input']['hidden']} on a node that is no output node")
    for section, names in order.items():
        for name in names:
            kind, options = (v1["input"][section][name] + [{}])[:2]
            if isinstance(kind, list):
                kind, options = COMBO, {**options, "options": kind}
            served_kind, served_options = info["input"].get(section, {}).get(name, [None, {}])
            if served_kind != kind:
                problems.append(f"{name}: type {served_kind!r} != {kind!r}")
            problems += [f"{name}: {key} = {served_options.get(key, '<absent>')!r} != {value!r}"
                         for key, value in options.items() if served_options.get(key, "<absent>") != value]
            added = {key: value for key, value in served_options.items() if key not in options}
            if any(V3_DEFAULTS.get(kind, {}).get(key, "<none>") != value for key, value in added.items()):
                problems.append(f"{name}: options {added} added")
    return problems


def test_every_v3_node_serves_its_v1_declaration(v3_probe):
    for node_id, v1 in v3_probe["v1"].items():
        assert v3_differences(v1, v3_probe["v3"][node_id]["info"]) == [], node_id
        assert v3_probe["v3"][node_id]["class_name"] == node_id and v3_probe["v3"][node_id]["is_v3"]


def test_v3_inputs_and_outputs_use_the_servers_typed_classes(v3_probe):
    typed = {"INT": "Int", "FLOAT": "Float", "STRING": "String", "BOOLEAN": "Boolean", "IMAGE": "Image",
             "MASK": "Mask", "SAMPLER": "Sampler", "SIGMAS": "Sigmas", "CLIP": "Clip"}
    for node_id, v1 in v3_probe["v1"].items():
        node = v3_probe["v3"][node_id]
        for section in v1["input"].values():
            for name, (kind, *_) in section.items():
                expected = "Combo" if isinstance(kind, list) or kind == COMBO else typed.get(kind, "CustomComfyType")
                assert node["input_types"][name] == expected, (node_id, name)
        assert node["output_types"] == [typed.get(kind, "CustomComfyType") for kind in v1["output"]], node_id


def test_v3_rereads_computed_combos_at_schema_time(v3_probe):
    from tests.comfy_v3_probe import REFRESH_NAME

    assert REFRESH_NAME not in v3_probe["refreshed"]["before"]
    assert REFRESH_NAME in v3_probe["refreshed"]["after"]


def test_v3_execute_runs_the_v1_function_and_refuses_values_not_among_the_choices(v3_probe):
    assert v3_probe["executed"] == {"outputs": ["ImagenModel", "str", "int"], "resolution": 64}
    assert "dtype = 'no-such-dtype' is not one of its choices" in v3_probe["bad_combo"]


def test_v3_forwards_validate_inputs_and_is_changed_with_their_signatures(v3_probe):
    forwarded = v3_probe["forwarded"]
    assert forwarded["validate_args"] == ["cls", "pick", "count"]  # ComfyUI passes (and skips checks of) these
    assert forwarded["validate"] == [True, "pick b, count 2"] and forwarded["fingerprint"] == ["count", "pick"]
    assert forwarded["loader_validate_args"] == ["cls", "model_name"]
    assert "'no-such.safetensors' was not found" in forwarded["loader_validate_missing"]
