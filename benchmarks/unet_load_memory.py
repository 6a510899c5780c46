"""Peak memory of `load_stage`, as a multiple of the file size, for each format (each load in a fresh process).

    python benchmarks/unet_load_memory.py                  # IF-I-M-shaped random weights, fp16 (744 MB files)
    python benchmarks/unet_load_memory.py --preset tiny-base --dtype fp32

Memory is the growth of the peak RSS (``resource.getrusage(...).ru_maxrss``) over the process's RSS just before the
load (psutil, torch and the library already imported), divided by the size of the weights file. Target: <= 1.05
when the weights keep their stored dtype; a cast (--cast) necessarily grows by the loaded size, shown in the last
column as growth / loaded weights.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DTYPES = ("fp32", "fp16", "bf16")


def child(path: str, dtype: str | None) -> None:
    """Runs in the fresh process: load once, print JSON."""
    import gc

    import psutil
    import torch

    from comfyui_imagen.checkpoints import load_stage

    want = getattr(torch, {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype]) if dtype else None
    gc.collect()
    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    stage = load_stage(path, dtype=want)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    params = sum(p.numel() * p.element_size() for p in stage.unet.parameters())
    print(json.dumps({"before": before, "peak": peak, "seconds": seconds, "param_bytes": params}))


def make_files(preset: str, dtype: str, folder: Path) -> dict[str, tuple[Path, Path]]:
    """Random weights of `preset` saved as a native stage, a lone IF file and a diffusers folder (hard-linked)."""
    import torch

    from benchmarks.unet_speed import diffusers_kwargs
    from comfyui_imagen.checkpoints import if_stage_config, save_stage
    from comfyui_imagen.unet import ImagenUNet, get_preset
    from safetensors.torch import save_file

    config = get_preset(preset)
    torch_dtype = getattr(torch, {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[dtype])
    with torch.device("meta"):
        unet = ImagenUNet(config)
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=g) * 0.02).to(torch_dtype) for k, v in unet.state_dict().items()}
    unet.load_state_dict(state, assign=True)
    native = save_stage(folder / "native.safetensors", unet, if_stage_config(config, name=preset))
    lone = folder / "if_unet.safetensors"
    save_file(state, str(lone))
    del state, unet
    unet_dir = folder / "IF" / "unet"
    unet_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": "UNet2DConditionModel", "sample_size": 256 if config.lowres_cond else 64,
           **diffusers_kwargs(config)}
    (unet_dir / "config.json").write_text(json.dumps(cfg))
    weights = unet_dir / ("diffusion_pytorch_model.fp16.safetensors" if dtype == "fp16" else
                          "diffusion_pytorch_model.safetensors")
    if not weights.exists():
        os.link(lone, weights)
    return {"native": (native, native), "lone IF file": (lone, lone), "diffusers folder": (folder / "IF", weights)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="IF-I-M")
    p.add_argument("--dtype", default="fp16", choices=DTYPES, help="dtype the files are written in")
    p.add_argument("--cast", default=None, choices=DTYPES, help="also load with dtype= this (reported separately)")
    p.add_argument("--dir", default=None, help="where to write the files (default: a temporary folder)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-dtype", default=None, help=argparse.SUPPRESS)
    p.add_argument("--make", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.child_dtype)
        return
    if args.make:
        files = make_files(args.preset, args.dtype, Path(args.make))
        print(json.dumps({k: [str(a), str(b)] for k, (a, b) in files.items()}))
        return
    # This process stays small (no torch): on Linux a child inherits its parent's peak RSS through fork + exec, so
    # the files are written by one child and every load is measured in another.
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        made = subprocess.run([sys.executable, __file__, "--make", tmp, "--preset", args.preset, "--dtype", args.dtype],
                              capture_output=True, text=True, check=True, cwd=ROOT).stdout
        files = {k: (Path(a), Path(b)) for k, (a, b) in json.loads(made.strip().splitlines()[-1]).items()}
        print(f"# {args.preset} weights stored as {args.dtype}; peak RSS growth of load_stage in a fresh process")
        print("| format | load dtype | file (MB) | load (s) | peak growth (MB) | growth / file size | "
              "growth / loaded weights |")
        print("|---|---|---|---|---|---|---|")
        for name, (path, weights) in files.items():
            for cast in (None, args.cast) if args.cast else (None,):
                cmd = [sys.executable, __file__, "--child", str(path)] + (["--child-dtype", cast] if cast else [])
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
                r = json.loads(out.strip().splitlines()[-1])
                size = weights.stat().st_size
                growth = r["peak"] - r["before"]
                print(f"| {name} | {cast or 'as stored'} | {size / 2**20:.0f} | {r['seconds']:.2f} | "
                      f"{growth / 2**20:.0f} | {growth / size:.3f} | {growth / r['param_bytes']:.3f} |")


if __name__ == "__main__":
    main()
