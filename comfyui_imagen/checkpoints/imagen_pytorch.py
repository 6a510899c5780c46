"""imagen-pytorch checkpoints (lucidrains' imagen-pytorch 2.x) as cascade stages: the second model family.

What is read, every pickle with ``torch.load(weights_only=True)`` (`files.load_pickle`: tensors and plain Python
only; a payload that would run code is refused unrun):

* trainer checkpoints (``ImagenTrainer.save``): ``model`` (the Imagen's state dict, keys ``unets.{i}.<U-Net key>``),
  ``ema`` (``{i}.ema_model.<key>`` and ``{i}.online_model.<key>``), ``version``, ``steps``, optimizer states, and
  only when the Imagen was built from ``ImagenConfig`` / ``ElucidatedImagenConfig``: ``imagen_type`` ("original" |
  "elucidated") and ``imagen_params`` (the config's dict). The EMA weights are preferred; ``online=True`` picks the
  trained ones.
* an Imagen's state dict saved alone (keys ``unets.{i}.*``), a ``Unet.persist_to_file`` file (``{"config": the
  U-Net's constructor arguments, "state_dict": ...}``) or a U-Net's bare state dict.
* any of these as ``.safetensors`` (the same keys; an ``imagen_params`` JSON in its metadata is read like the
  pickle's).

A file holds one stage per U-Net, numbered from 1 as imagen-pytorch numbers them (``unet_number``) and named
``"file.pt [unet 2]"`` (``"[unet 2, online]"`` for the trained weights; `files.multi`).

What the weights do not say comes from ``imagen_params`` when the file has it, else from a settings file beside the
checkpoint, ``<name>.json`` (`SIDECAR_REQUIRED`, `read_sidecar`), in imagen-pytorch's own argument names: the
U-Net's structure is read from its tensor shapes (`ImagenPytorchUNetConfig.from_shapes`).

How such a stage samples (`stage_config`): continuous time with log-SNR conditioning (`ContinuousSchedule`, capped
where imagen-pytorch's float32 log-SNR is at t = 1) or EDM preconditioning (Elucidated), their dynamic thresholding
(percentile, no cap), their guidance (the learned null text embedding as the unconditional branch, the update's
component parallel to the conditional prediction removed), SR conditioning upsampled by nearest and noise-augmented
on the linear log-SNR schedule.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from .. import files
from ..files import split_unet_name, unet_name
from ..schedules import ContinuousSchedule, float32_log_snr
from ..settings import SamplingSettings, StageDefaults
from ..stage import Stage, StageConfig
from .errors import CheckpointError
from .tensors import Weights, build_on_meta

__all__ = ["ImagenPytorchCheckpoint", "SIDECAR_REQUIRED", "load_imagen_pytorch", "read_checkpoint", "read_sidecar",
           "split_unet_name", "stage_config", "unet_name"]

# Sidecar fields without which a checkpoint lacking imagen_params cannot be sampled right (ElucidatedImagen has no
# objective or noise schedule: only the others are required for it).
SIDECAR_REQUIRED = ("image_sizes", "elucidated", "pred_objectives", "noise_schedules", "lowres_sample_noise_level")
_ORIGINAL_ONLY = ("pred_objectives", "noise_schedules")
# imagen-pytorch's defaults (Imagen / ElucidatedImagen __init__) for everything else it takes
_DEFAULTS: dict[str, Any] = dict(
    timesteps=1000, lowres_noise_schedule="linear", dynamic_thresholding=True, dynamic_thresholding_percentile=0.95,
    cond_drop_prob=0.1, text_encoder_name="google/t5-v1_1-base", channels=3, condition_on_text=True,
    resize_mode="nearest", scale_skip_connection=True,
    num_sample_steps=32, sigma_min=0.002, sigma_max=80, sigma_data=0.5, rho=7)
_KNOWN = frozenset(SIDECAR_REQUIRED) | frozenset(_DEFAULTS) | {
    "unets", "video", "loss_type", "random_crop_sizes", "per_sample_random_aug_noise_level", "auto_normalize_img",
    "only_train_unet_number", "temporal_downsample_factor", "resize_cond_video_frames", "min_snr_loss_weight",
    "min_snr_gamma", "P_mean", "P_std", "S_churn", "S_tmin", "S_tmax", "S_noise", "text_embed_dim", "unet_number"}
_OBJECTIVES = {"noise": "epsilon", "x_start": "sample", "v": "v_prediction"}
_SIDECAR_EXAMPLE = ('{"image_sizes": [64, 256], "elucidated": false, "pred_objectives": "noise", '
                    '"noise_schedules": "cosine", "lowres_sample_noise_level": 0.2}')


# ------------------------------------------------------------------------------------------------- the file
@dataclass
class ImagenPytorchCheckpoint:
    """One imagen-pytorch file, opened: ``online[i]`` / ``ema[i]`` the `Weights` of U-Net i + 1 (None where the
    file has none, e.g. no EMA, or a NullUnet placeholder), ``unet_kwargs[i]`` its constructor arguments when the
    file records them, ``params`` the Imagen's (``imagen_params``, or None), ``elucidated`` from ``imagen_type``,
    ``in_imagen`` whether the U-Nets were saved inside an Imagen (which recast their arguments), not alone."""

    path: Path
    online: list[Optional[Weights]]
    ema: list[Optional[Weights]]
    unet_kwargs: list[Optional[dict]]
    params: Optional[dict] = None
    elucidated: Optional[bool] = None
    in_imagen: bool = True

    @property
    def count(self) -> int:
        return len(self.online)

    def numbers(self) -> list[int]:
        """The U-Net numbers (from 1) that hold a real U-Net."""
        return [i + 1 for i in range(self.count) if (self.ema[i] or self.online[i]) is not None]

    def weights(self, number: int, online: bool = False) -> Weights:
        if number not in self.numbers():
            raise CheckpointError(f"{self.path} has no U-Net {number}; it holds "
                                  f"{', '.join(unet_name(self.path.name, n) for n in self.numbers())}")
        chosen = (self.online if online else self.ema)[number - 1]
        if chosen is None and online:
            raise CheckpointError(f"{self.path}: U-Net {number} has no online (trained) weights in this file")
        return chosen or self.online[number - 1]


def read_checkpoint(path: str | Path) -> ImagenPytorchCheckpoint:
    """Open an imagen-pytorch file of any of the module docstring's layouts (CheckpointError otherwise)."""
    path = Path(path).expanduser()
    with files.raised_as(CheckpointError):
        if path.suffix.lower() in files.SAFETENSORS_SUFFIXES:
            weights = files.open_weights(path)
            params = _json_metadata(weights.metadata.get("imagen_params"), path)
            kind = weights.metadata.get("imagen_type")
            return _from_flat(path, weights, None, params, None if kind is None else kind == "elucidated")
        raw = files.load_pickle(path)
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} holds a {type(raw).__name__}, not an imagen-pytorch checkpoint")
    if isinstance(raw.get("state_dict"), dict) and isinstance(raw.get("config"), dict):  # Unet.persist_to_file
        weights = files.Weights.from_tensors(path, files.tensors_of(raw["state_dict"]))
        return ImagenPytorchCheckpoint(path, [weights], [None], [dict(raw["config"])], in_imagen=False)
    params = raw.get("imagen_params") if isinstance(raw.get("imagen_params"), dict) else None
    elucidated = None if "imagen_type" not in raw else raw["imagen_type"] == "elucidated"
    model = raw["model"] if isinstance(raw.get("model"), dict) else raw
    online = files.Weights.from_tensors(path, files.tensors_of(model))
    ema = files.Weights.from_tensors(path, files.tensors_of(raw["ema"])) if isinstance(raw.get("ema"), dict) else None
    return _from_flat(path, online, ema, params, elucidated)


def _from_flat(path: Path, online: Weights, ema: Optional[Weights], params: Optional[dict],
               elucidated: Optional[bool]) -> ImagenPytorchCheckpoint:
    """Split an Imagen's flat tensors (and its trainer's EMA ones) into one `Weights` per U-Net."""
    prefixes = files.UNET_PREFIXES
    found, online_prefix = files.unet_indices(online.keys()), prefixes["imagen"]
    if ema is None and found["ema"]:  # a trainer's "ema" dict on its own: the averaged and the trained copies
        ema, online_prefix = online, prefixes["online"]
    indices = found["imagen"] | found["online"] | (files.unet_indices(ema.keys())["ema"] if ema is not None else set())
    if not indices:  # one bare U-Net
        if not any(k.startswith(("downs.0.", "init_conv.", "final_conv.")) for k in online.keys()):
            raise CheckpointError(f"{path} is not an imagen-pytorch checkpoint: no U-Net keys (unets.0.*, downs.*, "
                                  f"init_conv.*) among {sorted(online.keys())[:5]}")
        return ImagenPytorchCheckpoint(path, [online], [None], [None], params, elucidated, in_imagen=False)
    count = max(indices) + 1
    kwargs = list((params or {}).get("unets") or [])
    kwargs = [dict(k) if isinstance(k, dict) else None for k in kwargs] + [None] * count
    online_parts, ema_parts = [], []
    for i in range(count):
        parts = [online.subset(online_prefix.format(i)),
                 ema.subset(prefixes["ema"].format(i)) if ema is not None else None]
        parts = [p if p is not None and p.keys() and set(p.keys()) != files.PLACEHOLDER_KEYS else None  # NullUnet
                 for p in parts]
        online_parts.append(parts[0])
        ema_parts.append(parts[1])
    return ImagenPytorchCheckpoint(path, online_parts, ema_parts, kwargs[:count], params, elucidated)


def _json_metadata(text: Optional[str], path: Path) -> Optional[dict]:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{path}: its imagen_params metadata is not JSON ({e})") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: its imagen_params metadata must be a JSON object")
    return value


# ------------------------------------------------------------------------------------------------- settings
def read_sidecar(path: Path) -> Optional[dict]:
    """The settings file beside a checkpoint, ``<stem>.json``, or None when there is none."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return None
    try:
        value = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{side} (the settings of {path.name}) is not readable JSON: {e}") from e
    if not isinstance(value, dict):
        raise CheckpointError(f"{side} must hold a JSON object such as {_SIDECAR_EXAMPLE}")
    return value


def _settings(ckpt: ImagenPytorchCheckpoint) -> dict:
    """imagen-pytorch's Imagen arguments for this file: ``imagen_params`` (with its defaults), else the sidecar,
    which must name every `SIDECAR_REQUIRED` field; the file's ``imagen_type`` decides ``elucidated``."""
    if ckpt.params is not None:
        given = dict(ckpt.params)
        given.setdefault("elucidated", bool(ckpt.elucidated))
        given.setdefault("lowres_sample_noise_level", 0.2)
        given.setdefault("pred_objectives", "noise")
        given.setdefault("noise_schedules", "cosine")
        given.setdefault("cond_drop_prob", 0.5)  # ImagenConfig's default
        source = f"{ckpt.path}'s imagen_params"
    else:
        side = ckpt.path.with_suffix(".json")
        given = read_sidecar(ckpt.path)
        if given is None:
            raise CheckpointError(
                f"{ckpt.path} records no Imagen settings (it was not built from ImagenConfig), so they must be given "
                f"in a settings file beside it: create {side} with imagen-pytorch's own argument names, e.g. "
                f"{_SIDECAR_EXAMPLE} (imagen-pytorch's defaults: pred_objectives 'noise', noise_schedules 'cosine', "
                f"lowres_sample_noise_level 0.2; image_sizes one per U-Net of the cascade; a U-Net built with "
                f"use_linear_cross_attn or scale_skip_connection=False also needs \"unets\": one object per U-Net "
                f"with those arguments, e.g. [{{}}, {{\"use_linear_cross_attn\": true}}])")
        if ckpt.elucidated is not None:
            given.setdefault("elucidated", ckpt.elucidated)
        required = [f for f in SIDECAR_REQUIRED if not (given.get("elucidated") is True and f in _ORIGINAL_ONLY)]
        missing = [f for f in required if f not in given]
        if missing:
            raise CheckpointError(f"{side} lacks {', '.join(missing)}: add {'them' if len(missing) > 1 else 'it'} "
                                  f"(imagen-pytorch's argument names, e.g. {_SIDECAR_EXAMPLE})")
        source = str(side)
    unknown = sorted(set(given) - _KNOWN)
    if unknown and ckpt.params is None:
        raise CheckpointError(f"{source}: unknown settings {unknown}; expected some of {sorted(_KNOWN)}")
    if not isinstance(given.get("elucidated"), bool):
        raise CheckpointError(f"{source}: elucidated must be true or false, got {given.get('elucidated')!r}")
    return {**_DEFAULTS, **given, "_source": source}


def _per_unet(value, count: int, name: str, source: str) -> list:
    """imagen-pytorch's ``cast_tuple(value, count)``: a single value for every U-Net, or one per U-Net."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise CheckpointError(f"{source}: {name} has {len(value)} entries for {count} U-Nets")
        return list(value)
    return [value] * count


def _noise_schedules(value, count: int, source: str) -> list[str]:
    """imagen-pytorch's default padding: the given schedules, then 'cosine' up to two U-Nets, then 'linear'."""
    given = list(value) if isinstance(value, (list, tuple)) else [value]
    if len(given) > count:
        raise CheckpointError(f"{source}: noise_schedules has {len(given)} entries for {count} U-Nets")
    padded = given + ["cosine"] * max(0, 2 - len(given))
    return (padded + ["linear"] * count)[:count]


# The U-Net arguments the weights cannot tell (a LinearCrossAttention has exactly a CrossAttention's parameters; the
# skip scaling has none): a settings file gives them per U-Net, {"unets": [{...}, {...}]}
_UNET_HINTS = ("scale_skip_connection", "use_linear_cross_attn")


def _unet_hints(s: dict, count: int, number: int, source: str) -> dict:
    """The settings file's ``unets`` entry for U-Net `number`: either its full constructor arguments (with "dim",
    as ImagenConfig takes them) or some of `_UNET_HINTS`; {} when it has none."""
    entries = s.get("unets")
    if entries is None:
        return {}
    if not isinstance(entries, list) or len(entries) != count or not all(isinstance(e, dict) for e in entries):
        raise CheckpointError(f"{source}: unets must be a list of {count} objects, one per U-Net (e.g. "
                              f'[{{}}, {{"use_linear_cross_attn": [false, true]}}])')
    entry = dict(entries[number - 1])
    unknown = sorted(set(entry) - set(_UNET_HINTS))
    if unknown and "dim" not in entry:
        raise CheckpointError(f"{source}: unets[{number - 1}] has {unknown}; give either the U-Net's full constructor "
                              f"arguments (with dim) or only {list(_UNET_HINTS)} (the rest is read from the weights)")
    return entry


# ------------------------------------------------------------------------------------------------- the stage
def stage_config(ckpt: ImagenPytorchCheckpoint, number: int, shapes: dict[str, tuple[int, ...]]) -> StageConfig:
    """The `StageConfig` of U-Net `number` (from 1): its U-Net config from the recorded constructor arguments, else
    from the tensor shapes; the sampling setup from the Imagen's settings (`_settings`)."""
    from ..unet.imagen_pytorch import ImagenPytorchUNetConfig

    s = _settings(ckpt)
    source = s["_source"]
    count = max(ckpt.count, len(s["image_sizes"]) if isinstance(s["image_sizes"], (list, tuple)) else 1)
    if s.get("video"):
        raise CheckpointError(f"{source}: a video Imagen (video=True, Unet3D) is not supported")
    kwargs, hints = ckpt.unet_kwargs[number - 1], {}
    if kwargs is None:
        hints = _unet_hints(s, ckpt.count, number, source)
        if "dim" in hints:  # the U-Net's full constructor arguments, as ImagenConfig takes them
            kwargs = hints
    try:
        if kwargs is not None:
            if ckpt.in_imagen:  # Imagen.__init__ recasts each U-Net (cast_model_parameters); the text width it
                # gives them is the T5's, which the U-Net's text projection holds
                kwargs = {**kwargs, "lowres_cond": number > 1, "channels": s["channels"],
                          "channels_out": s["channels"], "cond_on_text": s["condition_on_text"]}
                if "text_to_cond.weight" in shapes:
                    kwargs["text_embed_dim"] = shapes["text_to_cond.weight"][1]
            unet = ImagenPytorchUNetConfig.from_kwargs(kwargs)
        else:
            skip = hints.get("scale_skip_connection", _per_unet(s["scale_skip_connection"], count,
                                                                "scale_skip_connection", source)[number - 1])
            unet = ImagenPytorchUNetConfig.from_shapes(shapes, scale_skip_connection=bool(skip),
                                                       use_linear_cross_attn=hints.get("use_linear_cross_attn", False))
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path} [unet {number}]: {e}") from e
    sizes = s["image_sizes"] if isinstance(s["image_sizes"], (list, tuple)) else [s["image_sizes"]]
    index = number - 1
    if not ckpt.in_imagen and len(sizes) > 1:  # a U-Net saved alone: which of the cascade's U-Nets is it?
        if "unet_number" in s:
            if not isinstance(s["unet_number"], int) or isinstance(s["unet_number"], bool):
                raise CheckpointError(f"{source}: unet_number must be a whole number (the U-Net's place in the "
                                      f"cascade, from 1), got {s['unet_number']!r}")
            index = s["unet_number"] - 1
        elif len(sizes) == 2:
            index = 1 if unet.lowres_cond else 0
        else:
            raise CheckpointError(f"{source}: image_sizes {list(sizes)} name {len(sizes)} U-Nets but {ckpt.path.name} "
                                  f"holds one, saved alone: add \"unet_number\" (its place in the cascade, from 1)")
    if not 0 <= index < len(sizes) or (unet.lowres_cond and index == 0):
        raise CheckpointError(f"{source}: image_sizes {list(sizes)} do not cover U-Net {number} "
                              f"({'a super-resolution' if unet.lowres_cond else 'a base'} U-Net): give one size per "
                              f"U-Net of the cascade, the base first")
    if s["resize_mode"] != "nearest":
        raise CheckpointError(f"{source}: resize_mode {s['resize_mode']!r} is not supported (imagen-pytorch's "
                              f"default 'nearest' is)")
    n = len(sizes)
    elucidated = s["elucidated"]
    sr = unet.lowres_cond
    fields: dict[str, Any] = dict(
        role="sr" if sr else "base", resolution=int(sizes[index]), unet=unet, num_train_timesteps=1000,
        lowres_resolution=int(sizes[index - 1]) if sr else None, name=f"{ckpt.path.name} [unet {number}]",
        lowres_schedule=f"continuous_{s['lowres_noise_schedule']}" if sr else None,
        lowres_upsample="nearest")
    if elucidated:
        pick = lambda key: _per_unet(s[key], n, key, source)[index]  # noqa: E731
        fields.update(prediction_type="edm", schedule="edm", sigma_data=float(pick("sigma_data")),
                      schedule_options={"sigma_min": float(pick("sigma_min")), "sigma_max": float(pick("sigma_max")),
                                        "rho": float(pick("rho"))})
        steps, sampler, spacing = int(pick("num_sample_steps")), "heun", "karras"
    else:
        objective = _per_unet(s["pred_objectives"], n, "pred_objectives", source)[index]
        if objective not in _OBJECTIVES:
            raise CheckpointError(f"{source}: pred_objectives {objective!r} is not one of {list(_OBJECTIVES)}")
        kind = _noise_schedules(s["noise_schedules"], n, source)[index]
        if kind not in ("cosine", "linear"):
            raise CheckpointError(f"{source}: noise_schedules {kind!r} is not 'cosine' or 'linear'")
        steps, sampler, spacing = int(_per_unet(s["timesteps"], n, "timesteps", source)[index]), "ddpm", "uniform"
        cap = float32_log_snr(kind, 1.0)
        first = ContinuousSchedule(kind, log_snr_min=cap).time_to_sigma(torch.tensor(1 - 1 / steps,
                                                                                    dtype=torch.float64))
        fields.update(prediction_type=_OBJECTIVES[objective], schedule=f"continuous_{kind}",
                      schedule_options={"log_snr_min": cap, "grid_sigma_max": float(first)})
    dynamic = _per_unet(s["dynamic_thresholding"], n, "dynamic_thresholding", source)[index]
    settings = SamplingSettings(
        sampler=sampler, steps=steps, spacing=spacing, cfg=1.0 if float(s["cond_drop_prob"]) == 0 else 5.0,
        dynamic_threshold=float(s["dynamic_thresholding_percentile"]) if dynamic else None,
        threshold_max=math.inf, cfg_parallel=0.0)
    level = round(float(s["lowres_sample_noise_level"]) * 1000) if sr else None
    fields["sampling"] = StageDefaults(settings, noise_level=level)
    try:
        return StageConfig(**fields)
    except ValueError as e:
        raise CheckpointError(f"{ckpt.path} [unet {number}]: {e}") from e


def load_imagen_pytorch(path: str | Path, dtype: Optional[torch.dtype] = None, *, number: Optional[int] = None,
                        online: bool = False) -> Stage:
    """U-Net `number` (from 1; None: the file's only one, else an error listing them) of an imagen-pytorch file as
    a `Stage`; `dtype` casts the floating weights (None keeps them)."""
    from ..unet.imagen_pytorch import ImagenPytorchUNet

    ckpt = read_checkpoint(path)
    if not ckpt.numbers():
        raise CheckpointError(f"{ckpt.path} holds no trained U-Net (only NullUnet placeholders, which have no weights)")
    if number is None:
        if len(ckpt.numbers()) != 1:
            raise CheckpointError(f"{ckpt.path} holds {len(ckpt.numbers())} U-Nets: pick one, "
                                  f"{' or '.join(unet_name(str(path), n) for n in ckpt.numbers())}")
        number = ckpt.numbers()[0]
    weights = ckpt.weights(number, online)
    config = stage_config(ckpt, number, weights.shapes)
    unet = build_on_meta(lambda: ImagenPytorchUNet(config.unet), weights, dtype=dtype)
    which = "online" if online or ckpt.ema[number - 1] is None else "EMA"
    return Stage(unet=unet, config=config, source=f"{unet_name(str(ckpt.path), number, online)} ({which} weights)")
