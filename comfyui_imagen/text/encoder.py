"""`load_t5` and `T5TextEncoder`: prompts -> `TextEmbeds(embeds [B, L, D], mask [B, L])`, as DeepFloyd IF encodes them.

IF tokenizes with ``padding="max_length", max_length=77, truncation=True`` and feeds T5 the attention mask; the
embeddings of the padding positions are kept (IF's U-Net saw them in training). imagen-pytorch zeroes them
(``zero_padding=True``) and uses up to 256 tokens. The unconditional embedding for classifier-free guidance is the
encoding of the empty prompt "" (IF's default negative prompt).

Encodings are cached per prompt in an LRU keyed by (model identity, prompt, settings): re-queuing a workflow, or the
same negative prompt for every image, costs no second T5 pass.
"""
from __future__ import annotations

import logging
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from ..checks import all_finite, check_text
from ..dtypes import cpu_has_fast_bf16  # native bf16 from the CPU's flags (oneDNN says yes where it emulates)
from ..files import raised_as
from .cleaning import PREPROCESS_MODES, Preprocess, preprocess
from .config import describe
from .emphasis import clean_pieces, has_weights, is_plain, prompt_pieces, token_weight_row, weigh_from_empty
from .errors import TextEncoderError, TextEncoderWarning
from .fp8 import is_fp8
from .model import T5Encoder
from .tokenizers import (ByteTokenizer, TOKENIZER_HELP, Tokenizer, embedded_tokenizer, find_tokenizer, load_tokenizer,
                         pad_and_truncate)
from .weights import open_source, read_encoder

log = logging.getLogger(__name__)

MAX_LENGTH_LIMIT = 1024
BYTE_VOCAB_LIMIT = 512           # a model with an embedding table this small was trained on bytes (ByT5: 384 rows)
# load_t5's storage dtype choices by name ("default" keeps the file's): what the T5 loader node offers
T5_DTYPES = {"default": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
             "fp8_e4m3fn": torch.float8_e4m3fn}
STORAGE_DTYPES = (*T5_DTYPES.values(), torch.float8_e5m2)


class TextEmbeds(NamedTuple):
    """T5 hidden states [B, L, D] (float32) and the token mask [B, L] (bool, True on real tokens)."""

    embeds: torch.Tensor
    mask: torch.Tensor

    def to(self, *args, **kwargs) -> "TextEmbeds":
        """Move/cast the embeddings (``Tensor.to`` arguments); the mask only follows the device."""
        embeds = self.embeds.to(*args, **kwargs)
        return TextEmbeds(embeds, self.mask.to(embeds.device))


def pick_compute_dtype(weight_dtype: torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """The activation dtype for T5 with weights stored in ``weight_dtype`` on ``device``.

    fp32 weights compute in fp32. Narrower weights (fp16, bf16, fp8) are upcast per layer anyway, so the choice is
    about speed and range: on a CPU with native bf16 matmuls (AVX-512 BF16 / AMX) bf16 is 2-3x faster than fp32,
    elsewhere fp32 (fp16 matmuls on CPU are slower than fp32 and T5 activations overflow fp16's range). On CUDA: bf16
    where supported, else fp32 -- never fp16, for the same overflow reason.
    """
    if weight_dtype == torch.float32 or weight_dtype == torch.float64:
        return torch.float32
    device = torch.device(device)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return torch.float32


class EmbeddingCache:
    """LRU of single-prompt encodings, key (model identity, prompt, settings) -> (embeds [L, D], mask [L]).

    Safe to share between threads (ComfyUI may run nodes from several): every lookup and update holds one lock."""

    def __init__(self, max_entries: int = 64):
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key, value) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _as_prompt_list(prompts: str | Sequence[str], what: str = "prompts") -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence) or len(prompts) == 0:
        raise TextEncoderError(f"{what} must be a string or a non-empty list of strings, got {prompts!r}; "
                               'use "" for the unconditional (empty) prompt')
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise TextEncoderError(f"{what} must all be strings; got {type(bad[0]).__name__} {bad[0]!r}")
    for i, prompt in enumerate(prompts):
        check_text(prompt, f"{what[:-1]} {i + 1}" if len(prompts) > 1 else what.rstrip("s"), TextEncoderError)
    return list(prompts)


class T5TextEncoder:
    """A loaded T5 encoder with its tokenizer; `encode` turns prompts into `TextEmbeds`."""

    def __init__(self, model: T5Encoder, tokenizer: Tokenizer, *, identity: str = "", batch_size: int = 8,
                 cache: EmbeddingCache | None = None):
        rows = model.config.vocab_size
        if tokenizer.vocab_size > rows:
            raise TextEncoderError(
                f"tokenizer {tokenizer.name} has {tokenizer.vocab_size} tokens but the T5 model's embedding table "
                f"has {rows} rows: they do not belong together; " + TOKENIZER_HELP)
        if isinstance(tokenizer, ByteTokenizer) and rows > BYTE_VOCAB_LIMIT:
            warnings.warn(f"byte-level tokenizer used with a T5 of {rows} tokens (a SentencePiece vocabulary): the "
                          "embeddings will be meaningless; " + TOKENIZER_HELP, TextEncoderWarning, stacklevel=2)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.identity = identity or f"model@{id(model):x}"
        self.batch_size = batch_size
        self.cache = cache if cache is not None else EmbeddingCache()

    # -- properties ---------------------------------------------------------------------------------------------------
    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.model.compute_dtype

    def to(self, device: str | torch.device | None = None, compute_dtype: torch.dtype | None = None):
        """Move the model and/or change its activation dtype (the cache key follows both)."""
        if device is not None:
            self.model.to(device)
        if compute_dtype is not None:
            self.model.set_compute_dtype(compute_dtype)
        return self

    # -- encoding -----------------------------------------------------------------------------------------------------
    def tokenize(self, prompts: str | Sequence[str], max_length: int = 77, *, _stacklevel: int = 2):
        """`TokenBatch` for already preprocessed prompts, with a warning for truncated ones and unknown characters."""
        prompts = _as_prompt_list(prompts)
        return self._pad(self.tokenizer.tokenize(prompts), max_length, _stacklevel + 1)

    def _pad(self, content: list[list[int]], max_length: int, stacklevel: int):
        """`pad_and_truncate` of content ids, warning (at ``stacklevel``) for truncated rows and unknown tokens."""
        batch = pad_and_truncate(content, max_length, pad_id=self.tokenizer.pad_id, eos_id=self.tokenizer.eos_id)
        cut = [(i, n) for i, n in enumerate(batch.dropped) if n > 0]
        if cut:
            detail = ", ".join(f"prompt {i + 1}: {n} of {n + max_length} tokens dropped" for i, n in cut)
            warnings.warn(f"prompt longer than max_length={max_length} tokens was truncated ({detail}); shorten it "
                          "or raise max_length (IF was trained with 77, imagen-pytorch uses up to 256)",
                          TextEncoderWarning, stacklevel=stacklevel)
        unk = self.tokenizer.unk_id
        if unk is not None:
            unknown = [(i, sum(t == unk for t in ids)) for i, ids in enumerate(content)]
            unknown = [(i, n) for i, n in unknown if n]
            if unknown:
                detail = ", ".join(f"prompt {i + 1}: {n}" for i, n in unknown)
                warnings.warn(f"characters unknown to the tokenizer were encoded as <unk> ({detail}); T5's "
                              "vocabulary covers English, German, French and Romanian", TextEncoderWarning,
                              stacklevel=stacklevel)
        top = int(batch.ids.max())
        if top >= self.config.vocab_size:
            raise TextEncoderError(f"tokenizer {self.tokenizer.name} produced id {top} but the model has only "
                                   f"{self.config.vocab_size} embeddings; use the model's own tokenizer")
        return batch

    def _forward(self, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(embeds [L, D] float32, mask [L]) per row of a `TokenBatch`, ``batch_size`` rows per T5 pass."""
        rows = []
        with torch.no_grad():   # not inference_mode: trainers feed these embeddings to modules under autograd
            for start in range(0, len(batch.ids), self.batch_size):
                ids = batch.ids[start:start + self.batch_size].to(self.device)
                mask = batch.mask[start:start + self.batch_size].to(self.device)
                hidden = self.model(ids, mask).float()
                if not all_finite(hidden):
                    fix = getattr(self.model, "nan_fix", None) or (f"load it with dtype fp32 or bf16, or use "
                                                                   f"another copy of the file")
                    raise TextEncoderError(f"T5 produced NaN or Inf embeddings: its weights are damaged or "
                                           f"overflowed in {self.compute_dtype}; {fix}")
                rows.extend(zip(hidden.unbind(0), mask.unbind(0)))
        return rows

    def _run(self, keys: list, max_length: int, empty) -> dict:
        """Encodings of cache keys in one T5 batch: a str is a plain prompt, a tuple the weighted pieces of one
        (`emphasis.prompt_pieces`), tokenized piece by piece and concatenated as ComfyUI does, its weighted positions
        then moved along the line from ``empty``, the empty prompt's (embeds, mask) at this length (None when no
        key weighs other than 1)."""
        plain = [k for k in keys if isinstance(k, str)]
        weighted = [k for k in keys if not isinstance(k, str)]
        ids = self.tokenizer.tokenize(plain + [text for k in weighted for text, _ in k])
        plain_ids, piece_ids = dict(zip(plain, ids)), iter(ids[len(plain):])
        content, weights = [], {}
        for key in keys:
            if isinstance(key, str):
                content.append(plain_ids[key])
                continue
            pieces = [next(piece_ids) for _ in key]
            content.append([i for piece in pieces for i in piece])
            if has_weights(key):
                weights[key] = token_weight_row([len(p) for p in pieces], [w for _, w in key], max_length)
        rows = dict(zip(keys, self._forward(self._pad(content, max_length, stacklevel=5))))
        for key, row_weights in weights.items():
            hidden, mask = rows[key]
            hidden = weigh_from_empty(hidden, empty[0], row_weights.to(hidden.device))
            if not all_finite(hidden):
                raise TextEncoderError("prompt weights made the T5 embeddings overflow; lower the (text:weight) "
                                       "numbers in the prompt")
            rows[key] = (hidden, mask)
        return rows

    def _prompt_key(self, prompt: str, preprocess_mode: Preprocess, emphasis: bool):
        """A prompt's cache key: its preprocessed text, or (with emphasis, weights or several pieces) its pieces."""
        if not emphasis:
            return preprocess(prompt, preprocess_mode)
        if preprocess_mode == "clean":   # the cleaner removes parentheses: parse first, clean each piece
            pieces = clean_pieces(prompt_pieces(prompt, stacklevel=5))
        else:
            pieces = prompt_pieces(preprocess(prompt, preprocess_mode), stacklevel=5)
        if not is_plain(pieces):
            return pieces
        return pieces[0][0] if pieces else ""

    def encode(self, prompts: str | Sequence[str], max_length: int = 77, *, preprocess_mode: Preprocess = "lower",
               zero_padding: bool = False, emphasis: bool = False) -> TextEmbeds:
        """Encode prompts to `TextEmbeds` of length ``max_length`` (padded; truncated with a warning).

        ``preprocess_mode``: "lower" lower-cases and strips as IF's pipeline does by default, "clean" runs IF's caption
        cleaner, "none" leaves the text alone. ``zero_padding`` zeroes the embeddings of padding positions
        (imagen-pytorch); IF keeps them. "" is a valid prompt: the unconditional embedding. ``emphasis`` reads
        ComfyUI's prompt weights, ``(red:1.3)``, ``((word))``, ``\\(`` for a literal parenthesis (`.emphasis`; after
        "lower" / "none" preprocessing, before "clean"); a prompt without that syntax encodes exactly as without it.
        """
        return self._encode([_as_prompt_list(prompts)], max_length, preprocess_mode=preprocess_mode,
                            zero_padding=zero_padding, emphasis=emphasis)[0]

    def encode_for_guidance(self, prompts: str | Sequence[str], negative_prompts: str | Sequence[str] = "",
                            max_length: int = 77, **options) -> tuple[TextEmbeds, TextEmbeds]:
        """(conditional, unconditional) embeddings for classifier-free guidance, batch sizes equal; ``options`` as
        for `encode`.

        A single negative prompt (default "", IF's unconditional embedding) is used for every prompt; a list must
        match the prompts one to one. Prompts and negative prompts missing from the cache share one T5 batch.
        """
        prompts = _as_prompt_list(prompts)
        negatives = _as_prompt_list(negative_prompts, "negative_prompts")
        if len(negatives) == 1:
            negatives = negatives * len(prompts)
        if len(negatives) != len(prompts):
            raise TextEncoderError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give one negative "
                                   "prompt for all, or one per prompt")
        cond, uncond = self._encode([prompts, negatives], max_length, **options)
        return cond, uncond

    def _encode(self, prompt_lists: list[list[str]], max_length: int, *, preprocess_mode: Preprocess = "lower",
                zero_padding: bool = False, emphasis: bool = False) -> list[TextEmbeds]:
        """`TextEmbeds` for each list of checked prompts; the keys none of the lists finds in the cache go through
        one `_run` (``batch_size`` rows per T5 pass). Warnings point at the caller of `encode` /
        `encode_for_guidance` (this is called directly by both)."""
        if preprocess_mode not in PREPROCESS_MODES:
            raise TextEncoderError(f"unknown preprocess_mode {preprocess_mode!r}; expected one of {PREPROCESS_MODES}")
        if not isinstance(max_length, int) or not 1 <= max_length <= MAX_LENGTH_LIMIT:
            raise TextEncoderError(f"max_length must be an integer in 1..{MAX_LENGTH_LIMIT}, got {max_length!r} "
                                   "(IF uses 77, imagen-pytorch up to 256)")
        key_lists = [[self._prompt_key(p, preprocess_mode, emphasis) for p in prompts] for prompts in prompt_lists]
        settings = (self.identity, self.tokenizer.name, str(self.device), str(self.compute_dtype), max_length)
        found = {k: self.cache.get((settings, k)) for k in dict.fromkeys(k for keys in key_lists for k in keys)}
        empty = None
        if any(v is None and not isinstance(k, str) and has_weights(k) for k, v in found.items()):
            empty = found[""] if "" in found else self.cache.get((settings, ""))
            if empty is None:   # "" on its own, as a plain "" is encoded: one unconditional embedding for both uses
                empty = self._run([""], max_length, None)[""]
                self.cache.put((settings, ""), empty)
            if "" in found:
                found[""] = empty
        missing = [k for k, v in found.items() if v is None]
        if missing:
            for key, row in self._run(missing, max_length, empty).items():
                found[key] = row
                self.cache.put((settings, key), row)
        encoded = []
        for keys in key_lists:
            embeds = torch.stack([found[k][0] for k in keys])
            mask = torch.stack([found[k][1] for k in keys])
            if zero_padding:
                embeds = embeds * mask.unsqueeze(-1).to(embeds.dtype)
            encoded.append(TextEmbeds(embeds, mask))
        return encoded

    def unconditional(self, batch_size: int = 1, max_length: int = 77, **options) -> TextEmbeds:
        """The empty-prompt embedding repeated ``batch_size`` times."""
        return self.encode([""] * batch_size, max_length, **options)

    def __repr__(self) -> str:
        return (f"T5TextEncoder({describe(self.config)}, tokenizer={self.tokenizer.name!r}, device={self.device}, "
                f"compute_dtype={self.compute_dtype})")


def _resolve_tokenizer(tokenizer, path: Path, vocab_size: int, fallback) -> Tokenizer:
    """The one tokenizer choice: the given one; else a folder beside the model; else bytes for a byte-sized
    embedding table; else `fallback` (a standard T5 v1.1 vocabulary, shared by every t5xxl file and IF's encoder)."""
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        return tokenizer                          # a ready tokenizer object
    if tokenizer is not None:
        return load_tokenizer(tokenizer)
    found = find_tokenizer(path)
    if found is not None:
        return load_tokenizer(found)
    if vocab_size <= BYTE_VOCAB_LIMIT:
        log.info("%s: no tokenizer folder found and the embedding table has %d rows: using byte tokens", path,
                 vocab_size)
        return ByteTokenizer()
    if fallback is not None:
        return load_tokenizer(fallback)
    raise TextEncoderError(f"no tokenizer found for {path}; " + TOKENIZER_HELP)


def load_t5(path: str | Path, dtype: torch.dtype | None = None, tokenizer=None, *,
            fallback_tokenizer: str | Path | None = None, compute_dtype: torch.dtype | None = None,
            device: str | torch.device = "cpu", cache: EmbeddingCache | None = None) -> T5TextEncoder:
    """Load a T5 encoder from a single file (fp16, bf16, fp32, fp8 plain or scaled, as ComfyUI keeps it; config
    inferred from the shapes; or a GGUF file, kept quantized), or a Hugging Face folder (config.json +
    model.safetensors / sharded index / .bin).

    dtype: storage dtype of the embedding and linear weights -- None keeps the file's (an fp8 file stays fp8 and is
    upcast layer by layer while encoding), or torch.float32 / bfloat16 / float16 / float8_e4m3fn / float8_e5m2.
    tokenizer: a folder or tokenizer.json path, "byte", a `Tokenizer` object, or None to look next to the model
    (then bytes for a byte-sized model, then ``fallback_tokenizer``: e.g. ComfyUI's bundled T5 tokenizer folder).
    compute_dtype: activation dtype, default `pick_compute_dtype`. Nothing is downloaded; the model is built on the
    meta device and takes the file's memory-mapped tensors as they are (`comfyui_imagen.files`), so loading costs
    about the file size, in page cache rather than in the process's own memory. Raises `TextEncoderError`.
    """
    if dtype not in STORAGE_DTYPES:
        raise TextEncoderError(f"dtype must be one of {[str(d) for d in STORAGE_DTYPES]}, got {dtype!r}")
    path = Path(path).expanduser()
    with raised_as(TextEncoderError):
        weights, hf_config = open_source(path)
        config, state, weight_dtype = read_encoder(weights, hf_config, dtype=dtype)
        damaged = next((key for key, value in state.items() if not all_finite(value)), None)
        if damaged is not None:  # (reads every float tensor once; GGML blocks are checked by the first encode)
            raise TextEncoderError(f"{path}: tensor {damaged!r} contains NaN or Inf values; the T5 file is damaged or "
                                   "comes from a diverged run, and every image would come out black. Use another "
                                   "copy of the file")
    model = T5Encoder(config, device="meta")     # no memory, no random init: the file's tensors are assigned
    for key, value in state.items():
        if key.endswith(".weight_scale"):
            model.get_submodule(key[: -len(".weight_scale")]).weight_scale = torch.empty(value.shape, device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.set_compute_dtype(compute_dtype or pick_compute_dtype(weight_dtype, device))
    if torch.device(device).type != "cpu":
        model.to(device)
    if tokenizer is None:
        tokenizer = embedded_tokenizer(weights.metadata, str(path))   # a GGUF file's own vocabulary, if any
    tok = _resolve_tokenizer(tokenizer, path, config.vocab_size, fallback_tokenizer)
    identity = f"{weights.fingerprint()}|{dtype}"
    encoder = T5TextEncoder(model, tok, identity=identity, cache=cache)
    log.info("loaded %s from %s (weights %s%s)", describe(config), path, weight_dtype,
             ", fp8 upcast per layer" if is_fp8(weight_dtype) else "")
    return encoder
