"""Loads the pack as ComfyUI does, with a real ComfyUI's ``comfy_api.latest``, and prints what it built as JSON.

Run by tests/test_nodes_v3.py with ComfyUI's own python (the test environment cannot import ComfyUI's modules):

    COMFYUI_PYTHON tests/comfy_v3_probe.py COMFYUI_PATH MODELS_DIR

MODELS_DIR holds ``imagen/`` and ``text_encoders/`` (registered with ComfyUI's folder_paths). Prints one JSON object:
what the pack's entry exports; for every node the V1 declaration (INPUT_TYPES and the @node attributes) and, where
the entry is V3, the V3 node's ``GET_NODE_INFO_V1()`` (what ``/object_info`` serves) and schema fields; the model
list before and after a file is added (re-read at schema time?); a V3 execute of the model loader, with a valid and
an invalid combo value. No pytest here: ComfyUI's python need not have it.
"""
from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REFRESH_NAME = "imagen-probe-added.safetensors"


def load_pack():
    """The pack imported the way ComfyUI's load_custom_node imports a custom-node folder: by path."""
    spec = importlib.util.spec_from_file_location("custom_nodes_imagen_probe", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def v1_declaration(cls) -> dict:
    return {"input": cls.INPUT_TYPES(), "display_name": cls.DISPLAY_NAME, "category": cls.CATEGORY,
            "description": cls.DESCRIPTION, "output": list(cls.RETURN_TYPES), "output_name": list(cls.RETURN_NAMES),
            "output_tooltips": list(cls.OUTPUT_TOOLTIPS)}


class ProbeEveryOption:
    """A V1 node using every option the generator maps (and some it passes through), for the real V3 API to build."""
    DISPLAY_NAME, CATEGORY, DESCRIPTION, FUNCTION = "Probe", "imagen/probe", "Every option.", "run"
    RETURN_TYPES, RETURN_NAMES, OUTPUT_TOOLTIPS = ("IMAGE", "MASK", "IMAGEN_MODEL"), ("a", "b", "c"), ("x", None, "z")
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "flag": ("BOOLEAN", {"default": True, "label_on": "yes", "label_off": "no", "tooltip": "t"}),
            "ratio": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05, "round": 0.01,
                                "display": "slider"}),
            "count": ("INT", {"default": 3, "min": -1, "max": 9, "step": 2, "display": "number",
                              "forceInput": True, "lazy": True}),
            "note": ("STRING", {"default": "hi", "placeholder": "type", "multiline": False}),
            "pick": (["a", "b"], {"default": "b", "image_upload": True, "tooltip": "p"}),
            "pick2": ("COMBO", {"options": ["x", "y"], "default": "x"}),
            "socket": ("IMAGEN_TEXT_EMBEDS",),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "i", "rawLink": True}),
            "mask": ("MASK", {}),
            "sentinel": ("INT", {"default": -1, "min": -1, "max": 4, "advanced": True, "custom_key": [1, 2]}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, pick, count):
        return True if pick == "a" else f"pick {pick}, count {count}"

    @classmethod
    def IS_CHANGED(cls, **inputs):
        return sorted(inputs)

    def run(self, **inputs):
        return (None, None, None)


def main(comfyui: str, models: str) -> dict:
    sys.path.insert(0, comfyui)
    from comfy.cli_args import args

    args.cpu = True  # as main.py --cpu; read when comfy.model_management is first imported
    import folder_paths

    folder_paths.add_model_folder_path("imagen", str(Path(models) / "imagen"))
    folder_paths.add_model_folder_path("text_encoders", str(Path(models) / "text_encoders"))
    pack = load_pack()
    mappings = sys.modules["custom_nodes_imagen_probe.nodes"].NODE_CLASS_MAPPINGS
    report = {"exports": sorted(name for name in ("comfy_entrypoint", "NODE_CLASS_MAPPINGS",
                                                  "NODE_DISPLAY_NAME_MAPPINGS") if hasattr(pack, name)),
              "v1": {node_id: v1_declaration(cls) for node_id, cls in mappings.items()}, "v3": {}}
    if not hasattr(pack, "comfy_entrypoint"):
        return report
    from comfy_api.latest import io

    v3 = sys.modules["custom_nodes_imagen_probe.nodes.v3"]
    extension = pack.comfy_entrypoint()
    nodes = {}
    report["v1"]["ProbeEveryOption"] = v1_declaration(ProbeEveryOption)
    for cls in [*asyncio.run(extension.get_node_list()), v3.v3_node(io, ProbeEveryOption)]:
        schema = cls.GET_SCHEMA()
        nodes[schema.node_id] = cls
        report["v3"][schema.node_id] = {
            "info": cls.GET_NODE_INFO_V1(), "class_name": cls.__name__, "is_v3": issubclass(cls, io.ComfyNode),
            "input_types": {i.id: type(i).Parent.__name__ for i in schema.inputs},
            "output_types": [type(o).Parent.__name__ for o in schema.outputs]}
    probe = nodes["ProbeEveryOption"]
    report["forwarded"] = {
        "validate_args": inspect.getfullargspec(probe.validate_inputs).args,
        "validate": [probe.validate_inputs(pick="a", count=1), probe.validate_inputs(pick="b", count=2)],
        "fingerprint": probe.fingerprint_inputs(count=1, pick="a"),
        "loader_validate_args": inspect.getfullargspec(nodes["ImagenModelLoader"].validate_inputs).args,
        "loader_validate_missing": nodes["ImagenModelLoader"].validate_inputs(model_name="no-such.safetensors")}
    loader = nodes["ImagenModelLoader"]
    listed = loader.GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]["options"]
    shutil.copy(Path(models) / "imagen" / listed[0], Path(models) / "imagen" / REFRESH_NAME)
    report["refreshed"] = {"before": listed,
                           "after": loader.GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]["options"]}
    output = loader.EXECUTE_NORMALIZED(model_name=REFRESH_NAME, dtype="default")
    report["executed"] = {"outputs": [type(value).__name__ for value in output.args], "resolution": output.args[2]}
    try:
        loader.EXECUTE_NORMALIZED(model_name=REFRESH_NAME, dtype="no-such-dtype")
        report["bad_combo"] = None
    except ValueError as error:
        report["bad_combo"] = str(error)
    return report


if __name__ == "__main__":
    result = main(sys.argv[1], sys.argv[2])
    print("PROBE-JSON " + json.dumps(result, default=str))
