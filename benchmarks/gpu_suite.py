"""Every GPU measurement of issue #14 in one run of under 10 minutes, so that they can be taken whenever a GPU is at
hand; ``--cpu-tiny`` runs the same steps on the CPU on tiny shapes (under 2 minutes), which is how it is tested.

    python3 benchmarks/gpu_suite.py OUT_DIR                          # a CUDA machine: every step below
    python3 benchmarks/gpu_suite.py OUT_DIR --wheels .whl            # diffusers from wheels carried along (below)
    python3 benchmarks/gpu_suite.py OUT_DIR --t5 t5xxl_fp8_e4m3fn_scaled.safetensors    # a real T5-XXL file
    .venv/bin/python benchmarks/gpu_suite.py OUT_DIR --cpu-tiny      # the same steps on the CPU, tiny shapes
    .venv/bin/python benchmarks/gpu_suite.py OUT_DIR --cpu-tiny --only unet-if-i,sampling-demo

The steps, in order, each a child process stopped at its own limit or at what is left of ``--budget`` (570 s; 110 s
with --cpu-tiny), whichever comes first; a step that fails or runs out of time is recorded and the next one runs:

    unet-if-i       unet_speed.py --preset IF-I-XL --size 64 --batch 2 --dtypes bf16,fp16 --device cuda
    unet-if-ii      unet_speed.py --preset IF-II-L --size 256 --batch 2 --dtypes bf16,fp16 --device cuda
    t5              t5_speed.py --device cuda: ours (fp8 weights) against transformers' bf16 T5EncoderModel on the
                    --t5 file, else on a random T5-XXL written as scaled fp8 (--t5-layers, all 24 by default; ~5 GB
                    in the temp folder, removed afterwards)
    sampling-demo   sampling_overhead.py --device cuda: the demo base (every sampler, RePaint) and the demo SR
    sampling-if-i   sampling_overhead.py --device cuda --preset IF-I-XL --dtype bf16 --steps 20 (random weights)

--cpu-tiny gives the same scripts the same flags on the CPU, with IF's block layouts at a few channels (IF-I-tiny at
32 px, IF-II-tiny at 64 px: `unet_speed.TINY_PRESETS`), fp32/bf16 (fp16 is no CPU dtype), a one-layer T5 v1.1 small,
the sampling benchmark's --tiny stages and IF-I-tiny, one repeat each.

OUT_DIR receives gpu_suite.log (every step's output as it ran, after a header saying what the machine is) and
gpu_suite.json (the machine, then per step: command, exit status, seconds, and the step's own JSON report); a summary
table ends the log. Nothing else is written there (the device tool brings back at most 8 files).

diffusers, the U-Net steps' peer, is often missing from GPU images. Without it those steps time ours alone and the log
says so; to compare, carry its wheel (pure Python) and give the folder with --wheels, which installs it into a
temporary folder for the children (never into the environment):

    python3 -m pip download --no-deps -d .whl diffusers==0.42.1 importlib_metadata     # where pip reaches the index
    python3 benchmarks/gpu_suite.py OUT_DIR --wheels .whl                               # on the GPU machine

(by hand: ``python3 -m pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` and ``PYTHONPATH=/tmp/site``;
diffusers' other needs, huggingface_hub, safetensors, regex, requests, Pillow, numpy, come with transformers).
transformers missing likewise runs the T5 step without its peer.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
STEP_NAMES = ("unet-if-i", "unet-if-ii", "t5", "sampling-demo", "sampling-if-i")
LOG, REPORT = "gpu_suite.log", "gpu_suite.json"


@dataclass
class Step:
    name: str
    script: str
    args: list[str]
    limit_s: float          # this step's own limit; the suite's budget may cut it shorter


def plan(args, have_diffusers: bool, have_transformers: bool) -> list[Step]:
    """The steps with their flags: the GPU ones, or the same on the CPU on tiny shapes (module docstring)."""
    tiny = args.cpu_tiny
    dev = ["--device", "cpu" if tiny else args.device]
    peer = [] if have_diffusers else ["--no-peer"]
    if tiny:
        unet = ["--dtypes", "fp32,bf16", "--repeats", "1", "--matmul-size", "256", "--tokens", "16", "--threads", "1"]
        t5 = ["--synthetic-layers", "1", "--preset", "t5_v1_1_small", "--repeats", "1", "--threads", "1"]
        steps = [Step("unet-if-i", "unet_speed.py", ["--preset", "IF-I-tiny", "--size", "32", "--batch", "2", *unet],
                      40),
                 Step("unet-if-ii", "unet_speed.py", ["--preset", "IF-II-tiny", "--size", "64", "--batch", "2",
                                                      *unet], 40),
                 Step("t5", "t5_speed.py", t5, 60),
                 Step("sampling-demo", "sampling_overhead.py", ["--tiny"], 40),
                 Step("sampling-if-i", "sampling_overhead.py", ["--preset", "IF-I-tiny", "--resolution", "32",
                                                                "--steps", "2", "--repeats", "1", "--tokens", "8",
                                                                "--samplers", "ddpm,dpmpp_2m"], 40)]
    else:
        unet = ["--batch", "2", "--dtypes", "bf16,fp16"]
        t5 = (["--t5", str(args.t5)] if args.t5 else ["--synthetic-layers", str(args.t5_layers)]) + ["--repeats", "3",
                                                                                             "--threads", "8"]
        steps = [Step("unet-if-i", "unet_speed.py", ["--preset", "IF-I-XL", "--size", "64", *unet], 150),
                 Step("unet-if-ii", "unet_speed.py", ["--preset", "IF-II-L", "--size", "256", *unet], 120),
                 Step("t5", "t5_speed.py", t5, 300),
                 Step("sampling-demo", "sampling_overhead.py", [], 150),
                 Step("sampling-if-i", "sampling_overhead.py", ["--preset", "IF-I-XL", "--dtype", "bf16", "--steps",
                                                                "20"], 180)]
    for step in steps:
        step.args = step.args + dev
        if step.script == "unet_speed.py":
            step.args += peer
        if step.script == "t5_speed.py" and not have_transformers:
            step.args.append("--no-peer")
    wanted = args.only.split(",") if args.only else STEP_NAMES
    unknown = [n for n in wanted if n not in STEP_NAMES]
    if unknown:
        raise SystemExit(f"unknown step(s) {unknown}; the steps are {', '.join(STEP_NAMES)}")
    return [s for s in steps if s.name in wanted]


# ------------------------------------------------------------------------------------------------ environment
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _importable(name: str, path: list[str]) -> bool:
    """Whether a child with ``path`` prepended to PYTHONPATH imports ``name`` (a broken install counts as missing)."""
    done = subprocess.run([sys.executable, "-c", f"import {name}"], env=_child_env(path), capture_output=True,
                          check=False)
    return done.returncode == 0


def install_wheels(folder: Path, log) -> str:
    """The wheels in ``folder`` installed (no index, no dependencies) into a temporary folder; returns that folder,
    for the children's PYTHONPATH."""
    wheels = sorted(str(w) for w in folder.glob("*.whl"))
    if not wheels:
        raise SystemExit(f"--wheels {folder}: no .whl files there; download them with: python3 -m pip download "
                         f"--no-deps -d {folder} diffusers==0.42.1 importlib_metadata")
    site = tempfile.mkdtemp(prefix="gpu_suite_site_")
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--target", site,
           *wheels]
    log(f"# installing {', '.join(Path(w).name for w in wheels)} into {site} (children only)")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        log(f"# pip failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
    return site


def machine(cpu_tiny: bool, device: str) -> dict:
    import torch
    info = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "diffusers": _version("diffusers"),
            "transformers": _version("transformers")}
    sys.path.insert(0, str(ROOT))
    from benchmarks.t5_gguf import cpu_line
    info["cpu"] = cpu_line()
    if not cpu_tiny:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device is visible to torch: run on a GPU machine, or use --cpu-tiny for the "
                             "same steps on the CPU")
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}")
    return info


# ------------------------------------------------------------------------------------------------ running steps
def _child_env(path: list[str]) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([*path, str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_step(step: Step, timeout: float, json_path: Path, path: list[str], log) -> dict:
    """Run one step's script, its output copied line by line to the log; killed (its whole process group: t5_speed
    has children of its own) when it outlives ``timeout``."""
    cmd = [sys.executable, str(BENCH / step.script), *step.args, "--json", str(json_path)]
    log(f"\n== {step.name} (limit {timeout:.0f} s): {' '.join(cmd[1:])}")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_child_env(path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    reader = threading.Thread(target=lambda: [log(line.rstrip("\n")) for line in proc.stdout], daemon=True)
    reader.start()
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=5)
    seconds = time.perf_counter() - start
    result = {"step": step.name, "command": cmd[1:], "rc": proc.returncode, "seconds": round(seconds, 1),
              "timed_out": timed_out, "report": None}
    if json_path.is_file():
        result["report"] = json.loads(json_path.read_text())
    status = "timed out" if timed_out else f"exit {proc.returncode}"
    log(f"== {step.name}: {status} after {seconds:.1f} s")
    return result


def headline(result: dict) -> str:
    """One line of a step's result for the summary."""
    report = result.get("report")
    if result["timed_out"]:
        return "timed out"
    if result["rc"] or report is None:
        return f"failed (exit {result['rc']})"
    if "rows" in report and "preset" in report:  # unet_speed
        return "; ".join(f"{r['dtype']} ours {r['ours_ms']:.1f} ms" + (
            f", diffusers {r['diffusers_ms']:.1f} ms ({r['ratio']:.2f}x)" if report["peer"] else "")
            for r in report["rows"])
    if "rows" in report:  # sampling_overhead
        if not report["rows"]:
            return f"no rows measured ({len(report.get('failed', []))} failed)"
        worst = max(report["rows"], key=lambda r: r["ratio"])
        return (f"worst run / U-Net {worst['ratio']:.3f} ({worst['stage']}/{worst['sampler']}), in-run "
                f"{max(r['in_run_ratio'] for r in report['rows']):.3f}; over {report['limit']}: "
                f"{len(report['over_limit'])} of {len(report['rows'])}; previews per step <= "
                f"{max(r['previews_per_step'] for r in report['rows'])}")
    t5 = report.get("file") or report.get("synthetic") or {}
    runs = t5.get("runs", {})
    line = "; ".join(f"{k} encode {v['encode_s'] * 1e3:.1f} ms" for k, v in runs.items())
    return line + (f"; ours / transformers {t5['time_ratio']:.2f}x" if "time_ratio" in t5 else "")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="folder for gpu_suite.log and gpu_suite.json")
    p.add_argument("--cpu-tiny", action="store_true", help="the same steps on the CPU on tiny shapes")
    p.add_argument("--device", default="cuda", help="the GPU (cuda, cuda:1 ...)")
    p.add_argument("--budget", type=float, help="seconds for all steps (default 570; 110 with --cpu-tiny)")
    p.add_argument("--only", help=f"comma list of steps to run, from {', '.join(STEP_NAMES)}")
    p.add_argument("--t5", type=Path, help="a real T5 file for the t5 step (default: a synthetic T5-XXL)")
    p.add_argument("--t5-layers", type=int, default=24, help="layers of the synthetic T5-XXL (24: the whole model)")
    p.add_argument("--wheels", type=Path, help="a folder of wheels (diffusers ...) to install for the children "
                   "when diffusers is missing")
    args = p.parse_args(argv)
    budget = args.budget or (110.0 if args.cpu_tiny else 570.0)
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / LOG, "w", encoding="utf-8")
    lock = threading.Lock()

    def log(line: str) -> None:
        with lock:
            print(line, flush=True)
            log_file.write(line + "\n")
            log_file.flush()

    started = time.perf_counter()
    info = machine(args.cpu_tiny, args.device)
    log(f"# gpu_suite {'--cpu-tiny ' if args.cpu_tiny else ''}budget {budget:.0f} s: " + ", ".join(
        f"{k} {v}" for k, v in info.items()))
    path: list[str] = []
    have_diffusers = _importable("diffusers", path)
    if not have_diffusers and args.wheels:
        path.append(install_wheels(args.wheels, log))
        have_diffusers = _importable("diffusers", path)
    if not have_diffusers:
        log("# diffusers is missing: the U-Net steps time ours alone (no diffusers comparison). To compare, carry "
            "its wheel: where pip reaches the index, `python3 -m pip download --no-deps -d .whl diffusers==0.42.1 "
            "importlib_metadata`; then `python3 benchmarks/gpu_suite.py OUT_DIR --wheels .whl`")
    have_transformers = _importable("transformers", path)
    if not have_transformers:
        log("# transformers is missing: the T5 step times ours alone")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as scratch:
        for step in plan(args, have_diffusers, have_transformers):
            left = budget - (time.perf_counter() - started)
            if left < 10:
                log(f"\n== {step.name}: skipped, {max(left, 0):.0f} s of the {budget:.0f} s budget left")
                results.append({"step": step.name, "command": None, "rc": None, "seconds": 0.0, "timed_out": False,
                                "skipped": True, "report": None})
                continue
            results.append(run_step(step, min(step.limit_s, left), Path(scratch) / f"{step.name}.json", path, log))
    total = time.perf_counter() - started
    log(f"\n# summary ({total:.0f} s of a {budget:.0f} s budget)")
    log("| step | seconds | result |")
    log("|---|---|---|")
    for r in results:
        log(f"| {r['step']} | {r['seconds']:.0f} | {'skipped' if r.get('skipped') else headline(r)} |")
    report = {"machine": info, "cpu_tiny": args.cpu_tiny, "budget_s": budget, "seconds": round(total, 1),
              "diffusers": have_diffusers, "transformers": have_transformers, "steps": results}
    (args.out / REPORT).write_text(json.dumps(report, indent=1, default=str))
    log_file.close()
    for site in path:
        shutil.rmtree(site, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
