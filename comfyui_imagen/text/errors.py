"""Errors and warnings of the text-encoder package: one home, so that callers catch one class."""
from __future__ import annotations


class TextEncoderError(ValueError):
    """A T5 file, folder, tokenizer or prompt that cannot be used; the message names the file and the fix."""


class TextEncoderWarning(UserWarning):
    """Something worked but the user should know: tokens dropped by truncation, unknown characters, a decoder ignored."""
