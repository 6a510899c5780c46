"""`Stage` and `StageConfig` moved to `comfyui_imagen.stage` (a model-side concept, not a file format); these names
stay importable from here for code written against earlier versions."""
from ..stage import Stage, StageConfig, validate_stage_config  # noqa: F401
from .if_stages import IF_STAGES, if_stage_config  # noqa: F401
from ..denoisers import PREDICTION_TYPES, VARIANCE_TYPES  # noqa: F401
