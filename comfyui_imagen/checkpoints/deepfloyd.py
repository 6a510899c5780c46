"""DeepFloyd IF stages I and II: a diffusers folder (``unet/config.json`` + weights) or a lone weights file.

Our U-Net uses diffusers' parameter names, so IF weights load key for key; only the config needs translating. A
folder's ``config.json`` is translated field by field, mirroring what diffusers' ``UNet2DConditionModel`` builds from
it for IF's block family (anything outside that family, or that diffusers itself could not run, is refused by name);
a lone file's config is read from a ``config.json`` beside it, or else inferred from its tensor shapes, the way
ComfyUI detects model types, with IF's conventions for what shapes cannot show (32 norm groups, 64-channel heads,
64 pooling heads, 1/0.7071 skip scaling in stage II).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..files import IF_PROBE_KEYS, Weights, open_weights, read_json
from ..unet.config import IF_SKIP_SCALE, UNetConfig
from .errors import CheckpointError
from ..stage import Stage, StageConfig
from .if_stages import if_stage_config
from .tensors import build_on_meta

_DOWN = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}  # block type -> has attention
_UP = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}
_MID = "UNetMidBlock2DSimpleCrossAttn"
_FAMILY = (f"only U-Nets of DeepFloyd IF's block family load here ({' / '.join(_DOWN)} down blocks, their up "
           f"counterparts {' / '.join(_UP)}, a {_MID}, resnet_time_scale_shift 'scale_shift' or 'default')")
# diffusers' get_activation names; "swish" is SiLU. (ReLU, which diffusers also offers, is not an activation of ours.)
_ACTS = {"gelu": "gelu", "silu": "silu", "swish": "silu", "mish": "mish"}
# UNet2DConditionModel.__init__'s defaults for every field read here (a config.json may leave any of them out)
_DEFAULTS = {
    "_class_name": None, "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False,
    "flip_sin_to_cos": True, "freq_shift": 0, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "only_cross_attention": False,
    "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "mid_block_scale_factor": 1.0,
    "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5, "cross_attention_dim": 1280, "encoder_hid_dim": None,
    "encoder_hid_dim_type": None, "attention_head_dim": 8, "num_attention_heads": None, "class_embed_type": None,
    "addition_embed_type": None, "num_class_embeds": None, "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0, "time_embedding_type": "positional",
    "time_embedding_dim": None, "time_embedding_act_fn": None, "timestep_post_act": None, "time_cond_proj_dim": None,
    "conv_in_kernel": 3, "conv_out_kernel": 3, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None, "addition_embed_type_num_heads": 64}
# Fields whose other values build something IF's blocks are not (another family, extra inputs or weights).
# Not read at all for these block types, so any value loads: dual_cross_attention, use_linear_projection,
# upcast_attention, transformer_layers_per_block, reverse_transformer_layers_per_block, downsample_padding, dropout,
# addition_time_embed_dim, projection_class_embeddings_input_dim.
_ONLY = {"_class_name": ("UNet2DConditionModel", None), "mid_block_type": (_MID,),
         "time_embedding_type": ("positional",), "encoder_hid_dim_type": (None, "text_proj"),
         "class_embed_type": (None, "timestep"), "addition_embed_type": ("text", None),
         "resnet_time_scale_shift": ("scale_shift", "default"),
         "cross_attention_norm": ("group_norm", "layer_norm", None), "num_attention_heads": (None,),
         "time_cond_proj_dim": (None,), "class_embeddings_concat": (False,), "attention_type": ("default",)}
CROSS_NORM_GROUPS = 32  # diffusers' Attention(cross_attention_norm_num_groups=32): the blocks never pass another
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                "diffusion_pytorch_model.fp16.safetensors", "diffusion_pytorch_model.safetensors.index.fp16.json",
                "diffusion_pytorch_model.bin", "diffusion_pytorch_model.fp16.bin")


def _refuse(source, key: str, value, expected) -> CheckpointError:
    return CheckpointError(f"{source}: {key} = {value!r} is not a DeepFloyd IF U-Net setting (expected "
                           f"{' or '.join(map(repr, expected))}); {_FAMILY}")


def _misfit(source, key: str, value, why: str) -> CheckpointError:
    return CheckpointError(f"{source}: {key} = {value!r} does not fit this U-Net: {why}")


def _per_level(value, n: int, name: str, source) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value] * n
    if len(values) != n:
        raise _misfit(source, name, value, f"it has {len(values)} entries for {n} blocks")
    return values


def _activation(cfg: dict, key: str, source) -> str | None:
    if cfg[key] is None and key != "act_fn":
        return None
    if cfg[key] not in _ACTS:
        raise _misfit(source, key, cfg[key], f"expected one of {sorted(_ACTS)}")
    return _ACTS[cfg[key]]


def _block_types(cfg: dict, source) -> tuple[list[bool], list[bool]]:
    """Whether each down block and each up block (in diffusers' order) has attention; refuses other block types."""
    out = []
    for key, kinds in (("down_block_types", _DOWN), ("up_block_types", _UP)):
        types = list(cfg[key])
        for i, t in enumerate(types):
            if t not in kinds:
                raise _refuse(source, f"{key}[{i}]", t, kinds)
        out.append([kinds[t] for t in types])
    down, up = out
    if not down or len(up) != len(down):
        raise _misfit(source, "up_block_types", cfg["up_block_types"], f"expected one per down block ({len(down)})")
    return down, up


def unet_config_from_diffusers(cfg: dict, source: str | Path = "config.json") -> UNetConfig:
    """Our `UNetConfig` for a diffusers ``UNet2DConditionModel`` config of IF's block family, building the network
    diffusers builds from it (including what diffusers fixes whatever the config says: the text's group norm in 32
    groups, the attention norms' eps 1e-5, the decoder's head widths read from ``attention_head_dim`` unreversed).
    CheckpointError naming the field for anything outside the family (e.g. a Stable Diffusion U-Net's block types)
    or that diffusers could not run either."""
    cfg = {**_DEFAULTS, **cfg}
    if cfg["_class_name"] not in _ONLY["_class_name"]:
        raise _refuse(source, "_class_name", cfg["_class_name"], _ONLY["_class_name"][:1])
    down_attn, up_attn = _block_types(cfg, source)
    for key, allowed in _ONLY.items():
        if cfg[key] not in allowed:
            raise _refuse(source, key, cfg[key], allowed)
    if cfg["class_embed_type"] is None and cfg["num_class_embeds"] is not None:
        raise _refuse(source, "num_class_embeds", cfg["num_class_embeds"], (None,))
    n = len(down_attn)
    channels = _per_level(cfg["block_out_channels"], n, "block_out_channels", source)
    layers = _per_level(cfg["layers_per_block"], n, "layers_per_block", source)
    only_cross = _per_level(cfg["only_cross_attention"], n, "only_cross_attention", source)
    mid_only = cfg["mid_block_only_cross_attention"]
    if mid_only is None:  # as UNet2DConditionModel: a single bool applies to the middle block too
        mid_only = cfg["only_cross_attention"] if isinstance(cfg["only_cross_attention"], bool) else False
    heads = _per_level(cfg["attention_head_dim"], n, "attention_head_dim", source)
    if heads[-1] is None:
        raise _misfit(source, "attention_head_dim", cfg["attention_head_dim"], "the middle block needs a head width")
    # down block i reads attention_head_dim[i]; so does up block i, which sits at level n-1-i (diffusers reverses
    # the other per-block lists for the decoder, not this one); None: one head as wide as the block
    down_heads = [h or ch for h, ch in zip(heads, channels)]
    up_heads = [heads[n - 1 - level] or channels[level] for level in range(n)]
    cond_dim = cfg["cross_attention_dim"]
    if isinstance(cond_dim, (list, tuple)):
        if len(set(cond_dim)) != 1:
            raise _misfit(source, "cross_attention_dim", cond_dim, "one text width for every block is needed (the "
                          "text is projected once, by encoder_hid_proj)")
        cond_dim = cond_dim[0]
    text_proj = cfg["encoder_hid_dim"] is not None
    if cfg["encoder_hid_dim_type"] == "text_proj" and not text_proj:
        raise _misfit(source, "encoder_hid_dim", None, "encoder_hid_dim_type 'text_proj' needs encoder_hid_dim")
    text_dim = cfg["encoder_hid_dim"] if text_proj else cond_dim
    lowres = cfg["class_embed_type"] == "timestep"
    in_ch = cfg["in_channels"]
    if lowres and in_ch % 2:
        raise _misfit(source, "in_channels", in_ch, "a super-resolution U-Net (class_embed_type 'timestep') takes "
                      "the image and the upsampled low-resolution image: an even channel count")
    down = ["self_cross" if a and not oc else "cross" if a else "none" for a, oc in zip(down_attn, only_cross)]
    up = ["self_cross" if up_attn[n - 1 - level] and not only_cross[level] else
          "cross" if up_attn[n - 1 - level] else "none" for level in range(n)]
    cross_norm = cfg["cross_attention_norm"] or "none"
    blocks = [*zip(channels, down, down_heads), *zip(channels, up, up_heads), (channels[-1], "mid", heads[-1])]
    try:
        _check_widths(cfg, source, channels, blocks, cond_dim, text_dim, cross_norm)
        return UNetConfig(
            channels=tuple(channels), layers=tuple(layers), attention=tuple(down), up_attention=tuple(up),
            mid_attention="cross" if mid_only else "self_cross", in_channels=in_ch // 2 if lowres else in_ch,
            out_channels=cfg["out_channels"], lowres_cond=lowres, text_embed_dim=text_dim, cond_dim=cond_dim,
            head_dim=tuple(down_heads), up_head_dim=tuple(up_heads), pool_heads=cfg["addition_embed_type_num_heads"],
            time_embed_dim=cfg["time_embedding_dim"], resnet_scale=float(cfg["resnet_out_scale_factor"]),
            mid_scale=float(cfg["mid_block_scale_factor"]), act=_activation(cfg, "act_fn", source),
            norm_groups=cfg["norm_num_groups"], norm_eps=float(cfg["norm_eps"]), text_mask=False,
            time_shift="scale_shift" if cfg["resnet_time_scale_shift"] == "scale_shift" else "add",
            time_act=_activation(cfg, "time_embedding_act_fn", source),
            resnet_time_act=not cfg["resnet_skip_time_act"],
            time_post_act=_activation(cfg, "timestep_post_act", source), cross_norm=cross_norm,
            cross_norm_groups=CROSS_NORM_GROUPS, text_proj=text_proj, text_pool=cfg["addition_embed_type"] == "text",
            flip_sin_to_cos=bool(cfg["flip_sin_to_cos"]), freq_shift=float(cfg["freq_shift"]),
            conv_in_kernel=cfg["conv_in_kernel"], conv_out_kernel=cfg["conv_out_kernel"],
            center_input=bool(cfg["center_input_sample"]))
    except CheckpointError:
        raise
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: cannot build an IF U-Net from this config: {e}") from e


def _check_widths(cfg: dict, source, channels: list, blocks: list, cond_dim, text_dim, cross_norm: str) -> None:
    """The width constraints diffusers' modules impose, named by config.json field (our UNetConfig would name its
    own fields instead). blocks: (width, attention kind, head width) of every encoder, decoder and middle level."""
    groups = cfg["norm_num_groups"]
    if not isinstance(groups, int) or groups < 1 or any(ch % groups for ch in channels):
        raise _misfit(source, "norm_num_groups", groups, f"every block_out_channels entry {channels} must be a "
                      "multiple of it (the residual blocks' group norms)")
    for ch, kind, h in blocks:
        if kind != "none" and (not isinstance(h, int) or h < 1 or ch % h):
            raise _misfit(source, "attention_head_dim", cfg["attention_head_dim"], f"a {ch}-channel block with "
                          f"attention splits into heads of {h} channels, which must divide it")
        if kind != "none" and cross_norm == "layer_norm" and ch != cond_dim:
            raise _misfit(source, "cross_attention_norm", "layer_norm", f"diffusers' layer norm there is as wide as "
                          f"the block ({ch}) and applied to the text (cross_attention_dim {cond_dim}): they must match")
    if cross_norm == "group_norm" and cond_dim % CROSS_NORM_GROUPS:
        raise _misfit(source, "cross_attention_dim", cond_dim, f"the text is group-normed in {CROSS_NORM_GROUPS} "
                      "groups (diffusers fixes that count), so it must be a multiple of it")
    heads = cfg["addition_embed_type_num_heads"]
    if cfg["addition_embed_type"] == "text" and (not isinstance(heads, int) or heads < 1 or text_dim % heads):
        raise _misfit(source, "addition_embed_type_num_heads", heads, f"the pooled text ({text_dim} wide) splits "
                      "into that many heads, which must divide it")


def _stage(unet_config: UNetConfig, cfg: dict, name: str, source) -> StageConfig:
    """IF's stage setup for the U-Net; a base stage's resolution is config.json's sample_size (what IFPipeline
    samples at). A super-resolution stage keeps IF's 64 -> 256 px: its sample_size is not reliable (diffusers'
    conversion script says so). A U-Net predicting eps only (out_channels = the image's) gets fixed variance."""
    stage = if_stage_config(unet_config, name=name)
    size = cfg.get("sample_size")
    if isinstance(size, (list, tuple)) and len(set(size)) == 1:
        size = size[0]
    if stage.role == "base" and isinstance(size, int) and size != stage.resolution:
        try:
            stage = stage.replace(resolution=size)
        except ValueError as e:
            raise _misfit(source, "sample_size", size, str(e)) from e
    return stage


_LEVEL_KEY = re.compile(r"^down_blocks\.(\d+)\.resnets\.(\d+)\.conv1\.weight$")
# what a lone file's shapes cannot show, IF's values: norm groups (also the text's), head width, pooling heads
IF_GROUPS, IF_HEAD_DIM, IF_POOL_HEADS = 32, 64, 64


def infer_unet_config(shapes: dict[str, tuple[int, ...]], source: str | Path = "the file") -> UNetConfig:
    """An IF U-Net's config from its diffusers-named tensor shapes (no config file); CheckpointError when the shapes
    fit no IF U-Net. What shapes cannot show is IF's: 32 norm groups, 64-channel heads, 64 pooling heads, GELU, and
    stage II's skip scale (1/0.7071); when the shapes contradict those, the error asks for the model's config.json."""
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
    channels = tuple(shapes[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(n))
    down = tuple(attention(f"down_blocks.{i}") for i in range(n))
    up = tuple(attention(f"up_blocks.{n - 1 - level}") for level in range(n))
    mid = attention("mid_block")
    cross_norm = "group_norm" if "mid_block.attentions.0.norm_cross.weight" in shapes else "none"
    proj = shapes.get("down_blocks.0.resnets.0.time_emb_proj.weight", (2 * channels[0],))
    _check_if_defaults(source, channels, [(ch, k) for ch, k in zip(channels * 2, down + up)] + [(channels[-1], mid)],
                       text_dim, cond_dim if cross_norm == "group_norm" else 0)
    scale = IF_SKIP_SCALE if lowres else 1.0
    try:
        return UNetConfig(
            channels=channels, layers=tuple(layers[i] for i in range(n)), attention=down, up_attention=up,
            mid_attention=mid, in_channels=in_ch // 2 if lowres else in_ch, out_channels=out_ch, lowres_cond=lowres,
            text_embed_dim=text_dim, cond_dim=cond_dim, head_dim=IF_HEAD_DIM, pool_heads=IF_POOL_HEADS,
            time_embed_dim=shapes["time_embedding.linear_1.weight"][0], resnet_scale=scale, mid_scale=scale,
            act="gelu", norm_groups=IF_GROUPS, text_mask=False, cross_norm=cross_norm,
            time_shift="scale_shift" if proj[0] == 2 * channels[0] else "add",
            conv_in_kernel=shapes["conv_in.weight"][-1], conv_out_kernel=shapes["conv_out.weight"][-1])
    except ValueError as e:
        raise CheckpointError(f"{source}: the tensor shapes match no IF U-Net this loader knows ({e})") from e


def _check_if_defaults(source, channels: tuple, attention: list, text_dim: int, cond_dim: int) -> None:
    """CheckpointError asking for the config.json when the shapes contradict IF's values for what they cannot show."""
    problems = []
    if any(ch % IF_GROUPS for ch in channels):
        problems.append(f"block widths {list(channels)} are not all multiples of IF's {IF_GROUPS} norm groups")
    if any(kind != "none" and ch % IF_HEAD_DIM for ch, kind in attention):
        problems.append(f"a block with attention is not a multiple of IF's {IF_HEAD_DIM}-channel heads")
    if text_dim % IF_POOL_HEADS:
        problems.append(f"the text width {text_dim} does not split into IF's {IF_POOL_HEADS} pooling heads")
    if cond_dim % IF_GROUPS:
        problems.append(f"the cross-attention width {cond_dim} is not a multiple of IF's {IF_GROUPS} text-norm groups")
    if problems:
        path = Path(source)
        raise CheckpointError(
            f"{source}: the tensor shapes match no IF U-Net this loader knows with IF's settings for what shapes "
            f"cannot show ({'; '.join(problems)}). Put the model's diffusers config.json beside the file (as "
            f"{path.parent / 'config.json'}, or {path.stem}.json when the folder holds several models), or load "
            "its diffusers folder instead")


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
    if dtype in (torch.float16, torch.bfloat16):  # half precision requested: read the fp16 variant first if there
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


def _read_config(cfg_file: Path) -> dict:
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{cfg_file} is not readable JSON: {e}") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{cfg_file} is not a diffusers config (a JSON object)")
    return cfg


def config_beside(weights_file: Path) -> Path | None:
    """A diffusers U-Net config.json beside a lone weights file (``<stem>.json``, then ``config.json``), if any."""
    for candidate in (weights_file.with_name(f"{weights_file.stem}.json"), weights_file.with_name("config.json")):
        cfg = read_json(candidate) if candidate.is_file() else {}
        if cfg.get("_class_name") == "UNet2DConditionModel" or (not cfg.get("_class_name") and
                                                                "down_block_types" in cfg):
            return candidate
    return None


def load_diffusers_folder(folder: Path, dtype: torch.dtype | None = None) -> Stage:
    """An IF stage from a diffusers folder (model root or ``unet/``)."""
    from ..unet import ImagenUNet

    unet_dir, root = find_unet_folder(folder)
    cfg_file = unet_dir / "config.json"
    cfg = _read_config(cfg_file)
    unet_config = unet_config_from_diffusers(cfg, cfg_file)
    stage = _stage(unet_config, cfg, (root or unet_dir).name, cfg_file)
    try:
        stage = stage.replace(**_scheduler_overrides(root, folder))
    except ValueError as e:
        raise CheckpointError(f"{folder}: the scheduler config does not fit the U-Net: {e}") from e
    weights = open_weights(find_weight_file(unet_dir, dtype))
    unet = build_on_meta(lambda: ImagenUNet(unet_config), weights, dtype=dtype)
    return Stage(unet=unet, config=stage, source=str(folder))


def load_if_file(weights: Weights, dtype: torch.dtype | None = None) -> Stage:
    """An IF stage from a lone diffusers-named weights file: its config from a diffusers config.json beside it
    (`config_beside`), else inferred from the tensor shapes."""
    from ..unet import ImagenUNet

    cfg_file = config_beside(weights.path)
    if cfg_file is not None:
        cfg = _read_config(cfg_file)
        unet_config = unet_config_from_diffusers(cfg, cfg_file)
        # a weights file of a diffusers folder (how the loaders list IF stages: IF-I-XL-v1.0/unet/diffusion_pytorch_
        # model.fp16.safetensors) is that folder's model: its root's name and scheduler config, as the folder's
        root = weights.path.parent.parent if cfg_file.name == "config.json" and weights.path.parent.name == "unet" \
            else None
        stage = _stage(unet_config, cfg, root.name if root else weights.path.stem, cfg_file)
        try:
            stage = stage.replace(**_scheduler_overrides(root, weights.path))
        except ValueError as e:
            raise CheckpointError(f"{weights.path}: the scheduler config does not fit the U-Net: {e}") from e
        try:
            unet = build_on_meta(lambda: ImagenUNet(unet_config), weights, dtype=dtype)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; the config was read from {cfg_file} beside it: is it this model's?") from e
        return Stage(unet=unet, config=stage, source=str(weights.path))
    try:
        unet_config = infer_unet_config(weights.shapes, weights.path)
    except CheckpointError as e:  # our own U-Net's keys are IF's: a native file that lost its metadata lands here
        raise CheckpointError(f"{e}. If it is a comfyui-imagen stage file, its stage config is missing from its "
                              "metadata (a tool that rewrote it dropped it): export it again with "
                              "comfyui_imagen.checkpoints.save_stage") from e
    stage: StageConfig = if_stage_config(unet_config, name=weights.path.stem)
    unet = build_on_meta(lambda: ImagenUNet(unet_config), weights, dtype=dtype)
    return Stage(unet=unet, config=stage, source=str(weights.path))
