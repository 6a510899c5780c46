"""The checkpoint package's one error class, so that callers (nodes, CLI) catch exactly one thing."""
from __future__ import annotations

from ..files.errors import ModelFileError


class CheckpointError(ModelFileError):
    """A stage file or folder that cannot be loaded: the message names the file, what was expected, and the fix.

    A `ModelFileError` (a ValueError); `load_stage` raises the file layer's errors as this class."""
