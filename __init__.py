"""ComfyUI entry point for comfyui-imagen.

ComfyUI imports this package from custom_nodes/. Outside ComfyUI (tests, the library, the command line) the import
is guarded so that nothing of ComfyUI is required: the library lives in ``comfyui_imagen/`` and never imports it.
"""
try:
    import comfy.utils  # noqa: F401  (only present inside a ComfyUI process)
except ImportError:
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}
else:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = None
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
