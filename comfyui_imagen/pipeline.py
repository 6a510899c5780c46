"""A text-to-image cascade that holds one model at a time: encode the prompts, release the T5, then load, run and
release each stage in turn (issue #13). The peak memory is the largest model plus its activations, not the sum of
all of them: DeepFloyd IF's T5-XXL (4.9 GB in fp8) and IF-I-XL (8.6 GB in bf16) never meet.

    from comfyui_imagen.pipeline import CascadeRunner
    runner = CascadeRunner(lambda: load_t5(t5_file), lambda: load_stage(if_i, "auto"),
                           [lambda: load_stage(if_ii, "auto")])
    base64, sr256 = runner(["a red circle"])

Each model is given either loaded (then it is the caller's: used, never released) or as a function that loads it
(then the runner loads it when it is first needed and releases it after its part of the run, unless ``keep=True``:
kept models stay loaded across calls, for a machine with room for all of them). A released model is reloaded by the
next call. ``on_event(action, name)`` hears every ("load" | "release", "t5" | "base" | "sr1" ...) in order.

Releasing drops the runner's reference and returns the freed memory to the system (`memory.release_memory`); a
memory-mapped T5 (`load_t5` maps its file) unmaps with its last tensor.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from .memory import release_memory

Event = Callable[[str, str], None]
StageSettings = Union[None, object, Callable[[object], object]]  # SamplingSettings, or a function of the loaded Stage


class Slot:
    """One model of a cascade: given loaded (``load`` is the model) or loaded on demand by ``load()``."""

    def __init__(self, name: str, load, *, keep: bool = False, on_event: Optional[Event] = None):
        self.name = name
        self._owned = callable(load)  # a T5TextEncoder or Stage is not
        self._load = load if self._owned else None
        self._value = None if self._owned else load
        self.keep = keep or not self._owned
        self._on_event = on_event

    @property
    def loaded(self) -> bool:
        return self._value is not None

    def get(self):
        if self._value is None:
            self._event("load")
            with torch.inference_mode(False):  # loaded as outside a run: ordinary tensors, not inference ones
                self._value = self._load()
        return self._value

    def done(self) -> None:
        """This part of the run is over: release the model unless it is kept (or the caller's)."""
        if self._value is not None and not self.keep:
            self._value = None
            release_memory()
            self._event("release")

    def _event(self, action: str) -> None:
        if self._on_event is not None:
            self._on_event(action, self.name)


def _settings_for(settings: StageSettings, stage):
    return settings(stage) if callable(settings) else settings


class CascadeRunner:
    """A T5 and the stages to run after one another (a base stage, then zero or more SR stages), each loaded or a
    function that loads it; calling the runner is `run` with these models."""

    def __init__(self, t5, base, srs: Sequence = (), *, keep: bool = False, on_event: Optional[Event] = None):
        self.t5 = Slot("t5", t5, keep=keep, on_event=on_event)
        self.base = Slot("base", base, keep=keep, on_event=on_event)
        self.srs = [Slot(f"sr{i + 1}", sr, keep=keep, on_event=on_event) for i, sr in enumerate(srs)]

    def __call__(self, prompts: list[str], **options) -> list:
        return run(self, prompts, **options)

    def release(self) -> None:
        """Release every model the runner loaded (kept ones included)."""
        for slot in (self.t5, self.base, *self.srs):
            if slot._owned:
                slot.keep = False
                slot.done()


def run(runner: CascadeRunner, prompts: list[str], *, negative: str = "", base_settings: StageSettings = None,
        sr_settings: Union[StageSettings, Sequence[StageSettings]] = None, noise_level: Optional[int] = None,
        sr_strength: Optional[float] = None, max_length: int = 77, preprocess_mode: str = "lower",
        progress: Optional[Callable[[str], Callable]] = None) -> list:
    """Each stage's output for `prompts` (item k seeded seed + k): [base [B,3,64,64], sr1 [B,3,256,256], ...], images
    in -1..1. The T5 encodes the prompts and the negative prompt and is released before the base stage loads; each
    stage is released before the next one loads. Settings left None are each stage's recommended ones; a setting may
    be a function of the loaded `Stage` (the recommended ones with the user's changes); `sr_settings` is one for
    every SR stage or a list with one per stage. `progress(label)` may return a per-step callback; `sr_strength` see
    `cascade.super_resolve`; `max_length` / `preprocess_mode` as `T5Encoder.encode` takes them."""
    from .cascade import Conditioning, generate, super_resolve

    per_sr = list(sr_settings) if isinstance(sr_settings, (list, tuple)) else [sr_settings] * len(runner.srs)
    if len(per_sr) != len(runner.srs):
        raise ValueError(f"sr_settings lists {len(per_sr)} settings for {len(runner.srs)} SR stages; give one "
                         f"SamplingSettings for all, or one per stage")
    t5 = runner.t5.get()
    pos = t5.encode(list(prompts), max_length=max_length, preprocess_mode=preprocess_mode)
    neg = t5.encode([negative] * len(prompts), max_length=max_length, preprocess_mode=preprocess_mode)
    del t5
    runner.t5.done()
    cond = Conditioning(pos, neg)
    stage = runner.base.get()
    outs = [generate(stage, cond, batch_size=len(prompts), settings=_settings_for(base_settings, stage),
                     callback=progress("base") if progress else None)]
    del stage
    runner.base.done()
    for slot, settings in zip(runner.srs, per_sr):
        stage = slot.get()
        outs.append(super_resolve(stage, cond, outs[-1], settings=_settings_for(settings, stage),
                                  noise_level=noise_level, strength=sr_strength,
                                  callback=progress(slot.name) if progress else None))
        del stage
        slot.done()
    return outs
