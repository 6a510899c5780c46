"""Weights cast, and moved, one layer at a time while the layer runs: ComfyUI's ``comfy.ops`` convention for plain
torch modules, without importing ComfyUI.

`enable` gives every module that holds parameters of its own the attributes ``comfy.ops`` layers have and a pair of
forward hooks:

    comfy_cast_weights   False; when True the module's parameters are cast to its input's dtype and moved to its
                         input's device for the call, then dropped (the stored ones are untouched)
    weight_function      [] ; functions applied to the cast weight (ComfyUI's LoRA patches in low-VRAM mode)
    bias_function        [] ; the same for the bias
    weight, bias         None where the module has no such parameter (imagen-pytorch's ``gamma`` / ``weights``
                         layers): ComfyUI reads both of every module it can offload, as torch's own layers have them

A parameter on another device than the input is always moved for the call, flag or not (ComfyUI leaves the
parameters of modules it does not list, such as a non-leaf module's own, where they are).

Two users:

* ComfyUI's ``ModelPatcher.load`` loads a model partially when it does not fit the GPU: modules with
  ``comfy_cast_weights`` that do not fit the budget stay on the offload device (the CPU) with the flag set, and are
  brought over layer by layer while sampling. Without these attributes it could only load the whole model, so an
  IF-I-XL in fp16 (8.6 GB) needed a card with room for all of it (`nodes.comfy_compat.ManagedModel`).
* `cast_per_layer`: a stage stored in fp16 computing in fp32 (a CPU without native bf16, `comfyui_imagen.dtypes`)
  keeps its fp16 weights and casts each layer's as it runs: the fp16 memory, not twice it.

One forward at a time per module (ComfyUI runs one prompt at a time): the hooks swap the cast tensors in and out of
the module for the duration of its call.
"""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

_SAVED = "_layercast_saved"
_HOOKED = "_layercast_hooks"


def _first_tensor(args: tuple, kwargs: dict) -> Optional[torch.Tensor]:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


def _pre_hook(module: nn.Module, args: tuple, kwargs: dict):
    x = _first_tensor(args, kwargs)
    if x is None:
        return None
    flagged = bool(module.comfy_cast_weights or module.weight_function or module.bias_function)
    params = [(name, p) for name, p in module._parameters.items() if p is not None]
    if not flagged and all(p.device == x.device for _, p in params):
        return None
    saved = {}
    for name, p in params:
        dtype = x.dtype if flagged and p.is_floating_point() and x.is_floating_point() else p.dtype
        cast = p.detach().to(device=x.device, dtype=dtype)
        for fn in module.weight_function if name == "weight" else module.bias_function if name == "bias" else ():
            cast = fn(cast)
        saved[name] = p
        module._parameters[name] = cast  # a plain tensor for this call (Module.__setattr__ would refuse it)
    module.__dict__[_SAVED] = saved
    return None


def _post_hook(module: nn.Module, args: tuple, kwargs: dict, output):
    saved = module.__dict__.pop(_SAVED, None)
    if saved:
        module._parameters.update(saved)
    return None


def holds_parameters(module: nn.Module) -> bool:
    return any(p is not None for p in module._parameters.values())


def enable(module: nn.Module) -> nn.Module:
    """Give every submodule holding parameters of its own the ``comfy.ops`` attributes (existing values kept) and
    the cast hooks (once). Returns `module`."""
    for sub in module.modules():
        if not holds_parameters(sub) or _HOOKED in sub.__dict__:
            continue
        if not isinstance(getattr(sub, "comfy_cast_weights", None), bool):
            sub.comfy_cast_weights = False
        for name in ("weight_function", "bias_function"):
            if not isinstance(getattr(sub, name, None), list):
                setattr(sub, name, [])
        for name in ("weight", "bias"):
            if not hasattr(sub, name):
                setattr(sub, name, None)
        sub.__dict__[_HOOKED] = (sub.register_forward_pre_hook(_pre_hook, with_kwargs=True),
                                 sub.register_forward_hook(_post_hook, with_kwargs=True, always_call=True))
    return module


def is_enabled(module: nn.Module) -> bool:
    return any(_HOOKED in sub.__dict__ for sub in module.modules())


def cast_per_layer(module: nn.Module, compute_dtype: torch.dtype, *, resident: Iterable[nn.Module] = ()) -> nn.Module:
    """Run `module` in ``compute_dtype`` with its weights kept as stored: every module holding parameters casts them
    per call (`enable`, flag set); the modules in ``resident`` (small ones that decide the compute dtype, such as a
    U-Net's input convolution) are converted to ``compute_dtype`` once instead."""
    resident = list(resident)
    for sub in resident:
        sub.to(compute_dtype)
    enable(module)
    keep = {id(m) for r in resident for m in r.modules()}
    for sub in module.modules():
        if holds_parameters(sub) and id(sub) not in keep and any(
                p.is_floating_point() and p.dtype != compute_dtype for p in sub._parameters.values() if p is not None):
            sub.comfy_cast_weights = True
    return module


def resident_bytes(module: nn.Module, device: torch.device) -> int:
    """Bytes of `module`'s parameters and buffers stored on ``device``."""
    device = torch.device(device)
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()) if t.device == device)
