"""Imagen Text Encode: a prompt and a negative prompt through a T5, for every stage of a cascade: the T5 of Imagen T5
Loader, or (Imagen Text Encode (CLIP's T5)) the T5 inside a core CLIP that ComfyUI's own loaders made."""
from __future__ import annotations

from comfyui_imagen import cascade
from comfyui_imagen.text import PREPROCESS_MODES as PREPROCESS_CHOICES

from . import comfy_compat as cc
from .comfy_clip import clip_encoder
from .declare import node
from .sampling import led_by

PROMPT_TIP = ("What the image should show. Weights as in ComfyUI's text encoders: (word:1.2) or ((word)) stresses, "
              "(word:0.8) softens; \\( \\) for literal parentheses.")
NEGATIVE_TIP = ("What to steer away from; empty = the unconditional embedding (as DeepFloyd IF). (word:1.2) weights "
                "work here too.")
LENGTH_TIP = "Tokens kept per prompt (DeepFloyd IF: 77; imagen-pytorch trains on 256)."
PREPROCESS_TIP = ("How the text is prepared for the T5: 'lower' lower-cases it and trims spaces, as DeepFloyd IF's "
                  "pipeline does (IF was trained so); 'none' keeps it as typed (imagen-pytorch feeds T5 its raw "
                  "captions); 'clean' runs IF's full caption cleaner (URLs, markup and odd characters removed).")
CLIP_ENCODE = "Imagen Text Encode (CLIP's T5)"


def _text_inputs() -> dict:
    """prompt, negative_prompt, max_length: the required widgets both text nodes share, in this order."""
    return {"prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "", "tooltip": PROMPT_TIP}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "", "tooltip": NEGATIVE_TIP}),
            "max_length": ("INT", {"default": 77, "min": 1, "max": 512, "tooltip": LENGTH_TIP})}


# added after release: optional and last, so a workflow saved before it keeps its widget values
LATER_TEXT_INPUTS = {"preprocess": (list(PREPROCESS_CHOICES), {"default": "lower", "tooltip": PREPROCESS_TIP})}


def _conditioning(positive, negative):
    device = cc.intermediate_device()
    return (cascade.Conditioning(positive.to(device), negative.to(device)),)


@node("Imagen Text Encode (T5)", "imagen/conditioning",
      "Encodes a prompt and a negative prompt with T5 for every stage of an Imagen cascade.",
      "encode", (("IMAGEN_TEXT_EMBEDS", "embeds",
                  "Prompt and negative-prompt embeddings; one output serves all stages."),))
class ImagenTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "t5": ("IMAGEN_T5", {"tooltip": "The T5 from Imagen T5 Loader."}),
            **_text_inputs(),
        }, "optional": dict(LATER_TEXT_INPUTS)}

    def encode(self, t5, prompt: str, negative_prompt: str, max_length: int = 77, preprocess: str = "lower"):
        return _conditioning(*t5.encode_for_guidance(prompt, negative_prompt, max_length, emphasis=True,
                                                     preprocess_mode=preprocess))


@node(CLIP_ENCODE, "imagen/conditioning",
      "Encodes a prompt and a negative prompt for an Imagen cascade with the T5-XXL inside a ComfyUI CLIP (Load CLIP, "
      "DualCLIPLoader, GGUF loaders: the copy Flux or SD3 already use, under ComfyUI's memory management), tokenized "
      "and masked as DeepFloyd IF expects.",
      "encode", (("IMAGEN_TEXT_EMBEDS", "embeds",
                  "Prompt and negative-prompt embeddings; one output serves all stages."),))
class ImagenTextEncodeCLIP:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip": ("CLIP", {"tooltip": "A CLIP holding T5 v1.1 XXL, e.g. DualCLIPLoader (clip_l + "
                                         "t5xxl_fp16.safetensors, type flux) or Load CLIP (t5xxl, type sd3)."}),
            **_text_inputs(),
        }, "optional": dict(LATER_TEXT_INPUTS)}

    def encode(self, clip, prompt: str, negative_prompt: str, max_length: int = 77, preprocess: str = "lower"):
        with led_by(CLIP_ENCODE):
            encoder = clip_encoder(clip)
            return _conditioning(*encoder.encode_for_guidance(prompt, negative_prompt, max_length, emphasis=True,
                                                              preprocess_mode=preprocess))
