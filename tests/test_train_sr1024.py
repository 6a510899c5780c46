"""Stage III (256 -> 1024 px) of the demo: its preset, training on cached crops (resumed exactly, the cache written
once), the `train sr1024` command and its place in `train demo`, and its PSNR evaluation."""
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comfyui_imagen.checkpoints import load_stage, save_stage
from comfyui_imagen.data import CropCache, CropSpec, ShapesDataset
from comfyui_imagen.demo import FILES as DEMO_FILES
from comfyui_imagen.schedules import get_schedule
from comfyui_imagen.train import __main__ as train_cli
from comfyui_imagen.train.batches import crop_spec, draw_batch, step_generator
from comfyui_imagen.train.config import DEMO_SCHEDULES, DEMO_SR1024_TRAIN, TINY_TRAIN, TrainConfig
from comfyui_imagen.train.presets import stage_preset
from comfyui_imagen.train.trainer import diffusion_loss, train
from comfyui_imagen.unet import ImagenUNet
from tests.test_train_loop import one_thread, t5, t5_path  # noqa: F401 (the fixtures: one thread, a tiny T5)

TINY_CROPS = TINY_TRAIN.replace(crop=32, crop_cache=4)  # 32 px crops of 1024 px renders (8 px of the 256 px ones)
DEMO_LIMIT_MB = 60


def test_the_preset_is_fully_convolutional_and_keeps_the_demo_small():
    stage = stage_preset("demo-sr1024")
    assert (stage.role, stage.resolution, stage.lowres_resolution) == ("sr", 1024, 256)
    unet = stage.unet
    assert unet.attention == ("none",) * (unet.levels - 1) + ("cross",) and unet.mid_attention == "cross"
    params = sum(p.numel() for p in ImagenUNet(unet).parameters())
    shipped = sum(path.stat().st_size for path in DEMO_FILES.values() if path.is_file())
    assert params < 2e6 and shipped + 4 * params < DEMO_LIMIT_MB * 1e6, (params, shipped)  # fp32 weights
    assert crop_spec(stage, DEMO_SR1024_TRAIN) == CropSpec(1024, 256, DEMO_SR1024_TRAIN.crop,
                                                           DEMO_SR1024_TRAIN.crop_cache, 0)
    with pytest.raises(ValueError, match="needs crop > 0"):
        TrainConfig(crop_cache=4)
    with pytest.raises(ValueError, match="SR stage"):
        crop_spec(stage_preset("tiny-base"), TINY_CROPS)


def test_one_step_of_the_real_preset_on_cached_crops(t5, tmp_path):
    torch.manual_seed(0)
    stage = stage_preset("demo-sr1024", text_embed_dim=32)
    config = DEMO_SR1024_TRAIN.replace(batch_size=2, crop=32, crop_cache=2)
    cache = CropCache.open(tmp_path, crop_spec(stage, config))
    batch = draw_batch(stage, config, step_generator(0, 0, 0), step=0, rank=0, crops=cache)
    assert batch.images.shape == batch.lowres.shape == (2, 3, 32, 32)
    model = ImagenUNet(stage.unet)
    alphas = get_schedule(stage.schedule, stage.num_train_timesteps).alphas_cumprod.float()
    loss = diffusion_loss(model, batch, t5, stage, config, alphas, step_generator(0, 0, 0), torch.device("cpu"))
    loss.backward()
    assert math.isfinite(loss.item()) and all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_training_on_cached_crops_resumes_exactly_and_renders_the_cache_once(t5, tmp_path, monkeypatch):
    from comfyui_imagen.data import crops

    stage = stage_preset("tiny-sr1024", text_embed_dim=32)
    quiet = {"stage_file": "s.safetensors", "log": lambda s: None}
    whole = train(stage, TINY_CROPS, t5, tmp_path / "a", **quiet)
    first = train(stage, TINY_CROPS, t5, tmp_path / "b", stop_after=2, **quiet)
    folder = tmp_path / "b" / crop_spec(stage, TINY_CROPS).folder_name
    mtime = (folder / "images.npy").stat().st_mtime_ns
    monkeypatch.setattr(crops, "render", lambda *a, **k: pytest.fail("the crop cache was rendered again"))
    rest = train(stage, TINY_CROPS, t5, tmp_path / "b", **quiet)
    assert len(whole) == 4 and first + rest == whole
    assert (folder / "images.npy").stat().st_mtime_ns == mtime
    assert load_stage(tmp_path / "b" / "s.safetensors").train_config == TINY_CROPS


def test_the_sr1024_command_writes_its_file_and_resumes(t5_path, tmp_path):
    run = tmp_path / "sr1024"
    args = ["sr1024", "--t5", str(t5_path), "--out-dir", str(run), "--stage-preset", "tiny-sr1024",
            "--preset", "tiny", "--crop", "32", "--crop-cache", "4", "--steps", "3", "--threads", "1"]
    train_cli.main(args + ["--stop-at", "1"])
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 1
    stage = load_stage(run / "imagen-demo-sr1024.safetensors")
    assert stage.config.resolution == 1024 and stage.train_config == TINY_CROPS.replace(steps=3)
    train_cli.main(args + ["--stop-at", "2"])
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 2
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    with pytest.raises(SystemExit, match="base stage"):
        train_cli.main(["sr1024", "--t5", str(t5_path), "--out-dir", str(run), "--stage-preset", "tiny-base"])


def test_train_demo_runs_sr1024_after_sr_and_installs_finished_stages(tmp_path, monkeypatch):
    """`_run_all` stands in for the subprocesses: it records each call and writes what a finished call leaves."""
    out, dest = tmp_path / "demo", tmp_path / "installed"
    out.mkdir()
    (out / DEMO_FILES["t5"].name).write_bytes(b"t5")  # present: not trained again
    order, lock = [], threading.Lock()

    def fake_run_all(commands, log_path):
        for cmd in commands:
            role, run = cmd[3], Path(cmd[cmd.index("--out-dir") + 1])
            stop = int(cmd[cmd.index("--stop-at") + 1]) if "--stop-at" in cmd else int(cmd[cmd.index("--steps") + 1])
            run.mkdir(parents=True, exist_ok=True)
            torch.save({"step": stop}, run / "state.pt")
            (run / train_cli.DEMO_STAGES[role][1]).write_bytes(role.encode())
            with lock:
                order.append((role, stop))
        return 0

    monkeypatch.setattr(train_cli, "_run_all", fake_run_all)
    train_cli.main(["demo", "--out-dir", str(out), "--steps", "5", "--stop-at-sr1024", "3", "--install", str(dest)])
    assert sorted(order) == [("base", 5), ("sr", 5), ("sr1024", 3)]
    assert [r for r, _ in order if r != "base"] == ["sr", "sr1024"]  # one lane: SR, then SR 1024
    installed = sorted(p.name for p in dest.iterdir())
    assert installed == sorted([DEMO_FILES["t5"].name, DEMO_FILES["base"].name, DEMO_FILES["sr"].name])  # not 1024
    order.clear()
    train_cli.main(["demo", "--out-dir", str(out), "--steps", "5", "--install", str(dest)])
    assert ("sr1024", 5) in order and (dest / "imagen-demo-sr1024.safetensors").read_bytes() == b"sr1024"


def test_demo_commands_follow_the_sr1024_schedule(tmp_path):
    commands = train_cli.demo_commands("sr1024", tmp_path / "t5.safetensors", tmp_path / "sr1024", stop_at=50)
    assert len(commands) == len(DEMO_SCHEDULES["sr1024"]) == 1
    cmd = commands[0]
    assert cmd[3] == "sr1024" and cmd[cmd.index("--steps") + 1] == str(DEMO_SR1024_TRAIN.steps)
    assert cmd[cmd.index("--stop-at") + 1] == "50"
    assert train_cli.final_step("sr1024") == DEMO_SR1024_TRAIN.steps and train_cli.final_step("base", 7) == 7


def test_the_psnr_of_an_untrained_1024_stage_is_reported_beside_bicubic(tmp_path, capsys):
    from comfyui_imagen.evaluate import main as evaluate_main

    torch.manual_seed(0)
    stage = stage_preset("tiny-sr1024", text_embed_dim=256)  # the bundled demo T5's width
    path = tmp_path / "sr1024.safetensors"
    save_stage(path, ImagenUNet(stage.unet), stage)
    out = tmp_path / "eval.json"
    code = evaluate_main(["--n-seen", "0", "--n-heldout", "0", "--sweep", "", "--psnr-count", "0", "--no-sr",
                          "--sr1024", str(path), "--psnr1024-count", "1", "--sr1024-steps", "2", "--threads", "1",
                          "--json", str(out)])
    assert code == 0
    p = json.loads(out.read_text())["sr1024_psnr"]
    assert (p["n"], p["resolution"], p["lowres_resolution"]) == (1, 1024, 256) and math.isfinite(p["sr"])
    item = ShapesDataset(seed=0, split="all").item(0)
    small, big = (torch.from_numpy(it).permute(2, 0, 1)[None] / 255.0 for it in (item.image(256), item.image(1024)))
    bicubic = F.interpolate(small, size=(1024, 1024), mode="bicubic", align_corners=False).clamp(0, 1)
    assert p["bicubic"] == pytest.approx(10 * math.log10(1 / float((bicubic - big).pow(2).mean())), abs=1e-3)
    report = capsys.readouterr().out
    assert f"PSNR stage {p['sr']:.2f} dB, bicubic {p['bicubic']:.2f} dB, gain {p['sr'] - p['bicubic']:+.2f} dB" \
        in report and "SR 256→1024 PSNR" in report
    assert np.isfinite(p["bicubic"])
