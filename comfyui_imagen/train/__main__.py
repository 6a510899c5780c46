"""``python -m comfyui_imagen.train``: make the demo text encoder, train a stage, or rebuild the whole demo cascade.

    python -m comfyui_imagen.train t5 OUT.safetensors                      # the demo T5 (pre-trained, frozen: minutes)
    python -m comfyui_imagen.train base --t5 T5 --out-dir RUN [options]    # one stage; resumes RUN/state.pt
    python -m comfyui_imagen.train sr   --t5 T5 --out-dir RUN [options]
    python -m comfyui_imagen.train sr1024 --t5 T5 --out-dir RUN [options]  # stage III, 256 -> 1024, on cached crops
    python -m comfyui_imagen.train demo --out-dir RUN                      # all of it: base beside SR then SR 1024,
                                                                           # each with its warm restart (DEMO_SCHEDULES)

Data-parallel: launch `base`/`sr`/`sr1024` with ``torchrun --nproc_per_node N -m comfyui_imagen.train base ...``
(gloo on the CPU, nccl on CUDA) or ``accelerate launch``; the batch size is per process.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from ..demo import FILES as DEMO_FILES
from .config import DEMO_SCHEDULES, PRESETS as TRAIN_PRESETS

DEMO_T5_STEPS = 300  # caption pre-training of the demo encoder (comfyui_imagen.train.demo_t5)
# The demo's stages by command: (role, the stage file its run writes). A command's default stage and training presets
# are "demo-<command>". Stage III is not bundled yet: its name joins comfyui_imagen.demo.FILES when its file ships.
DEMO_STAGES = {"base": ("base", DEMO_FILES["base"].name), "sr": ("sr", DEMO_FILES["sr"].name),
               "sr1024": ("sr", "imagen-demo-sr1024.safetensors")}
# `train demo` runs these lanes side by side, one process of one thread each, a lane's stages one after another.
DEMO_LANES = (("base",), ("sr", "sr1024"))


def _stage_args(p: argparse.ArgumentParser) -> None:
    from .presets import STAGE_NAMES

    p.add_argument("--t5", required=True, help="the frozen text encoder (.safetensors); make the demo one with "
                                               "`python -m comfyui_imagen.train t5 FILE`")
    p.add_argument("--out-dir", required=True, help="run folder: state.pt, train_log.jsonl and the stage file")
    p.add_argument("--stage-preset", default=None, choices=STAGE_NAMES,
                   help="architecture (default: demo-base / demo-sr / demo-sr1024)")
    p.add_argument("--preset", default=None, choices=sorted(TRAIN_PRESETS),
                   help="training settings (default: demo-base / demo-sr / demo-sr1024); the flags below override them")
    for name, kind in (("steps", int), ("batch-size", int), ("lr", float), ("lr-final", float), ("seed", int),
                       ("ema-decay", float), ("save-every", int), ("log-every", int), ("crop", int),
                       ("crop-cache", int),
                       ("max-aug-level", int), ("warmup-steps", int), ("snr-gamma", float)):
        p.add_argument(f"--{name}", type=kind, default=None)
    p.add_argument("--weighting", choices=("min_snr", "p2", "none"), default=None)
    p.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="bf16 autocast (slow on most CPUs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for this process")
    p.add_argument("--no-resume", action="store_true", help="start over even if OUT_DIR/state.pt exists")
    p.add_argument("--stop-at", type=int, default=None,
                   help="end this run at that step (the schedule still spans --steps); resume later to go on")


def _train_stage(command: str, args: argparse.Namespace) -> None:
    import torch

    from ..text import EmbeddingCache, load_t5
    from .presets import stage_preset
    from .trainer import train

    if args.threads:
        torch.set_num_threads(args.threads)
    role, stage_file = DEMO_STAGES[command]
    encoder = load_t5(args.t5, compute_dtype=torch.float32, cache=EmbeddingCache(max_entries=8192))
    stage = stage_preset(args.stage_preset or f"demo-{command}", text_embed_dim=encoder.config.d_model)
    if stage.role != role:
        raise SystemExit(f"stage preset {args.stage_preset!r} is a {stage.role} stage; use the `{stage.role}` command")
    config = TRAIN_PRESETS[args.preset or f"demo-{command}"]
    overrides = {k: v for k, v in vars(args).items()
                 if v is not None and k in config.__dataclass_fields__}
    config = config.replace(**overrides)
    stop_after = None
    if args.stop_at is not None:
        from .trainer import STATE_FILE, saved_step

        stop_after = max(0, args.stop_at - saved_step(Path(args.out_dir) / STATE_FILE))
    train(stage, config, encoder, args.out_dir, stage_file=stage_file, device=args.device,
          resume=not args.no_resume, stop_after=stop_after)


def demo_commands(role: str, t5: Path, run_dir: Path, *, steps: int | None = None,
                  stop_at: int | None = None) -> list[list[str]]:
    """The `train base|sr|sr1024` calls that make demo stage `role` in `run_dir`, in order: `DEMO_SCHEDULES[role]`
    (or one call of `steps`), every stop capped at `stop_at` when given (the calls past it then train nothing)."""
    calls = DEMO_SCHEDULES[role] if steps is None else ((steps, None),)
    commands = []
    for total, stop in calls:
        if stop_at is not None:
            stop = stop_at if stop is None else min(stop, stop_at)
        cmd = [sys.executable, "-m", "comfyui_imagen.train", role, "--t5", str(t5), "--out-dir", str(run_dir),
               "--threads", "1", "--steps", str(total)]
        commands.append(cmd + (["--stop-at", str(stop)] if stop is not None else []))
    return commands


def final_step(role: str, steps: int | None = None) -> int:
    """The step demo stage `role`'s run ends at: the last call of `DEMO_SCHEDULES[role]` (or `steps`)."""
    total, stop = DEMO_SCHEDULES[role][-1] if steps is None else (steps, None)
    return total if stop is None else stop


def _run_all(commands: list[list[str]], log_path: Path) -> int:
    """Run the commands one after another, output appended to `log_path`; the first non-zero exit code, else 0."""
    with open(log_path, "a") as log:
        for cmd in commands:
            code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
            if code:
                return code
    return 0


def _demo(args: argparse.Namespace) -> None:
    """T5, then the `DEMO_LANES` side by side (base | SR, then SR 1024: one thread each, each stage through its
    `DEMO_SCHEDULES` calls in its own run folder OUT/<role>), then the files copied to --install: the T5 and every
    stage whose run has reached its final step (a stage stopped early with --stop-at-* is left out, and said so)."""
    from concurrent.futures import ThreadPoolExecutor

    from .demo_t5 import save_demo_t5
    from .trainer import STATE_FILE, saved_step
    from ..text import ByteTokenizer

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t5 = out / DEMO_FILES["t5"].name
    if not t5.exists():
        save_demo_t5(t5, vocab_size=ByteTokenizer().vocab_size, seed=0, train_steps=DEMO_T5_STEPS, log=print)

    def lane(roles: tuple[str, ...]) -> int:
        for role in roles:
            commands = demo_commands(role, t5, out / role, steps=args.steps, stop_at=getattr(args, f"stop_at_{role}"))
            if code := _run_all(commands, out / f"{role}.log"):
                return code
        return 0

    with ThreadPoolExecutor(len(DEMO_LANES)) as pool:
        codes = list(pool.map(lane, DEMO_LANES))
    if any(codes):
        logs = ", ".join(str(out / f"{role}.log") for roles in DEMO_LANES for role in roles)
        raise SystemExit(f"training failed (exit codes {codes}); see {logs}")
    if args.install:
        dest = Path(args.install)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(t5, dest / t5.name)
        for roles in DEMO_LANES:
            for role in roles:
                name, run = DEMO_STAGES[role][1], out / role
                if saved_step(run / STATE_FILE) < final_step(role, args.steps):
                    print(f"not installing {name}: its run {run} stopped at step {saved_step(run / STATE_FILE)} of "
                          f"{final_step(role, args.steps)}; run the same command again without --stop-at-{role}")
                    continue
                shutil.copy(run / name, dest / name)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m comfyui_imagen.train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t5 = sub.add_parser("t5", help="write the frozen demo T5 encoder")
    t5.add_argument("out", help="output .safetensors path")
    t5.add_argument("--seed", type=int, default=0)
    t5.add_argument("--train-steps", type=int, default=DEMO_T5_STEPS,
                    help="caption pre-training steps (0: the random-init encoder)")
    for command, what in (("base", "a base stage"), ("sr", "a super-resolution stage"),
                          ("sr1024", "the demo's stage III (256 -> 1024 px, on cached crops)")):
        _stage_args(sub.add_parser(command, help=f"train {what}"))
    demo = sub.add_parser("demo", help="rebuild the bundled demo cascade (T5 + base + SR + SR 1024)")
    demo.add_argument("--out-dir", default="runs/demo")
    demo.add_argument("--steps", type=int, default=None,
                      help="one run of this many steps per stage instead of the shipped schedules (DEMO_SCHEDULES)")
    demo.add_argument("--stop-at-base", type=int, default=None, help="end the base run at this step")
    demo.add_argument("--stop-at-sr", type=int, default=None, help="end the SR run at this step")
    demo.add_argument("--stop-at-sr1024", type=int, default=None, help="end the SR 1024 run at this step")
    demo.add_argument("--install", default=None, help="copy the finished files here (e.g. comfyui_imagen/demo)")
    args = parser.parse_args(argv)
    if args.command == "t5":
        from ..text import ByteTokenizer
        from .demo_t5 import save_demo_t5

        save_demo_t5(args.out, vocab_size=ByteTokenizer().vocab_size, seed=args.seed, train_steps=args.train_steps,
                     log=print)
    elif args.command == "demo":
        _demo(args)
    else:
        _train_stage(args.command, args)


if __name__ == "__main__":
    main()
