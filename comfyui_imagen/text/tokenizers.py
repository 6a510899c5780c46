"""Tokenizers for T5: a Hugging Face tokenizer folder (T5's SentencePiece vocabulary as tokenizer.json), the vocabulary
a GGUF file embeds, or ByT5-style bytes, plus padding and truncation the way DeepFloyd IF's pipeline does them.

Every tokenizer here returns the *content* ids of each text (no special tokens); `pad_and_truncate` appends T5's
end-of-sequence token, truncates to ``max_length`` keeping that token last (as transformers' ``truncation=True``
does), right-pads with the pad id and returns the attention mask and how many tokens each text lost.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import torch

from .errors import TextEncoderError

TOKENIZER_FILES = ("tokenizer.json", "spiece.model")
T5_SPECIAL_TOKENS = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
TOKENIZER_HELP = ("put a T5 tokenizer folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json) next to "
                  "the model, or pass its path: ComfyUI ships one at ComfyUI/comfy/text_encoders/t5_tokenizer, "
                  "DeepFloyd IF at IF-I-XL-v1.0/tokenizer; use tokenizer='byte' for ByT5-style byte models")


class Tokenizer(Protocol):
    """What `T5TextEncoder` needs from a tokenizer."""

    name: str           # identifies the vocabulary for caches and messages
    vocab_size: int     # ids are < vocab_size
    pad_id: int
    eos_id: int
    unk_id: int | None

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Content ids of each text, without special tokens."""
        ...


class ByteTokenizer:
    """ByT5's byte-level vocabulary (Xue et al. 2022): UTF-8 byte b -> id b + 3; 0 = pad, 1 = </s>, 2 = unk.

    Needs no file and never meets an unknown character; meant for small models trained with it.
    """

    name = "byte"
    pad_id, eos_id, unk_id = 0, 1, 2
    offset = 3
    vocab_size = 256 + offset

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [[b + self.offset for b in text.encode("utf-8")] for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(i - self.offset for i in ids if i >= self.offset).decode("utf-8", errors="replace")


class HFTokenizer:
    """A transformers tokenizer (T5TokenizerFast / PreTrainedTokenizerFast) behind the `Tokenizer` protocol."""

    def __init__(self, tokenizer, name: str):
        self.tokenizer = tokenizer
        self.name = name
        tokenizer.model_max_length = 1 << 30   # we truncate ourselves; silence the "longer than 512" warning
        vocab = tokenizer.get_vocab()
        for attr, token in T5_SPECIAL_TOKENS.items():   # a bare tokenizer.json leaves them unset
            if getattr(tokenizer, attr) is None and token in vocab:
                setattr(tokenizer, attr, token)
        eos = tokenizer.eos_token_id
        if eos is None:
            raise TextEncoderError(f"tokenizer {name} has no end-of-sequence token '</s>'; it is not a T5 tokenizer. "
                                   + TOKENIZER_HELP)
        self.eos_id = int(eos)
        self.pad_id = int(tokenizer.pad_token_id) if tokenizer.pad_token_id is not None else 0
        self.unk_id = int(tokenizer.unk_token_id) if tokenizer.unk_token_id is not None else None
        self.vocab_size = len(tokenizer)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))


# SentencePiece piece types as GGUF's tokenizer.ggml.token_type stores them (llama.cpp's SentencePieceTokenTypes)
SPM_UNKNOWN, SPM_CONTROL, SPM_USER_DEFINED = 2, 3, 4
GGUF_VOCAB = "tokenizer.ggml."


class VocabTokenizer:
    """T5's SentencePiece unigram tokenizer rebuilt from the vocabulary a GGUF file embeds.

    llama.cpp's converter (convert_hf_to_gguf.py, T5EncoderModel.set_vocab) writes spiece.model as
    ``tokenizer.ggml.model`` = "t5", ``.tokens`` (pieces, padded to the embedding rows with unused "[PADn]"),
    ``.scores``, ``.token_type``, ``.add_space_prefix``, ``.remove_extra_whitespaces``, ``.precompiled_charsmap``
    and the special ids. They are assembled here with the ``tokenizers`` library into what T5's own tokenizer.json
    holds: the charsmap normalizer, a right strip and runs of spaces folded (remove_extra_whitespaces), the "▁"
    metaspace prefixed to the text (add_space_prefix), the unigram model, and control / unknown / user-defined
    pieces as special tokens, so the ids are the tokenizer folder's.
    """

    def __init__(self, metadata: dict, name: str):
        from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
        from tokenizers import Tokenizer as Built
        from tokenizers.models import Unigram

        tokens, types = list(metadata[GGUF_VOCAB + "tokens"]), list(metadata[GGUF_VOCAB + "token_type"])
        scores = [float(x) for x in metadata[GGUF_VOCAB + "scores"]]

        def special(key: str, default: str) -> int | None:
            value = metadata.get(GGUF_VOCAB + key)
            return int(value) if value is not None else (tokens.index(default) if default in tokens else None)

        self.name, self.vocab_size = name, len(tokens)
        self.pad_id, self.eos_id = special("padding_token_id", "<pad>") or 0, special("eos_token_id", "</s>")
        self.unk_id = special("unknown_token_id", "<unk>")
        if self.eos_id is None or not len(tokens) == len(types) == len(scores):
            raise TextEncoderError(f"the vocabulary embedded in {name} is incomplete (no '</s>', or tokens, scores "
                                   "and types of different lengths); " + TOKENIZER_HELP)
        built = Built(Unigram(list(zip(tokens, scores)), unk_id=self.unk_id, byte_fallback=False))
        steps = []
        charsmap = metadata.get(GGUF_VOCAB + "precompiled_charsmap")
        if charsmap:
            steps.append(normalizers.Precompiled(bytes(charsmap)))
        if metadata.get(GGUF_VOCAB + "remove_extra_whitespaces", True):
            steps += [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), "▁")]
        built.normalizer = normalizers.Sequence(steps)
        prefix = "first" if metadata.get(GGUF_VOCAB + "add_space_prefix", True) else "never"
        built.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prefix)
        built.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prefix)
        built.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types)
                                  if kind in (SPM_UNKNOWN, SPM_CONTROL, SPM_USER_DEFINED)])
        self._built = built

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._built.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._built.decode(list(ids))


def embedded_tokenizer(metadata: dict, name: str) -> VocabTokenizer | None:
    """The tokenizer a GGUF file's metadata embeds, when it is a T5 (SentencePiece unigram) vocabulary."""
    if metadata.get(GGUF_VOCAB + "model") != "t5" or not metadata.get(GGUF_VOCAB + "tokens"):
        return None
    return VocabTokenizer(metadata, f"{name}#vocab")


@dataclass(frozen=True)
class TokenBatch:
    ids: torch.Tensor       # [B, L] long
    mask: torch.Tensor      # [B, L] bool, True on real tokens (content and </s>)
    dropped: list[int]      # tokens cut per text by truncation


def pad_and_truncate(token_lists: Sequence[Sequence[int]], max_length: int, *, pad_id: int,
                     eos_id: int) -> TokenBatch:
    """content + [eos], cut to ``max_length`` with eos kept last, right-padded with ``pad_id`` to ``max_length``."""
    if max_length < 1:
        raise TextEncoderError(f"max_length must be at least 1, got {max_length}")
    ids = torch.full((len(token_lists), max_length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(token_lists), max_length), dtype=torch.bool)
    dropped = []
    for row, content in enumerate(token_lists):
        kept = list(content[: max_length - 1]) + [eos_id]
        dropped.append(len(content) + 1 - len(kept))
        ids[row, : len(kept)] = torch.tensor(kept, dtype=torch.long)
        mask[row, : len(kept)] = True
    return TokenBatch(ids=ids, mask=mask, dropped=dropped)


def _from_json_file(file: Path):
    from transformers import PreTrainedTokenizerFast
    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(file))
    except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
        raise TextEncoderError(f"{file} is not a readable tokenizer.json ({str(e).splitlines()[0][:200]}); it is "
                               "damaged or truncated: copy it again, or " + TOKENIZER_HELP) from e


def _load_hf(path: Path) -> HFTokenizer:
    if path.is_file():
        if path.name.endswith(".json"):
            return HFTokenizer(_from_json_file(path), str(path.resolve()))
        path = path.parent  # spiece.model or tokenizer_config.json: load the folder
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # transformers raises many types (OSError, ValueError, ImportError for sentencepiece)
        if (path / "tokenizer.json").is_file():
            tokenizer = _from_json_file(path / "tokenizer.json")
        elif (path / "spiece.model").is_file():
            raise TextEncoderError(f"{path} has only spiece.model, and reading it failed ({e}); install the "
                                   "'sentencepiece' package, or use a folder with tokenizer.json: ComfyUI's "
                                   "comfy/text_encoders/t5_tokenizer has the same T5 vocabulary") from e
        else:
            raise TextEncoderError(f"could not load a tokenizer from {path} ({e}); " + TOKENIZER_HELP) from e
    return HFTokenizer(tokenizer, str(path.resolve()))


def load_tokenizer(path: str | Path | None) -> Tokenizer:
    """A tokenizer from a folder (tokenizer.json or spiece.model with its configs) or a tokenizer.json file;
    None or "byte" gives `ByteTokenizer`. Local files only: nothing is ever downloaded."""
    if path is None or (isinstance(path, str) and path.lower() in ("byte", "bytes", "byt5")):
        return ByteTokenizer()
    path = Path(path).expanduser()
    if not path.exists():
        raise TextEncoderError(f"tokenizer not found at {path}; " + TOKENIZER_HELP)
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise TextEncoderError(f"{path} has no tokenizer.json or spiece.model; " + TOKENIZER_HELP)
    return _load_hf(path)


def find_tokenizer(model_path: str | Path) -> Path | None:
    """A tokenizer folder belonging to a model, if one is where people put it: the model folder itself or its
    ``tokenizer/`` subfolder, IF's ``../tokenizer`` beside ``text_encoder/``, a ``<file stem>_tokenizer`` folder or a
    ``tokenizer/`` folder beside a single file."""
    model_path = Path(model_path).expanduser()
    if model_path.is_dir():
        candidates = [model_path, model_path / "tokenizer", model_path.parent / "tokenizer"]
    else:
        stem = model_path.name.split(".")[0]
        candidates = [model_path.parent / f"{stem}_tokenizer", model_path.parent / "tokenizer"]
    for folder in candidates:
        if folder.is_dir() and any((folder / f).is_file() for f in TOKENIZER_FILES):
            return folder
    return None
