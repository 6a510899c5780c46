"""The shipped templates, each written from one short description: nodes, links by input name, and a layout in
which no two nodes overlap, with room under every sampler for the step preview ComfyUI draws in it (and nothing
placed under a sampler: the frontend may draw it taller than declared).

    python -m tests.templates        # rewrite workflows/*.json, then: python -m tests.comfy_helpers write-api
                                     #                                 python -m tests.comfy_helpers thumbnails

The file names are the titles ComfyUI's template browser shows (it lists custom-node templates by file stem, in 0.33
and 0.3.64 alike, and uses the stem as the description too), so they are short and readable. Every demo template
runs on a fresh install: images come from the base stage, masks from core mask nodes, nothing from input/. Sampling
widgets are "auto" (the stage's recommended settings), as a freshly added node has them. Model files a fresh install
lacks carry ComfyUI's model metadata (``properties.models``: name, directory, url), which the frontend's Missing
Models panel reads.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from tests import comfy_helpers as ch
from tests import tiny_models as tiny

TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's title bar sits above its pos
GAP_X, GAP_Y = 70, 50
# (width, height) of each node's body: what the frontend draws for its widgets, and for samplers and image nodes the
# room their step previews / images take when they show
SIZES = {"ImagenT5Loader": (340, 90), "ImagenTextEncode": (400, 270), "ImagenModelLoader": (340, 130),
         "ImagenBaseSampler": (340, 640), "ImagenSuperResolution": (340, 680), "ImagenImageToImage": (340, 680),
         "ImagenInpaint": (340, 680), "SaveImage": (340, 380), "PreviewImage": (340, 340), "Note": (400, 200),
         "ImageCropV2": (340, 400), "SolidMask": (300, 110), "MaskComposite": (300, 160), "MaskToImage": (220, 30),
         "CheckpointLoaderSimple": (340, 100), "CLIPTextEncode": (400, 180), "SD_4XUpscale_Conditioning": (320, 130),
         "KSampler": (320, 290), "VAEDecode": (220, 50), "ImagenSamplerCustom": (340, 640),
         "ImagenSigmas": (320, 110), "KSamplerSelect": (320, 60), "SplitSigmas": (320, 80),
         "DualCLIPLoader": (340, 130), "ImagenTextEncodeCLIP": (400, 270)}
DEMO = {"t5": "imagen-demo-t5.safetensors", "base": "imagen-demo-base64.safetensors",
        "sr": "imagen-demo-sr256.safetensors"}
AUTO_SAMPLING = {"steps": 0, "cfg": 0.0, "sampler": "auto", "schedule": "auto", "dynamic_threshold": -1.0}
T5XXL_URL = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"
CLIP_L_URL = "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"
X4_URL = ("https://huggingface.co/stabilityai/stable-diffusion-x4-upscaler/resolve/main/"
          "x4-upscaler-ema.safetensors")
IF_I = "IF-I-XL-v1.0/unet/diffusion_pytorch_model.fp16.safetensors"
IF_II = "IF-II-L-v1.0/unet/diffusion_pytorch_model.fp16.safetensors"
# DeepFloyd's files are gated (accept the license on the model page first). They get their url all the same:
# ComfyUI 0.3.64's frontend refuses model metadata without one (a schema alert on load), and 0.33's checks the url
# and, for a gated repository, offers its access page instead of a download.
IF_URL = "https://huggingface.co/DeepFloyd/{}/resolve/main/{}"


@dataclass
class Node:
    type: str
    widgets: dict = field(default_factory=dict)  # by input name; the rest take the input's default
    links: dict = field(default_factory=dict)  # input name -> (source key, output index)
    title: str | None = None
    models: list = field(default_factory=list)  # ComfyUI's model metadata for the Missing Models panel


@dataclass
class Template:
    name: str
    note: str
    columns: list[list[tuple[str, Node]]]  # left to right; each column top to bottom, by key


def _t5(name=DEMO["t5"], **kw):
    return Node("ImagenT5Loader", {"t5_name": name}, **kw)


def _encode(prompt, negative="", **widgets):
    return Node("ImagenTextEncode", {"prompt": prompt, "negative_prompt": negative, **widgets}, {"t5": ("t5", 0)})


def _if_loaders() -> list:
    """DeepFloyd IF's stage I and II loaders, with their files' metadata for the Missing Models panel."""
    return [("base", _loader(IF_I, "DeepFloyd IF stage I (64 px)", models=[
                {"name": IF_I, "url": IF_URL.format(*IF_I.split("/", 1)), "directory": "imagen"}])),
            ("sr", _loader(IF_II, "DeepFloyd IF stage II (64 -> 256)", models=[
                {"name": IF_II, "url": IF_URL.format(*IF_II.split("/", 1)), "directory": "imagen"}]))]


def _loader(name, title, **kw):
    return Node("ImagenModelLoader", {"model_name": name}, title=title, **kw)


def _stage(kind, model, embeds="embeds", title=None, **widgets):
    links = {"model": (model, 0), "embeds": (embeds, 0)}
    links.update(widgets.pop("links", {}))
    auto = {k: v for k, v in AUTO_SAMPLING.items() if k != "sampler" or kind != "ImagenInpaint"}  # RePaint's own
    return Node(kind, {**auto, **widgets}, links, title=title)


def _save(source, prefix):
    return Node("SaveImage", {"filename_prefix": prefix}, {"images": (source, 0)})


def _preview(source, title=None):
    return Node("PreviewImage", {}, {"images": (source, 0)}, title=title)


def loaders(prompt: str, *edit_prompts: str, sr: bool = True) -> list:
    """The first column of a demo template: the demo T5, Text Encode nodes (``embeds``, then ``edit_embeds`` for a
    second prompt) and the demo stages."""
    column = [("t5", _t5()), ("embeds", _encode(prompt))]
    column += [("edit_embeds", _encode(p)) for p in edit_prompts]
    column.append(("base", _loader(DEMO["base"], "Base stage (64 px)")))
    if sr:
        column.append(("sr", _loader(DEMO["sr"], "SR stage (64 -> 256)")))
    return column


def templates() -> list[Template]:
    return [
        Template("Imagen text to image",
                 "Text to image with the bundled demo cascade's 64 px base stage: a batch of 4. The demo draws "
                 "circles, squares and triangles in six colours ('a small blue square in the top left on a black "
                 "background', 'a red circle above a yellow triangle'). Sampling widgets at 0 / -1 / auto use the "
                 "stage's recommended settings (Imagen Model Loader's info output lists them).",
                 [loaders("a red circle to the left of a blue square", sr=False),
                  [("sample", _stage("ImagenBaseSampler", "base", seed=1, batch_size=4))],
                  [("save", _save("sample", "imagen/text_to_image"))]]),
        Template("Imagen cascade to 1024 px",
                 "The full cascade 64 -> 256 -> 1024 with the demo. The 64 -> 256 stage also makes the 1024 image "
                 "(a 4x stage runs fully convolutionally: width/height 1024); put a 256 -> 1024 stage in "
                 "models/imagen and pick it in a third Imagen Model Loader for a real stage III.",
                 [loaders("a small yellow triangle in the top left on a black background"),
                  [("sample", _stage("ImagenBaseSampler", "base", seed=7))],
                  [("preview64", _preview("sample", "64 px"))],
                  [("sr256", _stage("ImagenSuperResolution", "sr", title="Super-resolution 64 -> 256", seed=7,
                                    links={"image": ("sample", 0)}))],
                  [("preview256", _preview("sr256", "256 px"))],
                  [("sr1024", _stage("ImagenSuperResolution", "sr", title="Super-resolution 256 -> 1024", seed=7,
                                     width=1024, height=1024, steps=10, links={"image": ("sr256", 0)}))],
                  [("save", _save("sr1024", "imagen/cascade_1024"))]]),
        Template("Imagen crop and upscale",
                 "A core image node between stages: Crop Image takes the left 32x32 of the 64 px base image (drag "
                 "the box once the base image has run), and the SR stage makes a 256x256 zoom of it (it resizes any "
                 "input to its 64 px input).",
                 [loaders("a red circle to the left of a blue square on a gray background"),
                  [("sample", _stage("ImagenBaseSampler", "base", seed=3))],
                  [("crop", Node("ImageCropV2", {"crop_region": {"x": 0, "y": 16, "width": 32, "height": 32}},
                                 {"image": ("sample", 0)}))],
                  [("zoom", _stage("ImagenSuperResolution", "sr", seed=3, links={"image": ("crop", 0)}))],
                  [("save", _save("zoom", "imagen/crop_and_upscale"))]]),
        Template("Imagen image to image",
                 "Image to image (SDEdit): the base stage draws a red circle, Imagen Image to Image re-draws it "
                 "towards a second prompt at strength 0.6 (the layout stays, the colour changes), then the SR stage "
                 "takes it to 256. To edit your own picture, replace the first sampler by Load Image -> Upscale "
                 "Image (64x64).",
                 [loaders("a red circle in the top left on a gray background",
                          "a blue circle in the top left on a gray background"),
                  [("sample", _stage("ImagenBaseSampler", "base", seed=5))],
                  [("preview", _preview("sample", "Before"))],
                  [("edit", _stage("ImagenImageToImage", "base", "edit_embeds", seed=5, strength=0.6, noise_level=-1,
                                   links={"image": ("sample", 0)}))],
                  [("sr_edit", _stage("ImagenSuperResolution", "sr", "edit_embeds", seed=5,
                                      links={"image": ("edit", 0)}))],
                  [("save", _save("sr_edit", "imagen/image_to_image"))]]),
        Template("Imagen inpaint",
                 "Inpainting (RePaint): the base stage draws two circles; a mask made by core mask nodes (white = "
                 "regenerate: the right half) is regenerated towards a second prompt, the rest is kept exactly; the "
                 "SR stage takes it to 256. For your own picture: Load Image (paint the mask in its mask editor) -> "
                 "Upscale Image (64x64), and its MASK output into the mask input.",
                 [loaders("a red circle to the left of a green circle on a gray background",
                          "a red circle to the left of a blue square on a gray background"),
                  [("sample", _stage("ImagenBaseSampler", "base", seed=11))],
                  [("preview", _preview("sample", "Before")),
                   ("blank", Node("SolidMask", {"value": 0.0, "width": 64, "height": 64}, title="Keep (black)")),
                   ("right", Node("SolidMask", {"value": 1.0, "width": 32, "height": 64}, title="Regenerate (white)"))],
                  [("mask", Node("MaskComposite", {"x": 32, "y": 0, "operation": "add"},
                                 {"destination": ("blank", 0), "source": ("right", 0)}, title="Mask: the right half")),
                   ("mask_image", Node("MaskToImage", {}, {"mask": ("mask", 0)})),
                   ("mask_preview", _preview("mask_image", "Mask"))],
                  [("inpaint", _stage("ImagenInpaint", "base", "edit_embeds", seed=11, resample=4, noise_level=-1,
                                      links={"image": ("sample", 0), "mask": ("mask", 0)}))],
                  [("sr_edit", _stage("ImagenSuperResolution", "sr", "edit_embeds", seed=11,
                                      links={"image": ("inpaint", 0)}))],
                  [("save", _save("sr_edit", "imagen/inpaint"))]]),
        Template("Imagen custom sampler",
                 "ComfyUI's own samplers over Imagen stages: KSamplerSelect picks a sampler, Imagen Sigmas gives "
                 "each stage's noise levels (its recommended grid on auto), Imagen Custom Sampler runs them. The SR "
                 "stage runs only the last 2 of its 15 levels (SplitSigmas' low_sigmas): a grid that starts below "
                 "the stage's top starts from the bicubic upsampling, as the SR node's strength does. Any sampler "
                 "pack's SAMPLER and the core sigma nodes (Flip, Split...) plug in the same way.",
                 [loaders("a yellow triangle above a purple square on a gray background"),
                  [("base_sigmas", Node("ImagenSigmas", {"schedule": "auto", "steps": 0}, {"model": ("base", 0)},
                                        title="Base stage sigmas")),
                   ("select", Node("KSamplerSelect", {"sampler_name": "dpmpp_2m"}))],
                  [("sample", Node("ImagenSamplerCustom", {"seed": 9, "cfg": 0.0, "dynamic_threshold": -1.0},
                                   {"model": ("base", 0), "embeds": ("embeds", 0), "sampler": ("select", 0),
                                    "sigmas": ("base_sigmas", 0)}))],
                  [("preview", _preview("sample", "64 px")),
                   ("sr_sigmas", Node("ImagenSigmas", {"schedule": "auto", "steps": 0}, {"model": ("sr", 0)},
                                      title="SR stage sigmas")),
                   ("split", Node("SplitSigmas", {"step": 13}, {"sigmas": ("sr_sigmas", 0)}))],
                  [("upscale", Node("ImagenSamplerCustom", {"seed": 9, "cfg": 0.0, "dynamic_threshold": -1.0,
                                                            "noise_level": -1},
                                    {"model": ("sr", 0), "embeds": ("embeds", 0), "sampler": ("select", 0),
                                     "sigmas": ("split", 1), "image": ("sample", 0)}))],
                  [("save", _save("upscale", "imagen/custom_sampler"))]]),
        Template("imagen-pytorch cascade",
                 "Your own imagen-pytorch (lucidrains) checkpoint, loaded natively: put the trainer's .pt file in "
                 "models/imagen; Imagen Model Loader lists each of its U-Nets, 'imagen.pt [unet 1]' (the base), "
                 "'[unet 2]' (super-resolution), EMA weights ('[unet 1, online]' for the trained ones). A file "
                 "saved without ImagenConfig needs a settings file beside it, imagen.json (the loader says which "
                 "fields). The T5 it was trained with goes in models/imagen too: imagen-pytorch's default "
                 "google/t5-v1_1-base as a folder, t5-v1_1-base/ (config.json and its weights). Imagen-pytorch "
                 "samples 1000 DDPM steps per U-Net ('auto' here does the same); DPM++ 2M at 30 / 20 steps is set. "
                 "Text as imagen-pytorch encodes it: as typed (preprocess 'none'), up to 256 tokens.",
                 [[("t5", _t5("t5-v1_1-base", title="T5 v1.1 base (imagen-pytorch's default)")),
                   ("embeds", _encode("a red circle to the left of a blue square", max_length=256,
                                      preprocess="none")),
                   ("base", _loader(f"{tiny.IMAGEN_PYTORCH_NAME} [unet 1]", "Base U-Net ([unet 1])")),
                   ("sr", _loader(f"{tiny.IMAGEN_PYTORCH_NAME} [unet 2]", "SR U-Net ([unet 2])"))],
                  [("sample", _stage("ImagenBaseSampler", "base", title="U-Net 1", seed=1, sampler="dpmpp_2m",
                                     schedule="karras", steps=30))],
                  [("preview", _preview("sample", "Base image"))],
                  [("upscale", _stage("ImagenSuperResolution", "sr", title="U-Net 2", seed=1, sampler="dpmpp_2m",
                                      schedule="karras", steps=20, links={"image": ("sample", 0)}))],
                  [("save", _save("upscale", "imagen/imagen_pytorch"))]]),
        Template("DeepFloyd IF with Flux T5",
                 "DeepFloyd IF stage I and II on the T5-XXL a Flux (or SD3) setup already has: DualCLIPLoader loads "
                 "clip_l + t5xxl under ComfyUI's memory management (fp8 and GGUF loaders work too) and Imagen Text "
                 "Encode (CLIP) encodes with the T5 inside, tokenized and masked as IF expects, so no second copy of "
                 "the T5 is loaded. Needs IF-I-XL-v1.0/ and IF-II-L-v1.0/ in models/imagen (gated: accept the license "
                 "on huggingface.co/DeepFloyd first), clip_l and t5xxl in models/text_encoders.",
                 [[("clip", Node("DualCLIPLoader", {"clip_name1": "clip_l.safetensors",
                                                    "clip_name2": "t5xxl_fp16.safetensors", "type": "flux",
                                                    "device": "default"},
                                 title="Flux's text encoders (clip_l + t5xxl)", models=[
                                     {"name": "clip_l.safetensors", "url": CLIP_L_URL, "directory": "text_encoders"},
                                     {"name": "t5xxl_fp16.safetensors", "url": T5XXL_URL,
                                      "directory": "text_encoders"}])),
                   ("embeds", Node("ImagenTextEncodeCLIP",
                                   {"prompt": "a photo of a corgi wearing a red scarf, in the snow",
                                    "negative_prompt": "blurry, low quality"}, {"clip": ("clip", 0)})),
                   *_if_loaders()],
                  [("sample", _stage("ImagenBaseSampler", "base", title="IF stage I"))],
                  [("preview", _preview("sample", "64 px"))],
                  [("sr256", _stage("ImagenSuperResolution", "sr", title="IF stage II",
                                    links={"image": ("sample", 0)}))],
                  [("save", _save("sr256", "imagen/deepfloyd_flux_t5"))]]),
        Template("DeepFloyd IF to 1024 px",
                 "DeepFloyd IF stage I (64 px) and II (256 px) with this pack, then ComfyUI's own Stable Diffusion x4 "
                 "upscaler to 1024 (IF's stage III). Needs, from huggingface.co/DeepFloyd/IF-I-XL-v1.0 and "
                 "/IF-II-L-v1.0 (gated: accept the license there, then download the folders, at least unet/ with "
                 "its config.json): IF-I-XL-v1.0/ and IF-II-L-v1.0/ in models/imagen; t5xxl_fp16.safetensors (or "
                 "an fp8 / GGUF t5xxl) in models/text_encoders; x4-upscaler-ema.safetensors in models/checkpoints. "
                 "Sampling widgets on auto use IF's own settings (ddpm, smart100 / smart50, cfg 7 / 4, noise 250).",
                 [[("t5", _t5("t5xxl_fp16.safetensors", models=[
                     {"name": "t5xxl_fp16.safetensors", "url": T5XXL_URL, "directory": "text_encoders"}])),
                   ("embeds", _encode("a photo of a corgi wearing a red scarf, in the snow", "blurry, low quality")),
                   *_if_loaders()],
                  [("sample", _stage("ImagenBaseSampler", "base", title="IF stage I"))],
                  [("sr256", _stage("ImagenSuperResolution", "sr", title="IF stage II",
                                    links={"image": ("sample", 0)}))],
                  [("preview", _preview("sr256", "256 px"))],
                  [("x4", Node("CheckpointLoaderSimple", {"ckpt_name": "x4-upscaler-ema.safetensors"},
                               title="Stable Diffusion x4 upscaler (IF stage III)", models=[
                                   {"name": "x4-upscaler-ema.safetensors", "url": X4_URL,
                                    "directory": "checkpoints"}])),
                   ("pos", Node("CLIPTextEncode", {"text": "a photo of a corgi wearing a red scarf, in the snow"},
                                {"clip": ("x4", 1)})),
                   ("neg", Node("CLIPTextEncode", {"text": "blurry, low quality"}, {"clip": ("x4", 1)})),
                   ("cond", Node("SD_4XUpscale_Conditioning", {"scale_ratio": 4.0, "noise_augmentation": 0.3},
                                 {"images": ("sr256", 0), "positive": ("pos", 0), "negative": ("neg", 0)}))],
                  [("ksampler", Node("KSampler", {"steps": 20, "cfg": 9.0, "sampler_name": "euler",
                                                  "scheduler": "normal"},
                                     {"model": ("x4", 0), "positive": ("cond", 0), "negative": ("cond", 1),
                                      "latent_image": ("cond", 2)}))],
                  [("decode", Node("VAEDecode", {}, {"samples": ("ksampler", 0), "vae": ("x4", 2)}))],
                  [("save", _save("decode", "imagen/deepfloyd_1024"))]]),
    ]


def _widget_values(cls, node: Node) -> list:
    values = []
    for name, kind, opts in ch.widget_slots(cls):
        if kind == "CONTROL":
            values.append("fixed")
        elif kind == "UPLOAD":
            values.append("image")
        elif name in node.widgets:
            values.append(node.widgets[name])
        elif "default" in opts:
            values.append(opts["default"])
        else:
            values.append(ch.combo_options(cls, name)[0])
    unknown = set(node.widgets) - {name for name, _, _ in ch.widget_slots(cls)}
    if unknown:
        raise ValueError(f"{node.type} has no widgets {sorted(unknown)}")
    return values


def build(template: Template, classes: dict) -> dict:
    """The UI-format workflow (version 0.4) of a template, laid out in its columns."""
    keyed = [(key, node) for column in template.columns for key, node in column]
    ids = {key: index + 2 for index, (key, _) in enumerate(keyed)}  # 1 is the note
    if len(ids) != len(keyed):
        raise ValueError(f"{template.name}: node keys repeat")
    ui_nodes, links = [], []
    x = 0
    note_w, note_h = SIZES["Note"]
    ui_nodes.append({"id": 1, "type": "Note", "pos": [0, 0], "size": [note_w, note_h], "flags": {}, "order": 0,
                     "mode": 0, "inputs": [], "outputs": [], "properties": {}, "widgets_values": [template.note],
                     "title": "About this template"})
    first = True
    for column in template.columns:
        y = note_h + TITLE_HEIGHT + GAP_Y if first else 0  # the note heads the first column
        width = max(SIZES[node.type][0] for _, node in column)
        if first:
            width = max(width, note_w)
        for key, node in column:
            cls = classes[node.type]
            w, h = SIZES[node.type]
            inputs = []
            for name, kind, _, _ in ch.input_specs(cls):
                if kind in ch.WIDGET_TYPES:
                    continue
                link = None
                if name in node.links:
                    source, slot = node.links[name]
                    link = len(links) + 1
                    links.append([link, ids[source], slot, ids[key], len(inputs), kind])
                inputs.append({"name": name, "type": kind, "link": link})
            properties = {"Node name for S&R": node.type}
            if node.models:
                properties["models"] = node.models
            entry = {"id": ids[key], "type": node.type, "pos": [x, y], "size": [w, h], "flags": {}, "order": 0,
                     "mode": 0, "inputs": inputs,
                     "outputs": [{"name": name, "type": kind, "links": [], "slot_index": i}
                                 for i, (kind, name) in enumerate(zip(cls.RETURN_TYPES, _output_names(cls)))],
                     "properties": properties, "widgets_values": _widget_values(cls, node)}
            if node.title:
                entry["title"] = node.title
            ui_nodes.append(entry)
            y += h + TITLE_HEIGHT + GAP_Y
        x += width + GAP_X
        first = False
    by_id = {n["id"]: n for n in ui_nodes}
    for link in links:
        by_id[link[1]]["outputs"][link[2]]["links"].append(link[0])
    for n in ui_nodes:
        for out in n["outputs"]:
            out["links"] = out["links"] or None
    order = _execution_order(ui_nodes, links)
    for n in ui_nodes:
        n["order"] = order[n["id"]]
    return {"last_node_id": len(ui_nodes), "last_link_id": len(links), "nodes": ui_nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.6, "offset": [60, 60]}}, "version": 0.4}


def _output_names(cls) -> tuple[str, ...]:
    return getattr(cls, "RETURN_NAMES", None) or tuple(kind for kind in cls.RETURN_TYPES)


def _execution_order(nodes: list[dict], links: list[list]) -> dict[int, int]:
    """A topological order (what the frontend stores as ``order``), sources first, ties by id."""
    needs = {n["id"]: {link[1] for link in links if link[3] == n["id"]} for n in nodes}
    order, done = {}, set()
    while len(done) < len(nodes):
        ready = sorted(i for i, deps in needs.items() if i not in done and deps <= done)
        if not ready:
            raise ValueError(f"the links form a cycle among nodes {sorted(set(needs) - done)}")
        for i in ready:
            order[i] = len(order)
            done.add(i)
    return order


def write_templates() -> list:
    classes = ch.all_node_classes()
    written = []
    for template in templates():
        path = ch.WORKFLOWS / f"{template.name}.json"
        path.write_text(json.dumps(build(template, classes), indent=2) + "\n")
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_templates():
        print(p.relative_to(ch.ROOT))
