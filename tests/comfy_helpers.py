"""Test-only ComfyUI stand-ins: core node specs, a UI -> API workflow converter, a checker and a runner.

No ComfyUI is needed. The core nodes our workflows use are described here as ComfyUI defines them (input names,
types and order from ComfyUI's nodes.py and comfy_extras/, read at upstream commit 3cd7b32, January 2026) and get
minimal stand-in implementations, so that every workflow in ``workflows/`` can be checked (types, links, widget
order) and executed through our node classes on tiny models.

    python -m tests.comfy_helpers write-api    # regenerate workflows/api/*.json from the UI files
    python -m tests.comfy_helpers thumbnails   # workflows/*.jpg: demo renders (bundled demo needed), else diagrams
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from comfyui_imagen.text import T5Encoder as _T5Encoder
from tests.tiny_models import TINY_T5

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
API_DIR = WORKFLOWS / "api"

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "BOUNDING_BOX"}
VIRTUAL_NODES = {"Note", "MarkdownNote"}  # frontend-only: a text widget, never sent to the server
FILE_INPUTS = {"t5_name", "model_name", "ckpt_name", "clip_name1", "clip_name2"}  # combos listing files
SEED_CONTROLS = ("fixed", "increment", "decrement", "randomize")
KSAMPLER_SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpmpp_2s_ancestral",
                     "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde", "ddpm", "lcm", "ddim", "uni_pc"]
KSAMPLER_SCHEDULERS = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                       "linear_quadratic", "kl_optimal"]
MAX_RES = 16384


# ------------------------------------------------------------------------------------------------ core stand-ins
class _Core:
    """Base of the stand-ins: INPUT_TYPES / RETURN_TYPES / FUNCTION, as ComfyUI reads a node class."""

    SPEC: dict = {}
    RETURN_TYPES: tuple = ()
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": dict(cls.SPEC)}


class SaveImage(_Core):
    SPEC = {"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}
    OUTPUT_NODE = True
    saved: list = []

    def run(self, images, filename_prefix="ComfyUI"):
        SaveImage.saved.append((filename_prefix, images))
        return {"ui": {"images": [filename_prefix]}}


class PreviewImage(SaveImage):
    SPEC = {"images": ("IMAGE",)}

    def run(self, images):
        return super().run(images, "preview")


class ImageCrop(_Core):
    SPEC = {"image": ("IMAGE",), "width": ("INT", {"default": 512, "min": 1, "max": MAX_RES}),
            "height": ("INT", {"default": 512, "min": 1, "max": MAX_RES}),
            "x": ("INT", {"default": 0, "min": 0, "max": MAX_RES}),
            "y": ("INT", {"default": 0, "min": 0, "max": MAX_RES})}
    RETURN_TYPES = ("IMAGE",)

    def run(self, image, width, height, x, y):
        x, y = min(x, image.shape[2] - 1), min(y, image.shape[1] - 1)
        return (image[:, y:y + height, x:x + width, :],)


class ImageCropV2(_Core):
    """0.33's "Crop Image" (ImageCrop is deprecated there): a BOUNDING_BOX widget, {x, y, width, height}."""
    SPEC = {"image": ("IMAGE",), "crop_region": ("BOUNDING_BOX", {"component": "ImageCrop",
                                                                  "default": {"x": 0, "y": 0, "width": 512,
                                                                              "height": 512}})}
    RETURN_TYPES = ("IMAGE",)

    def run(self, image, crop_region):
        return ImageCrop().run(image, crop_region["width"], crop_region["height"], crop_region["x"], crop_region["y"])


class SolidMask(_Core):
    SPEC = {"value": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}),
            "width": ("INT", {"default": 512, "min": 1, "max": MAX_RES}),
            "height": ("INT", {"default": 512, "min": 1, "max": MAX_RES})}
    RETURN_TYPES = ("MASK",)

    def run(self, value, width, height):
        return (torch.full((1, height, width), value),)


class MaskComposite(_Core):
    SPEC = {"destination": ("MASK",), "source": ("MASK",), "x": ("INT", {"default": 0, "min": 0, "max": MAX_RES}),
            "y": ("INT", {"default": 0, "min": 0, "max": MAX_RES}),
            "operation": (["multiply", "add", "subtract", "and", "or", "xor"],)}
    RETURN_TYPES = ("MASK",)

    def run(self, destination, source, x, y, operation):
        if operation != "add":
            raise NotImplementedError(f"the stand-in MaskComposite does {operation!r}: only add")
        out = destination.clone()
        h, w = out.shape[-2:]
        part = source[..., :h - y, :w - x]
        out[..., y:y + part.shape[-2], x:x + part.shape[-1]] += part
        return (out.clamp(0, 1),)


class MaskToImage(_Core):
    SPEC = {"mask": ("MASK",)}
    RETURN_TYPES = ("IMAGE",)

    def run(self, mask):
        return (mask.reshape(-1, 1, *mask.shape[-2:]).movedim(1, -1).expand(-1, -1, -1, 3),)


class CheckpointLoaderSimple(_Core):
    SPEC = {"ckpt_name": ("COMBO", {})}
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    def run(self, ckpt_name):
        return "model:" + ckpt_name, "clip", {"scale": 4 if "x4" in ckpt_name else 8}


class CLIPTextEncode(_Core):
    SPEC = {"text": ("STRING", {"multiline": True}), "clip": ("CLIP",)}
    RETURN_TYPES = ("CONDITIONING",)

    def run(self, text, clip):
        return ([[text, {}]],)


class SD_4XUpscale_Conditioning(_Core):
    SPEC = {"images": ("IMAGE",), "positive": ("CONDITIONING",), "negative": ("CONDITIONING",),
            "scale_ratio": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 10.0}),
            "noise_augmentation": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0})}
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING", "LATENT")

    def run(self, images, positive, negative, scale_ratio, noise_augmentation):
        h, w = round(images.shape[1] * scale_ratio), round(images.shape[2] * scale_ratio)
        return positive, negative, {"samples": torch.zeros(images.shape[0], 4, h // 4, w // 4)}


class KSampler(_Core):
    SPEC = {"model": ("MODEL",),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0}),
            "sampler_name": (KSAMPLER_SAMPLERS,), "scheduler": (KSAMPLER_SCHEDULERS,),
            "positive": ("CONDITIONING",), "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
            "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0})}
    RETURN_TYPES = ("LATENT",)

    def run(self, model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, denoise):
        return (latent_image,)


class VAEDecode(_Core):
    SPEC = {"samples": ("LATENT",), "vae": ("VAE",)}
    RETURN_TYPES = ("IMAGE",)

    def run(self, samples, vae):
        z = samples["samples"]
        s = vae["scale"]
        return (torch.full((z.shape[0], z.shape[2] * s, z.shape[3] * s, 3), 0.5),)


class KSamplerSelect(_Core):
    """A core SAMPLER: stands in for comfy.samplers.KSAMPLER (``sampler_function``, ``extra_options``); dpmpp_2m is
    k-diffusion's own (tests/test_external.py), the others are not stood in for."""
    SPEC = {"sampler_name": (KSAMPLER_SAMPLERS,)}
    RETURN_TYPES = ("SAMPLER",)

    def run(self, sampler_name):
        from types import SimpleNamespace

        from tests.test_external import kd_sample_dpmpp_2m

        if sampler_name != "dpmpp_2m":
            raise NotImplementedError(f"the stand-in KSamplerSelect has dpmpp_2m only, not {sampler_name!r}")
        return (SimpleNamespace(sampler_function=kd_sample_dpmpp_2m, extra_options={}),)


class SplitSigmas(_Core):
    SPEC = {"sigmas": ("SIGMAS",), "step": ("INT", {"default": 0, "min": 0, "max": 10000})}
    RETURN_TYPES = ("SIGMAS", "SIGMAS")
    RETURN_NAMES = ("high_sigmas", "low_sigmas")

    def run(self, sigmas, step):
        return sigmas[:step + 1], sigmas[step:]


class ComfyT5(_T5Encoder):
    """Stands in for comfy.text_encoders.t5.T5: the same key names, its call signature and its tuple result."""

    def forward(self, input_ids, attention_mask, embeds=None, num_tokens=None, **kwargs):
        self.calls = getattr(self, "calls", 0) + 1
        return super().forward(input_ids, attention_mask), None


class ClipModel(torch.nn.Module):
    """Stands in for an SDClipModel: the encoder is its ``transformer``."""

    def __init__(self, transformer: torch.nn.Module):
        super().__init__()
        self.transformer = transformer


class FakeCLIP:
    """Stands in for comfy.sd.CLIP: ``cond_stage_model``, ``patcher`` (load device, patches' uuid), ``load_model``."""

    def __init__(self, **children):
        import uuid
        from types import SimpleNamespace

        self.cond_stage_model = torch.nn.Module()
        for name, child in children.items():
            setattr(self.cond_stage_model, name, child)
        self.patcher = SimpleNamespace(load_device=torch.device("cpu"), patches_uuid=uuid.uuid4())
        self.loads = 0

    def load_model(self, tokens=None):
        self.loads += 1
        return self.patcher


def comfy_t5(config, state: dict) -> ComfyT5:
    t5 = ComfyT5(config, device="meta")
    t5.load_state_dict(state, assign=True)
    return t5


def flux_clip(config, state: dict) -> FakeCLIP:
    """clip_l + t5xxl, as DualCLIPLoader (type flux) builds it, the T5 on the given weights."""
    return FakeCLIP(clip_l=ClipModel(torch.nn.Linear(4, 4)), t5xxl=ClipModel(comfy_t5(config, state)))


class DualCLIPLoader(_Core):
    """A Flux-style CLIP whose T5 is the tiny T5 of `write_tiny_t5` with T5 v1.1's vocabulary (the file names are
    not read: a test has no t5xxl)."""
    SPEC = {"clip_name1": ("COMBO", {}), "clip_name2": ("COMBO", {}),
            "type": (["sdxl", "sd3", "flux", "hunyuan_video", "hidream"],), "device": (["default", "cpu"],)}
    RETURN_TYPES = ("CLIP",)

    def run(self, clip_name1, clip_name2, type, device="default"):
        from comfyui_imagen.text.config import infer_config
        from comfyui_imagen.train.demo_t5 import build_demo_t5

        state = {k: v.detach().clone() for k, v in build_demo_t5(vocab_size=32128, seed=0, **TINY_T5)
                 .state_dict().items() if k != "encoder.embed_tokens.weight"}  # (tied to shared.weight)
        return (flux_clip(infer_config({k: v.shape for k, v in state.items()}), state),)


CORE_NODES = {cls.__name__: cls for cls in (
    SaveImage, PreviewImage, ImageCrop, ImageCropV2, SolidMask, MaskComposite, MaskToImage, KSamplerSelect,
    SplitSigmas,
    CheckpointLoaderSimple, CLIPTextEncode, SD_4XUpscale_Conditioning, KSampler, VAEDecode, DualCLIPLoader)}


def all_node_classes() -> dict:
    """Our node classes plus the core stand-ins, by node id."""
    from nodes import NODE_CLASS_MAPPINGS

    return {**CORE_NODES, **NODE_CLASS_MAPPINGS}


# ------------------------------------------------------------------------------------------------ input specs
def input_specs(cls) -> list[tuple[str, str, dict, bool]]:
    """(name, type, options, required) for every input of a node class, in ComfyUI's widget order."""
    types = cls.INPUT_TYPES()
    out = []
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            out.append((name, "COMBO" if isinstance(kind, (list, tuple)) else kind, opts, section == "required"))
    return out


def combo_options(cls, name: str):
    for section in ("required", "optional"):
        spec = cls.INPUT_TYPES().get(section, {}).get(name)
        if spec is not None:
            return list(spec[0]) if isinstance(spec[0], (list, tuple)) else spec[1].get("options")
    return None


def widget_slots(cls) -> list[tuple[str, str, dict]]:
    """The entries of a UI node's ``widgets_values``: (input name or '<name>:control', type, options)."""
    slots = []
    for name, kind, opts, _ in input_specs(cls):
        if kind not in WIDGET_TYPES:
            continue
        slots.append((name, kind, opts))
        if opts.get("control_after_generate"):
            slots.append((name + ":control", "CONTROL", {}))
        if opts.get("image_upload"):
            slots.append((name + ":upload", "UPLOAD", {}))
    return slots


# ------------------------------------------------------------------------------------------------ UI format
def check_ui_workflow(ui: dict, classes: dict) -> list[str]:
    """Everything wrong with a UI-format workflow, as messages (empty when it is sound)."""
    nodes = {n["id"]: n for n in ui["nodes"]}
    errors = [e for node in ui["nodes"] for e in _check_node(node, classes.get(node["type"]))
              if node["type"] not in VIRTUAL_NODES]
    errors += [f"note {n['id']}: widgets_values must be one text" for n in ui["nodes"] if n["type"] in VIRTUAL_NODES
               and (len(n.get("widgets_values", [])) != 1 or not isinstance(n["widgets_values"][0], str))]
    errors += [e for link in ui["links"] for e in _check_link(link, nodes, classes)]
    if any(n > ui["last_node_id"] for n in nodes) or any(link[0] > ui["last_link_id"] for link in ui["links"]):
        errors.append("last_node_id / last_link_id are smaller than the ids used")
    return errors


def _check_node(node: dict, cls) -> list[str]:
    where = f"node {node['id']} ({node['type']})"
    if cls is None:
        return [f"{where}: unknown node type"]
    errors = []
    slots, values = widget_slots(cls), node.get("widgets_values", [])
    optional = {name for name, _, _, required in input_specs(cls) if not required}
    # a workflow saved before an optional widget was added (they go last) has no value for it: the frontend gives
    # it its default
    later = [name.split(":")[0] for name, _, _ in slots[len(values):]]
    if len(values) > len(slots) or not set(later) <= optional:
        errors.append(f"{where}: {len(values)} widget values for {len(slots)} widgets {[s[0] for s in slots]}")
    for (name, kind, opts), value in zip(slots, values):
        errors += [f"{where}: widget {name}: {e}" for e in _check_widget(cls, name, kind, opts, value)]
    specs = {name: (kind, required) for name, kind, _, required in input_specs(cls)}
    linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
    errors += [f"{where}: required input {name!r} is not connected" for name, (kind, required) in specs.items()
               if kind not in WIDGET_TYPES and required and name not in linked]
    for slot in node.get("inputs", []):
        if slot["name"] not in specs:
            errors.append(f"{where}: input {slot['name']!r} does not exist")
        elif slot.get("link") is not None and slot["type"] != specs[slot["name"]][0]:
            errors.append(f"{where}: input {slot['name']!r} is typed {slot['type']}, the node says "
                          f"{specs[slot['name']][0]}")
    for index, slot in enumerate(node.get("outputs", [])):
        if index >= len(cls.RETURN_TYPES) or slot["type"] != cls.RETURN_TYPES[index]:
            errors.append(f"{where}: output {index} ({slot['type']}) does not match {cls.RETURN_TYPES}")
    return errors


def _check_link(link: list, nodes: dict, classes: dict) -> list[str]:
    link_id, src, src_slot, dst, dst_slot, kind = link
    if src not in nodes or dst not in nodes or nodes[src]["type"] not in classes:
        return [f"link {link_id}: missing or unknown node"]
    errors = []
    out_types = classes[nodes[src]["type"]].RETURN_TYPES
    if src_slot >= len(out_types) or out_types[src_slot] != kind:
        errors.append(f"link {link_id}: source {nodes[src]['type']}[{src_slot}] does not output {kind}")
    outputs = nodes[src].get("outputs", [])
    if src_slot >= len(outputs) or link_id not in (outputs[src_slot].get("links") or []):
        errors.append(f"link {link_id}: not listed on the source output")
    dst_inputs = nodes[dst].get("inputs", [])
    if dst_slot >= len(dst_inputs) or dst_inputs[dst_slot].get("link") != link_id:
        errors.append(f"link {link_id}: target {nodes[dst]['type']} slot {dst_slot} does not name this link")
    elif dst_inputs[dst_slot]["type"] != kind:
        errors.append(f"link {link_id}: {kind} into {dst_inputs[dst_slot]['type']}")
    return errors


def _check_widget(cls, name, kind, opts, value) -> list[str]:
    if kind == "CONTROL":
        return [] if value in SEED_CONTROLS else [f"{value!r} is not one of {SEED_CONTROLS}"]
    if kind == "UPLOAD":
        return [] if value == "image" else [f"upload widget value {value!r} should be 'image'"]
    if kind in ("INT", "FLOAT"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "INT" and value != int(value)):
            return [f"{value!r} is not an {kind}"]
        lo, hi = opts.get("min", -float("inf")), opts.get("max", float("inf"))
        return [] if lo <= value <= hi else [f"{value} outside [{lo}, {hi}]"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{value!r} is not a string"]
    if kind == "BOUNDING_BOX":
        keys = {"x", "y", "width", "height"}
        return [] if isinstance(value, dict) and set(value) == keys else [f"{value!r} is not {{x, y, width, height}}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{value!r} is not a boolean"]
    if name in FILE_INPUTS or cls.__name__ in CORE_NODES:
        return []  # file lists depend on the machine; core lists on the ComfyUI version
    options = combo_options(cls, name)
    return [] if value in options else [f"{value!r} is not one of {options}"]


def ui_to_api(ui: dict, classes: dict) -> dict:
    """A UI-format workflow as the API ("prompt") format that ``POST /prompt`` takes, as the frontend makes it."""
    prompt = {}
    links = {link[0]: link for link in ui["links"]}
    for node in sorted(ui["nodes"], key=lambda n: n["id"]):
        if node.get("mode", 0) != 0 or node["type"] in VIRTUAL_NODES:
            continue
        cls = classes[node["type"]]
        inputs = {}
        values = iter(node.get("widgets_values", []))
        for name, kind, opts in widget_slots(cls):
            value = next(values, opts.get("default"))  # an optional widget added after the workflow was saved
            if kind not in ("CONTROL", "UPLOAD"):
                inputs[name] = value
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                _, src, src_slot, _, _, _ = links[slot["link"]]
                inputs[slot["name"]] = [str(src), src_slot]
        ordered = {name: inputs[name] for name, *_ in input_specs(cls) if name in inputs}
        title = node.get("title") or getattr(cls, "DISPLAY_NAME", None) or node["type"]
        prompt[str(node["id"])] = {"inputs": ordered, "class_type": node["type"], "_meta": {"title": title}}
    return prompt


# ------------------------------------------------------------------------------------------------ running
def run_api_workflow(prompt: dict, classes: dict) -> dict:
    """Execute an API-format workflow in dependency order; returns {node id: outputs}."""
    done: dict = {}

    def run(node_id: str):
        if node_id in done:
            return done[node_id]
        node = prompt[node_id]
        kwargs = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                kwargs[name] = run(value[0])[value[1]]
            else:
                kwargs[name] = value
        cls = classes[node["class_type"]]
        result = getattr(cls(), cls.FUNCTION)(**kwargs)
        if isinstance(result, dict):
            result = tuple(result.get("result", ()))
        done[node_id] = result
        return result

    for node_id in prompt:
        run(node_id)
    return done


def load_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def write_api_copies() -> list[Path]:
    """Regenerate ``workflows/api/<name>.json`` from every UI workflow ``workflows/<name>.json``."""
    classes = all_node_classes()
    API_DIR.mkdir(exist_ok=True)
    written = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        out = API_DIR / path.name
        out.write_text(json.dumps(ui_to_api(load_json(path), classes), indent=2) + "\n")
        written.append(out)
    return written


# ------------------------------------------------------------------------------------------------ thumbnails
THUMB_SIZE = (512, 384)
NEEDS_USER_MODELS = ("DeepFloyd", "imagen-pytorch")  # templates the demo cannot run: their thumbnails are diagrams


def _pil(images: torch.Tensor, k: int, side: int):
    from PIL import Image

    img = Image.fromarray((images[k].clamp(0, 1) * 255).round().to(torch.uint8).numpy())
    return img.resize((side, side), Image.NEAREST if img.width < side else Image.LANCZOS)


def render_thumbnail(name: str):
    """The workflow run on the bundled demo cascade: its first preview (else the base stage's image) beside its
    result, or a 2x2 grid for a batch. None when the demo files are missing."""
    from PIL import Image

    from nodes.loaders import bundled_files

    if set(bundled_files()) != {"t5", "base", "sr"}:
        return None
    prompt = load_json(API_DIR / f"{name}.json")
    SaveImage.saved.clear()
    outputs = run_api_workflow(prompt, all_node_classes())
    final = [images for prefix, images in SaveImage.saved if prefix != "preview"][-1]
    (w, h), canvas = THUMB_SIZE, Image.new("RGB", THUMB_SIZE, (32, 32, 36))
    if final.shape[0] > 1:
        for k in range(min(4, final.shape[0])):
            canvas.paste(_pil(final, k, h // 2), ((w - h) // 2 + (k % 2) * h // 2, (k // 2) * h // 2))
        return canvas
    base = [out[0] for node_id, out in outputs.items() if prompt[node_id]["class_type"] == "ImagenBaseSampler"]
    before = ([images for prefix, images in SaveImage.saved if prefix == "preview"] or base)[0]
    half = w // 2 - 4
    canvas.paste(_pil(before, 0, half), (0, (h - half) // 2))
    canvas.paste(_pil(final, 0, half), (w - half, (h - half) // 2))
    return canvas


def draw_diagram(ui: dict, title: str):
    """A picture of the graph (boxes and links, our nodes coloured) for workflows the demo cannot run."""
    from PIL import Image, ImageDraw

    (w, h), top = THUMB_SIZE, 44
    img = Image.new("RGB", THUMB_SIZE, (32, 32, 36))
    draw = ImageDraw.Draw(img)
    nodes = {n["id"]: n for n in ui["nodes"]}
    x0 = min(n["pos"][0] for n in nodes.values())
    y0 = min(n["pos"][1] for n in nodes.values())
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes.values())
    y1 = max(n["pos"][1] + min(n["size"][1], 200) for n in nodes.values())
    scale = min((w - 20) / (x1 - x0), (h - top - 10) / (y1 - y0))

    def box(n):
        (x, y), (bw, bh) = n["pos"], (n["size"][0], min(n["size"][1], 200))
        return 10 + (x - x0) * scale, top + (y - y0) * scale, 10 + (x - x0 + bw) * scale, top + (y - y0 + bh) * scale

    for _, src, _, dst, _, _ in ui["links"]:
        a, b = box(nodes[src]), box(nodes[dst])
        draw.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=(200, 200, 120), width=2)
    for n in nodes.values():
        b = box(n)
        ours = n["type"].startswith("Imagen")
        draw.rounded_rectangle(b, radius=4, fill=(60, 120, 90) if ours else (85, 85, 90), outline=(180, 180, 190))
        label = n.get("title") or n["type"]
        draw.text((b[0] + 3, b[1] + 2), label[: max(4, int((b[2] - b[0]) / 6))], fill=(240, 240, 240))
    draw.text((10, 14), title, fill=(250, 250, 250))
    return img


def write_thumbnails(diagram_only: bool = False) -> list[Path]:
    """``workflows/<name>.jpg``: a demo render where the bundled demo runs the workflow, else a diagram."""
    written = []
    for path in sorted(WORKFLOWS.glob("*.json")):
        image = None if diagram_only or path.stem.startswith(NEEDS_USER_MODELS) else render_thumbnail(path.stem)
        title = path.stem
        (image or draw_diagram(load_json(path), title)).save(path.with_suffix(".jpg"), quality=88)
        written.append(path.with_suffix(".jpg"))
    return written


if __name__ == "__main__":
    commands = {"write-api": write_api_copies, "thumbnails": write_thumbnails,
                "diagrams": lambda: write_thumbnails(diagram_only=True)}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m tests.comfy_helpers {{{'|'.join(commands)}}}")
    for p in commands[sys.argv[1]]():
        print(p.relative_to(ROOT))
