"""Training settings: a frozen dataclass with named presets (the stage's own architecture lives in its StageConfig)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from ..unet.config import dataclass_from_dict
from .objective import WEIGHTINGS, Weighting

Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train one stage.

    batch_size is per process (data-parallel runs multiply it by the world size). The learning rate warms up linearly
    for `warmup_steps`, then follows a cosine from `lr` down to `lr_final` at `steps`. `cond_drop_prob` of the
    captions are replaced by the empty prompt so the model also learns the unconditional branch that classifier-free
    guidance needs (Ho & Salimans 2022; Imagen drops 10%). SR stages: the low-resolution image is noise-augmented at a
    level drawn uniformly from 0..`max_aug_level` (Imagen, section 2.5 "noise conditioning augmentation"), and
    `crop` > 0 trains on random crops of that many pixels (the SR U-Net is fully convolutional); with `crop_cache`
    > 0 the crops come from a cache of that many pairs rendered once into the run folder, each crop only its window
    and most of them centred on an edge (`comfyui_imagen.data.crops`: stage III, whose 1024 px targets are 4096-sample
    supersamples).
    Data and noise of step s on rank r come from generators seeded by (seed, s, r), so a resumed run repeats an
    uninterrupted one exactly.
    """

    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    lr_final: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    cond_drop_prob: float = 0.1
    weighting: Weighting = "min_snr"
    snr_gamma: float = 5.0
    max_aug_level: int = 500
    crop: int = 0
    crop_cache: int = 0
    precision: Precision = "fp32"
    seed: int = 0
    log_every: int = 10
    save_every: int = 100
    max_text_length: int = 77

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got steps={self.steps}, batch_size={self.batch_size}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {self.weighting!r}; expected one of {list(WEIGHTINGS)}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {self.precision!r}; expected 'fp32' or 'bf16'")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1], got {self.cond_drop_prob}")
        if self.crop < 0 or self.crop % 8:
            raise ValueError(f"crop must be 0 (whole image) or a positive multiple of 8, got {self.crop}")
        if self.crop_cache < 0 or (self.crop_cache and not self.crop):
            raise ValueError(f"crop_cache is 0 (crop every step's renders) or the number of cached crop pairs, which "
                             f"needs crop > 0; got crop_cache={self.crop_cache}, crop={self.crop}")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def learning_rate(self, step: int) -> float:
        """The learning rate of 0-based `step` (`warmup_cosine`)."""
        return warmup_cosine(step, steps=self.steps, lr=self.lr, lr_final=self.lr_final,
                             warmup_steps=self.warmup_steps)

    def to_dict(self) -> dict:
        """Plain JSON-able values; stored in the stage files it trains (`comfyui_imagen.checkpoints.save_stage`).
        Fields added since the demo shipped (`OPTIONAL_FIELDS`) are left out at their defaults, so stages that do not
        use them are described as before."""
        data = dataclasses.asdict(self)
        return {k: v for k, v in data.items() if k not in OPTIONAL_FIELDS or v != OPTIONAL_FIELDS[k]}

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        return dataclass_from_dict(cls, data)


OPTIONAL_FIELDS = {"crop_cache": 0}  # name -> default


def warmup_cosine(step: int, *, steps: int, lr: float, lr_final: float = 0.0, warmup_steps: int = 0,
                  overlap: bool = False) -> float:
    """The learning rate at 0-based `step`: linear warm-up, lr * (step + 1) / warmup_steps for the first
    `warmup_steps` steps, then a half cosine from `lr` down to `lr_final` at `steps` (Loshchilov & Hutter 2017,
    "SGDR", eq. 5, one cycle), held at `lr_final` after it.

    ``overlap``: the cosine spans the whole run from step 0 and the warm-up factor min(1, (step + 1) / warmup_steps)
    scales it (the demo T5's pre-training schedule, kept so that ``train demo`` reproduces the shipped encoder)."""
    if overlap:
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / steps))
        return min(1.0, (step + 1) / max(1, warmup_steps)) * (lr_final + (lr - lr_final) * cosine)
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, steps - warmup_steps))
    return lr_final + 0.5 * (lr - lr_final) * (1.0 + math.cos(math.pi * progress))


# The demo cascade's first runs; DEMO_SCHEDULES below continues each with a warm restart.
# Base: plain v-MSE too (x0-MSE x (SNR + 1)). Min-SNR-5 weights the x0 error at SNR 0.1-1, where a 64 px scene's
# layout is decided, 2-10x less; after 1,700 steps (and again 700 with the pre-trained encoder) its samples were
# still several scattered blobs where the caption asks for one object in one place.
DEMO_BASE_TRAIN = TrainConfig(steps=4000, batch_size=16, lr=1e-3, lr_final=1e-4, warmup_steps=100, save_every=100,
                              weighting="none")
# SR: plain v-MSE (weighting "none", i.e. x0-MSE x (SNR + 1)): its work is at low noise, which min-SNR all but
# ignores (min-SNR-5 left the SR output visibly noisy after 400 steps: 25 dB against bicubic's 34.5).
DEMO_SR_TRAIN = TrainConfig(steps=3000, batch_size=8, lr=1e-3, lr_final=1e-4, warmup_steps=100, crop=128,
                            weighting="none", max_aug_level=500, save_every=100)
# Stage III (256 -> 1024): the SR settings on 192 px crops (48 px of the 256 px input) from a cache of 8,192 pairs
# (0.97 GB in the run folder, rendered once in under a minute), most crops centred on an edge.
DEMO_SR1024_TRAIN = DEMO_SR_TRAIN.replace(steps=6000, crop=192, crop_cache=8192)
# The shipped demo stages' whole runs (`python -m comfyui_imagen.train demo` makes them): (steps, stop_at) calls on
# one run folder, in order. A call resumes the folder's state and re-aims the cosine at its `steps`, so each call
# after the first is a warm restart (the learning rate rises again, then decays to lr_final); `stop_at` (None:
# `steps`) ends the call early. A call whose stop is reached trains nothing: rerunning the list resumes a run.
# Base: 4,000 steps (20% of prompts right), then a restart re-aimed at 11,500 and, from 6,500, at 10,000 (96%).
# SR: 3,000 steps (+0.5 dB over bicubic), then a restart to 7,000 (+2.7 dB).
# SR 1024: one run of DEMO_SR1024_TRAIN.steps.
DEMO_SCHEDULES = {"base": ((4000, None), (11500, 6500), (10000, None)),
                  "sr": ((3000, None), (7000, None)),
                  "sr1024": ((DEMO_SR1024_TRAIN.steps, None),)}
# For tests: a handful of steps.
TINY_TRAIN = TrainConfig(steps=4, batch_size=2, lr=2e-3, lr_final=2e-3, warmup_steps=0, ema_decay=0.9,
                         log_every=1, save_every=2)

PRESETS = {"demo-base": DEMO_BASE_TRAIN, "demo-sr": DEMO_SR_TRAIN, "demo-sr1024": DEMO_SR1024_TRAIN,
           "tiny": TINY_TRAIN}
