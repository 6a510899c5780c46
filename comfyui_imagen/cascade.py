"""Running one stage of the cascade: text-to-image, super-resolution, image-to-image (SDEdit).

Every function takes a loaded `Stage` (``stage.unet``, ``stage.config``), a `Conditioning` (prompt and negative
prompt embeddings) and a `SamplingSettings`, and returns images [B, 3, H, W] in -1..1 on the model's device. Each
one assembles the same denoiser (`build_denoiser`): the stage's parameterization wrapper from
`comfyui_imagen.denoisers`, classifier-free guidance with cond and uncond in one batch, then dynamic (or static)
thresholding of x0 (`comfyui_imagen.guidance`), and runs a sampler from `comfyui_imagen.samplers.SAMPLERS` over a
grid from `comfyui_imagen.respacing`. Item k of a batch uses seed + k, for its starting noise, its noise
augmentation and every stochastic step, so it equals a batch of one with seed + k.

``callback(info)`` gets the samplers' dict (``step``, ``total``, ``x``, ``x0``...) after each step; ``cancel()`` is
checked before each step (return True, or raise, to stop). Inpainting (RePaint) lives in `comfyui_imagen.inpaint`.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch

from .denoisers import make_denoiser
from .guidance import CFGDenoiser, Thresholded
from .images import resize, upsample_lowres
from .respacing import IF_PRESETS, SPACINGS, get_sigmas
from .samplers import SAMPLERS, get_sampler, make_generators, randn_like_items
from .schedules import ContinuousSchedule, DiscreteSchedule, get_schedule

if TYPE_CHECKING:  # pragma: no cover
    from .checkpoints import Stage
    from .text import TextEmbeds

__all__ = ["Conditioning", "SamplingSettings", "IF_STAGE_I", "IF_STAGE_II", "build_denoiser", "generate",
           "super_resolve", "image_to_image", "augment_lowres", "stage_schedule"]

Callback = Optional[Callable[[dict], None]]
Cancel = Optional[Callable[[], bool]]

# A stage samples sides in multiples of 8 (more for deep U-Nets), up to MAX_SCALE times its resolution.
SIZE_MULTIPLE = 8
MAX_SCALE = 4
MAX_BATCH = 64


# ------------------------------------------------------------------------------------------------ settings
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


@dataclass(frozen=True)
class SamplingSettings:
    """How a stage is sampled.

    sampler: a name in `SAMPLERS`. steps: number of sampler steps (ignored when `spacing` is a DeepFloyd IF preset,
    which fixes its own). cfg: classifier-free guidance scale w (Imagen eq. 2; 1 = no guidance). spacing: a sigma
    spacing ("karras", "exponential", "trailing"...) or an IF preset ("smart50", "smart100"...).
    dynamic_threshold: the percentile p of Imagen's dynamic thresholding, or None for static clipping to [-1, 1].
    threshold_max: the cap c on the threshold s (None: DeepFloyd IF's 1.5 for base stages, 1.0 for SR stages).
    seed: item k of a batch uses seed + k. eta: the noise scale of samplers that take one (ddim,
    euler_ancestral, dpmpp_2m_sde); None keeps the sampler's default, other samplers ignore it.
    """

    sampler: str = "dpmpp_2m"
    steps: int = 30
    cfg: float = 7.0
    spacing: str = "karras"
    dynamic_threshold: Optional[float] = 0.95
    threshold_max: Optional[float] = None
    seed: int = 0
    eta: Optional[float] = None

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; expected one of {sorted(SAMPLERS)}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown schedule {self.spacing!r}; expected one of {list(SPACINGS)}")
        if isinstance(self.steps, bool) or int(self.steps) != self.steps or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")
        if not (math.isfinite(self.cfg) and self.cfg >= 0):
            raise ValueError(f"cfg must be a finite number >= 0 (1 = no guidance), got {self.cfg!r}")
        if self.dynamic_threshold is not None and not 0 < self.dynamic_threshold <= 1:
            raise ValueError(f"dynamic_threshold is a percentile in (0, 1] (Imagen 0.995, IF 0.95) or None for "
                             f"static clipping, got {self.dynamic_threshold!r}")
        if self.threshold_max is not None and not self.threshold_max >= 1:
            raise ValueError(f"threshold_max must be >= 1 (IF: 1.5 stage I, 1.0 stage II), got {self.threshold_max}")
        if isinstance(self.seed, bool) or int(self.seed) != self.seed or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if self.eta is not None and not self.eta >= 0:
            raise ValueError(f"eta must be >= 0, got {self.eta!r}")


# DeepFloyd IF's own settings (deepfloyd_if/modules/stage_I.py, stage_II.py): ancestral DDPM with the learned
# variance, dynamic thresholding p = 0.95 with c = 1.5 (stage I) / 1.0 (stage II), guidance 7 / 4.
IF_STAGE_I = SamplingSettings(sampler="ddpm", spacing="smart100", cfg=7.0, dynamic_threshold=0.95, threshold_max=1.5)
IF_STAGE_II = SamplingSettings(sampler="ddpm", spacing="smart50", cfg=4.0, dynamic_threshold=0.95, threshold_max=1.0)


# ------------------------------------------------------------------------------------------------ validation
def _role_error(stage: "Stage", want: str, what: str) -> ValueError:
    config = stage.config
    if want == "sr":
        return ValueError(f"{what} needs a super-resolution stage, but this model is a base stage "
                          f"({config.resolution} px from text alone): use generate() (node: Imagen Base Sampler) "
                          f"for it, or load an SR model in Imagen Model Loader")
    return ValueError(f"{what} needs a base stage, but this model is a super-resolution stage "
                      f"({config.lowres_resolution} -> {config.resolution} px): use super_resolve() (node: Imagen "
                      f"Super-Resolution) for it, or load a base model in Imagen Model Loader")


def check_role(stage: "Stage", want: str, what: str) -> None:
    """ValueError unless ``stage.config.role == want`` ("base" or "sr")."""
    if stage.config.role != want:
        raise _role_error(stage, want, what)


def size_multiple(stage: "Stage") -> int:
    """Sides must be multiples of this: 8, or more for a U-Net that halves the image more than three times."""
    unet = getattr(stage.config, "unet", None)
    return max(SIZE_MULTIPLE, getattr(unet, "downscale", 1))


def check_size(stage: "Stage", width: int, height: int, what: str = "the image") -> None:
    """Sides are multiples of `size_multiple`, at most MAX_SCALE times the stage's resolution."""
    resolution = stage.config.resolution
    limit = MAX_SCALE * resolution
    step = size_multiple(stage)
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or int(value) != value or value < step or value % step:
            raise ValueError(f"{what}: {name} {value!r} must be a positive multiple of {step} (the U-Net halves "
                             f"the image at every level); e.g. {max(step, round(value / step) * step)}. "
                             f"Resize the input with the ImageScale node if it comes from an image")
        if value > limit:
            raise ValueError(f"{what}: {name} {value} is far beyond this {resolution} px stage's range (at most "
                             f"{limit}); sample at {resolution} and add a super-resolution stage, or resize the "
                             f"input with the ImageScale node")


def check_batch(batch_size: int) -> int:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or not 1 <= batch_size <= MAX_BATCH:
        raise ValueError(f"batch_size must be an integer from 1 to {MAX_BATCH}, got {batch_size!r}")
    return int(batch_size)


def check_images(images: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{what} must be a batch of RGB images [B, 3, H, W] in -1..1, got {shape}; "
                         f"convert ComfyUI images with comfyui_imagen.images.from_comfy_image")
    if images.shape[0] < 1:
        raise ValueError(f"{what} is an empty batch (batch 0); connect at least one image")
    return images


def _text_batch(tensor: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    if tensor.shape[0] == batch:
        return tensor
    if tensor.shape[0] == 1:
        return tensor.expand(batch, *tensor.shape[1:])
    raise ValueError(f"the {name} embeddings have batch {tensor.shape[0]} but {batch} images are sampled; "
                     f"encode one prompt (batch 1) or exactly one per image")


def check_conditioning(stage: "Stage", cond: Conditioning) -> None:
    if not isinstance(cond, Conditioning):
        raise ValueError(f"expected a Conditioning(positive, negative), got {type(cond).__name__}; connect the "
                         f"output of the Imagen Text Encode node")
    want = stage.config.text_embed_dim
    if cond.width != want:
        raise ValueError(f"the text embeddings are {cond.width} wide but this model was trained on {want}-wide T5 "
                         f"embeddings; in Imagen T5 Loader pick the T5 this model was trained with "
                         f"({_t5_hint(want)})")


def _t5_hint(width: int) -> str:
    return {4096: "T5 v1.1 XXL, e.g. t5xxl_fp16.safetensors", 256: "the bundled demo T5",
            1024: "T5 v1.1 large", 768: "T5 v1.1 base", 512: "T5 v1.1 small"}.get(width, f"d_model {width}")


# ------------------------------------------------------------------------------------------------ denoiser
def stage_schedule(stage: "Stage"):
    """The noise schedule the stage was trained with (`comfyui_imagen.schedules`)."""
    config = stage.config
    return get_schedule(config.schedule, config.num_train_timesteps)


class _ModelDtype(torch.nn.Module):
    """Runs the U-Net in its own dtype: floating inputs are cast in, the output comes back as float32, so the
    sampler's arithmetic stays in float32 while an fp16/bf16 model computes in its own precision."""

    def __init__(self, unet: torch.nn.Module):
        super().__init__()
        self.unet = unet
        self.dtype = next(unet.parameters()).dtype

    def forward(self, x, t, **cond):
        cast = {k: v.to(self.dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                for k, v in cond.items()}
        return self.unet(x.to(self.dtype), t.float(), **cast).float()


def build_denoiser(stage: "Stage", settings: SamplingSettings):
    """``Thresholded(CFGDenoiser(make_denoiser(unet)))`` for the stage, called with ``cond=`` / ``uncond=`` kwargs."""
    config = stage.config
    raw = make_denoiser(_ModelDtype(stage.unet), stage_schedule(stage), config.prediction_type,
                        config.variance_type)
    guided = CFGDenoiser(raw, settings.cfg)
    if settings.dynamic_threshold is None:
        return Thresholded(guided, "static")
    cap = settings.threshold_max or (1.5 if config.role == "base" else 1.0)
    return Thresholded(guided, "dynamic", settings.dynamic_threshold, cap)


def _text_args(cond: Conditioning, batch: int, device: torch.device) -> tuple[dict, dict]:
    pos, neg = cond.positive, cond.negative
    return ({"text_embeds": _text_batch(pos.embeds, batch, "prompt").to(device),
             "text_mask": _text_batch(pos.mask, batch, "prompt").to(device)},
            {"text_embeds": _text_batch(neg.embeds, batch, "negative prompt").to(device),
             "text_mask": _text_batch(neg.mask, batch, "negative prompt").to(device)})


def sigma_grid(stage: "Stage", settings: SamplingSettings) -> torch.Tensor:
    """The descending sigmas (ending in 0) the stage is sampled over."""
    steps = None if settings.spacing in IF_PRESETS else settings.steps
    return get_sigmas(stage_schedule(stage), settings.spacing, steps)


def stage_device(stage: "Stage") -> torch.device:
    return next(stage.unet.parameters()).device


def _sampler_opts(settings: SamplingSettings) -> dict:
    if settings.eta is None:
        return {}
    params = inspect.signature(get_sampler(settings.sampler)).parameters
    return {"eta": settings.eta} if "eta" in params else {}


def run_sampler(denoiser, x: torch.Tensor, sigmas: torch.Tensor, args: dict, settings: SamplingSettings,
                generators, callback: Callback = None, cancel: Cancel = None) -> torch.Tensor:
    """One call of the settings' sampler, without autograd."""
    sampler = get_sampler(settings.sampler)
    with torch.no_grad():
        return sampler(denoiser, x, sigmas.to(x.device), extra_args=args, callback=callback, generator=generators,
                       cancel=cancel, **_sampler_opts(settings))


@dataclass(frozen=True)
class Prepared:
    """What every stage run shares: the denoiser, its cond/uncond kwargs, per-item generators, the grid, the device."""

    denoiser: Any
    args: dict
    generators: list
    sigmas: torch.Tensor
    device: torch.device


def prepare(stage: "Stage", cond: Conditioning, settings: SamplingSettings, batch: int,
            extra: Optional[dict] = None, generators: Optional[list] = None) -> Prepared:
    """Validate the conditioning and build the denoiser, kwargs (``extra`` is shared by both branches), generators."""
    if not isinstance(settings, SamplingSettings):
        raise ValueError(f"settings must be a SamplingSettings, got {type(settings).__name__}")
    check_conditioning(stage, cond)
    device = stage_device(stage)
    positive, negative = _text_args(cond, batch, device)
    args = {"cond": {**positive, **(extra or {})}, "uncond": negative}
    generators = generators if generators is not None else make_generators(settings.seed, batch)
    return Prepared(build_denoiser(stage, settings), args, generators, sigma_grid(stage, settings), device)


# ------------------------------------------------------------------------------------------------ SR conditioning
def _noise_level_sigma(schedule, noise_level: float) -> float:
    """The VE sigma of the stage's schedule at an augmentation level on the 0..T-1 timestep scale."""
    if isinstance(schedule, DiscreteSchedule):
        return float(schedule.sigmas[int(round(noise_level))])
    if isinstance(schedule, ContinuousSchedule):
        return float(schedule.time_to_sigma(torch.tensor(noise_level / 1000.0, dtype=torch.float64)))
    raise ValueError(f"cannot noise-augment with schedule {schedule!r}")


def check_noise_level(stage: "Stage", noise_level) -> int:
    limit = stage.config.num_train_timesteps
    if isinstance(noise_level, bool) or int(noise_level) != noise_level or not 0 <= noise_level < limit:
        raise ValueError(f"noise_level must be an integer in [0, {limit - 1}] (DeepFloyd IF stage II uses 250), "
                         f"got {noise_level!r}")
    return int(noise_level)


def augment_lowres(stage: "Stage", lowres: torch.Tensor, height: int, width: int, noise_level: int,
                   generators) -> dict:
    """The SR stage's conditioning image: resize to the stage's input size (antialiased), upsample to the output
    size (bilinear, align_corners, as DeepFloyd IF's pipeline does), then noise-augment at ``noise_level`` with the
    stage's schedule: x_aug = sqrt(alpha_bar) x + sqrt(1 - alpha_bar) eps, IF's ``image_noising_scheduler.add_noise``.
    Imagen: "we corrupt the low-resolution image with a noise level aug_level ... and condition the diffusion model
    on aug_level" (Saharia et al. 2022, Section 2.5). Returns the U-Net kwargs ``lowres_image`` and ``noise_level``."""
    config = stage.config
    noise_level = check_noise_level(stage, noise_level)
    lr_h = height * config.lowres_resolution // config.resolution
    lr_w = width * config.lowres_resolution // config.resolution
    small = resize(lowres.float(), lr_h, lr_w).clamp(-1, 1)
    up = upsample_lowres(small, height, width)
    sigma = _noise_level_sigma(stage_schedule(stage), noise_level)
    eps = randn_like_items(up.shape, generators, device=up.device)
    augmented = (up + sigma * eps) / math.sqrt(1 + sigma * sigma)
    return {"lowres_image": augmented,
            "noise_level": torch.full((up.shape[0],), float(noise_level), device=up.device)}


def _sr_extra(stage, lowres, batch, height, width, noise_level, generators, device) -> dict:
    lowres = check_images(lowres, "the low-resolution image")
    if lowres.shape[0] not in (1, batch):
        raise ValueError(f"the low-resolution batch has {lowres.shape[0]} images for {batch} outputs; "
                         f"give one image or one per output")
    lowres = lowres.expand(batch, -1, -1, -1).to(device)
    return augment_lowres(stage, lowres, height, width, noise_level, generators)


# ------------------------------------------------------------------------------------------------ public runs
def generate(stage: "Stage", cond: Conditioning, *, width: Optional[int] = None, height: Optional[int] = None,
             batch_size: int = 1, settings: SamplingSettings = SamplingSettings(), callback: Callback = None,
             cancel: Cancel = None) -> torch.Tensor:
    """Text-to-image with a base stage: [batch_size, 3, height, width] in -1..1 (default size: the stage's)."""
    check_role(stage, "base", "generate()")
    width = stage.config.resolution if width is None else width
    height = stage.config.resolution if height is None else height
    check_size(stage, width, height, "the requested size")
    batch = check_batch(batch_size)
    run = prepare(stage, cond, settings, batch)
    x = randn_like_items((batch, 3, height, width), run.generators, device=run.device) * run.sigmas[0]
    return run_sampler(run.denoiser, x, run.sigmas, run.args, settings, run.generators, callback, cancel)


def output_size(stage: "Stage", width: Optional[int], height: Optional[int]) -> tuple[int, int]:
    """(width, height) of an SR run: the stage's resolution unless given; checked to map onto whole input pixels."""
    config = stage.config
    width = config.resolution if width is None else width
    height = config.resolution if height is None else height
    check_size(stage, width, height, "the super-resolution output")
    step = config.resolution // math.gcd(config.resolution, config.lowres_resolution)
    for side in (width, height):
        if side % step:
            raise ValueError(f"the output side {side} must be a multiple of {step} for this "
                             f"{config.lowres_resolution} -> {config.resolution} px stage")
    return width, height


def super_resolve(stage: "Stage", cond: Conditioning, lowres_image: torch.Tensor, *, noise_level: int = 250,
                  settings: SamplingSettings = IF_STAGE_II, width: Optional[int] = None,
                  height: Optional[int] = None, strength: float = 1.0, callback: Callback = None,
                  cancel: Cancel = None) -> torch.Tensor:
    """Super-resolution with an SR stage: any-size images [B, 3, h, w] -> [B, 3, height, width] (default: the
    stage's resolution). The input is resized to the stage's input size (width * lowres_resolution / resolution,
    so a fully convolutional stage may run at other sizes), upsampled and noise-augmented (`augment_lowres`).

    `strength` 1 samples from pure noise (Imagen, DeepFloyd IF). Below 1 the sampler starts from the bicubic
    upsampling of the input, noised to the sigma at that fraction of the grid, and runs only the grid's tail
    (SDEdit, as `image_to_image`): the output keeps the input's layout and costs `strength` x the steps. The demo
    SR stage measures closer to the ground truth that way (see the README)."""
    check_role(stage, "sr", "super_resolve()")
    lowres_image = check_images(lowres_image, "the low-resolution image")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1 = from pure noise, small = stay near the bicubic "
                         f"upsampling), got {strength!r}")
    width, height = output_size(stage, width, height)
    batch = check_batch(lowres_image.shape[0])
    device = stage_device(stage)
    generators = make_generators(settings.seed, batch)
    x = randn_like_items((batch, 3, height, width), generators, device=device)
    extra = _sr_extra(stage, lowres_image, batch, height, width, noise_level, generators, device)
    run = prepare(stage, cond, settings, batch, extra, generators)
    sigmas = partial_sigmas(run.sigmas, strength)  # the whole grid at strength 1
    x = x * sigmas[0]
    if strength < 1:
        x = x + resize(lowres_image.float(), height, width, mode="bicubic").clamp(-1, 1).to(device)
    return run_sampler(run.denoiser, x, sigmas, run.args, settings, generators, callback, cancel)


def partial_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a grid for SDEdit: the last round(n * strength) steps (at least one) of its n steps."""
    n = sigmas.numel() - 1
    keep = max(1, round(n * strength))
    return sigmas[n - keep:]


def stage_inputs(stage: "Stage", image: torch.Tensor, lowres_image: Optional[torch.Tensor], noise_level: int,
                 generators, device) -> dict:
    """The extra U-Net kwargs for editing an image with a stage: none for a base stage; for an SR stage the
    noise-augmented low-resolution image (default: the image itself, downsampled)."""
    if stage.config.role != "sr":
        if lowres_image is not None:
            raise ValueError("lowres_image is only used with super-resolution stages; this is a base stage")
        return {}
    batch, _, height, width = image.shape
    return _sr_extra(stage, image if lowres_image is None else lowres_image, batch, height, width, noise_level,
                     generators, device)


def image_to_image(stage: "Stage", cond: Conditioning, image: torch.Tensor, *, strength: float,
                   settings: SamplingSettings = SamplingSettings(), lowres_image: Optional[torch.Tensor] = None,
                   noise_level: int = 250, callback: Callback = None, cancel: Cancel = None) -> torch.Tensor:
    """SDEdit (Meng et al. 2022): noise the image to the sigma at ``strength`` of the grid and denoise from there.

    "we first perturb the input with Gaussian noise and then progressively remove the noise by simulating the
    reverse SDE" (Section 3). Works with base stages and SR stages (which also take ``lowres_image``, default the
    image itself downsampled, noise-augmented at ``noise_level``). Output size = image size.
    """
    image = check_images(image, "the input image")
    batch, _, height, width = image.shape
    check_batch(batch)
    check_size(stage, width, height, "the input image")
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1] (1 = ignore the input image, small = keep it), got {strength!r}")
    device = stage_device(stage)
    generators = make_generators(settings.seed, batch)
    noise = randn_like_items(image.shape, generators, device=device)
    extra = stage_inputs(stage, image, lowres_image, noise_level, generators, device)
    run = prepare(stage, cond, settings, batch, extra, generators)
    sigmas = partial_sigmas(run.sigmas, strength)
    x = image.to(device).float() + noise * sigmas[0]
    return run_sampler(run.denoiser, x, sigmas, run.args, settings, generators, callback, cancel)
