"""A memory ceiling for sampling: estimate what a run needs before it starts, split a batch into chunks that fit, and
refuse clearly when one image cannot fit, instead of letting the out-of-memory killer take the process (ComfyUI's
server with it).

The need of a run is the activation memory of one denoiser call (`estimate_bytes`): the U-Net's feature maps at the
run's size, for every image of the call (two per image under classifier-free guidance: cond and uncond run as one
batch), plus the sampler's own image-sized tensors. The constants are fitted to the measured peak memory (peak RSS
growth of whole `cascade` runs, fp32 and bf16, CPU) of the demo base and SR stages and the tiny test stages at
64..1024 px and batches 1..8; they over-estimate every measured run (by 1.07-1.44x on runs above 250 MB, more on
tiny ones, which a fixed reserve dominates).

What is free comes from `free_bytes`: on the CPU the kernel's MemAvailable (/proc/meminfo), on CUDA
``torch.cuda.mem_get_info`` plus what PyTorch's cache holds unused; callers inside ComfyUI pass ComfyUI's own query
(`nodes.comfy_compat.free_memory`). Where nothing can be measured (another OS, another device) no limit applies.
"""
from __future__ import annotations

import functools
import logging
from typing import Callable, Optional

import torch

log = logging.getLogger(__name__)

FreeMemory = Callable[[torch.device], Optional[int]]

GB = 1024 ** 3
# Fitted constants (see the module docstring): bytes = itemsize x (ACTIVATIONS x feature elements + ATTENTION x
# feature elements at attention levels) + 4 x PIXELS x pixels, per image the U-Net sees; + 4 x SAMPLER x pixels per
# output image; + RESERVE once. Measured on the demo SR at 1024 px: 1.93 GB per image at cfg 4 (estimate 2.71 GB).
ACTIVATIONS = 10.0
ATTENTION = 7.0
PIXELS = 6.0
SAMPLER = 2.0
RESERVE = 128 * 2**20
# float32 values per pixel each image of a run holds for the whole run, however it is chunked: its start, noise,
# SR conditioning and result (about 5 RGB images)
HELD = 16.0
USABLE = 0.9  # of the free memory a run may plan to use


class MemoryLimitError(ValueError):
    """One image of a run needs more memory than is free; the message gives both numbers and what to change."""


def _feature_elements(unet_config, height: int, width: int) -> tuple[float, float]:
    """(sum over U-Net levels of channels x pixels, the same over levels with attention) for one image; the config's
    ``feature_levels`` ((channels, attends, share of the pixels) per level; every U-Net family has it), or one
    plain full-size 64-channel level."""
    levels = getattr(unet_config, "feature_levels", None) or ((64, False, 1.0),)
    pixels = height * width
    conv = sum(c * pixels * share for c, _, share in levels)
    attention = sum(c * pixels * share for c, attends, share in levels if attends)
    return conv, attention


def per_image_bytes(stage, height: int, width: int, guided: bool) -> int:
    """Estimated bytes one output image of a run adds at this size (two U-Net images when ``guided``)."""
    itemsize = next(stage.unet.parameters()).element_size()
    conv, attention = _feature_elements(getattr(stage.config, "unet", None), height, width)
    unet_images = 2 if guided else 1
    per_unet_image = itemsize * (ACTIVATIONS * conv + ATTENTION * attention) + 4 * PIXELS * height * width
    return int(unet_images * per_unet_image + 4 * SAMPLER * height * width)


def held_bytes(height: int, width: int) -> int:
    """Bytes each image of a run holds for the whole run (`HELD`), whether or not its chunk is being sampled."""
    return int(4 * HELD * height * width)


def estimate_bytes(stage, batch: int, height: int, width: int, guided: bool) -> int:
    """Estimated peak memory of sampling ``batch`` images at height x width with `stage` in one call (weights
    excluded)."""
    return RESERVE + batch * per_image_bytes(stage, height, width, guided)


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def process_memory(pid: int) -> dict[str, int]:
    """A process's VmRSS, VmHWM (the kernel's peak RSS), RssAnon and RssFile from /proc/<pid>/status, in bytes; {}
    where /proc has no such process (or no such fields: not Linux). What the benchmarks and server tests sample."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def free_bytes(device: torch.device) -> Optional[int]:
    """Memory a run on ``device`` can still allocate: MemAvailable on the CPU (Linux), free plus PyTorch's unused
    cache on CUDA; None where it cannot be measured (no limit is applied then)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _meminfo_available()
    if device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return None


def plan_chunk(stage, batch: int, height: int, width: int, *, guided: bool, free_memory: Optional[FreeMemory] = None,
               what: str = "this run") -> int:
    """How many of ``batch`` images to sample at once so that the run fits the free memory (``batch`` when it all
    fits or nothing can be measured): the images not being sampled still hold `held_bytes` each. MemoryLimitError
    when a single image does not fit, or the batch's held images leave no room for one."""
    device = stage.device
    free = (free_memory or free_bytes)(device)
    if free is None:
        return batch
    usable = USABLE * free - RESERVE
    one, held = per_image_bytes(stage, height, width, guided), held_bytes(height, width)
    if usable < one:
        need = (RESERVE + one) / USABLE  # the free memory at which one image would be sampled
        raise MemoryLimitError(
            f"{what} needs ~{need / GB:.2f} GB free for one {width}x{height} image but {free / GB:.2f} GB is free on "
            f"{device.type}: lower width and height (or upscale in two smaller steps), "
            + ("use cfg 1 (no guidance: half the memory), " if guided else "")
            + "load the stage in fp16 or bf16 (Imagen Model Loader's dtype), or free memory (unload other models, "
              "close other programs)")
    if usable < one + (batch - 1) * held:
        fits = 1 + int((usable - one) // held)
        raise MemoryLimitError(f"{what}: {batch} images of {width}x{height} do not fit in the {free / GB:.2f} GB free "
                               f"on {device.type} even one at a time: lower batch_size to at most {fits}")
    # k images sampled while the other batch - k wait: RESERVE + k * one + (batch - k) * held <= USABLE * free
    chunk = min(batch, int((usable - batch * held) // (one - held)) if one > held else batch)
    if chunk < batch:
        log.info("%s: %d images of %dx%d need ~%.2f GB, %.2f GB free: sampling %d at a time", what, batch, width,
                 height, estimate_bytes(stage, batch, height, width, guided) / GB, free / GB, chunk)
    return max(1, chunk)


def release_memory() -> None:
    """Give memory that Python and PyTorch have freed back to the system: collect reference cycles, empty the CUDA
    cache, and on glibc trim the heap (``malloc_trim``: freed blocks below its mmap threshold, which rises to 32 MB
    as large tensors come and go, otherwise stay in the process). Called after a model is released."""
    import gc

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` from the running process's own symbols; None elsewhere (musl, macOS, Windows)."""
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):
        return None
