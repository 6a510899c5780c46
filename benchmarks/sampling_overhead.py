"""Sampling overhead (issue #14 item 4): a whole sampling run against the U-Net calls it makes, each timed alone.

    .venv/bin/python benchmarks/sampling_overhead.py                          # the demo base (every sampler, RePaint)
                                                                              # and the demo SR, on the CPU
    .venv/bin/python benchmarks/sampling_overhead.py --stage FILE --samplers ddpm,dpmpp_2m --steps 20
    .venv/bin/python benchmarks/sampling_overhead.py --preset IF-I-XL --dtype bf16 --device cuda --steps 20
    .venv/bin/python benchmarks/sampling_overhead.py --tiny                   # tiny random stages, 2 steps (the test)

Each row is one library run (`cascade.generate`, `cascade.super_resolve` at strength 1, `cascade.inpaint` for
RePaint) with classifier-free guidance on (``--cfg``, default 4), dynamic thresholding on (the stage's percentile, IF's
0.95 where it has none), and a progress callback doing what the ComfyUI node's does (`nodes.comfy_compat`
``progress_callback``): per step, the first image of the x0 prediction through the library's `images.to_pil`, then
encoded as a JPEG (quality 95, as ComfyUI's server encodes previews; ``--preview-size N`` first scales it to fit N px,
as the server does with its --preview-size, 512 by default: that part runs on ComfyUI's server thread, not the
sampler's). The callback also counts its calls per step: "previews" is the most in any one step (must be <= 1).

    run      the whole call: input checks, noise, guidance, thresholding, sampler arithmetic, callbacks, previews
    U-Net    every U-Net forward the run made, recorded in a first (warm-up) run by wrapping the module's forward and
             replayed with exactly those inputs, each call timed alone (a guided call on the [cond; uncond] batch
             counts once, Heun's two calls per step twice, RePaint's resampling passes each)
    ratio    run / U-Net, the target being <= ``--limit`` (1.03); rows above it are flagged "OVER"
    in run   run / the U-Net calls clocked inside that same run (on CUDA: in a second run, synchronized per call):
             no replay between them, so on a loaded machine it swings far less than the ratio (the replay's calls
             run up to 7% faster or slower than the run's, CPU time, on 2 shared cores)

Times are the best of ``--repeats`` interleaved pairs (run, replay); the in-run ratio is the median over the runs.
On the CPU they are CPU seconds of the process (time.process_time: steadier than wall time where other jobs share
the cores), with ``--threads`` intra-op threads (default 1, so that the single-threaded Python work of a run and the
U-Net's parallel work count alike); wall-time ratios are printed beside them. On CUDA the clock is wall time with the
device synchronized around the run and around every replayed call. The text conditioning is encoded once, outside
the timing: the demo T5 for the demo stages (when its width fits), random embeddings of the stage's width otherwise.
``--json FILE`` writes the report; `main` returns it.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.unet_speed import preset as unet_preset, with_threads, write_report  # noqa: E402
from comfyui_imagen import cascade  # noqa: E402
from comfyui_imagen.images import to_pil  # noqa: E402
from comfyui_imagen.samplers import MASKED_SAMPLERS, SAMPLERS  # noqa: E402
from comfyui_imagen.text import TextEmbeds  # noqa: E402

DEMO = ROOT / "comfyui_imagen" / "demo"
DEMO_BASE, DEMO_SR, DEMO_T5 = (DEMO / f"imagen-demo-{n}.safetensors" for n in ("base64", "sr256", "t5"))
PROMPT = "a red circle to the left of a blue square"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ALL = tuple(SAMPLERS) + tuple(MASKED_SAMPLERS)


# ------------------------------------------------------------------------------------------------ what a run does
class Preview:
    """The ComfyUI node's per-step callback: progress, plus the first x0 image as a JPEG (module docstring); counts
    the previews made in each step."""

    def __init__(self, size: int):
        self.size = size
        self.per_step: Counter = Counter()

    def __call__(self, info: dict) -> None:
        self.per_step[int(info["step"])] += 1
        image = to_pil(info["x0"])
        if self.size:
            from PIL import Image, ImageOps
            image = ImageOps.contain(image, (self.size, self.size), Image.Resampling.BILINEAR)
        image.save(io.BytesIO(), format="JPEG", quality=95)


def _clone(value):
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(v) for v in value)
    return value


@contextmanager
def recording(unet: torch.nn.Module):
    """Inside: every forward of ``unet`` appends a copy of its (args, kwargs) to the yielded list."""
    calls: list = []
    forward = unet.forward

    def record(*args, **kwargs):
        calls.append(_clone((args, kwargs)))
        return forward(*args, **kwargs)

    unet.forward = record
    try:
        yield calls
    finally:
        del unet.forward


class Clock:
    """(wall, CPU) seconds; the device is synchronized first on CUDA."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def __call__(self) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        return time.perf_counter(), time.process_time()


def replay(unet: torch.nn.Module, calls: list, clock: Clock) -> tuple[float, float]:
    """(wall, CPU) seconds of the recorded calls, each timed alone, summed."""
    wall = cpu = 0.0
    with torch.no_grad():
        for args, kwargs in calls:
            w0, c0 = clock()
            unet(*args, **kwargs)
            w1, c1 = clock()
            wall, cpu = wall + w1 - w0, cpu + c1 - c0
    return wall, cpu


@contextmanager
def timing(unet: torch.nn.Module, clock: Clock):
    """Inside: the (wall, CPU) seconds spent in ``unet``'s forward accumulate in the yielded list."""
    spent = [0.0, 0.0]
    forward = unet.forward

    def timed(*args, **kwargs):
        w0, c0 = clock()
        out = forward(*args, **kwargs)
        w1, c1 = clock()
        spent[0], spent[1] = spent[0] + w1 - w0, spent[1] + c1 - c0
        return out

    unet.forward = timed
    try:
        yield spent
    finally:
        del unet.forward


def timed_run(job: Callable, preview_size: int, clock: Clock) -> tuple[float, float, Preview]:
    preview = Preview(preview_size)
    w0, c0 = clock()
    job(preview)
    w1, c1 = clock()
    return w1 - w0, c1 - c0, preview


# ------------------------------------------------------------------------------------------------ stages and rows
@dataclass
class Row:
    stage_name: str
    sampler: str
    stage: object
    job: Callable            # job(callback) -> images
    steps: int


def random_stage(preset: str, resolution: int, device: torch.device, dtype: torch.dtype | None):
    """A `Stage` of U-Net preset ``preset`` (a library preset, or `unet_speed.TINY_PRESETS`) with random weights,
    built on ``device``; base or SR as the preset is."""
    from comfyui_imagen.stage import Stage, StageConfig
    from comfyui_imagen.unet import ImagenUNet
    config = unet_preset(preset)
    sr = config.lowres_cond
    torch.manual_seed(0)
    with torch.device(device):
        unet = ImagenUNet(config).eval()
    if dtype is not None:
        unet.to(dtype)
    unet.requires_grad_(False)
    stage_config = StageConfig(role="sr" if sr else "base", resolution=resolution, unet=config,
                               lowres_resolution=resolution // 4 if sr else None, name=f"random {preset}",
                               variance_type="learned_range" if config.out_channels == 2 * config.in_channels
                               else "fixed")
    return Stage(unet, stage_config, source=f"random {preset}")


def load_file_stage(path: Path, device: torch.device, dtype):
    from comfyui_imagen.checkpoints import load_stage
    stage = load_stage(path, dtype)
    stage.unet.to(device)
    return stage


def conditioning(stage, tokens: int) -> cascade.Conditioning:
    """The prompt and the empty prompt: through the demo T5 when its width is the stage's, else random embeddings
    (``tokens`` long, all real tokens)."""
    from comfyui_imagen.text import load_t5
    width = stage.config.text_embed_dim
    if DEMO_T5.is_file():
        t5 = load_t5(DEMO_T5)
        if t5.config.d_model == width:
            cond, uncond = t5.encode_for_guidance([PROMPT])
            return cascade.Conditioning(cond, uncond)
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(1, tokens, dtype=torch.bool)
    return cascade.Conditioning(TextEmbeds(torch.randn(1, tokens, width, generator=g), mask),
                                TextEmbeds(torch.randn(1, tokens, width, generator=g), mask))


def settings_for(stage, sampler: str, args) -> cascade.SamplingSettings:
    recommended = stage.recommended.settings
    return recommended.replace(sampler=sampler if sampler in SAMPLERS else recommended.sampler,
                               steps=args.steps or recommended.steps, cfg=args.cfg, seed=0,
                               dynamic_threshold=recommended.dynamic_threshold or 0.95, eta=None)


def rows_for(name: str, stage, samplers: list[str], args) -> list[Row]:
    cond = conditioning(stage, args.tokens)
    c = stage.config
    g = torch.Generator().manual_seed(1)
    rows = []
    for sampler in samplers:
        settings = settings_for(stage, sampler, args)
        steps = stage.sigmas(settings).numel() - 1
        if sampler in MASKED_SAMPLERS:
            image = torch.rand(args.batch, 3, c.resolution, c.resolution, generator=g) * 2 - 1
            mask = torch.zeros(args.batch, 1, c.resolution, c.resolution)
            mask[..., c.resolution // 4: 3 * c.resolution // 4, c.resolution // 4: 3 * c.resolution // 4] = 1

            def job(cb, stage=stage, cond=cond, image=image, mask=mask, settings=settings):
                return cascade.inpaint(stage, cond, image, mask, settings=settings, resample=args.resample,
                                       callback=cb)
        elif c.role == "sr":
            low = torch.rand(args.batch, 3, c.lowres_resolution, c.lowres_resolution, generator=g) * 2 - 1

            def job(cb, stage=stage, cond=cond, low=low, settings=settings):
                return cascade.super_resolve(stage, cond, low, settings=settings, strength=1.0, callback=cb)
        else:
            def job(cb, stage=stage, cond=cond, settings=settings):
                return cascade.generate(stage, cond, batch_size=args.batch, settings=settings, callback=cb)
        rows.append(Row(name, sampler, stage, job, steps))
    return rows


def _sampler_list(text: str) -> list[str]:
    names = list(ALL if text == "all" else text.split(","))
    unknown = [n for n in names if n not in ALL]
    if unknown:
        raise SystemExit(f"unknown sampler(s) {unknown}; expected names from {list(ALL)} or 'all'")
    return names


def stages(args, device: torch.device) -> list[tuple[str, object, list[str]]]:
    dtype = DTYPES[args.dtype] if args.dtype else None
    if args.tiny:
        return [("tiny-base", random_stage("tiny-base", 32, device, dtype), _sampler_list(args.samplers)),
                ("tiny-sr", random_stage("tiny-sr", 32, device, dtype), _sampler_list(args.sr_samplers))]
    if args.preset:
        stage = random_stage(args.preset, args.resolution or (256 if "II" in args.preset else 64), device, dtype)
        return [(args.preset, stage, _sampler_list(args.samplers))]
    out = []
    for path, samplers in ((args.stage or DEMO_BASE, args.samplers), (args.sr_stage, args.sr_samplers)):
        if path is None:
            continue
        stage = load_file_stage(Path(path), device, dtype)
        out.append((Path(path).stem, stage, _sampler_list(samplers)))
    return out


# ------------------------------------------------------------------------------------------------ measuring
def measure(row: Row, args, clock: Clock) -> dict:
    unet = row.stage.unet
    with recording(unet) as calls:
        warm = Preview(args.preview_size)
        row.job(warm)                           # warm-up and record
    runs, unets, previews, inside = [], [], [], []
    for _ in range(args.repeats):
        # on the CPU the timed run itself also clocks its U-Net calls (two clock reads per call); on CUDA that would
        # synchronize every call, so a second run does it
        with timing(unet, clock) if not clock.cuda else contextlib.nullcontext() as spent:
            wall, cpu, preview = timed_run(row.job, args.preview_size, clock)
        if clock.cuda:
            with timing(unet, clock) as spent:
                wall_in, cpu_in, _ = timed_run(row.job, args.preview_size, clock)
        else:
            wall_in, cpu_in = wall, cpu
        runs.append((wall, cpu))
        inside.append((wall_in / spent[0], cpu_in / spent[1]))
        previews.append(preview)
        unets.append(replay(unet, calls, clock))
    run_wall, run_cpu = (min(r[i] for r in runs) for i in (0, 1))
    unet_wall, unet_cpu = (min(u[i] for u in unets) for i in (0, 1))
    in_run = {"wall": statistics.median(r[0] for r in inside), "cpu": statistics.median(r[1] for r in inside)}
    per_step = max(max(p.per_step.values(), default=0) for p in (warm, *previews))
    steps_seen = min(len(p.per_step) for p in (warm, *previews))
    primary = "wall" if clock.cuda else "cpu"
    ratio = {"wall": run_wall / unet_wall, "cpu": run_cpu / unet_cpu}
    return {"stage": row.stage_name, "sampler": row.sampler, "steps": row.steps, "unet_calls": len(calls),
            "unet_batch": int(calls[0][0][0].shape[0]) if calls else 0,
            "run_s": run_wall, "run_cpu_s": run_cpu, "unet_s": unet_wall, "unet_cpu_s": unet_cpu,
            "ratio": ratio[primary], "ratio_wall": ratio["wall"], "ratio_cpu": ratio["cpu"], "clock": primary,
            "in_run_ratio": in_run[primary], "in_run_ratio_wall": in_run["wall"], "in_run_ratio_cpu": in_run["cpu"],
            "previews_per_step": per_step, "steps_with_preview": steps_seen,
            "over_limit": ratio[primary] > args.limit, "preview_ok": per_step <= 1}


def _print_row(r: dict) -> None:
    t = (r["run_cpu_s"], r["unet_cpu_s"]) if r["clock"] == "cpu" else (r["run_s"], r["unet_s"])
    flag = ("OVER" if r["over_limit"] else "") + ("" if r["preview_ok"] else " PREVIEWS")
    print(f"| {r['stage']} | {r['sampler']} | {r['steps']} | {r['unet_calls']} x {r['unet_batch']} | "
          f"{t[0] * 1e3:.1f} | {t[1] * 1e3:.1f} | {r['ratio']:.3f} | {r['in_run_ratio']:.3f} | {r['ratio_wall']:.3f} | "
          f"{r['previews_per_step']} | {flag} |", flush=True)


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", help="a stage file (default: the demo base; then no SR row unless --sr-stage)")
    p.add_argument("--sr-stage", help="an SR stage file for SR rows (default: the demo SR when --stage is not given)")
    p.add_argument("--preset", help="a random-weight stage of this U-Net preset instead (IF-I-XL, IF-II-L, IF-I-tiny "
                   "...)")
    p.add_argument("--resolution", type=int, help="--preset: the output size (default 64, IF-II: 256)")
    p.add_argument("--tiny", action="store_true", help="tiny random base and SR stages at 32 px, 2 steps, 1 repeat")
    p.add_argument("--samplers", default="all", help=f"comma list from {list(ALL)}, or all")
    p.add_argument("--sr-samplers", default="dpmpp_2m", help="samplers of the SR rows (all: every non-masked one)")
    p.add_argument("--steps", type=int, help="sampler steps (default: each stage's recommended)")
    p.add_argument("--cfg", type=float, default=4.0, help="guidance scale, > 1 (both branches run)")
    p.add_argument("--batch", type=int, default=1, help="images per run (a guided U-Net call has twice as many)")
    p.add_argument("--resample", type=int, default=2, help="RePaint's passes per step")
    p.add_argument("--tokens", type=int, default=77, help="length of random text embeddings")
    p.add_argument("--repeats", type=int, default=3, help="timed (run, replay) pairs; the best is reported")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="cast the stage (default: as stored / fp32)")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    p.add_argument("--preview-size", type=int, default=0, help="scale previews to fit N px as ComfyUI's server "
                   "does (0: the image's own size)")
    p.add_argument("--limit", type=float, default=1.03)
    p.add_argument("--json", type=Path, help="write the report here")
    args = p.parse_args(argv)
    if args.tiny:
        args.steps, args.repeats, args.tokens = args.steps or 2, 1, 8
    if args.stage is None and args.sr_stage is None and not (args.tiny or args.preset):
        args.sr_stage = DEMO_SR
    if args.cfg <= 1:
        p.error("--cfg must be > 1: the benchmark measures guided runs")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark (module docstring) and return its report; the thread count is restored afterwards."""
    args = parse(argv)
    return with_threads(args.threads, run, args)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    clock = Clock(device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    unit = "wall ms (device synchronized)" if clock.cuda else "CPU ms"
    print(f"# sampling overhead: device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"cfg {args.cfg}, batch {args.batch}, dynamic thresholding, preview JPEG "
          f"{args.preview_size or 'at image size'}, best of {args.repeats}, load average {load:.2f}")
    print(f"| stage | sampler | steps | U-Net calls x batch | run ({unit}) | U-Net, replayed ({unit}) | run / U-Net | "
          f"run / its own U-Net calls | wall: run / U-Net | previews / step | flag |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results, failed = [], []
    for name, stage, samplers in stages(args, device):
        for row in rows_for(name, stage, samplers, args):
            try:
                result = measure(row, args, clock)
            except ValueError as e:  # e.g. random weights sampling to NaN: the other rows still run
                print(f"| {row.stage_name} | {row.sampler} | failed: {e} |", flush=True)
                failed.append({"stage": row.stage_name, "sampler": row.sampler, "error": str(e)})
                continue
            results.append(result)
            _print_row(result)
        del stage
    over = [f"{r['stage']}/{r['sampler']}" for r in results if r["over_limit"]]
    bad_previews = [f"{r['stage']}/{r['sampler']}" for r in results if not r["preview_ok"]]
    print(f"# over {args.limit}: {', '.join(over) or 'none'}; more than one preview per step: "
          f"{', '.join(bad_previews) or 'none'}")
    report = {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "limit": args.limit, "cfg": args.cfg, "batch": args.batch, "repeats": args.repeats,
              "preview_size": args.preview_size, "clock": "wall" if clock.cuda else "cpu", "rows": results,
              "over_limit": over, "bad_previews": bad_previews, "failed": failed}
    return write_report(args.json, report)


if __name__ == "__main__":
    main()
