"""Imagen Text Encode: a prompt and a negative prompt through the loaded T5, for every stage of a cascade."""
from __future__ import annotations

from comfyui_imagen import cascade

from . import comfy_compat as cc
from .declare import node


@node("Imagen Text Encode (T5)", "imagen/conditioning",
      "Encodes a prompt and a negative prompt with T5 for every stage of an Imagen cascade.",
      "encode", (("IMAGEN_TEXT_EMBEDS", "embeds",
                  "Prompt and negative-prompt embeddings; one output serves all stages."),))
class ImagenTextEncode:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "t5": ("IMAGEN_T5", {"tooltip": "The T5 from Imagen T5 Loader."}),
            "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                  "tooltip": "What the image should show. Weights as in ComfyUI's text encoders: "
                                             "(word:1.2) or ((word)) stresses, (word:0.8) softens; \\( \\) for "
                                             "literal parentheses."}),
            "negative_prompt": ("STRING", {"multiline": True, "default": "",
                                           "tooltip": "What to steer away from; empty = the unconditional "
                                                      "embedding (as DeepFloyd IF). (word:1.2) weights work here "
                                                      "too."}),
            "max_length": ("INT", {"default": 77, "min": 1, "max": 512,
                                   "tooltip": "Tokens kept per prompt (DeepFloyd IF: 77)."}),
        }}

    def encode(self, t5, prompt: str, negative_prompt: str, max_length: int = 77):
        positive, negative = t5.encode_for_guidance(prompt, negative_prompt, max_length, emphasis=True)
        device = cc.intermediate_device()
        return (cascade.Conditioning(positive.to(device), negative.to(device)),)
