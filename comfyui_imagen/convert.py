"""``python -m comfyui_imagen convert``: any stage the loader reads (an imagen-pytorch checkpoint's U-Net, a DeepFloyd
IF U-Net) written as a native comfyui-imagen stage file: one safetensors file, its `StageConfig` (architecture,
schedule, recommended settings) in the metadata. An imagen-pytorch checkpoint without ``imagen_params`` needs its
settings file (``<name>.json``) for the conversion only; the native file carries everything.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import torch

__all__ = ["add_convert_parser", "convert", "convert_main"]

_DTYPES = {"keep": None, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def convert(source: str, output: str | Path, *, number: Optional[int] = None, online: bool = False,
            dtype: Optional[torch.dtype] = None) -> Path:
    """Load `source` (`load_stage`'s names: ``"file.pt [unet 2]"``; `number` / `online` add that selector) and
    save it as a native stage file at `output` (``.safetensors``). Returns the path written."""
    from .checkpoints import load_stage, save_stage
    from .checkpoints.native import check_stage_path
    from .files import split_unet_name, unet_name

    name, given, given_online = split_unet_name(source)
    if number is not None or online:
        if number is not None and given is not None and given != number:
            raise ValueError(f"{source} names U-Net {given} but --unet {number} was given; give one of them")
        source = unet_name(name, number if number is not None else given or 1, online or given_online)
    output = Path(output).expanduser()
    check_stage_path(output)
    stage = load_stage(source, dtype=dtype)
    config = stage.config.replace(name=stage.config.name or Path(name).stem)
    return save_stage(output, stage.unet, config)


def add_convert_parser(sub) -> None:
    c = sub.add_parser("convert", help="write a stage (e.g. one U-Net of an imagen-pytorch checkpoint) as a native "
                                       "comfyui-imagen stage file",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("source", help="the stage to read: an imagen-pytorch checkpoint (trainer .pt, persist_to_file .pt, "
                                  "or its .safetensors), optionally as 'file.pt [unet N]', or any other stage file")
    c.add_argument("-o", "--output", required=True, help="the native stage file to write (.safetensors)")
    c.add_argument("--unet", type=int, default=None, metavar="N",
                   help="which U-Net of a multi-U-Net checkpoint (1 = the base, as imagen-pytorch numbers them)")
    c.add_argument("--online", action="store_true",
                   help="take the trained (online) weights instead of the EMA ones of a trainer checkpoint")
    c.add_argument("--dtype", choices=list(_DTYPES), default="keep", help="weight type of the written file")


def convert_main(args) -> int:
    from .checkpoints import load_stage

    try:
        path = convert(args.source, args.output, number=args.unet, online=args.online, dtype=_DTYPES[args.dtype])
        stage = load_stage(path)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}: {stage.describe()}", file=sys.stderr)
    return 0
