"""DeepFloyd IF stages I and II: a diffusers folder (``unet/config.json`` + weights) or a lone weights file.

Our U-Net uses diffusers' parameter names, so IF weights load key for key; only the config needs translating. A
folder's ``config.json`` is translated field by field (anything our architecture cannot express is refused by
name); a lone file's config is inferred from its tensor shapes, the way ComfyUI detects model types, with IF's
conventions for what shapes cannot show (64-channel heads, 64 pooling heads, 1/0.7071 skip scaling in stage II).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..files import IF_PROBE_KEYS, Weights, open_weights
from ..unet.config import IF_SKIP_SCALE, UNetConfig
from .errors import CheckpointError
from ..stage import Stage, StageConfig, if_stage_config
from .tensors import build_on_meta

# Fields our architecture fixes: field -> (diffusers' default when absent, the values IF uses). Anything else is
# refused by name (a Stable Diffusion U-Net fails on its block types or time-embedding norm, for instance).
_REQUIRED = {"_class_name": (None, ("UNet2DConditionModel", None)),
             "resnet_time_scale_shift": ("default", ("scale_shift",)), "addition_embed_type": (None, ("text",)),
             "encoder_hid_dim_type": (None, (None, "text_proj")), "class_embed_type": (None, (None, "timestep")),
             "mid_block_type": ("UNetMidBlock2DCrossAttn", ("UNetMidBlock2DSimpleCrossAttn",)),
             "cross_attention_norm": (None, ("group_norm",)), "time_embedding_type": ("positional", ("positional",)),
             "flip_sin_to_cos": (True, (True,)), "freq_shift": (0, (0,)), "conv_in_kernel": (3, (3,)),
             "conv_out_kernel": (3, (3,)), "class_embeddings_concat": (False, (False,)),
             "dual_cross_attention": (False, (False,)), "upcast_attention": (False, (False, None)),
             "num_attention_heads": (None, (None,)), "time_cond_proj_dim": (None, (None,)),
             "timestep_post_act": (None, (None,)), "center_input_sample": (False, (False,)),
             "norm_num_groups": (32, (32,)), "act_fn": ("silu", ("gelu", "silu")), "num_class_embeds": (None, (None,)),
             "addition_time_embed_dim": (None, (None,))}
_DOWN = {"ResnetDownsampleBlock2D": "none", "SimpleCrossAttnDownBlock2D": "attn"}
_UP = {"ResnetUpsampleBlock2D": "none", "SimpleCrossAttnUpBlock2D": "attn"}
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors.index.fp16.json",
                "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")


def _per_level(value, n: int, name: str, source) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise CheckpointError(f"{source}: {name} has {len(values)} entries for {n} levels")
    return values


def unet_config_from_diffusers(cfg: dict, source: str | Path = "config.json") -> UNetConfig:
    """Translate an IF-style diffusers ``UNet2DConditionModel`` config; CheckpointError naming any field our
    architecture cannot express (e.g. a Stable Diffusion U-Net's block types)."""
    cfg = {**{key: default for key, (default, _) in _REQUIRED.items()}, **cfg}
    for key, (_, allowed) in _REQUIRED.items():
        if cfg[key] not in allowed:
            raise CheckpointError(f"{source}: {key} = {cfg[key]!r} is not a DeepFloyd IF U-Net setting (expected "
                                  f"{' or '.join(map(repr, allowed))}); only IF stage I/II U-Nets load here")
    down, up = list(cfg.get("down_block_types", ())), list(cfg.get("up_block_types", ()))
    if not down or any(t not in _DOWN for t in down) or any(t not in _UP for t in up) or \
            [_DOWN[t] for t in down] != [_UP[t] for t in reversed(up)]:
        raise CheckpointError(f"{source}: block types {down} / {up} are not IF's (mirrored ResnetDownsampleBlock2D / "
                              "SimpleCrossAttnDownBlock2D and their up counterparts)")
    n = len(down)
    if cfg.get("encoder_hid_dim") is None:
        raise CheckpointError(f"{source}: encoder_hid_dim is missing; IF projects T5 embeddings with encoder_hid_proj")
    act_once = cfg.get("time_embedding_act_fn")
    if act_once not in (None, cfg["act_fn"]) or bool(cfg.get("resnet_skip_time_act", False)) != (act_once is not None):
        raise CheckpointError(f"{source}: time_embedding_act_fn={act_once!r} with resnet_skip_time_act="
                              f"{cfg.get('resnet_skip_time_act')!r} is not one of IF's two equivalent forms")
    only_cross = _per_level(cfg.get("only_cross_attention", False), n, "only_cross_attention", source)
    mid_only = cfg.get("mid_block_only_cross_attention")
    mid_only = only_cross[-1] if mid_only is None and isinstance(cfg.get("only_cross_attention"), bool) else mid_only
    head_dims = set(_per_level(cfg.get("attention_head_dim", 64), n, "attention_head_dim", source))
    if len(head_dims) != 1:
        raise CheckpointError(f"{source}: per-level attention_head_dim {sorted(head_dims)} is not supported")
    lowres = cfg.get("class_embed_type") == "timestep"
    in_ch = cfg.get("in_channels", 3)
    if lowres and in_ch % 2:
        raise CheckpointError(f"{source}: a super-resolution U-Net takes an even in_channels (image + low-res image)")
    try:
        return UNetConfig(
            channels=tuple(cfg["block_out_channels"]),
            layers=tuple(_per_level(cfg.get("layers_per_block", 2), n, "layers_per_block", source)),
            attention=tuple("none" if _DOWN[t] == "none" else ("cross" if oc else "self_cross")
                            for t, oc in zip(down, only_cross)),
            mid_attention="cross" if mid_only else "self_cross",
            in_channels=in_ch // 2 if lowres else in_ch, out_channels=cfg.get("out_channels", in_ch),
            lowres_cond=lowres, text_embed_dim=cfg["encoder_hid_dim"], cond_dim=cfg["cross_attention_dim"],
            head_dim=head_dims.pop(), pool_heads=cfg.get("addition_embed_type_num_heads", 64),
            time_embed_dim=cfg.get("time_embedding_dim"), resnet_scale=float(cfg.get("resnet_out_scale_factor", 1.0)),
            mid_scale=float(cfg.get("mid_block_scale_factor", 1.0)), act=cfg["act_fn"],
            norm_eps=float(cfg.get("norm_eps", 1e-5)), text_mask=False)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: cannot build an IF U-Net from this config: {e}") from e


_LEVEL_KEY = re.compile(r"^down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight$")


def infer_unet_config(shapes: dict[str, tuple[int, ...]], source: str | Path = "the file") -> UNetConfig:
    """An IF U-Net's config from its diffusers-named tensor shapes (no config file); CheckpointError when the shapes
    fit no IF U-Net. Head width (64), pooling heads (64) and stage II's skip scale (1/0.7071) are IF's conventions."""
    missing = [k for k in IF_PROBE_KEYS if k not in shapes]
    if missing:
        raise CheckpointError(f"{source}: not a DeepFloyd IF U-Net in diffusers layout (missing {missing})")
    layers: dict[int, int] = {}
    for key in shapes:
        m = _LEVEL_KEY.match(key)
        if m:
            level, j = int(m.group(1)), int(m.group(2))
            layers[level] = max(layers.get(level, 0), j + 1)
    n = len(layers)
    if sorted(layers) != list(range(n)) or n == 0:
        raise CheckpointError(f"{source}: the down_blocks levels {sorted(layers)} are not numbered 0..N-1")

    def attention(prefix: str) -> str:
        if f"{prefix}.attentions.0.to_q.weight" not in shapes:
            return "none"
        return "self_cross" if f"{prefix}.attentions.0.to_k.weight" in shapes else "cross"

    lowres = "class_embedding.linear_1.weight" in shapes
    in_ch, out_ch = shapes["conv_in.weight"][1], shapes["conv_out.weight"][0]
    cond_dim, text_dim = shapes["encoder_hid_proj.weight"]
    scale = IF_SKIP_SCALE if lowres else 1.0
    try:
        return UNetConfig(
            channels=tuple(shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(n)),
            layers=tuple(layers[i] for i in range(n)),
            attention=tuple(attention(f"down_blocks.{i}") for i in range(n)), mid_attention=attention("mid_block"),
            in_channels=in_ch // 2 if lowres else in_ch, out_channels=out_ch, lowres_cond=lowres,
            text_embed_dim=text_dim, cond_dim=cond_dim, head_dim=64, pool_heads=64,
            time_embed_dim=shapes["time_embedding.linear_1.weight"][0], resnet_scale=scale, mid_scale=scale,
            act="gelu", text_mask=False)
    except ValueError as e:
        raise CheckpointError(f"{source}: the tensor shapes match no IF U-Net this loader knows ({e})") from e


def find_unet_folder(folder: Path) -> tuple[Path, Path | None]:
    """(the unet folder, the model root or None) for an IF model root or its ``unet/`` subfolder."""
    if (folder / "unet" / "config.json").is_file():
        return folder / "unet", folder
    if (folder / "config.json").is_file():
        root = folder.parent if (folder.parent / "model_index.json").is_file() else None
        return folder, root
    raise CheckpointError(f"{folder} has neither unet/config.json nor config.json: give a DeepFloyd IF diffusers "
                          "folder (the model root, e.g. IF-I-XL-v1.0/, or its unet/ subfolder) or a single "
                          ".safetensors file")


def find_weight_file(unet_dir: Path, dtype: torch.dtype | None) -> Path:
    names = list(WEIGHT_FILES)
    if dtype == torch.float16:  # fp16 requested: read the fp16 variant first if it is there
        names.sort(key=lambda n: ".fp16." not in n)
    for name in names:
        if (unet_dir / name).is_file():
            return unet_dir / name
    raise CheckpointError(f"{unet_dir} has config.json but no weights: put diffusion_pytorch_model.safetensors (or "
                          f"its .fp16 variant) next to it; looked for {list(WEIGHT_FILES)}")


def _scheduler_overrides(root: Path | None, source: Path) -> dict:
    """prediction_type / schedule / num_train_timesteps from ``scheduler/scheduler_config.json`` if present."""
    file = root / "scheduler" / "scheduler_config.json" if root else None
    if file is None or not file.is_file():
        return {}
    try:
        sched = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not readable JSON: {e}") from e
    beta = sched.get("beta_schedule", "squaredcos_cap_v2")
    if beta not in ("squaredcos_cap_v2", "linear") or (beta == "linear" and (
            sched.get("beta_start", 1e-4), sched.get("beta_end", 0.02)) != (1e-4, 0.02)):
        raise CheckpointError(f"{file}: beta_schedule {beta!r} (beta_start/end {sched.get('beta_start')}/"
                              f"{sched.get('beta_end')}) is not supported for {source}; IF uses squaredcos_cap_v2")
    return {"prediction_type": sched.get("prediction_type", "epsilon"), "schedule": beta,
            "num_train_timesteps": int(sched.get("num_train_timesteps", 1000))}


def load_diffusers_folder(folder: Path, dtype: torch.dtype | None = None) -> Stage:
    """An IF stage from a diffusers folder (model root or ``unet/``)."""
    from ..unet import ImagenUNet

    unet_dir, root = find_unet_folder(folder)
    cfg_file = unet_dir / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file} is not readable JSON: {e}") from e
    unet_config = unet_config_from_diffusers(cfg, cfg_file)
    # IF's resolutions are fixed (stage I 64 px, stage II 64 -> 256 px); config.json's sample_size is not reliable
    # for the upscalers (diffusers' conversion script says so), so it is not read
    stage = if_stage_config(unet_config, name=(root or unet_dir).name)
    try:
        stage = stage.replace(**_scheduler_overrides(root, folder))
    except ValueError as e:
        raise CheckpointError(f"{folder}: the scheduler config does not fit the U-Net: {e}") from e
    weights = open_weights(find_weight_file(unet_dir, dtype))
    unet = build_on_meta(lambda: ImagenUNet(unet_config), weights, dtype=dtype)
    return Stage(unet=unet, config=stage, source=str(folder))


def load_if_file(weights: Weights, dtype: torch.dtype | None = None) -> Stage:
    """An IF stage from a lone diffusers-named weights file, its config inferred from the tensor shapes."""
    from ..unet import ImagenUNet

    try:
        unet_config = infer_unet_config(weights.shapes, weights.path)
    except CheckpointError as e:  # our own U-Net's keys are IF's: a native file that lost its metadata lands here
        raise CheckpointError(f"{e}. If it is a comfyui-imagen stage file, its stage config is missing from its "
                              "metadata (a tool that rewrote it dropped it): export it again with "
                              "comfyui_imagen.checkpoints.save_stage") from e
    stage: StageConfig = if_stage_config(unet_config, name=weights.path.stem)
    unet = build_on_meta(lambda: ImagenUNet(unet_config), weights, dtype=dtype)
    return Stage(unet=unet, config=stage, source=str(weights.path))
