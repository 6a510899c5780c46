"""Prompt files for ``python -m comfyui_imagen generate --prompts FILE -o DIR``: read, checked and named in full
before anything is generated, then shared out among the processes ``torchrun`` starts.

Format. A file whose non-blank lines are JSON objects (or whose name ends in .jsonl) is JSONL, one object a line::

    {"prompt": "a red circle", "seed": 7, "negative": "a blue square", "out": "red.png"}

``prompt`` is required; ``seed`` (0 .. 2^64 - 1), ``negative`` and ``out`` (a file name in DIR ending in .png, .jpg,
.jpeg or .webp; no folders) are optional; other keys are errors. Any other file is plain text, one prompt a line.
A file that mixes JSON-object lines with other lines is an error naming the first line that is not an object
(read as text, its JSON lines would silently become prompts). Blank lines are skipped in either format.

Numbering. A prompt's number n is its line's, counted from 0 (line 1 is prompt 0), so blanking a line to drop its
prompt from a resumed run moves no other output, ``00004.png`` is line 5 of the file, and prompt 0 with ``--seed S``
draws what ``generate PROMPT --seed S`` draws. Prompt n writes ``NNNNN.png`` (n zero-padded
to 5 digits) unless it names its ``out``; with ``--batch-size B`` > 1 it writes B images, NAME-0.png .. NAME-{B-1}.png
(`image_names`, as ``generate -o NAME.png`` does). Messages name the file's line (1-based, as editors count).

Seeds. Prompt n's image k uses seed S + k: S is the line's ``seed``, else ``--seed + n * B``, so no two images of a
file share a seed and a prompt's pixels do not depend on which process drew it (`PromptJob.seed`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional

FIELDS = ("prompt", "seed", "negative", "out")
OUT_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class PromptJob:
    """One prompt of a file: its number (its line's, 0-based), its line in the file (1-based), what to
    draw, the seed of its first image, and the file names it writes (``name``, or NAME-k for each of a batch)."""

    index: int
    line: int
    prompt: str
    negative: str
    seed: int
    name: str
    outputs: tuple[str, ...]


def image_names(name: str, count: int) -> list[str]:
    """The files a batch of `count` images is saved as: ``name`` for one, NAME-0.EXT, NAME-1.EXT ... for more."""
    if count == 1:
        return [name]
    stem, suffix = Path(name).stem, Path(name).suffix
    return [f"{stem}-{k}{suffix}" for k in range(count)]


def read_prompt_file(path, *, seed: int = 0, negative: str = "", batch_size: int = 1) -> list[PromptJob]:
    """Every prompt of the file at `path` (format, numbering and seeds: the module's docstring), each with its seed
    (``seed`` + number * ``batch_size`` where the line gives none), negative prompt (``negative`` where the line gives
    none) and output names. ValueError naming the file and line for anything wrong, and for two lines that would
    write the same file."""
    from .checks import check_int, check_text
    from .samplers import SEED_MAX

    path = Path(path).expanduser()
    lines = [(number, text.strip()) for number, text in enumerate(_read_text(path).split("\n"), 1) if text.strip()]
    if not lines:
        raise ValueError(f"--prompts {path}: no prompts in the file (one a line, or JSONL lines "
                         f'{{"prompt": "..."}})')
    parsed = [_json_object(text) for _, text in lines]
    jsonl = path.suffix.lower() == ".jsonl" or any(obj is not None for obj, _ in parsed)
    jobs, written = [], {}
    for (number, text), (obj, why_not) in zip(lines, parsed):
        index = number - 1
        where = f"{path} line {number}"
        if not jsonl:
            obj = {"prompt": text}
        elif obj is None:
            raise ValueError(f"{where} is not a JSON object ({why_not}); the file is read as JSONL, so every line "
                             f'must be one, e.g. {{"prompt": "a red circle", "seed": 3}}')
        unknown = sorted(set(obj) - set(FIELDS))
        if unknown:
            raise ValueError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(FIELDS)}")
        prompt = _text_field(obj, "prompt", where)
        if prompt is None or not prompt.strip():
            raise ValueError(f'{where}: give a non-empty "prompt", e.g. {{"prompt": "a red circle"}}')
        line_negative = _text_field(obj, "negative", where)
        line_seed = obj.get("seed")
        if line_seed is not None:
            line_seed = check_int(line_seed, f'{where}: "seed"', 0, SEED_MAX)
        name = _out_name(obj.get("out"), where) if "out" in obj else f"{index:05d}.png"
        job = PromptJob(index=index, line=number, prompt=check_text(prompt, f'{where}: the prompt'),
                        negative=check_text(negative if line_negative is None else line_negative,
                                            f"{where}: the negative prompt"),
                        seed=(seed + index * batch_size) & SEED_MAX if line_seed is None else line_seed,
                        name=name, outputs=tuple(image_names(name, batch_size)))
        for output in job.outputs:
            other = written.setdefault(output.casefold(), job)
            if other is not job:
                raise ValueError(f"{path} lines {other.line} and {number} both write {output}; give one of them "
                                 f'another "out" (names differing only in case count as the same file)')
        jobs.append(job)
    return jobs


def launch_rank(environ: Optional[Mapping[str, str]] = None) -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) of this process as ``torchrun`` sets them (`environ`: default os.environ);
    (0, 1, 0) outside torchrun. Sharding needs no process group: rank r takes prompts r, r + N, r + 2N ..."""
    from .checks import check_int

    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return 0, 1, 0

    def number(key: str, default: Optional[str] = None) -> int:
        value = environ.get(key, default)
        if value is None or not value.strip().isdigit():
            raise ValueError(f"the environment's {key} is {value!r}; torchrun sets RANK, WORLD_SIZE and LOCAL_RANK "
                             f"to whole numbers (unset WORLD_SIZE to run without it)")
        return int(value)

    world = check_int(number("WORLD_SIZE"), "the environment's WORLD_SIZE", 1)
    rank = check_int(number("RANK"), "the environment's RANK", 0, world - 1)
    return rank, world, number("LOCAL_RANK", str(rank))


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"--prompts {path}: cannot read it ({e.strerror or e})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise ValueError(f"{path} line {line} is not UTF-8 text; save the file as UTF-8") from None


def _json_object(text: str) -> tuple[Optional[dict], str]:
    """(the line's JSON object, "") or (None, why it is not one)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"{e.msg} at column {e.colno}"
    return (value, "") if isinstance(value, dict) else (None, f"a JSON {type(value).__name__}")


def _text_field(obj: dict, key: str, where: str) -> Optional[str]:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f'{where}: "{key}" must be text, got {json.dumps(value)}')
    return value


def _out_name(value, where: str) -> str:
    if not isinstance(value, str) or Path(value).suffix.lower() not in OUT_SUFFIXES:
        raise ValueError(f'{where}: "out" must be a file name ending in {", ".join(OUT_SUFFIXES)}, got '
                         f"{json.dumps(value)}")
    if "/" in value or "\\" in value or "\0" in value or value.startswith("."):
        raise ValueError(f'{where}: "out" {json.dumps(value)} must be a plain file name (no folder, no leading '
                         f'dot): every image goes into the -o folder')
    return value
