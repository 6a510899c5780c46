"""Test-only ComfyUI nodes, copied by `tests.comfy_server.start_comfyui` into the test server's custom_nodes (never
shipped; runs with ComfyUI's python, so it imports ComfyUI's modules).

ImagenTestTinyT5CLIP: a tiny T5-v1.1-shaped file as a core CLIP, built by ComfyUI's own classes (comfy.sd.CLIP, an
SD3 text-encoder model holding a T5XXLModel-style SDClipModel over comfy.text_encoders.t5.T5, ComfyUI's tokenizer)
with the config read from ``<file>.json`` -- ComfyUI's CLIPLoader fixes T5-XXL's config, which a test file of a few
MB cannot have. ImagenTestSaveTensors: writes IMAGEN_TEXT_EMBEDS and core CONDITIONING to
``output/tensors/<name>.safetensors`` so that the test can compare the numbers.
"""
from __future__ import annotations

import inspect
import json
import os

import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import comfy.text_encoders.sd3_clip
import comfy.text_encoders.t5
import comfy.utils
import folder_paths
import torch
from safetensors.torch import save_file


def _tiny_sd3(config: dict, dtype_t5):
    class TinyT5(comfy.sd1_clip.SDClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(device=device, layer="last", layer_idx=None, textmodel_json_config=config, dtype=dtype,
                             special_tokens={"end": 1, "pad": 0}, model_class=comfy.text_encoders.t5.T5,
                             model_options={**model_options, "model_name": "t5xxl"})

    class TinySD3(comfy.text_encoders.sd3_clip.SD3ClipModel):
        def __init__(self, device="cpu", dtype=None, model_options={}):
            super().__init__(clip_l=False, clip_g=False, t5=False, device=device, dtype=dtype,
                             model_options=model_options)
            self.t5_attention_mask = False  # as sd3 and flux: ComfyUI's own T5 encoding pads without a mask
            self.t5xxl = TinyT5(device=device, dtype=dtype_t5, model_options=model_options)
            self.dtypes.add(dtype_t5)

    return TinySD3


class ImagenTestTinyT5CLIP:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (folder_paths.get_filename_list("text_encoders"),)}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "load"
    CATEGORY = "testing"

    def load(self, clip_name):
        path = folder_paths.get_full_path("text_encoders", clip_name)
        with open(os.path.splitext(path)[0] + ".json") as f:
            config = json.load(f)
        sd = comfy.utils.load_torch_file(path, safe_load=True)
        dtype = sd["encoder.final_layer_norm.weight"].dtype
        target = comfy.supported_models_base.ClipTarget(comfy.text_encoders.sd3_clip.SD3Tokenizer,
                                                        _tiny_sd3(config, dtype))
        parameters = comfy.utils.calculate_parameters(sd)
        if "state_dict" in inspect.signature(comfy.sd.CLIP).parameters:  # 0.33 loads it in the constructor
            return (comfy.sd.CLIP(target, parameters=parameters, state_dict=[sd]),)
        clip = comfy.sd.CLIP(target, parameters=parameters)
        clip.load_sd(sd)
        return (clip,)


class ImagenTestSaveTensors:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "tensors"})},
                "optional": {"embeds": ("IMAGEN_TEXT_EMBEDS",), "conditioning": ("CONDITIONING",)}}

    RETURN_TYPES = ()
    FUNCTION = "save"
    OUTPUT_NODE = True
    CATEGORY = "testing"

    def save(self, name, embeds=None, conditioning=None):
        tensors = {}
        if embeds is not None:
            for side in ("positive", "negative"):
                text = getattr(embeds, side)
                tensors[f"{side}.embeds"] = text.embeds.float()
                tensors[f"{side}.mask"] = text.mask.to(torch.uint8)
        if conditioning is not None:
            tensors["conditioning"] = conditioning[0][0].float()
        folder = os.path.join(folder_paths.get_output_directory(), "tensors")
        os.makedirs(folder, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                  os.path.join(folder, f"{name}.safetensors"))
        return {}


NODE_CLASS_MAPPINGS = {"ImagenTestTinyT5CLIP": ImagenTestTinyT5CLIP, "ImagenTestSaveTensors": ImagenTestSaveTensors}
