"""What a model file or folder is: the one family classifier behind every "this looks like X: do Y" error.

`identify(keys, metadata)` names the family of a weight file from its key set (and header metadata), `folder_family`
the kind of a model folder from its ``config.json`` / ``model_index.json``. Each `Family` carries what to call it and
what to do with it, so the stage loader and the T5 loader word their refusals alike and nodes can list folders by
kind. Nothing here reads tensors.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping


@dataclass(frozen=True)
class Family:
    """A kind of model file or folder: ``name`` (a short id), ``what`` it is ("a T5 text encoder"), and ``advice``:
    what to do with it, worded for whichever loader was given it by mistake."""

    name: str
    what: str
    advice: str


STAGE_LOADER = "the Imagen Model Loader (comfyui_imagen.checkpoints.load_stage)"
T5_LOADER = "the Imagen T5 loader (comfyui_imagen.text.load_t5)"
METADATA_PREFIX = "comfyui_imagen."  # every metadata key a comfyui-imagen stage file carries starts so
# keys that every DeepFloyd IF U-Net in diffusers layout has (stage I and II, any size)
IF_PROBE_KEYS = ("conv_in.weight", "conv_out.weight", "encoder_hid_proj.weight", "add_embedding.pool.q_proj.weight",
                 "time_embedding.linear_1.weight", "mid_block.attentions.0.to_q.weight")

# -- weight files ------------------------------------------------------------------------------------------------------
NATIVE = Family("native", "a comfyui-imagen stage file", f"load it with {STAGE_LOADER}")
DEEPFLOYD = Family("deepfloyd", "a DeepFloyd IF U-Net (diffusers layout)", f"load it with {STAGE_LOADER}")
IF_ORIGINAL = Family("deepfloyd-original", "a DeepFloyd IF U-Net in the original deepfloyd_if layout",
                     "use the diffusers layout from the Hugging Face repo instead (unet/config.json + "
                     "unet/diffusion_pytorch_model[.fp16].safetensors)")
IMAGEN_PYTORCH = Family("imagen-pytorch", "an imagen-pytorch checkpoint",
                        f"load it with {STAGE_LOADER}, one U-Net at a time ('file.pt [unet 1]', '[unet 2]' ...)")
_COMFY = ("load it with ComfyUI's own loaders; the Imagen loaders take DeepFloyd IF stage I/II, comfyui-imagen "
          "stage files and T5 encoders")
FLUX = Family("flux", "a Flux transformer", _COMFY)
SD3 = Family("sd3", "an SD3 transformer or checkpoint", _COMFY)
SD = Family("sd", "a Stable Diffusion-family U-Net or checkpoint", _COMFY)
DIFFUSERS_UNET = Family("diffusers-unet", "a diffusion U-Net (diffusers layout) that is not a DeepFloyd IF U-Net",
                        f"{STAGE_LOADER} reads IF stage I/II U-Nets, which have all of {list(IF_PROBE_KEYS)}; load "
                        "other U-Nets with ComfyUI's own loaders")
T5 = Family("t5", "a T5 text encoder", f"load it with {T5_LOADER}, not as a stage")
LLM = Family("llm", "a language model (LLM) in llama.cpp's GGUF layout",
             "Imagen's loaders take no LLMs; Imagen conditions on T5 v1.1 XXL (e.g. t5-v1_1-xxl-encoder-Q8_0.gguf)")
GGUF_ARCHITECTURE = "general.architecture"  # the metadata key naming a GGUF file's model
GGUF_T5_ARCHITECTURES = ("t5encoder", "t5")  # llama.cpp's names: encoder only, encoder-decoder
# what ComfyUI-GGUF's diffusion-model files declare (its loader.py IMG_ARCH_LIST)
GGUF_DIFFUSION_ARCHITECTURES = ("flux", "sd1", "sdxl", "sd3", "aura", "hidream", "cosmos", "ltxv", "hyvid", "wan",
                                "lumina2", "qwen_image")
CLIP = Family("clip", "a CLIP model", "it is not a diffusion stage nor a T5; Imagen conditions on T5 only")
VAE = Family("vae", "a VAE", "Imagen works in pixel space and takes no VAE")


def _prefixed(*prefixes: str) -> Callable[[set[str]], bool]:
    return lambda keys: any(k.startswith(prefixes) for k in keys)


def _containing(*parts: str) -> Callable[[set[str]], bool]:
    return lambda keys: any(p in k for k in keys for p in parts)


# (test on the key set, family); first match wins, so the specific layouts come before the prefixes they share
_RULES: tuple[tuple[Callable[[set[str]], bool], Family], ...] = (
    (lambda ks: _prefixed("unets.", "downs.0.", "init_resnet_block.", "0.ema_model.", "0.online_model.")(ks)
     or {"init_conv.weight", "final_conv.weight"} <= ks, IMAGEN_PYTORCH),
    (lambda ks: "encoder_pooling.1.q_proj.weight" in ks or {"input_blocks.0.0.weight", "encoder_proj.weight"} <= ks,
     IF_ORIGINAL),
    (_containing("double_blocks."), FLUX),
    (_containing("joint_blocks."), SD3),
    (lambda ks: _prefixed("model.diffusion_model.", "first_stage_model.", "input_blocks.")(ks)
     or _containing(".transformer_blocks.")(ks), SD),
    (_prefixed("down_blocks.", "conv_in.", "mid_block."), DIFFUSERS_UNET),
    (lambda ks: _containing("encoder.block.", "encoder.final_layer_norm")(ks) or "shared.weight" in ks
     or _prefixed("enc.blk.")(ks), T5),
    (lambda ks: "token_embd.weight" in ks and _prefixed("blk.")(ks), LLM),
    (_prefixed("text_model.", "vision_model."), CLIP),
    (_prefixed("encoder.down.", "decoder.up.", "encoder.down_blocks.", "decoder.up_blocks.", "quant_conv."), VAE),
)


def identify(keys: Iterable[str], metadata: Mapping[str, object] | None = None) -> Family | None:
    """The family of a weight file from its tensor names (and safetensors or GGUF metadata); None when nothing
    matches."""
    if metadata and any(str(k).startswith(METADATA_PREFIX) for k in metadata):
        return NATIVE
    ks = set(keys)
    if ks.issuperset(IF_PROBE_KEYS):
        return DEEPFLOYD
    found = next((family for test, family in _RULES if test(ks)), None)
    arch = (metadata or {}).get(GGUF_ARCHITECTURE)
    if found is not None or not isinstance(arch, str):
        return found
    if arch in GGUF_T5_ARCHITECTURES:
        return T5
    if arch in GGUF_DIFFUSION_ARCHITECTURES:
        return Family(f"gguf-{arch}", f"a {arch} diffusion model (ComfyUI-GGUF)",
                      "load it with ComfyUI-GGUF's Unet Loader (GGUF); the Imagen loaders take DeepFloyd IF stages "
                      "and T5 encoders")
    return Family(f"gguf-{arch}", f"a GGUF {arch!r} model (a language model, going by its layout)", LLM.advice)


# -- folders -----------------------------------------------------------------------------------------------------------
IF_PIPELINE = Family("pipeline", "a DeepFloyd IF model folder (diffusers layout)",
                     f"load it with {STAGE_LOADER}; its T5 is the text_encoder/ inside it")
UNET_FOLDER = Family("unet", "a diffusers U-Net folder", f"load it with {STAGE_LOADER}")
T5_FOLDER = Family("t5", "a Hugging Face T5 folder", f"load it with {T5_LOADER}, not as a stage")
PIPELINE_FILE = "model_index.json"


def read_json(path: Path) -> dict:
    """A JSON object from `path`; {} when it is missing, unreadable or not an object (listing never fails)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_unet_config(config: dict) -> bool:
    return config.get("_class_name") == "UNet2DConditionModel"


def folder_family(folder: str | Path) -> Family | None:
    """`IF_PIPELINE` (``model_index.json``, or a ``unet/`` holding a diffusers U-Net config: a model root either
    way), `UNET_FOLDER` (its ``config.json`` names ``UNet2DConditionModel``), `T5_FOLDER` (a T5 / UMT5 config) or
    None."""
    folder = Path(folder)
    if (folder / PIPELINE_FILE).is_file() or _is_unet_config(read_json(folder / "unet" / "config.json")):
        return IF_PIPELINE
    config = read_json(folder / "config.json")
    if _is_unet_config(config):
        return UNET_FOLDER
    if config.get("model_type") in ("t5", "umt5", "mt5") or any("T5" in str(a) for a in config.get("architectures") or ()):
        return T5_FOLDER
    return None
