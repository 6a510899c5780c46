"""The checkpoint package's one error class, so that callers (nodes, CLI) catch exactly one thing."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A stage file or folder that cannot be loaded: the message names the file, what was expected, and the fix."""
