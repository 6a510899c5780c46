"""The Efficient U-Net (Imagen, DeepFloyd IF): `ImagenUNet(UNetConfig)` and named presets."""
from .config import (BASE_64, IF_I_L, IF_I_M, IF_I_XL, IF_II_L, IF_II_M, PRESETS, SR_256, SR_1024, TINY_BASE, TINY_SR,
                     UNetConfig, get_preset)
from .model import ImagenUNet

__all__ = ["ImagenUNet", "UNetConfig", "PRESETS", "get_preset", "BASE_64", "SR_256", "SR_1024", "IF_I_M", "IF_I_L",
           "IF_I_XL", "IF_II_M", "IF_II_L", "TINY_BASE", "TINY_SR"]
