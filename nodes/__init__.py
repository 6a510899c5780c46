"""Thin ComfyUI adapters over ``comfyui_imagen``: unpack sockets, call one library function, pack the result."""
NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
