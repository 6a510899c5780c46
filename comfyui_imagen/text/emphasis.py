"""ComfyUI's prompt-weight syntax, ``(red:1.3)`` and ``((word))``, with ComfyUI's semantics, for T5 prompts.

What ComfyUI 0.33.0 does (``comfy/sd1_clip.py``), reproduced here from its behaviour (ComfyUI is GPL-3.0; this is a
re-implementation, not a copy, checked against its functions in tests/test_text_emphasis.py):

* ``escape_important`` first turns ``\\(`` and ``\\)`` into placeholders, so they reach the tokenizer as literal
  ``(`` and ``)`` (the backslash is dropped) and never open or close a group.
* ``parse_parentheses`` splits the text into top-level groups: ``(`` at depth 0 starts a group, the ``)`` that
  brings the depth back to 0 ends it; nested parentheses stay inside the group. A ``)`` with no open group drives
  the depth below 0 and is kept as text (so is the ``(`` that brings it back to 0); an unclosed ``(`` keeps the rest
  of the prompt as text.
* ``token_weights`` gives each group ``(x)`` the weight around it times 1.1 (``((a))`` is 1.1 * 1.1), and then, if
  the group's text has a ``:`` after its first character and what follows the last ``:`` is a Python float,
  *replaces* the weight with that number (``((a:1.5))`` is 1.5, not 1.65) and drops ``:number``. A tail that is not
  a number (``(a:abc)``) stays in the text and the group keeps its 1.1. Square brackets mean nothing (``[a]`` is
  text; A1111's de-emphasis is not ComfyUI's). Empty groups ``()`` vanish.
* ``SDTokenizer.tokenize_with_weights`` then tokenizes every weighted piece *on its own* (so ``a (red) circle`` is the
  tokens of "a ", "red" and " circle" concatenated), splitting a piece once more before each ``embedding:`` that
  follows whitespace (or opens the piece). An ``embedding:name`` that is not found (with an embeddings folder, as
  ComfyUI always has one) is dropped with a warning, and the rest of the word after the name (from a ``<`` or ``[``
  in it, or trailing commas) and the following words are tokenized as the next piece. T5 has no textual-inversion
  embeddings, so here every ``embedding:name`` is such a missing one. Each token carries its piece's weight; the
  end token and the padding weigh 1.
* ``ClipTokenWeightEncoder.encode_token_weights``: if any weight differs from 1, the token sequence and an "empty"
  sequence of the same length (``gen_empty_tokens``: for T5 the end token then padding, i.e. the encoding of the
  empty prompt "") are encoded, and every token j whose weight w differs from 1 becomes
  ``z[j] = (z[j] - z_empty[j]) * w + z_empty[j]``: interpolated from (or, for w > 1, extrapolated past) the empty
  prompt's encoding at the same position. Tokens of weight 1 are left exactly as encoded. No weight -> no empty
  encoding, nothing changes.

ComfyUI's T5 tokenizers keep this: the ``T5XXLTokenizer`` of ``comfy/text_encoders/sd3_clip.py`` (SD3),
``flux.py`` (Flux's t5xxl), ``pixart_t5.py``, ``cosmos.py``, ``genmo.py`` (Mochi) and ``lt.py`` (LTX-Video), and
``aura_t5.py``, ``wan.py`` (UMT5), ``hydit.py`` (mT5), ``sa_t5.py``, ``hunyuan_image.py`` (ByT5) are ``SDTokenizer``s
that never set ``disable_weights``, and their models are ``SDClipModel``s, which inherit ``encode_token_weights``.
Only LLM-style encoders (Mistral in ``flux.py``, Qwen, Gemma, Llama templates) and SAM3's CLIP pass
``disable_weights=True``. So ``(red:1.3)`` means the same to Flux's and SD3's T5 as to CLIP, and the same here.

How `T5TextEncoder.encode` (``emphasis=True``) applies it: prompts are lower-cased / stripped first (IF's "lower"),
or parsed first and cleaned piece by piece ("clean": IF's cleaner deletes parentheses); the concatenated tokens are
truncated and padded as IF does (`pad_and_truncate`; weights follow their tokens, </s> and padding weigh 1); z_empty
is the encoding of "" at the same ``max_length`` with its IF mask (</s> then padding: ComfyUI's empty sequence),
encoded on its own and cached, so it is the same tensor as a plain "" negative prompt. A prompt that parses to one
piece of weight 1 (no syntax, ``(a:1.0)``, ``\\(a\\)``) is encoded as that text on the plain path, bit for bit.

Where ours differs, on purpose: ComfyUI lets any float through, so ``(a:nan)`` or ``(a:1e39)`` gives NaN / Inf
embeddings and a black image; here a weight must be finite and within +-`WEIGHT_LIMIT` (a `TextEncoderError` quoting
the piece). ComfyUI raises IndexError on a bare ``embedding:`` with no name; here it is dropped like a missing one.
"""
from __future__ import annotations

import math
import re
import warnings

import torch

from .cleaning import clean_caption
from .errors import TextEncoderError, TextEncoderWarning

GROUP_FACTOR = 1.1           # each pair of parentheses around a piece multiplies its weight (ComfyUI, A1111)
WEIGHT_LIMIT = 100.0         # |weight| beyond this is refused: ComfyUI has no limit, typical weights are 0.5 .. 2
EMBEDDING_PREFIX = "embedding:"
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))   # ComfyUI's placeholders for escaped parentheses
_BEFORE_EMBEDDING = re.compile(r"(?<=\s)" + re.escape(EMBEDDING_PREFIX))
_NAME_END = re.compile(r"[<\[]")

Pieces = tuple[tuple[str, float], ...]


def split_groups(text: str) -> list[str]:
    """The top-level parenthesised groups and the text between them, in order (ComfyUI's ``parse_parentheses``)."""
    parts, current, depth = [], "", 0
    for char in text:
        if char == "(" and depth == 0:
            if current:
                parts.append(current)
            current, depth = "(", 1
        elif char == ")" and depth == 1:
            parts.append(current + ")")
            current, depth = "", 0
        else:   # text, or a parenthesis inside a group, or an unmatched one (depth below 0) kept as text
            current += char
            depth += (char == "(") - (char == ")")
    if current:
        parts.append(current)
    return parts


def _explicit_weight(inner: str) -> tuple[str, float] | None:
    """``("a", 1.3)`` for the group text ``"a:1.3"``; None when there is no ``:number`` tail."""
    colon = inner.rfind(":")
    if colon <= 0:
        return None
    try:
        return inner[:colon], float(inner[colon + 1:])
    except ValueError:
        return None


def weighted_segments(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """(text, weight) segments of an escaped prompt, nesting resolved (ComfyUI's ``token_weights``)."""
    out = []
    for part in split_groups(text):
        if len(part) < 2 or not (part.startswith("(") and part.endswith(")")):
            out.append((part, weight))
            continue
        inner, inner_weight = part[1:-1], weight * GROUP_FACTOR
        explicit = _explicit_weight(inner)
        if explicit is not None:
            inner, inner_weight = explicit
        out.extend(weighted_segments(inner, inner_weight))
    return out


def _escape(text: str) -> str:
    for literal, placeholder in _ESCAPES:
        text = text.replace(literal, placeholder)
    return text


def _unescape(text: str) -> str:
    for literal, placeholder in _ESCAPES:
        text = text.replace(placeholder, literal[1])
    return text


def _without_embeddings(segment: str, dropped: list[str]) -> list[str]:
    """The words of a segment ComfyUI tokenizes one by one, each ``embedding:name`` left out (its name appended to
    ``dropped``) as ComfyUI leaves out an embedding it cannot find."""
    first, *rest = _BEFORE_EMBEDDING.split(segment)
    out = []
    for word in [first] + [EMBEDDING_PREFIX + r for r in rest]:
        if not word.startswith(EMBEDDING_PREFIX):
            out.append(word)
            continue
        names = word[len(EMBEDDING_PREFIX):].strip("\n").split()
        if not names:
            continue
        name, leftover = names[0], " ".join(names[1:])
        cut = _NAME_END.search(name)
        if cut is not None:
            name, leftover = name[:cut.start()], name[cut.start():] + (" " + leftover if leftover else "")
        stripped = name.strip(",")
        if len(stripped) < len(name):
            leftover = f"{name[len(stripped):]} {leftover}"
        dropped.append(stripped)
        out.append(leftover)
    return [w for w in out if w]


def _check_weight(text: str, weight: float) -> None:
    if not math.isfinite(weight) or abs(weight) > WEIGHT_LIMIT:
        raise TextEncoderError(
            f"prompt weight {weight!r} on {text!r} cannot be used: weights in (text:weight) must be numbers from "
            f"{-WEIGHT_LIMIT:g} to {WEIGHT_LIMIT:g} (0.5 .. 1.5 is usual; nesting multiplies by 1.1 per pair of "
            "parentheses); lower it in the prompt, or write \\( and \\) for literal parentheses")


def prompt_pieces(text: str, *, stacklevel: int = 2) -> Pieces:
    """The pieces ComfyUI tokenizes separately for a prompt, each with its weight (see the module docstring).

    A prompt without parentheses, backslash-escapes or ``embedding:`` gives ``((text, 1.0),)``; "" gives ``()``.
    Raises `TextEncoderError` for a weight that is not finite or beyond +-`WEIGHT_LIMIT`."""
    try:
        segments = weighted_segments(_escape(text))
    except RecursionError:
        raise TextEncoderError("the prompt nests parentheses too deeply to read as weights; use (text:weight) with "
                               "a number, or write \\( and \\) for literal parentheses") from None
    pieces, dropped = [], []
    for segment, weight in segments:
        for word in _without_embeddings(_unescape(segment), dropped):
            _check_weight(word, weight)
            pieces.append((word, weight))
    if dropped:
        warnings.warn(f"{', '.join(EMBEDDING_PREFIX + n for n in dropped)}: T5 has no textual-inversion embeddings, "
                      "so the name was left out of the prompt (as ComfyUI leaves out an embedding it cannot find); "
                      "write the words themselves instead", TextEncoderWarning, stacklevel=stacklevel)
    return tuple(pieces)


def clean_pieces(pieces: Pieces) -> Pieces:
    """Pieces through IF's caption cleaner one by one (it would remove the parentheses of the syntax itself), a space
    kept where a piece met its neighbour with whitespace; pieces cleaned away are left out."""
    out = []
    for i, (raw, weight) in enumerate(pieces):
        text = clean_caption(raw)
        if not text:
            continue
        before = " " if i > 0 and raw[:1].isspace() else ""
        after = " " if i < len(pieces) - 1 and raw[-1:].isspace() else ""
        out.append((before + text + after, weight))
    return tuple(out)


def has_weights(pieces: Pieces) -> bool:
    """Whether any piece weighs other than 1, so that the empty prompt's encoding is needed."""
    return any(weight != 1.0 for _, weight in pieces)


def is_plain(pieces: Pieces) -> bool:
    """Whether the pieces are one plain prompt: at most one piece, of weight 1 (encoded as that text alone)."""
    return len(pieces) <= 1 and not has_weights(pieces)


def token_weight_row(piece_lengths: list[int], weights: list[float], length: int) -> torch.Tensor:
    """Per-position weights [length] (float32) for pieces of ``piece_lengths`` tokens laid out from position 0 and cut
    to ``length - 1`` as `pad_and_truncate` cuts the ids; the end token and the padding weigh 1."""
    row = [w for n, w in zip(piece_lengths, weights) for _ in range(n)][: length - 1]
    return torch.tensor(row + [1.0] * (length - len(row)), dtype=torch.float32)


def weigh_from_empty(z: torch.Tensor, z_empty: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """ComfyUI's token weighting (``ClipTokenWeightEncoder.encode_token_weights``): positions whose weight w is not 1
    become ``(z - z_empty) * w + z_empty``, the others stay bit for bit.

    z, z_empty: [..., L, D] encodings of the prompt and of the empty prompt at the same length; weights: [..., L]."""
    changed = (weights != 1.0).unsqueeze(-1)
    if not bool(changed.any()):
        return z
    w = weights.to(z.dtype).unsqueeze(-1)
    return torch.where(changed, (z - z_empty) * w + z_empty, z)
