"""Stage checkpoints: our native safetensors format, DeepFloyd IF (diffusers folder or lone file), safe loading.

`load_stage(path, dtype=None) -> Stage` reads any of them; `save_stage(path, unet, config, train_config=None)` writes
the native one. `Stage` and `StageConfig` live in `comfyui_imagen.stage` (re-exported here); the weight reading is
`comfyui_imagen.files`.
"""
from ..stage import Stage, StageConfig
from .errors import CheckpointError
from .if_stages import IF_DEFAULTS, IF_STAGES, if_stage_config
from .loader import AUTO, STAGE_DTYPES, classify, load_stage, loaded_plan, peek_stage, stage_plan
from .native import read_train_config, save_stage

__all__ = ["AUTO", "CheckpointError", "IF_DEFAULTS", "IF_STAGES", "STAGE_DTYPES", "Stage", "StageConfig", "classify",
           "if_stage_config", "load_stage", "loaded_plan", "peek_stage", "read_train_config", "save_stage",
           "stage_plan"]
