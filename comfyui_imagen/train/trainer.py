"""The training loop for one stage (base or super-resolution): data-parallel, EMA, resumable, logged.

One step: draw a batch (captions and images of the procedural demo domain, seeded by step and rank), encode the
captions with the frozen T5 (its `EmbeddingCache` keeps them: give it room for the domain's few thousand), drop 10%
of them to the empty prompt, noise the images at random DDPM timesteps of the stage's schedule, regress the stage's
prediction target under min-SNR weighting, step AdamW, update the EMA. Every `save_every` steps the live state goes
to ``state.pt`` (model, EMA, optimiser, step) and the EMA weights to the stage's native .safetensors file, which is
what ships, with this call's `TrainConfig` in its metadata (`comfyui_imagen.checkpoints.native.read_train_config`).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import distributed as ddp
from .batches import Batch, crop_spec, draw_batch, step_generator
from .config import TrainConfig
from .ema import EMA
from .objective import prediction_target, q_sample, snr_loss_weights, weighted_mse

STATE_FILE = "state.pt"
LOG_FILE = "train_log.jsonl"


def diffusion_loss(model: nn.Module, batch: Batch, text_encoder, stage_config, config: TrainConfig,
                   alphas_cumprod: torch.Tensor, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """The weighted regression loss of one batch (see the module docstring); all randomness from `generator`."""
    x0 = batch.images
    b = x0.shape[0]
    drop = torch.rand(b, generator=generator) < config.cond_drop_prob
    captions = ["" if d else c for c, d in zip(batch.captions, drop.tolist())]
    text = text_encoder.encode(captions, max_length=config.max_text_length)
    embeds, mask = text.embeds.float(), text.mask.bool()
    t = torch.randint(0, alphas_cumprod.numel(), (b,), generator=generator)
    noise = torch.randn(x0.shape, generator=generator)
    alpha_bar = alphas_cumprod[t]
    x_t = q_sample(x0, noise, alpha_bar)
    cond = {"text_embeds": embeds.to(device), "text_mask": mask.to(device)}
    if batch.lowres is not None:
        # Imagen 2.5: "we corrupt the low-resolution image with Gaussian noise and condition on the aug level"; the
        # same forward process as the stage's own (as DeepFloyd IF's stage II noises its input).
        level = torch.randint(0, config.max_aug_level + 1, (b,), generator=generator)
        aug_noise = torch.randn(batch.lowres.shape, generator=generator)
        cond["lowres_image"] = q_sample(batch.lowres, aug_noise, alphas_cumprod[level]).to(device)
        cond["noise_level"] = level.to(device)
    target = prediction_target(stage_config.prediction_type, x0, noise, alpha_bar)
    weights = snr_loss_weights(alpha_bar, stage_config.prediction_type, config.weighting, config.snr_gamma)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
        pred = model(x_t.to(device), t.to(device=device, dtype=torch.float32), **cond)
    if pred.shape[1] != x0.shape[1]:
        raise ValueError(f"the trainer fits a fixed-variance model with {x0.shape[1]} output channels; the stage "
                         f"predicts {pred.shape[1]} (use variance_type='fixed' for stages trained here)")
    return weighted_mse(pred, target.to(device), weights.to(device))


def learning_rate(step: int, config: TrainConfig) -> float:
    """`TrainConfig.learning_rate` (kept under its earlier name)."""
    return config.learning_rate(step)


def save_state(path: Path, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer, step: int) -> None:
    """The resumable state, written atomically (a crash mid-write leaves the previous file)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step}, tmp)
    os.replace(tmp, path)


def load_state(path: Path, model: nn.Module, ema: EMA, optimizer: torch.optim.Optimizer) -> int:
    """Restore `save_state`'s file (tensors and plain containers only: weights_only=True); returns the step."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


def saved_step(path: Path) -> int:
    """The step a ``state.pt`` was saved at (0 when there is none)."""
    if not path.exists():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def train(stage_config, config: TrainConfig, text_encoder, out_dir: str | os.PathLike, *, stage_file: str,
          device: str | torch.device = "cpu", resume: bool = True, stop_after: int | None = None,
          log: Callable[[str], None] | None = None) -> list[float]:
    """Train one stage; returns the per-step losses of this call (mean over processes).

    `out_dir` receives ``state.pt``, ``train_log.jsonl`` and `stage_file` (the EMA weights as a native stage file),
    and the crop cache when `config.crop_cache` asks for one (written once, reused by every later call).
    With `resume` an existing ``state.pt`` continues where it stopped; `stop_after` ends this call after that many
    steps (tests use it to interrupt a run). Data-parallel when launched by torchrun (see `distributed`).
    """
    from ..checkpoints import save_stage
    from ..schedules import get_schedule
    from ..unet import ImagenUNet

    device = torch.device(device)
    info = ddp.init_distributed(device)
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(config.seed)  # identical initial weights on every rank
    model = ImagenUNet(stage_config.unet).to(device)
    ema = EMA(model, config.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if resume and (out_dir / STATE_FILE).exists():
        step = load_state(out_dir / STATE_FILE, model, ema, optimizer)
        if info.is_main:
            log(f"resumed from {out_dir / STATE_FILE} at step {step}")
    net = model
    if info.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
    schedule = get_schedule(stage_config.schedule, stage_config.num_train_timesteps)
    alphas_cumprod = schedule.alphas_cumprod.float()
    losses: list[float] = []
    end = config.steps if stop_after is None else min(config.steps, step + stop_after)
    crops = None
    if (spec := crop_spec(stage_config, config)) is not None and step < end:
        from ..data import CropCache

        if info.is_main:  # renders the cache the first time; the other ranks then open it
            CropCache.open(out_dir, spec, log=log)
        ddp.barrier(info)
        crops = CropCache.open(out_dir, spec)
    model.train()
    t_last = time.perf_counter()
    while step < end:
        generator = step_generator(config.seed, step, info.rank)
        batch = draw_batch(stage_config, config, generator, step=step, rank=info.rank,
                           world_size=info.world_size, crops=crops)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(step)
        loss = diffusion_loss(net, batch, text_encoder, stage_config, config, alphas_cumprod, generator, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        ema.update(model, step)
        mean_loss = float(ddp.mean_across(loss.detach(), info))
        losses.append(mean_loss)
        if info.is_main and (step % config.log_every == 0 or step == end):
            now = time.perf_counter()
            record = {"step": step, "loss": round(mean_loss, 6), "lr": round(config.learning_rate(step - 1), 8),
                      "sec_per_step": round((now - t_last) / config.log_every, 3)}
            t_last = now
            with open(out_dir / LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            log(json.dumps(record))
        if step % config.save_every == 0 or step == end:
            if info.is_main:
                save_state(out_dir / STATE_FILE, model, ema, optimizer, step)
                save_stage(out_dir / stage_file, ema.shadow, stage_config, train_config=config)
            ddp.barrier(info)
    ddp.shutdown(info)
    return losses
