"""``python -m comfyui_imagen.evaluate``: how well a cascade draws the shapes domain, measured by its exact judge.

Reports, for fixed seeds:
1. the fraction of prompts drawn correctly (overall and per attribute; seen and held-out colour-shape pairs; one and
   two objects), judged at 64 px (base stage) and at 256 px (after super-resolution), as
   `comfyui_imagen.data.judge` defines correctness;
2. the SR stage alone: PSNR against the ground-truth 256 px render when given the ground-truth 64 px render, beside
   bicubic upsampling's PSNR;
3. quality against sampler steps: the fraction correct at 64 px for each sampler/steps pair (DDPM 100 vs DPM++ 2M at
   10/15/25 ...), with seconds per image;
4. with ``--sr1024 FILE``, a 256 -> 1024 stage alone, as 2.: its PSNR against the 1024 px render when given the
   256 px render, beside bicubic's (a few images: a 1024 px image takes seconds on a CPU). ``--n-seen 0 --n-heldout 0
   --sweep '' --psnr-count 0`` measures only that.
Everything is printed as Markdown; ``--json`` also writes the numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import replace
from typing import Optional

import numpy as np
import torch

from .cli import Cascade, load_cascade, stage_settings, text_to_image

DEFAULT_SWEEP = "ddpm:100,dpmpp_2m:10,dpmpp_2m:15,dpmpp_2m:25,euler_ancestral:25,ddim:25"
GROUPS = ("seen/1", "heldout/1", "seen/2", "heldout/2", "all")


def to_uint8(images: torch.Tensor) -> list[np.ndarray]:
    """Library images [B, 3, H, W] in -1..1 -> uint8 [H, W, 3] arrays, as they would be saved."""
    from .images import to_pil

    return [np.asarray(to_pil(images, k)) for k in range(images.shape[0])]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two image batches in -1..1, on the 0..1 scale: 10 log10(1 / MSE)."""
    mse = float(((a.clamp(-1, 1) - b.clamp(-1, 1)) / 2).pow(2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield start, items[start:start + size]


def judge_prompts(cascade: Cascade, prompts, base_settings, sr_settings, *, batch_size: int = 16,
                  noise_level: Optional[int] = None, sr_strength: Optional[float] = None, with_sr: bool = True,
                  images: Optional[dict] = None):
    """Generate every prompt (batch b of the list uses seed + index-in-batch) and judge each stage's output:
    returns ({"64": verdicts, "256": verdicts}, seconds per image for the whole cascade). `images`, a dict, receives
    the judged uint8 images under the same keys."""
    from .data import judge

    cascade = replace(cascade, srs=cascade.srs[:1] if with_sr else [])
    verdicts: dict[str, list] = {"64": [], "256": []} if with_sr else {"64": []}
    seconds = 0.0
    for _, chunk in _batches(list(prompts), batch_size):
        start = time.perf_counter()
        outs = text_to_image(cascade, [p.caption for p in chunk], base_settings=base_settings,
                             sr_settings=sr_settings, noise_level=noise_level, sr_strength=sr_strength)
        seconds += time.perf_counter() - start
        for key, batch in zip(verdicts, outs):
            arrays = to_uint8(batch)
            verdicts[key].extend(judge(img, p.scene) for img, p in zip(arrays, chunk))
            if images is not None:
                images.setdefault(key, []).extend(arrays)
    return verdicts, seconds / max(1, len(prompts))


def contact_sheet(prompts, images: dict, verdicts: dict, *, per_row: int = 8, scale: int = 2):
    """One PNG-able uint8 picture of an evaluation: per prompt, the ground-truth render, then each stage's output
    (all shown at the base resolution, SR outputs box-downsampled), each with a bar under it, green when the judge
    found that image correct and red when not. Prompts run row by row in `prompts` order."""
    from PIL import Image

    from .data import render

    size = images["64"][0].shape[0]
    bar = max(2, size // 16)
    ok, bad = np.array([40, 170, 60], np.uint8), np.array([220, 40, 40], np.uint8)
    cells = []
    for k, prompt in enumerate(prompts):
        tiles = [np.concatenate([render(prompt.scene, size), np.full((bar, size, 3), 255, np.uint8)])]
        for key in images:
            shown = np.asarray(Image.fromarray(images[key][k]).resize((size, size), Image.BOX))
            colour = ok if verdicts[key][k].correct else bad
            tiles.append(np.concatenate([shown, np.broadcast_to(colour, (bar, size, 3))]))
        cells.append(np.pad(np.concatenate(tiles, 1), ((0, 4), (0, 4), (0, 0)), constant_values=255))
    blank = np.full_like(cells[0], 255)
    cells += [blank] * (-len(cells) % per_row)
    sheet = np.concatenate([np.concatenate(cells[i:i + per_row], 1) for i in range(0, len(cells), per_row)])
    return sheet.repeat(scale, 0).repeat(scale, 1)


def sr_psnr(cascade: Cascade, *, count: int, settings, noise_level: Optional[int] = None,
            strength: Optional[float] = None, seed: int = 0, batch_size: int = 8, stage=None) -> dict[str, float]:
    """PSNR of an SR stage (default: the cascade's first) on ground-truth renders of `count` dataset scenes ("all"
    split, `seed`) at its output resolution, given the renders at its input resolution, against bicubic upsampling
    of the same input (the PSNR of each batch's pooled squared error, averaged over batches)."""
    from .cascade import Conditioning, super_resolve
    from .data import ShapesDataset
    from .images import resize
    from .train.batches import to_tensor

    stage = cascade.srs[0] if stage is None else stage
    hi, lo = stage.config.resolution, stage.config.lowres_resolution
    dataset = ShapesDataset(seed=seed, split="all")
    items = [dataset.item(i) for i in range(count)]
    ours, bicubic = [], []
    for _, chunk in _batches(items, batch_size):
        target = to_tensor([it.image(hi) for it in chunk])
        small = to_tensor([it.image(lo) for it in chunk])
        cond = Conditioning(*cascade.t5.encode_for_guidance([it.caption for it in chunk]))
        out = super_resolve(stage, cond, small, settings=settings, noise_level=noise_level, strength=strength)
        ours.append(psnr(out, target))
        bicubic.append(psnr(resize(small, hi, hi, mode="bicubic"), target))
    return {"sr": float(np.mean(ours)), "bicubic": float(np.mean(bicubic)), "n": count, "resolution": hi,
            "lowres_resolution": lo}


def parse_sweep(text: str) -> list[tuple[str, int]]:
    """"ddpm:100,dpmpp_2m:25" -> [("ddpm", 100), ("dpmpp_2m", 25)]."""
    pairs = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, steps = part.partition(":")
        if not steps.isdigit():
            raise ValueError(f"sweep entry {part!r} must be SAMPLER:STEPS, e.g. dpmpp_2m:25")
        pairs.append((name, int(steps)))
    return pairs


def evaluate(cascade: Cascade, *, n_seen: int, n_heldout: int, seed: int = 0, base_settings, sr_settings,
             noise_level: Optional[int] = None, sr_strength: Optional[float] = None,
             sweep: list[tuple[str, int]] = (), sweep_prompts: int = 8,
             psnr_count: int = 16, batch_size: int = 16, grid: Optional[str] = None, sr1024=None,
             sr1024_settings=None, sr1024_strength: Optional[float] = None, psnr1024_count: int = 4,
             log=lambda s: None) -> dict:
    """The measurements as one dict (see the module docstring; no prompts: no judging); `grid`: also save the
    `contact_sheet` of the judged prompts there; `sr1024`: a loaded 256 -> 1024 stage to measure as the SR stage is,
    with `sr1024_settings` and `sr1024_strength` (None: its recommended ones)."""
    from .data import evaluation_prompts, summarize

    prompts = evaluation_prompts(n_seen, n_heldout, seed)
    with_sr = bool(cascade.srs)
    result = {"prompts": len(prompts), "accuracy": {}, "seconds_per_image": None,
              "settings": {"base": base_settings.__dict__, "sr": sr_settings.__dict__, "noise_level": noise_level,
                           "sr_strength": sr_strength}}
    if prompts:
        log(f"judging {len(prompts)} prompts ...")
        images: Optional[dict] = {} if grid else None
        verdicts, secs = judge_prompts(cascade, prompts, base_settings, sr_settings, batch_size=batch_size,
                                       noise_level=noise_level, sr_strength=sr_strength, with_sr=with_sr,
                                       images=images)
        if grid:
            from PIL import Image

            Image.fromarray(contact_sheet(prompts, images, verdicts)).save(grid)
        result.update(accuracy={key: summarize(v) for key, v in verdicts.items()}, seconds_per_image=secs)
    if with_sr and psnr_count:
        log(f"SR PSNR on {psnr_count} renders ...")
        result["sr_psnr"] = sr_psnr(cascade, count=psnr_count, settings=sr_settings, noise_level=noise_level,
                                    strength=sr_strength)
    if sr1024 is not None and psnr1024_count:
        log(f"SR 1024 PSNR on {psnr1024_count} renders ...")
        result["sr1024_psnr"] = sr_psnr(cascade, count=psnr1024_count, settings=sr1024_settings,
                                        strength=sr1024_strength, batch_size=1, stage=sr1024)
    if sweep:
        subset = evaluation_prompts(sweep_prompts, sweep_prompts, seed)
        rows = []
        for sampler, steps in sweep:
            log(f"sweep {sampler} {steps} steps on {len(subset)} prompts ...")
            settings = replace(base_settings, sampler=sampler, steps=steps)
            v, s = judge_prompts(cascade, subset, settings, sr_settings, batch_size=batch_size, with_sr=False)
            summary = summarize(v["64"])
            rows.append({"sampler": sampler, "steps": steps, "correct": summary["all"]["correct"],
                         "seen": summary["seen"]["correct"], "heldout": summary["heldout"]["correct"],
                         "seconds_per_image": s})
        result["sweep"] = rows
    return result


def _pct(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.0f}%"


def format_report(result: dict) -> str:
    """The result as Markdown tables."""
    from .data import ATTRIBUTES

    lines = []
    for key, summary in result["accuracy"].items():
        lines += [f"\n**Fraction correct at {key} px** ({result['prompts']} prompts)\n",
                  "| group | n | correct | " + " | ".join(ATTRIBUTES) + " |",
                  "|---" * (3 + len(ATTRIBUTES)) + "|"]
        for group in GROUPS:
            row = summary[group]
            lines.append(f"| {group} | {row['n']} | {_pct(row['correct'])} | "
                         + " | ".join(_pct(row[a]) for a in ATTRIBUTES) + " |")
    if result["seconds_per_image"] is not None:
        lines.append(f"\nSeconds per image (text encoding and every stage): {result['seconds_per_image']:.2f}")
    for key in ("sr_psnr", "sr1024_psnr"):
        if key in result:
            p = result[key]
            lines.append(f"\n**SR {p['lowres_resolution']}→{p['resolution']} PSNR** on {p['n']} ground-truth "
                         f"renders: PSNR stage {p['sr']:.2f} dB, bicubic {p['bicubic']:.2f} dB, gain "
                         f"{p['sr'] - p['bicubic']:+.2f} dB")
    if "sweep" in result:
        lines += ["\n**Quality against steps** (64 px, fraction correct)\n",
                  "| sampler | steps | all | seen | held-out | s/image |", "|---|---|---|---|---|---|"]
        for r in result["sweep"]:
            lines.append(f"| {r['sampler']} | {r['steps']} | {_pct(r['correct'])} | {_pct(r['seen'])} | "
                         f"{_pct(r['heldout'])} | {r['seconds_per_image']:.2f} |")
    return "\n".join(lines)


def check_args(args) -> list[tuple[str, int]]:
    """The command line checked before a model loads (ValueError naming the flag); returns the parsed sweep."""
    from .checks import check_int
    from .cli import check_output
    from .settings import SamplingSettings
    from .validation import check_batch, check_strength

    for flag in ("n_seen", "n_heldout", "sweep_prompts", "psnr_count", "psnr1024_count"):
        check_int(getattr(args, flag), "--" + flag.replace("_", "-"), 0)
    if args.n_seen + args.n_heldout == 0 and not args.sr1024:
        raise ValueError("--n-seen and --n-heldout are both 0: nothing to judge (they may be, with --sr1024)")
    check_batch(args.batch_size)
    if args.threads is not None:
        check_int(args.threads, "--threads", 1)
    for prefix in ("", "sr_"):
        given = {k: getattr(args, prefix + k) for k in ("sampler", "steps", "cfg")}
        SamplingSettings(**{k: v for k, v in given.items() if v is not None}, seed=args.seed,
                         **({"spacing": args.spacing} if args.spacing else {}))
    if args.noise_level is not None:
        check_int(args.noise_level, "--noise-level", 0, 999)
    for flag in ("sr_strength", "sr1024_strength"):
        if getattr(args, flag) is not None:
            check_strength(getattr(args, flag), "SR from pure noise")
    if args.sr1024_steps is not None:
        SamplingSettings(steps=args.sr1024_steps)
    sweep = parse_sweep(args.sweep)
    for sampler, steps in sweep:
        SamplingSettings(sampler=sampler, steps=steps)
    if args.grid:
        check_output(args.grid, "--grid", (".png",))
    if args.json:
        check_output(args.json, "--json", (".json",))
    return sweep


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m comfyui_imagen.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--n-seen", type=int, default=32, help="seen prompts per group (one and two objects)")
    p.add_argument("--n-heldout", type=int, default=32, help="held-out prompts per group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--t5", default=None)
    p.add_argument("--base", default=None)
    p.add_argument("--sr", default=None)
    p.add_argument("--no-sr", action="store_true", help="judge the base stage only")
    # sampling flags: None = the stage's recommended settings (`Stage.recommended`)
    p.add_argument("--sampler", default=None, help="base stage sampler")
    p.add_argument("--sr-sampler", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--sr-steps", type=int, default=None)
    p.add_argument("--cfg", type=float, default=None)
    p.add_argument("--sr-cfg", type=float, default=None)
    p.add_argument("--noise-level", type=int, default=None)
    p.add_argument("--sr-strength", type=float, default=None)
    p.add_argument("--spacing", default=None)
    p.add_argument("--sweep", default=DEFAULT_SWEEP, help="SAMPLER:STEPS,... ('' for none)")
    p.add_argument("--sweep-prompts", type=int, default=8, help="seen and held-out prompts per group in the sweep")
    p.add_argument("--psnr-count", type=int, default=16)
    p.add_argument("--sr1024", default=None, help="a 256 -> 1024 stage file: also report its PSNR (part 4)")
    p.add_argument("--psnr1024-count", type=int, default=4, help="1024 px renders for the --sr1024 PSNR")
    p.add_argument("--sr1024-steps", type=int, default=None, help="--sr1024 sampler steps (default: its recommended)")
    p.add_argument("--sr1024-strength", type=float, default=None,
                   help="--sr1024 SDEdit strength (default: its recommended)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", default=None, help="also write the numbers here")
    p.add_argument("--grid", default=None, help="also save a contact sheet of the judged images here (.png): per "
                                                "prompt the ground truth, then each stage, a green or red bar under each")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args(argv)
    try:
        sweep = check_args(args)
        if args.threads:
            torch.set_num_threads(args.threads)
        cascade = load_cascade(args.t5, args.base, [] if args.no_sr else ([args.sr] if args.sr else None))
        base = stage_settings(cascade.base, args.seed, sampler=args.sampler, steps=args.steps, cfg=args.cfg,
                              spacing=args.spacing)
        sr_stage = cascade.srs[0] if cascade.srs else None
        sr = stage_settings(sr_stage or cascade.base, args.seed, sampler=args.sr_sampler, steps=args.sr_steps,
                            cfg=args.sr_cfg, spacing=args.spacing)
        if sr_stage is not None:  # recorded in the report as used
            args.noise_level = sr_stage.recommended.noise_level if args.noise_level is None else args.noise_level
            args.sr_strength = sr_stage.recommended.strength if args.sr_strength is None else args.sr_strength
        sr1024 = sr1024_settings = None
        if args.sr1024:
            from .checkpoints import load_stage

            sr1024 = load_stage(args.sr1024)
            sr1024_settings = stage_settings(sr1024, args.seed, steps=args.sr1024_steps)
        with torch.inference_mode():
            result = evaluate(cascade, n_seen=args.n_seen, n_heldout=args.n_heldout, seed=args.seed,
                              base_settings=base, sr_settings=sr, noise_level=args.noise_level,
                              sr_strength=args.sr_strength, sweep=sweep,
                              sweep_prompts=args.sweep_prompts,
                              psnr_count=args.psnr_count, batch_size=args.batch_size, grid=args.grid,
                              sr1024=sr1024, sr1024_settings=sr1024_settings, sr1024_strength=args.sr1024_strength,
                              psnr1024_count=args.psnr1024_count, log=lambda s: print(s, file=sys.stderr, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
