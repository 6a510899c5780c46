"""ImagenUNet vs diffusers' UNet2DConditionModel on identical IF-shaped weights, in one process.

    python benchmarks/unet_speed.py                       # IF-I-M at 64x64, batch 2 (CFG), fp32 and bf16, CPU
    python benchmarks/unet_speed.py --preset IF-II-M --size 256 --dtypes fp32 --repeats 3
    python benchmarks/unet_speed.py --device cuda --dtypes fp16,bf16

Prints, per dtype, the median forward time of each model, the ratio ours / diffusers, the FLOPs of one forward
(counted by torch's FlopCounterMode, direct convolutions) and the achieved FLOP/s against a square matmul timed in
the same run; ours can exceed 100% of the matmul: its Winograd convolutions (CPU) do the same convolution with
fewer multiplies. `--no-winograd` measures ours with direct convolutions only.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comfyui_imagen.unet import ImagenUNet, get_preset  # noqa: E402
from comfyui_imagen.unet.config import UNetConfig  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def matmul_flops_per_s(dtype: torch.dtype, device: str, n: int = 2048, repeats: int = 5) -> float:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="IF-I-M")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--tokens", type=int, default=77)
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-winograd", action="store_true", help="ours with direct convolutions only")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import UNet2DConditionModel

    config = get_preset(args.preset)
    torch.manual_seed(0)
    ref = UNet2DConditionModel(**diffusers_kwargs(config)).eval()
    ours = ImagenUNet(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    ours.set_winograd(not args.no_winograd)
    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    x = torch.randn(b, config.in_channels, s, s, generator=g)
    low = torch.randn(b, config.in_channels, s, s, generator=g) if config.lowres_cond else None
    text = torch.randn(b, args.tokens, config.text_embed_dim, generator=g)
    t = torch.tensor([500.0] * b)
    level = torch.tensor([100.0] * b) if config.lowres_cond else None

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {args.preset} {s}x{s} batch {b}, {args.tokens} text tokens, device {args.device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average {load:.2f}")
    params = sum(p.numel() for p in ours.parameters())
    print(f"# {params / 1e6:.0f}M parameters; ours with Winograd convolutions: {not args.no_winograd}")
    print("| dtype | ours (ms) | diffusers (ms) | ours / diffusers | GFLOP / forward | ours GFLOP/s (effective) | "
          "matmul GFLOP/s | ours % of matmul | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.dtypes.split(","):
        dtype = DTYPES[name]
        ref.to(args.device, dtype)
        ours.to(args.device, dtype)
        dev = dict(device=args.device, dtype=dtype)
        xin = torch.cat([x, low], 1) if low is not None else x
        ref_in = dict(sample=xin.to(**dev), timestep=t.to(args.device), encoder_hidden_states=text.to(**dev),
                      class_labels=level.to(args.device) if level is not None else None)
        our_in = dict(x=x.to(**dev), timesteps=t.to(args.device), text_embeds=text.to(**dev),
                      lowres_image=low.to(**dev) if low is not None else None,
                      noise_level=level.to(args.device) if level is not None else None)
        with torch.inference_mode():
            err = (ours(**our_in).float() - ref(**ref_in).sample.float()).abs().max().item()
            t_ours, t_ref = median_seconds([lambda: ours(**our_in), lambda: ref(**ref_in)], args.repeats, args.device)
        flops = count_flops(ours, our_in, not args.no_winograd)
        mm = matmul_flops_per_s(dtype, args.device)
        print(f"| {name} | {t_ours * 1e3:.0f} | {t_ref * 1e3:.0f} | {t_ours / t_ref:.2f} | {flops / 1e9:.0f} | "
              f"{flops / t_ours / 1e9:.0f} | {mm / 1e9:.0f} | {100 * flops / t_ours / mm:.0f}% | {err:.1e} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# load average at the end {load:.2f}")


if __name__ == "__main__":
    main()
