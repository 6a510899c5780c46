"""What a run is given: `SamplingSettings` (how to sample), `Conditioning` (prompt and negative prompt), and
`StageDefaults` (a stage's recommended settings: the sampling settings plus, for SR stages, the noise-augmentation
level and the SDEdit strength), with DeepFloyd IF's published ones and the library's defaults for stage files that
carry none.

A `Stage` reports its defaults as ``stage.recommended`` (read from its file; IF's for IF files); the nodes, the CLI
and the cascade functions use them wherever the caller gives no explicit value.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .checks import check_int, is_real
from .respacing import IF_PRESETS, SPACINGS
from .samplers import SAMPLERS, SEED_MAX

if TYPE_CHECKING:  # pragma: no cover
    from .text import TextEmbeds

__all__ = ["AUTO", "Conditioning", "SamplingSettings", "StageDefaults", "IF_STAGE_I", "IF_STAGE_II", "DEFAULT_BASE",
           "DEFAULT_SR", "role_defaults", "with_overrides"]

AUTO = "auto"  # a setting left to the stage: its recommended value (the nodes' "auto" widget values)


@dataclass(frozen=True)
class SamplingSettings:
    """How a stage is sampled.

    sampler: a name in `SAMPLERS`. steps: number of sampler steps (ignored when `spacing` is a DeepFloyd IF preset,
    which fixes its own). cfg: classifier-free guidance scale w (Imagen eq. 2; 1 = no guidance). spacing: a sigma
    spacing ("karras", "exponential", "trailing"...) or an IF preset ("smart50", "smart100"...).
    dynamic_threshold: the percentile p of Imagen's dynamic thresholding, or None for static clipping to [-1, 1].
    threshold_max: the cap c on the threshold s (None: the stage's recommended cap, e.g. IF's 1.5 for stage I).
    seed: 0 .. 2^64 - 1 (ComfyUI's seed widget; torch's seed range); item k of a batch uses seed + k, wrapped modulo
    2^64 (`samplers.make_generators`). steps and seed may be whole floats (10.0); they are stored as ints.
    eta: the noise scale of samplers that declare it (`SAMPLER_OPTIONS`: ddim, euler_ancestral, dpmpp_2m_sde,
    repaint); None keeps the sampler's default, other samplers ignore it.
    threshold_max may be ``math.inf``: no cap (imagen-pytorch's dynamic thresholding). cfg_parallel: None for plain
    guidance, else the fraction of the guidance update's component parallel to the conditional prediction that is
    kept (imagen-pytorch's default guidance removes it: 0.0; `comfyui_imagen.guidance.CFGDenoiser`).
    """

    sampler: str = "dpmpp_2m"
    steps: int = 30
    cfg: float = 7.0
    spacing: str = "karras"
    dynamic_threshold: Optional[float] = 0.95
    threshold_max: Optional[float] = None
    seed: int = 0
    eta: Optional[float] = None
    cfg_parallel: Optional[float] = None

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {sorted(SAMPLERS)}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown schedule {self.spacing!r}; expected one of {list(SPACINGS)}")
        object.__setattr__(self, "steps", check_int(self.steps, "steps", 1))
        if not (is_real(self.cfg) and self.cfg >= 0):
            raise ValueError(f"cfg must be a finite number >= 0 (1 = no guidance, e.g. 7.0), got {self.cfg!r}"
                             + ("; pass a number, not text" if isinstance(self.cfg, str) else ""))
        if self.dynamic_threshold is not None and not (is_real(self.dynamic_threshold)
                                                       and 0 < self.dynamic_threshold <= 1):
            raise ValueError(f"dynamic_threshold is a percentile in (0, 1] (Imagen 0.995, IF 0.95) or None for "
                             f"static clipping, got {self.dynamic_threshold!r}")
        if self.threshold_max is not None and not ((is_real(self.threshold_max) or self.threshold_max == math.inf)
                                                   and self.threshold_max >= 1):
            raise ValueError(f"threshold_max must be >= 1 (IF: 1.5 stage I, 1.0 stage II; inf: no cap), got "
                             f"{self.threshold_max}")
        object.__setattr__(self, "seed", check_int(self.seed, "seed", 0, SEED_MAX, " (ComfyUI's seed range)"))
        if self.eta is not None and not (is_real(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be a number >= 0, got {self.eta!r}")
        if self.cfg_parallel is not None and not (is_real(self.cfg_parallel) and 0 <= self.cfg_parallel <= 1):
            raise ValueError(f"cfg_parallel must be None (plain guidance) or a fraction from 0 to 1 "
                             f"(imagen-pytorch: 0), got {self.cfg_parallel!r}")

    def replace(self, **changes) -> "SamplingSettings":
        return dataclasses.replace(self, **changes)


def with_overrides(defaults: SamplingSettings, **values) -> SamplingSettings:
    """``defaults`` (a stage's recommended settings) with each of ``values`` that is not `AUTO`: what the nodes'
    "auto" widgets and the CLI's absent flags mean (``with_overrides(stage.recommended.settings, steps=20,
    sampler=AUTO)``). The one home of two rules: steps given over a recommended DeepFloyd IF preset (smart100 ...,
    which fixes its own count) with the spacing left to the stage run that many steps, trailing; and a sampler given
    explicitly gets its own default eta, not the one recommended for the stage's sampler."""
    given = {name: value for name, value in values.items() if not (isinstance(value, str) and value == AUTO)}
    if "steps" in given and "spacing" not in given and defaults.spacing in IF_PRESETS:
        given["spacing"] = DEFAULT_BASE.settings.spacing
    if "sampler" in given and "eta" not in given:
        given["eta"] = None
    return defaults.replace(**given)


@dataclass(frozen=True)
class StageDefaults:
    """A stage's recommended settings: `settings`, and for SR stages the augmentation `noise_level` (0..T-1) and
    the SDEdit `strength` (1 = from pure noise). Stored in a native stage file's config (``StageConfig.sampling``)."""

    settings: SamplingSettings
    noise_level: Optional[int] = None
    strength: float = 1.0

    def __post_init__(self):
        if not isinstance(self.settings, SamplingSettings):
            raise ValueError(f"StageDefaults.settings must be a SamplingSettings, got {type(self.settings).__name__}")
        if self.noise_level is not None:
            check_int(self.noise_level, "StageDefaults.noise_level", 0, hint=" (on the 0..T-1 timestep scale)")
        if not (is_real(self.strength) and 0 < self.strength <= 1):
            raise ValueError(f"StageDefaults.strength must be in (0, 1] (1 = from pure noise), got {self.strength!r}")

    def describe(self) -> str:
        """One line for people: what the nodes' "auto" widgets run."""
        s = self.settings
        steps = s.spacing if s.spacing in IF_PRESETS else f"{s.steps} {s.spacing} steps"
        threshold = "static clipping" if s.dynamic_threshold is None else f"dynamic threshold {s.dynamic_threshold:g}"
        text = f"{s.sampler}, {steps}, cfg {s.cfg:g}, {threshold}"
        if self.noise_level is not None:
            text += f", noise level {self.noise_level}, strength {self.strength:g}"
        return text

    def to_dict(self) -> dict:
        settings = dataclasses.asdict(self.settings)
        if settings["cfg_parallel"] is None:  # added later: files without it read as before, by any version
            del settings["cfg_parallel"]
        return {"settings": settings, "noise_level": self.noise_level, "strength": self.strength}

    @classmethod
    def from_dict(cls, data: dict) -> "StageDefaults":
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            raise ValueError(f"stage defaults must be {{'settings': {{...}}, ...}}, got {data!r}")
        known = {f.name for f in dataclasses.fields(SamplingSettings)}
        unknown = sorted(set(data["settings"]) - known)
        if unknown:
            raise ValueError(f"unknown sampling settings {unknown}; expected some of {sorted(known)}")
        return cls(SamplingSettings(**data["settings"]), data.get("noise_level"), float(data.get("strength", 1.0)))


@dataclass(frozen=True)
class Conditioning:
    """Prompt and negative-prompt embeddings (`TextEmbeds`: ``embeds`` [B, L, D] float, ``mask`` [B, L] bool).

    ``negative`` is the negative prompt's embedding, or the empty prompt's: classifier-free guidance pushes away
    from it. Each has batch 1 (shared by every image) or the batch size of the run.
    """

    positive: "TextEmbeds"
    negative: "TextEmbeds"

    def __post_init__(self):
        for name in ("positive", "negative"):
            embeds = getattr(self, name)
            if not hasattr(embeds, "embeds") or not hasattr(embeds, "mask") or embeds.embeds.ndim != 3:
                raise ValueError(f"Conditioning.{name} must be TextEmbeds(embeds [B, L, D], mask [B, L]); "
                                 f"encode the prompt with the Imagen Text Encode node (T5TextEncoder.encode)")
        if self.positive.embeds.shape[-1] != self.negative.embeds.shape[-1]:
            raise ValueError(f"prompt and negative prompt embeddings differ in width "
                             f"({self.positive.embeds.shape[-1]} vs {self.negative.embeds.shape[-1]}); "
                             f"encode both with the same T5 (one Imagen Text Encode node)")

    @property
    def width(self) -> int:
        return int(self.positive.embeds.shape[-1])


# DeepFloyd IF's own settings (deepfloyd_if/modules/stage_I.py, stage_II.py): ancestral DDPM with the learned
# variance, dynamic thresholding p = 0.95 with c = 1.5 (stage I) / 1.0 (stage II), guidance 7 / 4 (IF stages
# recommend them: `checkpoints.if_stages.IF_DEFAULTS`).
IF_STAGE_I = SamplingSettings(sampler="ddpm", spacing="smart100", cfg=7.0, dynamic_threshold=0.95, threshold_max=1.5)
IF_STAGE_II = SamplingSettings(sampler="ddpm", spacing="smart50", cfg=4.0, dynamic_threshold=0.95, threshold_max=1.0)

# For stage files that carry no defaults of their own (format stage-v1, e.g. the shipped demo cascade), measured on
# the demo cascade with `python -m comfyui_imagen.evaluate`: the base draws best with Euler ancestral, 25 trailing
# steps, cfg 4 (16 prompts: 100% fully correct, DPM++ 2M 94%); the SR stage keeps the deterministic DPM++ 2M, 15
# steps without guidance, input augmented at 100, and starts from the bicubic upsampling at strength 0.15 (37.1 dB
# PSNR there, 0.1 the same, 36.7 at 0.3, 31.0 from pure noise, against bicubic's 33.9; 16 renders).
DEFAULT_BASE = StageDefaults(SamplingSettings(sampler="euler_ancestral", steps=25, cfg=4.0, spacing="trailing",
                                              dynamic_threshold=0.95, threshold_max=1.5))
DEFAULT_SR = StageDefaults(SamplingSettings(sampler="dpmpp_2m", steps=15, cfg=1.0, spacing="trailing",
                                            dynamic_threshold=0.95, threshold_max=1.0), noise_level=100, strength=0.15)


def role_defaults(role: str) -> StageDefaults:
    """The library's defaults for a stage of `role` ("base" or "sr") whose file carries none."""
    return DEFAULT_SR if role == "sr" else DEFAULT_BASE
