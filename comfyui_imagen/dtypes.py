"""Which dtype a stage stores its weights in and computes in, on which device (issue #13, item 3).

DeepFloyd IF's files are stored in fp16. On a GPU that is the dtype to compute in; on a CPU fp16 matrix products are
emulated (slower than fp32), while bf16 runs natively on CPUs with AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper
Lake and Sapphire Rapids), AMX (Intel Sapphire Rapids and later) or Arm's BF16 extension (Graviton 3, Apple M2 and
later). So for weights stored in half precision:

    device                     stored fp16 / bf16                                    stored fp32 / fp64
    CPU with native bf16       bf16 (converted once while loading; same memory)      as stored
    CPU without it             fp32 compute, weights kept as stored, cast per layer  as stored
    CUDA                       fp16 for fp16 files; bf16 files bf16 where the card   as stored
                               has it, else fp32 compute cast per layer
    MPS (Apple)                as stored                                             as stored
    anything else              fp32 compute, weights kept as stored, cast per layer  as stored

"Cast per layer" (`comfyui_imagen.layercast`) keeps each weight in its stored dtype and casts it while its layer runs,
so an fp16 stage computing in fp32 costs the fp16 weights' memory, not twice that. fp32 files (the bundled demo)
always compute in fp32: their outputs do not change with the machine. An explicit dtype (the CLI's ``--dtype``, the
loader node's dtype other than "default") overrides all of this.
"""
from __future__ import annotations

import functools
import platform
from typing import Iterable, NamedTuple, Optional

import torch

HALF = (torch.float16, torch.bfloat16)
# CPU feature flags (torch.cpu.get_capabilities() names, /proc/cpuinfo's the same) that mean native bf16 products
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
ARM_BF16_FLAG = "bf16"  # Arm's FEAT_BF16, as /proc/cpuinfo's Features line spells it


class DtypePlan(NamedTuple):
    """How a stage's floating weights are held (``storage``) and what its activations run in (``compute``); when
    they differ the weights are cast per layer at run time."""

    storage: torch.dtype
    compute: torch.dtype

    @property
    def cast_per_layer(self) -> bool:
        return self.storage != self.compute


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset:
    """The CPU's feature flags: PyTorch's own query (cpuinfo) where it has one, else /proc/cpuinfo's flags (x86) or
    Features (Arm) line; empty where neither answers."""
    try:
        caps = torch.cpu.get_capabilities()  # type: ignore[attr-defined]
        found = {name for name, on in caps.items() if on is True}
        if found:
            if platform.machine().lower() in ("aarch64", "arm64"):
                found |= _proc_cpuinfo_flags()  # cpuinfo's Arm names differ; the kernel's list has bf16
            return frozenset(found)
    except (AttributeError, RuntimeError, TypeError):
        pass
    return frozenset(_proc_cpuinfo_flags())


def _proc_cpuinfo_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    return set(value.split())
    except OSError:
        pass
    return set()


def cpu_has_fast_bf16(features: Optional[Iterable[str]] = None) -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16, AMX-BF16, Arm BF16), from ``features`` (default:
    `cpu_features`). oneDNN's own "bf16 supported" answers yes on every AVX-512 CPU, where bf16 is emulated and
    slower than fp32, so it is not the test."""
    flags = set(cpu_features() if features is None else features)
    if flags & NATIVE_BF16_FLAGS:
        return True
    return ARM_BF16_FLAG in flags


def cuda_has_bf16(device: torch.device) -> bool:
    """bf16 on this CUDA device (compute capability 8.0, Ampere, and later)."""
    try:
        return torch.cuda.get_device_capability(device)[0] >= 8
    except (AssertionError, RuntimeError):
        return False


def stage_dtypes(stored: torch.dtype, device: str | torch.device = "cpu", *, fast_bf16: Optional[bool] = None,
                 cuda_bf16: Optional[bool] = None) -> DtypePlan:
    """The device's choice (module docstring's table) for a stage stored in ``stored``. ``fast_bf16`` /
    ``cuda_bf16`` stand in for `cpu_has_fast_bf16` / `cuda_has_bf16` (tests)."""
    device = torch.device(device)
    if stored not in HALF:
        return DtypePlan(stored, stored)
    if device.type == "cpu":
        native = cpu_has_fast_bf16() if fast_bf16 is None else fast_bf16
        return DtypePlan(torch.bfloat16, torch.bfloat16) if native else DtypePlan(stored, torch.float32)
    if device.type == "cuda":
        if stored == torch.float16:
            return DtypePlan(torch.float16, torch.float16)
        has = cuda_has_bf16(device) if cuda_bf16 is None else cuda_bf16
        return DtypePlan(torch.bfloat16, torch.bfloat16) if has else DtypePlan(torch.bfloat16, torch.float32)
    if device.type == "mps":
        return DtypePlan(stored, stored)
    return DtypePlan(stored, torch.float32)


def describe(plan: DtypePlan) -> str:
    """``bf16`` or ``fp32 compute, fp16 weights cast per layer``: for logs and the loader's info."""
    def short(d: torch.dtype) -> str:
        return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                torch.float64: "fp64"}.get(d, str(d).replace("torch.", ""))

    if not plan.cast_per_layer:
        return short(plan.compute)
    return f"{short(plan.compute)} compute, {short(plan.storage)} weights cast per layer"
