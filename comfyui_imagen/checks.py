"""Checks shared from the bottom of the library up (the diffusion core, settings, the runs, the file readers): one
home for "a whole number in a range", "a real number" (numpy / Python numbers alike, never a bool, whole floats
accepted as the integers they are: ``width=64.0`` is 64), "text a tokenizer can read" and "a tensor holds no NaN or
Inf"."""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch


def is_real(value) -> bool:
    """A finite real number (int, float, numpy scalar...), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_int(value, name: str, low: int, high: Optional[int] = None, hint: str = "") -> int:
    """``value`` as an int when it is a whole number (not a bool) in [low, high]; ValueError naming it otherwise."""
    if not (is_real(value) and int(value) == value) or value < low or (high is not None and value > high):
        span = f">= {low}" if high is None else f"from {low} to {high}"
        kind = "" if is_real(value) or value is None else f" (a {type(value).__name__}; pass a number, not text)"
        raise ValueError(f"{name} must be an integer {span}{hint}, got {value!r}{kind}")
    return int(value)


# fp8 formats by the smallest magnitude byte (sign bit cleared) that is not finite: e4m3fn has only NaN (0x7F),
# e5m2 has Inf and NaN from 0x7C (IEEE-style all-ones exponent).
_FP8_NONFINITE = {torch.float8_e4m3fn: 0x7F, torch.float8_e5m2: 0x7C}
_SLICE = 1 << 24  # elements per slice where a temporary is needed (fp8 bytes)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or Inf (True for integer tensors).

    One ``aminmax`` pass (NaN propagates into it, an Inf is its min or max; ~0.1 ns per element, no temporary);
    fp8 tensors, which have no min/max kernel, by their bytes a slice at a time."""
    if not tensor.is_floating_point() or not tensor.numel():
        return True
    flat = tensor.reshape(-1)
    limit = _FP8_NONFINITE.get(tensor.dtype)
    if limit is not None:
        return all(int((flat[i:i + _SLICE].view(torch.uint8) & 0x7F).amax()) < limit
                   for i in range(0, flat.numel(), _SLICE))
    if tensor.element_size() == 1:  # another 1-byte float: through float32, a slice at a time
        return all(all_finite(flat[i:i + _SLICE].float()) for i in range(0, flat.numel(), _SLICE))
    low, high = torch.aminmax(flat)
    return math.isfinite(float(low)) and math.isfinite(float(high))


def check_text(text: str, what: str, error: type[ValueError] = ValueError) -> str:
    """``text`` if it encodes as UTF-8; ``error`` naming ``what`` otherwise. Bytes that are not UTF-8 reach Python
    as lone surrogates (a command-line argument or a file in another encoding), as does a broken copy and paste."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise error(f"{what} is not valid text: character {e.start + 1} ({text[e.start]!r}) is a lone surrogate "
                    f"(bytes that are not UTF-8, or a broken copy and paste); retype it, or save the text as "
                    f"UTF-8") from None
    return text
