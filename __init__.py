"""ComfyUI entry point for comfyui-imagen.

ComfyUI imports this package from custom_nodes/. Where the server has the V3 node API (``comfy_api.latest``) the
pack exports only ``comfy_entrypoint`` (`nodes.v3`: the V3 nodes generated from each node's V1 declaration); on an
older server it exports the V1 ``NODE_CLASS_MAPPINGS``. Never both: ComfyUI's loader takes ``NODE_CLASS_MAPPINGS``
first and would not run the V3 entry. Outside ComfyUI (tests, the library, the command line) the import is guarded
so that nothing of ComfyUI is required and nothing is imported: the library lives in ``comfyui_imagen/`` and never
imports it.
"""
try:
    import comfy.utils  # noqa: F401  (only present inside a ComfyUI process)
except ImportError:
    NODE_CLASS_MAPPINGS = {}
    NODE_DISPLAY_NAME_MAPPINGS = {}
    __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
else:
    from .nodes import comfy_compat as _compat

    if _compat.v3_api() is not None:
        from .nodes.v3 import comfy_entrypoint

        __all__ = ["comfy_entrypoint"]
    else:
        from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

        __all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]

WEB_DIRECTORY = None
