"""Errors and warnings of the text-encoder package: one home, so that callers catch one class."""
from __future__ import annotations

from ..files.errors import ModelFileError


class TextEncoderError(ModelFileError):
    """A T5 file, folder, tokenizer or prompt that cannot be used; the message names the file and the fix.

    A `ModelFileError` (a ValueError); `load_t5` raises the file layer's errors as this class."""


class TextEncoderWarning(UserWarning):
    """Something worked but the user should know: tokens dropped by truncation, unknown characters, a decoder ignored."""
