"""Stage checkpoints: our native safetensors format, DeepFloyd IF (diffusers folder or lone file), safe loading.

`load_stage(path, dtype=None) -> Stage` reads any of them; `save_stage(path, unet, config)` writes the native one.
"""
from .errors import CheckpointError
from .loader import classify, load_stage
from .native import save_stage
from .stage import IF_STAGES, Stage, StageConfig, if_stage_config

__all__ = ["CheckpointError", "IF_STAGES", "Stage", "StageConfig", "classify", "if_stage_config", "load_stage",
           "save_stage"]
