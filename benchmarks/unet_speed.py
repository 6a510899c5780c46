"""ImagenUNet vs diffusers' UNet2DConditionModel on identical IF-shaped weights, in one process.

    python benchmarks/unet_speed.py                       # IF-I-M at 64x64, batch 2 (CFG), fp32 and bf16, CPU
    python benchmarks/unet_speed.py --preset IF-II-M --size 256 --dtypes fp32 --repeats 3
    python benchmarks/unet_speed.py --preset IF-I-XL --size 64 --batch 2 --dtypes bf16,fp16 --device cuda
    python benchmarks/unet_speed.py --preset IF-I-tiny --size 32 --dtypes fp32 --repeats 1    # seconds, any CPU

Prints, per dtype, the median forward time of each model, the ratio ours / diffusers, the FLOPs of one forward
(counted by torch's FlopCounterMode, direct convolutions) and the achieved FLOP/s against a square matmul of the same
dtype on the same device, timed in the same run (2048² on the CPU, 8192² on CUDA, where a smaller one measures the
launch); ours can exceed 100% of the matmul: its Winograd convolutions (CPU, fp32) do the same convolution with fewer
multiplies. `--no-winograd` measures ours with direct convolutions only.

On CUDA the models are built on the device (an IF-I-XL pair in fp32 is 34 GB: minutes to initialise on a CPU), every
timed call is bracketed by torch.cuda.synchronize(), and ours runs as everywhere: channels-last activations and
weights, attention through F.scaled_dot_product_attention (PyTorch picks flash / memory-efficient kernels; the
enabled backends are printed), direct convolutions (Winograd is a CPU fp32 path only). `--compile` times both models
through torch.compile (same mode) after compiling them in the warm-up. Without diffusers (a GPU image may lack it:
carry the wheel, `benchmarks/gpu_suite.py` says how) ours is timed alone with a note, or always with `--no-peer`.
`IF-I-tiny` / `IF-II-tiny` are IF's block layouts at a few channels (`TINY_PRESETS`), for smoke runs.
`--json FILE` writes the rows.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyui_imagen.unet import ImagenUNet, get_preset  # noqa: E402
from comfyui_imagen.unet.config import IF_I_M, IF_II_M, UNetConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# IF's block layouts (levels, blocks, attention placement, learned variance, SR conditioning) at a few channels: the
# CPU smoke runs of the GPU suite, and its tests
TINY_PRESETS = {
    "IF-I-tiny": IF_I_M.replace(channels=(32, 64, 96, 128), cond_dim=128, head_dim=32, text_embed_dim=64, pool_heads=4),
    "IF-II-tiny": IF_II_M.replace(channels=(32, 64, 96, 128, 192), cond_dim=192, head_dim=32, time_embed_dim=192,
                                  text_embed_dim=64, pool_heads=4),
}
DIFFUSERS_MISSING = ("diffusers is not installed: timing ours alone. For the comparison install it from a carried "
                     "wheel (benchmarks/gpu_suite.py --wheels DIR prints the commands)")


def preset(name: str) -> UNetConfig:
    """A library preset (`get_preset`) or one of `TINY_PRESETS`."""
    return TINY_PRESETS[name] if name in TINY_PRESETS else get_preset(name)


def diffusers_kwargs(c: UNetConfig) -> dict:
    """The diffusers config of an IF-style `UNetConfig` (the inverse of checkpoints.deepfloyd's translation)."""
    down = ["ResnetDownsampleBlock2D" if a == "none" else "SimpleCrossAttnDownBlock2D" for a in c.attention]
    up = ["ResnetUpsampleBlock2D" if a == "none" else "SimpleCrossAttnUpBlock2D" for a in reversed(c.attention)]
    kw = dict(block_out_channels=list(c.channels), layers_per_block=list(c.layers), down_block_types=down,
              up_block_types=up, mid_block_type="UNetMidBlock2DSimpleCrossAttn", in_channels=c.conv_in_channels,
              out_channels=c.out_channels, cross_attention_dim=c.cond_dim, encoder_hid_dim=c.text_embed_dim,
              attention_head_dim=c.head_dim, addition_embed_type="text", addition_embed_type_num_heads=c.pool_heads,
              cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn=c.act,
              only_cross_attention=[a == "cross" for a in c.attention],
              mid_block_only_cross_attention=c.mid_attention == "cross", time_embedding_dim=c.time_embed_dim,
              resnet_out_scale_factor=c.resnet_scale, mid_block_scale_factor=c.mid_scale)
    if c.lowres_cond:
        kw.update(class_embed_type="timestep", time_embedding_act_fn=c.act, resnet_skip_time_act=True)
    return kw


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_seconds(fns: list, repeats: int, device: str) -> list[float]:
    """Median wall time of each function; runs are interleaved (A B A B ...) so that load from other processes on
    a shared machine hits every function alike."""
    for fn in fns:  # warm-up (kernel selection, allocator)
        fn()
    sync(device)
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            sync(device)
            acc.append(time.perf_counter() - t0)
    return [statistics.median(acc) for acc in times]


def matmul_flops_per_s(dtype: torch.dtype, device: str, n: int | None = None, repeats: int = 5) -> float:
    n = n or (8192 if device.startswith("cuda") else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / median_seconds([lambda: a @ b], repeats, device)[0]


def count_flops(model, inputs: dict, enabled: bool) -> int:
    """FLOPs of one forward by direct convolution (the model's nominal work, the same for both models): Winograd
    is switched off while counting, since its fewer multiplies are the speed-up being measured, not less work."""
    from torch.utils.flop_counter import FlopCounterMode

    model.set_winograd(False)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs)
    model.set_winograd(enabled)
    return counter.get_total_flops()


def _backends(device: str) -> str:
    if not device.startswith("cuda"):
        return ""
    cuda = torch.backends.cuda
    sdpa = [name for name, on in (("flash", cuda.flash_sdp_enabled()),
                                  ("mem-efficient", cuda.mem_efficient_sdp_enabled()),
                                  ("math", cuda.math_sdp_enabled())) if on]
    return (f"; {torch.cuda.get_device_name(device)}, SDPA backends {'/'.join(sdpa)}, cudnn.benchmark "
            f"{torch.backends.cudnn.benchmark}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="IF-I-M", help="a U-Net preset (IF-I-M, IF-I-XL, IF-II-L ...) or "
                   f"{'/'.join(TINY_PRESETS)}")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-winograd", action="store_true", help="ours with direct convolutions only")
    p.add_argument("--no-peer", action="store_true", help="time ours alone (automatic without diffusers)")
    p.add_argument("--compile", action="store_true", help="time both models through torch.compile")
    p.add_argument("--matmul-size", type=int, help="side of the matmul peer (default 2048 on the CPU, 8192 on CUDA)")
    p.add_argument("--json", type=Path, help="write the rows here")
    args = p.parse_args(argv)
    return with_threads(args.threads, run, args)


def with_threads(threads: int | None, fn, *args):
    """``fn(*args)`` with ``threads`` torch intra-op threads (None: as they are), the count restored afterwards (the
    benchmarks also run inside the tests' process)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def run(args: argparse.Namespace) -> dict:
    peer = not args.no_peer
    if peer:
        try:
            from diffusers import UNet2DConditionModel
        except ImportError:
            print(f"# {DIFFUSERS_MISSING}")
            peer = False

    config = preset(args.preset)
    cuda = args.device.startswith("cuda")
    winograd = not args.no_winograd and not cuda
    torch.manual_seed(0)
    with torch.device(args.device):  # built where it runs: on CUDA an IF-I-XL initialises in seconds
        ref = UNet2DConditionModel(**diffusers_kwargs(config)).eval() if peer else None
        ours = ImagenUNet(config).eval()
    if ref is not None:
        ours.load_state_dict(ref.state_dict(), strict=True)
    ours.set_winograd(winograd)
    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    x = torch.randn(b, config.in_channels, s, s, generator=g)
    low = torch.randn(b, config.in_channels, s, s, generator=g) if config.lowres_cond else None
    text = torch.randn(b, args.tokens, config.text_embed_dim, generator=g)
    t = torch.tensor([500.0] * b)
    level = torch.tensor([100.0] * b) if config.lowres_cond else None

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {args.preset} {s}x{s} batch {b}, {args.tokens} text tokens, device {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average {load:.2f}"
          f"{_backends(args.device)}")
    params = sum(p.numel() for p in ours.parameters())
    print(f"# {params / 1e6:.0f}M parameters; ours: channels-last, SDPA attention, Winograd convolutions "
          f"{winograd}{' (CPU fp32 only)' if cuda else ''}; torch.compile {args.compile}; peer: "
          f"{'diffusers' if peer else 'none'}")
    print("| dtype | ours (ms) | diffusers (ms) | ours / diffusers | GFLOP / forward | ours GFLOP/s (effective) | "
          "matmul GFLOP/s | ours % of matmul | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        ours.to(args.device, dtype)
        dev = dict(device=args.device, dtype=dtype)
        our_in = dict(x=x.to(**dev), timesteps=t.to(args.device), text_embeds=text.to(**dev),
                      lowres_image=low.to(**dev) if low is not None else None,
                      noise_level=level.to(args.device) if level is not None else None)
        run_ours = torch.compile(ours) if args.compile else ours
        fns = [lambda: run_ours(**our_in)]
        if ref is not None:
            ref.to(args.device, dtype)
            xin = torch.cat([x, low], 1) if low is not None else x
            ref_in = dict(sample=xin.to(**dev), timestep=t.to(args.device), encoder_hidden_states=text.to(**dev),
                          class_labels=level.to(args.device) if level is not None else None)
            run_ref = torch.compile(ref) if args.compile else ref
            fns.append(lambda: run_ref(**ref_in))
        with torch.inference_mode():
            err = (float((ours(**our_in).float() - ref(**ref_in).sample.float()).abs().max())
                   if ref is not None else float("nan"))
            times = median_seconds(fns, args.repeats, args.device)
        t_ours, t_ref = times[0], (times[1] if ref is not None else float("nan"))
        flops = count_flops(ours, our_in, winograd)
        mm = matmul_flops_per_s(dtype, args.device, args.matmul_size)
        row = {"dtype": name, "ours_ms": t_ours * 1e3, "diffusers_ms": t_ref * 1e3, "ratio": t_ours / t_ref,
               "gflop": flops / 1e9, "ours_gflops": flops / t_ours / 1e9, "matmul_gflops": mm / 1e9,
               "ours_pct_of_matmul": 100 * flops / t_ours / mm, "max_abs_diff": err}
        rows.append(row)
        print(f"| {name} | {row['ours_ms']:.1f} | {row['diffusers_ms']:.1f} | {row['ratio']:.2f} | "
              f"{row['gflop']:.1f} | {row['ours_gflops']:.0f} | {row['matmul_gflops']:.0f} | "
              f"{row['ours_pct_of_matmul']:.0f}% | {err:.1e} |", flush=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# load average at the end {load:.2f}")
    report = {"preset": args.preset, "size": s, "batch": b, "device": args.device, "torch": torch.__version__,
              "peer": "diffusers" if peer else None, "winograd": winograd, "compile": args.compile,
              "parameters": params, "rows": rows}
    return write_report(args.json, report)


def write_report(path: Path | None, report: dict) -> dict:
    """``report`` as JSON at ``path`` (when given, folders made); returns the report."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str))
    return report


if __name__ == "__main__":
    main()
