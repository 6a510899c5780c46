"""Steps against quality on a tiny TRAINED imagen-pytorch model: their 1000-step DDPM against our samplers.

    .venv/bin/python benchmarks/imagen_pytorch_steps.py --minutes 35     # train (resumable), then evaluate
    .venv/bin/python benchmarks/imagen_pytorch_steps.py --evaluate-only  # evaluate the saved checkpoint

imagen-pytorch users sample ancestral DDPM over the training step count (1000). This trains a tiny imagen-pytorch
base Imagen (one Unet, 32 px, continuous-time cosine schedule, noise objective, 1000 steps) with imagen-pytorch's own
``ImagenTrainer`` (EMA on) on the shapes demo domain, single objects on white: colour x shape x position captions
(demo-domain.md's grammar, the held-out colour-shape pairs left out), each rendered at 64 px and box-filtered to 32,
captions encoded once by the bundled demo T5 (padding zeroed, as imagen-pytorch's T5 encoding does). The trainer's
checkpoint (``--out``) is saved every ``--save-every`` minutes and resumed from when it exists.

The evaluation loads that checkpoint with OUR loader (`load_stage("… [unet 1]")`, EMA weights) and samples a fixed
set of ``--prompts`` training captions (item k seeded ``SEED + k``) at one guidance scale (``--cfg``) with: our
``ddpm`` at 1000 steps (the stage's recommended settings: imagen-pytorch's own sampler), 250 and 100 uniform steps,
``dpmpp_2m`` karras at 10 / 20 / 30, ``euler_ancestral`` and ``dpmpp_2m_sde`` karras at 20 / 30 (karras grids from
the stage's ``grid_sigma_max``, sigma(1 - 1/1000)); and imagen-pytorch's own
``trainer.sample`` (1000 steps, EMA) on the first ``--theirs`` prompts, on the same noise as ours (their
``torch.randn`` calls answered from our per-item generators), so that row also gives the largest pixel difference
to our ddpm@1000. Every image is judged by the demo judge (`data.judge`) at 32 px. Columns: U-Net calls per image
(a guided [cond; uncond] pass counts once), wall seconds per image at 1 thread, fully-correct rate and the rates of
background / colour / shape / position.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # run as a script from anywhere; the oracle's offline import

from comfyui_imagen.cascade import generate  # noqa: E402
from comfyui_imagen.checkpoints import load_stage  # noqa: E402
from comfyui_imagen.data import COLOURS, HELDOUT_PAIRS, POSITIONS, SHAPES, downsample, judge, render  # noqa: E402
from comfyui_imagen.samplers import make_generators  # noqa: E402
from comfyui_imagen.settings import Conditioning  # noqa: E402
from comfyui_imagen.text import TextEmbeds, load_t5  # noqa: E402

DEMO_T5 = ROOT / "comfyui_imagen" / "demo" / "imagen-demo-t5.safetensors"
SIZE, TOKENS, SEED = 32, 64, 1000
UNET = dict(dim=16, dim_mults=(1, 2, 4), num_resnet_blocks=1, layer_attns=(False, False, True),
            layer_cross_attns=(False, True, True), attn_heads=2, attn_dim_head=32, max_text_len=TOKENS)
JUDGED = ("background", "colour", "shape", "position")


def captions() -> list[str]:
    """Every single-object caption on white, held-out pairs excluded (centre written as unstated)."""
    return [f"a {c} {s}" + ("" if p == "center" else f" in the {p}")
            for c in COLOURS for s in SHAPES if (c, s) not in HELDOUT_PAIRS for p in POSITIONS]


def machine() -> str:
    """The CPU model, core count, AMX / avx512_bf16 flags (from /proc/cpuinfo on Linux), torch and its threads."""
    model, flags = platform.processor() or "?", set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    have = [f for f in ("amx_tile", "amx_bf16", "avx512_bf16") if f in flags] or ["none"]
    return (f"{model}, {os.cpu_count()} cores; AMX/avx512_bf16: {', '.join(have)}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s)")


def build(ip):
    """imagen-pytorch's Imagen (from ImagenConfig, so the checkpoint records its settings) in its ImagenTrainer."""
    imagen = ip.ImagenConfig(unets=[UNET], image_sizes=[SIZE], timesteps=1000, text_embed_dim=256,
                             noise_schedules="cosine", pred_objectives="noise").create()
    # no warmup_steps: with the pytorch-warmup installed here its first dampening factor (1/period) stays in the
    # optimizer's lr for good (2.5e-6 instead of 5e-4 after 360 steps)
    trainer = ip.ImagenTrainer(imagen=imagen, use_ema=True, lr=5e-4, max_grad_norm=1.0,
                               ema_beta=0.995, ema_update_every=1, ema_update_after_step=100, verbose=False)
    return trainer


def train(trainer, args, images: torch.Tensor, text: TextEmbeds) -> None:
    if args.out.is_file():
        trainer.load(str(args.out))
        print(f"# resumed {args.out} at step {trainer.num_steps_taken(1)}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = saved = time.monotonic()
    g = torch.Generator().manual_seed(trainer.num_steps_taken(1))
    losses = []
    while time.monotonic() - start < args.minutes * 60:
        idx = torch.randint(len(images), (args.batch,), generator=g)
        losses.append(trainer(images[idx], text_embeds=text.embeds[idx], text_masks=text.mask[idx], unet_number=1))
        trainer.update(unet_number=1)
        step = trainer.num_steps_taken(1)
        if step % 50 == 0:
            print(f"step {step}  loss {np.mean(losses):.4f}  {(time.monotonic() - start) / 60:.1f} min", flush=True)
            losses = []
        if time.monotonic() - saved > args.save_every * 60:
            trainer.save(str(args.out))
            saved = time.monotonic()
    trainer.save(str(args.out))
    print(f"# saved {args.out} at step {trainer.num_steps_taken(1)}", flush=True)


@contextlib.contextmanager
def counting(*modules):
    """Yields a one-item list: the batch rows all ``modules`` forwarded inside (their ``forward`` wrapped on the
    instance: imagen-pytorch's guidance calls ``self.forward`` directly, past any hook)."""
    rows, modules = [0], list({id(m): m for m in modules}.values())

    def wrap(forward):
        def counted(x, *args, **kwargs):
            rows[0] += x.shape[0]
            return forward(x, *args, **kwargs)
        return counted

    for m in modules:
        m.forward = wrap(m.forward)
    try:
        yield rows
    finally:
        for m in modules:
            del m.forward


@contextlib.contextmanager
def our_noise(batch: int):
    """imagen-pytorch's torch.randn / randn_like answered item by item from our generators (seed SEED + k), as
    `samplers.randn_like_items` draws them."""
    generators = make_generators(SEED, batch)
    randn, randn_like = torch.randn, torch.randn_like

    def items(shape, device=None, dtype=torch.float32):
        noise = torch.stack([randn(tuple(shape[1:]), generator=g) for g in generators])
        return noise.to(device=device, dtype=dtype)

    torch.randn = lambda *shape, **kw: items(shape[0] if len(shape) == 1 else shape, kw.get("device"))
    torch.randn_like = lambda t, **kw: items(t.shape, t.device, t.dtype)
    try:
        yield
    finally:
        torch.randn, torch.randn_like = randn, randn_like


def verdicts(images01: torch.Tensor, prompts: list[str]) -> list:
    pixels = (images01.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [judge(p, c) for p, c in zip(pixels, prompts)]


def row(name: str, calls: float, seconds: float, judged: list) -> dict:
    rates = {k: np.mean([getattr(v, k) for v in judged]) for k in ("correct", *JUDGED)}
    cells = [name, f"{calls:.0f}", f"{seconds:.2f}", f"{len(judged)}"] + [f"{100 * rates[k]:.0f}%" for k in rates]
    print("| " + " | ".join(cells) + " |", flush=True)
    return rates


def evaluate(trainer, args, text_of: dict) -> None:
    prompts = captions()
    prompts = [prompts[i] for i in np.random.default_rng(0).permutation(len(prompts))[:args.prompts]]
    n = len(prompts)
    embeds = TextEmbeds(torch.cat([text_of[p].embeds for p in prompts]), torch.cat([text_of[p].mask for p in prompts]))
    stage = load_stage(f"{args.out} [unet 1]")
    cond = Conditioning(embeds, text_of[""])
    base = stage.recommended.settings.replace(cfg=args.cfg, seed=SEED)
    print(f"# checkpoint {args.out}: step {trainer.num_steps_taken(1)}; {n} prompts (ours), {args.theirs} "
          f"(imagen-pytorch's sampler), seeds {SEED}+k, cfg {args.cfg}, dynamic threshold {base.dynamic_threshold}, "
          f"judged at {SIZE} px")
    print("| setting | U-Net calls / image | s / image | images | correct | " + " | ".join(JUDGED) + " |")
    print("|---" * (5 + len(JUDGED)) + "|")
    ours = {}
    for name, s in [("ddpm 1000 uniform (recommended)", base), ("ddpm 250 uniform", base.replace(steps=250)),
                    ("ddpm 100 uniform", base.replace(steps=100))] + [
                   (f"dpmpp_2m {k} karras", base.replace(sampler="dpmpp_2m", spacing="karras", steps=k))
                   for k in (10, 20, 30)] + [
                   (f"{name} {k} karras", base.replace(sampler=name, spacing="karras", steps=k))
                   for name in ("euler_ancestral", "dpmpp_2m_sde") for k in (20, 30)]:
        with counting(stage.unet) as rows, torch.inference_mode():
            t = time.perf_counter()
            out = (generate(stage, cond, batch_size=n, settings=s) + 1) / 2
            seconds = (time.perf_counter() - t) / n
        ours[name] = out
        row(name, rows[0] / (2 * n), seconds, verdicts(out, prompts))
    k = min(args.theirs, n)
    if k:
        imagen = trainer.imagen
        with counting(*imagen.unets, *(e.ema_model for e in trainer.ema_unets)) as rows, our_noise(k), \
                torch.inference_mode():
            t = time.perf_counter()
            theirs = trainer.sample(text_embeds=embeds.embeds[:k], text_masks=embeds.mask[:k], cond_scale=args.cfg,
                                    stop_at_unet_number=1, use_tqdm=False, use_one_unet_in_gpu=False)
            seconds = (time.perf_counter() - t) / k
        row("imagen-pytorch trainer.sample 1000", rows[0] / (2 * k), seconds, verdicts(theirs, prompts[:k]))
        ref = ours["ddpm 1000 uniform (recommended)"][:k]
        row("  ours: ddpm 1000, same prompts", 1000, float("nan"), verdicts(ref, prompts[:k]))
        diff = (ref.clamp(0, 1) - theirs).abs()
        print(f"# same noise: ours ddpm@1000 vs imagen-pytorch, largest pixel difference {diff.max():.2e} (0..1), "
              f"mean {diff.mean():.2e}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30, help="training wall-clock budget")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "imagen_pytorch_steps" / "checkpoint.pt")
    p.add_argument("--save-every", type=float, default=3, help="minutes between checkpoints")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--evaluate-only", action="store_true")
    p.add_argument("--prompts", type=int, default=16, help="prompts for our samplers (0: train only)")
    p.add_argument("--theirs", type=int, default=8, help="prompts for imagen-pytorch's own (slow) sampler")
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from imagen_pytorch_oracle import imagen_pytorch
    ip = imagen_pytorch()
    print(f"# {machine()}")
    t5 = load_t5(DEMO_T5)
    caps = captions()
    every = t5.encode(caps + [""], max_length=TOKENS, zero_padding=True)
    text_of = {c: TextEmbeds(every.embeds[i:i + 1], every.mask[i:i + 1]) for i, c in enumerate(caps + [""])}
    del t5
    torch.manual_seed(0)
    trainer = build(ip)
    if args.evaluate_only:
        trainer.load(str(args.out))
    else:
        images = torch.from_numpy(np.stack([downsample(render(c, 2 * SIZE), SIZE) for c in caps]))
        images = images.permute(0, 3, 1, 2).float() / 255
        print(f"# training on {len(caps)} captions at {SIZE} px, batch {args.batch}, {args.minutes} min", flush=True)
        train(trainer, args, images, TextEmbeds(every.embeds[:-1], every.mask[:-1]))
    if args.prompts:  # --prompts 0: train only
        evaluate(trainer, args, text_of)


if __name__ == "__main__":
    main()
