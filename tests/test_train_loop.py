"""The trainer on tiny configs: the loss goes down, resuming repeats an uninterrupted run exactly, data-parallel
training runs on two CPU processes (gloo), and the saved stage file loads, with the TrainConfig that trained it."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comfyui_imagen.checkpoints import load_stage
from comfyui_imagen.checkpoints.native import read_train_config
from comfyui_imagen.schedules import get_schedule
from comfyui_imagen.text import EmbeddingCache, load_t5
from comfyui_imagen.train.batches import draw_batch, step_generator
from comfyui_imagen.train.config import TINY_TRAIN
from comfyui_imagen.train.demo_t5 import save_demo_t5
from comfyui_imagen.train.presets import stage_preset
from comfyui_imagen.train.trainer import diffusion_loss, train
from comfyui_imagen.unet import ImagenUNet

TINY_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine two threads can be ~50x slower (measured: 0.1 s -> 6 s a
    step) when other processes hold the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def t5_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("t5") / "tiny-t5.safetensors"
    save_demo_t5(path, vocab_size=259, seed=0, **TINY_T5)
    return path


@pytest.fixture(scope="module")
def t5(t5_path):
    return load_t5(t5_path, compute_dtype=torch.float32, cache=EmbeddingCache(max_entries=1024))


@pytest.mark.parametrize("role", ["base", "sr"])
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(t5, role):
    torch.manual_seed(0)
    stage = stage_preset(f"tiny-{role}", text_embed_dim=32)
    config = TINY_TRAIN.replace(batch_size=4, cond_drop_prob=0.0)
    model = ImagenUNet(stage.unet)
    alphas = get_schedule(stage.schedule, stage.num_train_timesteps).alphas_cumprod.float()
    batch = draw_batch(stage, config, step_generator(0, 0, 0), step=0, rank=0)
    if role == "sr":
        assert batch.lowres is not None and batch.lowres.shape == batch.images.shape == (4, 3, 64, 64)

    def fixed_loss():
        with torch.no_grad():
            return float(diffusion_loss(model, batch, t5, stage, config, alphas, torch.Generator().manual_seed(1),
                                        torch.device("cpu")))

    before = fixed_loss()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(25):
        loss = diffusion_loss(model, batch, t5, stage, config, alphas, step_generator(0, step, 0), torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.7 * before, (before, after)


def test_resume_repeats_an_uninterrupted_run(t5, tmp_path):
    stage = stage_preset("tiny-base", text_embed_dim=32)
    config = TINY_TRAIN.replace(steps=4, save_every=2)
    whole = train(stage, config, t5, tmp_path / "a", stage_file="s.safetensors", log=lambda s: None)
    first = train(stage, config, t5, tmp_path / "b", stage_file="s.safetensors", stop_after=2, log=lambda s: None)
    rest = train(stage, config, t5, tmp_path / "b", stage_file="s.safetensors", log=lambda s: None)
    assert len(whole) == 4 and len(first) == 2 and len(rest) == 2
    assert first + rest == whole
    a, b = load_stage(tmp_path / "a" / "s.safetensors"), load_stage(tmp_path / "b" / "s.safetensors")
    assert a.config == stage
    assert a.train_config == b.train_config == config  # what trained it travels in the stage file
    for (ka, va), (kb, vb) in zip(a.unet.state_dict().items(), b.unet.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    logged = [json.loads(line)["step"] for line in (tmp_path / "b" / "train_log.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 3, 4]


def test_two_process_data_parallel_on_gloo(t5_path, tmp_path):
    """torchrun launches the real command line with 2 CPU processes; both step in lockstep and rank 0 saves."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "comfyui_imagen.train", "base", "--t5", str(t5_path), "--out-dir", str(out),
           "--stage-preset", "tiny-base", "--preset", "tiny", "--steps", "2", "--save-every", "2"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too, not only torchrun
        proc.communicate()
        pytest.fail("2-process training did not finish within 120 s")
    assert proc.returncode == 0, stderr[-3000:]
    records = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    stage = load_stage(out / "imagen-demo-base64.safetensors")
    assert stage.config.role == "base" and stage.config.unet.channels == (16, 32)
    assert stage.train_config == TINY_TRAIN.replace(steps=2, save_every=2)  # the preset and the flags
    assert torch.load(out / "state.pt", weights_only=True)["step"] == 2


def test_demo_commands_follow_the_shipped_schedules(tmp_path):
    from comfyui_imagen.train.__main__ import demo_commands

    def calls(role, **kw):
        out = []
        for cmd in demo_commands(role, tmp_path / "t5.safetensors", tmp_path / role, **kw):
            assert cmd[1:4] == ["-m", "comfyui_imagen.train", role]
            assert cmd[cmd.index("--out-dir") + 1] == str(tmp_path / role)
            stop = cmd[cmd.index("--stop-at") + 1] if "--stop-at" in cmd else None
            out.append((int(cmd[cmd.index("--steps") + 1]), stop and int(stop)))
        return out

    assert calls("base") == [(4000, None), (11500, 6500), (10000, None)]
    assert calls("sr") == [(3000, None), (7000, None)]
    assert calls("base", stop_at=5000) == [(4000, 5000), (11500, 5000), (10000, 5000)]
    assert calls("sr", steps=20, stop_at=5) == [(20, 5)]


def test_a_warm_restart_resumes_and_a_finished_call_trains_nothing(t5, tmp_path):
    """The demo schedules' semantics: a later call with more steps continues the state with its learning rate back
    up (re-aimed cosine); repeating calls that are already done trains nothing and leaves the files as they were."""
    stage = stage_preset("tiny-base", text_embed_dim=32)
    config = TINY_TRAIN.replace(steps=3, lr=2e-3, lr_final=1e-4, warmup_steps=0, save_every=1)
    run = tmp_path / "run"
    quiet = {"stage_file": "s.safetensors", "log": lambda s: None}
    assert len(train(stage, config, t5, run, **quiet)) == 3
    assert len(train(stage, config.replace(steps=8), t5, run, stop_after=2, **quiet)) == 2
    assert len(train(stage, config.replace(steps=6), t5, run, **quiet)) == 1
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    lrs = [r["lr"] for r in records]
    assert lrs[2] < lrs[3] and lrs[3] > lrs[4] > lrs[5]  # the restart at step 4, then decay again
    before = (run / "s.safetensors").read_bytes()
    for steps in (3, 6):
        assert train(stage, config.replace(steps=steps), t5, run, **quiet) == []
    assert (run / "s.safetensors").read_bytes() == before
    assert read_train_config(run / "s.safetensors") == config.replace(steps=6)  # the last call that wrote it
    assert torch.load(run / "state.pt", weights_only=True)["step"] == 6
