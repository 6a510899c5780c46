"""Thin ComfyUI adapters over ``comfyui_imagen``: unpack sockets, call one library function, pack the result.

Node ids are permanent: saved workflows name them. Importing this package registers ``models/imagen`` with ComfyUI
(when it runs inside ComfyUI) and makes the library importable as ``comfyui_imagen``: ComfyUI loads a custom node
folder by file path, so the folder is not on ``sys.path``; it is appended (last, so ComfyUI's own top-level
modules such as ``nodes`` keep precedence).
"""
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.append(_ROOT)

from . import comfy_compat  # noqa: E402
from .interop import ImagenSamplerCustom, ImagenSigmas  # noqa: E402
from .loaders import ImagenModelLoader, ImagenT5Loader  # noqa: E402
from .sampling import ImagenBaseSampler, ImagenImageToImage, ImagenInpaint, ImagenSuperResolution  # noqa: E402
from .text import ImagenTextEncode, ImagenTextEncodeCLIP  # noqa: E402

_NODES = (ImagenT5Loader, ImagenModelLoader, ImagenTextEncode, ImagenBaseSampler, ImagenSuperResolution,
          ImagenImageToImage, ImagenInpaint, ImagenSamplerCustom, ImagenSigmas, ImagenTextEncodeCLIP)

NODE_CLASS_MAPPINGS = {cls.__name__: cls for cls in _NODES}
NODE_DISPLAY_NAME_MAPPINGS = {cls.__name__: cls.DISPLAY_NAME for cls in _NODES}

comfy_compat.register_model_folder()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
