"""The model-file layer's error, and the one place where it becomes a package's own error class."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class ModelFileError(ValueError):
    """A weight file or model folder that cannot be read or is not what was asked for; the message names the file,
    what was expected and the fix. `CheckpointError` and `TextEncoderError` are subclasses."""


@contextmanager
def raised_as(error: type[ModelFileError]) -> Iterator[None]:
    """Re-raise a `ModelFileError` from the block as ``error`` (same message, the original as its cause), so that a
    package's loaders raise their own class: ``with raised_as(CheckpointError): ...`` in `load_stage`."""
    try:
        yield
    except ModelFileError as e:
        if isinstance(e, error):
            raise
        raise error(str(e)) from e
