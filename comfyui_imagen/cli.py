"""``python -m comfyui_imagen generate "a red circle to the left of a blue square" -o out.png``.

Runs the bundled demo cascade (frozen byte-level T5 -> 64 px base -> 256 px SR) unless other files are given: any
stage `load_stage` reads (native, DeepFloyd IF folder or file) and any T5 `load_t5` reads, so IF's stages with IF's
T5 run the same way. Sampling settings not given on the command line are each stage's recommended ones
(`Stage.recommended`: the file's, IF's published ones, the library's defaults measured on the demo). Progress is a
plain bar on stderr.

One model is in memory at a time (`pipeline.CascadeRunner`): the T5 encodes and is released before the base stage
loads, each stage is released before the next (``--keep-models`` holds them all). The stages run in the device's
dtype (``--dtype auto``, `comfyui_imagen.dtypes`: bf16 for IF's fp16 files on a CPU with native bf16).

``generate --prompts FILE -o DIR`` draws every prompt of a file (text or JSONL; format, numbering, names and seeds:
`comfyui_imagen.prompt_files`) with the models loaded once, skips the prompts whose files exist (a resumed run), and
under ``torchrun --nproc_per_node N`` each process draws every N-th prompt, on CUDA on its LOCAL_RANK's GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .checks import check_int, check_text
from .files import split_unet_name
from .samplers import SAMPLERS
from .settings import DEFAULT_BASE, DEFAULT_SR
from .text.cleaning import PREPROCESS_MODES


@dataclass
class Cascade:
    """A text encoder and the stages to run after one another (a base stage, then zero or more SR stages), all
    loaded (`load_cascade`); `pipeline.CascadeRunner` is the same cascade loading one model at a time."""

    t5: object
    base: object
    srs: list


# --dtype: the stages' dtype ("auto": the device's choice, `comfyui_imagen.dtypes`; the T5 chooses its own)
CLI_DTYPES = {"auto": "auto", "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cascade_loaders(t5: Optional[str] = None, base: Optional[str] = None, srs: Optional[list[str]] = None,
                    tokenizer: Optional[str] = None, dtype="auto", device: str = "cpu"):
    """(load_t5, load_base, [load_sr, ...]): functions that each load one model of the named files, the bundled
    demo's where a name is None (`srs=None`: the demo SR; `srs=[]`: none). dtype: the stages' (`load_stage`; "auto"
    is the device's choice, fp32 for the demo's fp32 files). The T5 keeps its file's storage dtype whatever ``dtype``
    says (an fp8 T5-XXL stays 4.9 GB; `load_t5` picks its compute dtype)."""
    from .checkpoints import load_stage
    from .text import load_t5

    demo = None
    if t5 is None or base is None or srs is None:
        from .demo import demo_files

        demo = demo_files()
    t5_path = t5 or demo["t5"]
    def load_encoder():
        if tokenizer:
            return load_t5(t5_path, tokenizer=tokenizer, device=device)
        return load_t5(t5_path, device=device)

    def stage_loader(path):
        def load():
            stage = load_stage(path, dtype=dtype, device=device)
            stage.unet.to(device).eval()
            return stage
        return load

    paths = [base or demo["base"], *([demo["sr"]] if srs is None else srs)]
    loaders = [stage_loader(p) for p in paths]
    return load_encoder, loaders[0], loaders[1:]


def load_cascade(t5: Optional[str] = None, base: Optional[str] = None, srs: Optional[list[str]] = None,
                 tokenizer: Optional[str] = None, dtype="auto", device: str = "cpu") -> Cascade:
    """Load the named files, the bundled demo's where a name is None (`srs=None`: the demo SR; `srs=[]`: none), all
    at once (`cascade_loaders`); memory: the sum of the models."""
    load_t5, load_base, load_srs = cascade_loaders(t5, base, srs, tokenizer, dtype, device)
    return Cascade(load_t5(), load_base(), [load() for load in load_srs])


def progress_bar(label: str, stream=None) -> Callable[[dict], None]:
    """A sampler callback drawing ``label [#####.....] 12/25 3.1s`` on one line of `stream` (default stderr)."""
    start = time.perf_counter()
    stream = stream or sys.stderr

    def update(info: dict) -> None:
        done, total = int(info["step"]) + 1, int(info["total"])
        filled = int(30 * done / max(total, 1))
        stream.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total} "
                     f"{time.perf_counter() - start:.1f}s")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return update


def stage_settings(stage, seed: int = 0, **flags):
    """The stage's recommended `SamplingSettings` with the given flags (sampler, steps, cfg, spacing: None = keep
    the stage's) and `seed`, by the nodes' rules (`settings.with_overrides`: ``--steps N`` over an IF preset runs N
    trailing steps)."""
    from .settings import AUTO, with_overrides

    return with_overrides(stage.recommended.settings, seed=seed,
                          **{name: AUTO if value is None else value for name, value in flags.items()})


def text_to_image(cascade: Cascade, prompts: list[str], *, negative: str = "", base_settings=None, sr_settings=None,
                  noise_level: Optional[int] = None, sr_strength: Optional[float] = None, max_length: int = 77,
                  progress: Optional[Callable[[str], Callable]] = None) -> list[torch.Tensor]:
    """Each stage's output for `prompts` (item k seeded seed + k): [base [B,3,64,64], sr1 [B,3,256,256], ...],
    images in -1..1, with the loaded `cascade` (`pipeline.run`, which releases nothing it was given)."""
    from .pipeline import CascadeRunner, run

    return run(CascadeRunner(cascade.t5, cascade.base, cascade.srs), prompts, negative=negative,
               base_settings=base_settings, sr_settings=sr_settings, noise_level=noise_level,
               sr_strength=sr_strength, max_length=max_length, progress=progress)


def save_images(images: torch.Tensor, out: Path) -> list[Path]:
    """One file per image: `out` itself for a batch of one, else out-0.png, out-1.png ... (`image_names`). Each is
    written under a temporary name in the same folder and renamed, so an interrupted run leaves no partial file."""
    from .images import to_pil
    from .prompt_files import image_names

    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_name(name) for name in image_names(out.name, images.shape[0])]
    for k, path in enumerate(paths):
        part = path.with_name(f".{path.stem}.{os.getpid()}.part{path.suffix}")  # the suffix names the format
        try:
            to_pil(images, k).save(part)
            os.replace(part, path)
        finally:
            part.unlink(missing_ok=True)
    return paths


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m comfyui_imagen", description="Imagen-style cascaded diffusion.")
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="text to image with a cascade (the bundled demo by default)")
    g.add_argument("prompt", nargs="?", default=None,
                   help="what to draw (or --prompts FILE); the bundled demo draws captions such as 'a red circle to "
                        "the left of a blue square' or 'a small green square in the top left on a black background'")
    g.add_argument("--prompts", default=None, metavar="FILE",
                   help='draw every prompt of FILE instead: one a line, or JSONL lines {"prompt": ..., "seed": ..., '
                        '"negative": ..., "out": "NAME.png"} (seed, negative, out optional; blank lines skipped). '
                        "Prompt n (line n + 1 of the file: blank lines keep their numbers) writes DIR/NNNNN.png "
                        "(5 digits) unless it names its out; outputs that exist are skipped (resume). The models load "
                        "once. "
                        "Under torchrun --nproc_per_node N each process draws every N-th prompt")
    g.add_argument("-o", "--output", default=None,
                   help="PNG path (a batch writes NAME-0.png, NAME-1.png ...) (default: out.png); with --prompts, "
                        "the folder for the images (default: out/, created)")
    g.add_argument("--negative", default="", help="negative prompt (default: the empty prompt; with --prompts, a "
                                                   "line's negative replaces it)")
    g.add_argument("--seed", type=int, default=0,
                   help="image k of the batch uses seed + k (default: 0); with --prompts, prompt n's image k uses "
                        "seed + n * batch-size + k, or the line's seed + k")
    g.add_argument("--batch-size", type=int, default=1,
                   help="images per run (default: 1); with --prompts, images per prompt: NNNNN-0.png, NNNNN-1.png ...")
    base, sr = DEFAULT_BASE.settings, DEFAULT_SR.settings

    def default(value) -> str:
        return f" (default: the stage's recommended one; the demo's: {value})"

    g.add_argument("--steps", type=int, default=None, help="base stage sampler steps" + default(base.steps))
    g.add_argument("--sr-steps", type=int, default=None, help="SR sampler steps" + default(sr.steps))
    g.add_argument("--cfg", type=float, default=None, help="guidance scale of the base stage" + default(base.cfg))
    g.add_argument("--sr-cfg", type=float, default=None, help="guidance scale of the SR stages" + default(sr.cfg))
    g.add_argument("--sampler", default=None,
                   help=f"base stage sampler, one of {', '.join(sorted(SAMPLERS))}" + default(base.sampler))
    g.add_argument("--sr-sampler", default=None, help="sampler of the SR stages" + default(sr.sampler))
    g.add_argument("--spacing", default=None,
                   help="sigma spacing or a DeepFloyd IF preset (smart50 ...)" + default(base.spacing))
    g.add_argument("--noise-level", type=int, default=None,
                   help="noise augmentation of the SR stages' input, 0..999 (IF uses 250)"
                        + default(DEFAULT_SR.noise_level))
    g.add_argument("--sr-strength", type=float, default=None,
                   help="1: SR from pure noise; below 1: start from the bicubic upsampling noised to that fraction "
                        "of the schedule (SDEdit: keeps the layout, fewer steps)" + default(DEFAULT_SR.strength))
    g.add_argument("--max-length", type=int, default=77,
                   help="tokens kept per prompt (DeepFloyd IF: 77; imagen-pytorch trains on 256; default: 77)")
    g.add_argument("--preprocess", choices=PREPROCESS_MODES, default="lower",
                   help="text preparation before the T5: lower (lower-case and trim, as DeepFloyd IF), none (as "
                        "typed, as imagen-pytorch), clean (IF's caption cleaner) (default: lower)")
    g.add_argument("--t5", default=None, help="T5 encoder file or HF folder (default: the bundled demo T5)")
    g.add_argument("--tokenizer", default=None, help="tokenizer folder for the T5 ('byte' for byte-level models; default: found beside "
                        "the T5, or the demo's byte-level one)")
    g.add_argument("--base", default=None, help="base stage file/folder (default: the bundled demo base)")
    g.add_argument("--sr", action="append", default=None,
                   help="an SR stage file/folder; repeat for 256 then 1024 (default: the bundled demo SR)")
    g.add_argument("--no-sr", action="store_true", help="stop after the base stage (64 px)")
    g.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: cpu; under torchrun, cuda "
                                                    "is each process's cuda:LOCAL_RANK)")
    g.add_argument("--dtype", default="auto",
                   help="the stages' dtype: auto (default: bf16 for fp16 files on a CPU with native bf16, fp32 "
                        "computed from the fp16 weights layer by layer on other CPUs, fp16 on CUDA; fp32 files stay "
                        "fp32), fp32, fp16 or bf16. The T5 keeps its file's dtype")
    g.add_argument("--keep-models", action="store_true",
                   help="hold the T5 and every stage until the end (their sum of memory); default: one at a time, "
                        "the T5 released before the base stage loads, each stage before the next (with --prompts "
                        "always held: loaded once for every prompt)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    from .convert import add_convert_parser

    add_convert_parser(sub)
    return parser


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def check_output(path: str, flag: str = "--output", suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> Path:
    """An output path, checked before anything runs: one of ``suffixes``, not a folder, in a folder that exists (or
    can be made) and can be written to."""
    out = Path(path).expanduser()
    if out.suffix.lower() not in suffixes:
        raise ValueError(f"{flag} {path!r}: the name must end in one of {', '.join(suffixes)} (e.g. out{suffixes[0]})")
    if out.is_dir():
        raise ValueError(f"{flag} {path!r} is a folder; give a file name inside it, e.g. {out / 'out'}{suffixes[0]}")
    _check_writable(out.parent, flag, path)
    return out


def check_output_folder(path: str, flag: str = "--output") -> Path:
    """The folder ``--prompts`` writes into, checked before anything runs: not a file or an image name, inside a
    folder that exists (or can be made) and can be written to."""
    out = Path(path).expanduser()
    if out.suffix.lower() in IMAGE_SUFFIXES or (out.exists() and not out.is_dir()):
        raise ValueError(f"{flag} {path!r}: with --prompts, -o is the folder the images go into (NNNNN.png ...); "
                         f"give a folder, e.g. -o out/")
    _check_writable(out, flag, path)
    return out


def _check_writable(folder: Path, flag: str, path: str) -> None:
    """`folder`, or the nearest folder above it that exists, can be written to; ValueError naming `flag` if not."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(f"{folder} is not a folder")
        tempfile.TemporaryFile(dir=folder).close()  # what writing there will meet (permissions, read-only, /proc)
    except OSError as e:
        raise ValueError(f"{flag} {path!r}: cannot write to {folder} ({e.strerror or e}); pick another place") from None


def check_device(name: str) -> torch.device:
    """A torch device this PyTorch build can run on (cpu, cuda[:N] with a visible GPU, mps on Apple silicon)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else "a CUDA build, but no GPU is visible"
            raise ValueError(f"--device {name}: this PyTorch ({torch.__version__}) is {build}; use --device cpu, or "
                             f"install a CUDA build of PyTorch")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name}: there are only {torch.cuda.device_count()} GPUs (cuda:0 .. "
                             f"cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: MPS (Apple silicon) is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: use cpu, cuda, cuda:N or mps")
    return device


def check_args(args) -> None:
    """Every command-line value checked before any file is read or model loaded: ValueError naming the flag."""
    from .settings import SamplingSettings
    from .validation import MAX_NOISE_LEVEL, MAX_STEPS, check_batch, check_strength

    if args.prompts is None:
        check_text(args.prompt, "the prompt")
    check_text(args.negative, "--negative")
    if args.prompts is None:
        check_output(args.output)
    elif not Path(args.prompts).expanduser().is_file():
        raise ValueError(f"--prompts {args.prompts}: no such file")
    else:
        check_output_folder(args.output)
    check_device(args.device)
    if args.dtype not in CLI_DTYPES:
        raise ValueError(f"--dtype {args.dtype!r}: use one of {', '.join(CLI_DTYPES)}")
    check_batch(args.batch_size)
    for prefix in ("", "sr_"):  # the same rules SamplingSettings applies, for the flags that were given
        given = {k: getattr(args, prefix + k) for k in ("sampler", "steps", "cfg")}
        SamplingSettings(**{k: v for k, v in given.items() if v is not None}, seed=args.seed,
                         **({"spacing": args.spacing} if args.spacing else {}))
        steps = given["steps"]
        if steps is not None and steps > MAX_STEPS:
            raise ValueError(f"--{prefix.replace('_', '-')}steps {steps}: at most {MAX_STEPS}")
    if args.noise_level is not None:
        check_int(args.noise_level, "--noise-level", 0, MAX_NOISE_LEVEL, " (IF uses 250, the demo SR 100)")
    if args.sr_strength is not None:
        check_strength(args.sr_strength, "SR from pure noise")
    check_int(args.max_length, "--max-length", 1, 512, " (DeepFloyd IF uses 77, imagen-pytorch 256)")
    for flag, value in (("--t5", args.t5), ("--base", args.base), *(("--sr", p) for p in args.sr or ()),
                        ("--tokenizer", None if (args.tokenizer or "byte").lower() in ("byte", "bytes", "byt5")
                         else args.tokenizer)):
        if value is not None and not Path(value).expanduser().exists() \
                and not Path(split_unet_name(value)[0]).expanduser().is_file():  # "file.pt [unet 2]"
            raise ValueError(f"{flag} {value}: no such file or folder")


def demo_prompt_warning(prompt: str) -> Optional[str]:
    """One line for a prompt the bundled demo cascade was not trained to draw (outside the shapes grammar of
    ``shared/demo-domain.md``), naming what it can draw; None for a prompt in the grammar."""
    from .data.scenes import BACKGROUNDS, COLOURS, SHAPES, parse_caption

    try:
        parse_caption(prompt.strip().rstrip("."))
    except ValueError:
        return (f"warning: the bundled demo draws only its shapes captions: 'a [small |large ]<colour> <shape>[ in the "
                f"top left|...][ on a <background> background]' or two objects ('a red circle to the left of a blue "
                f"square', '... above ...'); colours {', '.join(COLOURS)}; shapes {', '.join(SHAPES)}; backgrounds "
                f"{', '.join(BACKGROUNDS)}. {prompt!r} is not one of them: expect shapes. Give --t5/--base (e.g. "
                f"DeepFloyd IF) to draw anything else")
    return None


def main(argv: Optional[list[str]] = None) -> int:
    """The command line; user errors print ``error: ...`` (exit 2), never a traceback."""
    args = _parser().parse_args(argv)
    if args.command == "convert":
        from .convert import convert_main

        return convert_main(args)
    try:
        if (args.prompt is None) == (args.prompts is None):
            raise ValueError("a prompt and --prompts FILE were both given; give one of them" if args.prompts else
                             "nothing to draw: give a prompt (generate 'a red circle') or --prompts FILE")
        from .prompt_files import launch_rank, read_prompt_file

        rank, world, local_rank = launch_rank()
        if world > 1 and args.prompts is None:
            raise ValueError(f"under torchrun ({world} processes) every process would draw the same prompt into the "
                             f"same file; give --prompts FILE to share a file's prompts out, or run without torchrun")
        if world > 1 and args.device.startswith("cuda:"):
            raise ValueError(f"--device {args.device} under torchrun would put every process on one GPU; give "
                             f"--device cuda (each process takes its LOCAL_RANK's GPU)")
        if world > 1 and args.device == "cuda":
            args.device = f"cuda:{local_rank}"  # one GPU per process (torchrun's LOCAL_RANK)
        args.output = args.output or ("out" if args.prompts else "out.png")
        check_args(args)
        jobs = None if args.prompts is None else read_prompt_file(args.prompts, seed=args.seed,
                                                                  negative=args.negative, batch_size=args.batch_size)
        if args.t5 is None and args.base is None and rank == 0:
            texts = [args.prompt] if jobs is None else [job.prompt for job in jobs]
            outside = [w for w in map(demo_prompt_warning, texts) if w]
            if outside:  # one warning for a prompt file too: its first prompt outside the grammar, and how many
                print(outside[0] + (f" (prompts of {args.prompts} outside it: {len(outside)} of {len(texts)})"
                                    if jobs else ""), file=sys.stderr)
        device = torch.device(args.device)
        if world > 1 and device.type == "cuda":
            torch.cuda.set_device(device)
        from .pipeline import CascadeRunner

        load_t5, load_base, load_srs = cascade_loaders(args.t5, args.base, [] if args.no_sr else args.sr,
                                                       args.tokenizer, CLI_DTYPES[args.dtype], args.device)
        runner = CascadeRunner(load_t5, load_base, load_srs, keep=args.keep_models or jobs is not None)
        flags = dict(sampler=args.sampler, steps=args.steps, cfg=args.cfg, spacing=args.spacing)
        sr_flags = dict(sampler=args.sr_sampler, steps=args.sr_steps, cfg=args.sr_cfg, spacing=args.spacing)

        def draw(prompts: list[str], negative: str, seed: int, progress=None) -> list[torch.Tensor]:
            with torch.inference_mode():
                return runner(prompts, negative=negative,
                              base_settings=lambda stage: stage_settings(stage, seed, **flags),
                              sr_settings=lambda stage: stage_settings(stage, seed, **sr_flags),
                              noise_level=args.noise_level, sr_strength=args.sr_strength, progress=progress,
                              max_length=args.max_length, preprocess_mode=args.preprocess)

        if jobs is not None:
            summary = draw_prompt_file(draw, jobs, Path(args.output).expanduser(), batch_size=args.batch_size,
                                       rank=rank, world=world, quiet=args.quiet)
        else:
            start = time.perf_counter()
            outs = draw([args.prompt] * args.batch_size, args.negative, args.seed,
                        None if args.quiet else progress_bar)
            paths = save_images(outs[-1], Path(args.output).expanduser())
            size = outs[-1].shape[-1]
            summary = f"wrote {', '.join(map(str, paths))} ({size}x{size}, {time.perf_counter() - start:.1f}s)"
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # writing the images (disk full, the folder removed meanwhile)
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    print(summary, file=sys.stderr)
    return 0


def draw_prompt_file(draw: Callable, jobs: list, folder: Path, *, batch_size: int = 1, rank: int = 0, world: int = 1,
                     quiet: bool = False) -> str:
    """Draw process `rank`'s share of a prompt file's `jobs` (`prompt_files.PromptJob`; rank r of `world` takes jobs
    r, r + world ...) into `folder` with ``draw(prompts, negative, seed)`` (the cascade's outputs), skipping the jobs
    whose files all exist; rank 0 draws a bar over its share. Returns the summary line."""
    start = time.perf_counter()
    mine = jobs[rank::world]
    todo = [job for job in mine if not all((folder / name).exists() for name in job.outputs)]
    folder.mkdir(parents=True, exist_ok=True)
    bar = progress_bar("prompts" if world == 1 else f"rank 0/{world}: prompts") if rank == 0 and not quiet else None
    if bar and todo:
        bar({"step": -1, "total": len(todo)})  # 0/N
    size = None
    for done, job in enumerate(todo, 1):
        outs = draw([job.prompt] * batch_size, job.negative, job.seed)
        save_images(outs[-1], folder / job.name)
        size = outs[-1].shape[-1]
        if bar:
            bar({"step": done - 1, "total": len(todo)})
    prefix = f"rank {rank}/{world}: " if world > 1 else ""
    images = len(todo) * batch_size
    return (f"{prefix}wrote {images} image{'s' * (images != 1)} for {len(todo)} prompt{'s' * (len(todo) != 1)} to "
            f"{folder}, skipped {len(mine) - len(todo)} existing ({f'{size}x{size}, ' if size else ''}"
            f"{time.perf_counter() - start:.1f}s)")
