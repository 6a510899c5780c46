"""The U-Nets: the Efficient U-Net (Imagen, DeepFloyd IF), `ImagenUNet(UNetConfig)` and named presets; imagen-pytorch's
U-Net, `imagen_pytorch.ImagenPytorchUNet(ImagenPytorchUNetConfig)`; `build_unet` picks by config."""
from .config import (BASE_64, IF_I_L, IF_I_M, IF_I_XL, IF_II_L, IF_II_M, PRESETS, SR_256, SR_1024, TINY_BASE, TINY_SR,
                     UNetConfig, get_preset)
from .model import ImagenUNet



def build_unet(config):
    """The U-Net module a config describes: `ImagenUNet` for a `UNetConfig`, `ImagenPytorchUNet` for an
    `ImagenPytorchUNetConfig`."""
    if isinstance(config, UNetConfig):
        return ImagenUNet(config)
    from .imagen_pytorch import ImagenPytorchUNet, ImagenPytorchUNetConfig

    if isinstance(config, ImagenPytorchUNetConfig):
        return ImagenPytorchUNet(config)
    raise ValueError(f"no U-Net is built from a {type(config).__name__}; expected a UNetConfig or an "
                     f"ImagenPytorchUNetConfig")


__all__ = ["ImagenUNet", "build_unet", "UNetConfig", "PRESETS", "get_preset", "BASE_64", "SR_256", "SR_1024", "IF_I_M", "IF_I_L",
           "IF_I_XL", "IF_II_M", "IF_II_L", "TINY_BASE", "TINY_SR"]
