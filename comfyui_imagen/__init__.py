"""comfyui_imagen: Imagen-style cascaded pixel diffusion (T5 text encoder, 64 px base U-Net, super-resolution stages).

The library works in [B, C, H, W] tensors in -1..1 and knows nothing of ComfyUI. Importing it does nothing: no file
I/O, no network, no heavy imports; submodules are imported where they are used.
"""
__version__ = "0.1.0"
