"""T5 loading cost: peak memory and time of `load_t5` on fp16 and scaled-fp8 single files, next to transformers'
``T5EncoderModel.from_pretrained`` on the same fp16 weights in a Hugging Face folder.

    .venv/bin/python benchmarks/t5_load.py                     # T5 v1.1 large shape (0.68 GB fp16), ~2 minutes
    .venv/bin/python benchmarks/t5_load.py --preset t5_v1_1_xl --prompts 4

It writes a random T5 encoder of the chosen shape to a temporary folder (removed afterwards), reads every file once
so that all runs find it in the page cache, times a raw read of each file, then measures each loader in a fresh
process (torch and transformers already imported when the baseline is taken):

    peak RSS ratio = (peak RSS after the step - RSS before loading) / file size      for "load" and "load + encode"
    load / raw read = load time / time to read the file into memory

Targets (issue #4): fp16 no worse than the peer, fp8 <= 1.1 including encode (no full-precision copy exists),
load time <= 2x the raw read. Peak RSS is reset before loading through /proc/self/clear_refs (Linux).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
SHARED_TOKENIZER = ROOT.parent / "shared" / "t5-v1_1-xxl"
PROMPTS = ["a red circle to the left of a blue square", "a photograph of an astronaut riding a horse",
           "a corgi wearing sunglasses on a beach at sunset, high detail", "",
           "a bowl of soup that looks like a monster, knitted out of wool",
           "an oil painting of a lighthouse in a storm", "the word 'imagen' written in neon letters",
           "a tiny house on top of a giant mushroom in a misty forest"]


# -- memory probes (Linux /proc) --------------------------------------------------------------------------------------

def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss() -> int:
    return _status_kb("VmRSS")


def peak_rss() -> int:
    return _status_kb("VmHWM")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


# -- child processes: one measurement each ----------------------------------------------------------------------------

def child(kind: str, path: str, n_prompts: int, max_length: int) -> dict:
    import torch
    import transformers  # noqa: F401  (imported before the baseline, for both loaders)
    from comfyui_imagen.text import load_t5, load_tokenizer

    tokenizer = load_tokenizer(SHARED_TOKENIZER if (SHARED_TOKENIZER / "tokenizer.json").is_file() else "byte")
    prompts = (PROMPTS * (n_prompts // len(PROMPTS) + 1))[:n_prompts]
    torch.set_grad_enabled(False)
    size = sum(f.stat().st_size for f in Path(path).rglob("*.safetensors")) if Path(path).is_dir() \
        else Path(path).stat().st_size
    base = rss()
    reset_peak()
    t0 = time.perf_counter()
    if kind == "peer":
        from transformers import T5EncoderModel
        model = T5EncoderModel.from_pretrained(path, local_files_only=True).eval()
        weight_dtype = str(model.shared.weight.dtype)
    else:
        t5 = load_t5(path, tokenizer=tokenizer)
        weight_dtype = str(t5.model.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype)
    t_load = time.perf_counter() - t0
    peak_load = peak_rss()
    t1 = time.perf_counter()
    if kind == "peer":
        from comfyui_imagen.text import pad_and_truncate
        batch = pad_and_truncate(tokenizer.tokenize([p.lower() for p in prompts]), max_length,
                                 pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
        embeds = model(input_ids=batch.ids, attention_mask=batch.mask.long()).last_hidden_state.float()
        compute = str(embeds.dtype)
    else:
        embeds = t5.encode(prompts, max_length=max_length).embeds
        compute = str(t5.compute_dtype)
    t_encode = time.perf_counter() - t1
    peak_encode = peak_rss()
    return {"kind": kind, "file_bytes": size, "weights": weight_dtype, "compute": compute,
            "load_s": t_load, "encode_s": t_encode, "finite": bool(torch.isfinite(embeds).all()),
            "ratio_load": (peak_load - base) / size, "ratio_load_encode": (peak_encode - base) / size}


# -- parent: write the files, warm the cache, run the children --------------------------------------------------------

def random_state(config) -> dict:
    """fp16 random weights of a T5 config (spread 1/sqrt(fan_in), norms about 1), seed 0."""
    import torch
    from comfyui_imagen.text import expected_shapes

    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in expected_shapes(config).items():
        if len(shape) == 1:
            state[key] = (1 + 0.1 * torch.randn(shape, generator=g)).half()
        else:
            fan_in = shape[1] if "relative_attention_bias" not in key else 1
            state[key] = (torch.randn(shape, generator=g) * fan_in ** -0.5).half()
    return state


def write_files(folder: Path, preset: str) -> dict[str, Path]:
    from safetensors.torch import save_file
    from comfyui_imagen.text import PRESETS, to_fp8_state_dict

    config = PRESETS[preset]
    state = random_state(config)
    fp16 = folder / "t5_fp16.safetensors"
    save_file(state, fp16)
    fp8 = folder / "t5_fp8_e4m3fn_scaled.safetensors"
    save_file(to_fp8_state_dict(state, style="scaled_fp8"), fp8)
    del state
    hf = folder / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(config.to_hf_dict()))
    try:
        os.link(fp16, hf / "model.safetensors")
    except OSError:
        shutil.copy(fp16, hf / "model.safetensors")
    return {"fp16": fp16, "fp8": fp8, "hf": hf}


def raw_read_seconds(path: Path) -> float:
    """Best of three reads of the whole file into one buffer (the file is in the page cache by then)."""
    size = path.stat().st_size
    buffer = bytearray(size)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        with open(path, "rb", buffering=0) as f:
            view, done = memoryview(buffer), 0
            while done < size:
                done += f.readinto(view[done:])
        best = min(best, time.perf_counter() - t0)
    return best


def run_child(kind: str, path: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(path), "--prompts", str(args.prompts),
           "--max-length", str(args.max_length)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="t5_v1_1_large")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=77)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.prompts, args.max_length)))
        return
    folder = Path(tempfile.mkdtemp(prefix="t5_load_bench_"))
    try:
        t0 = time.perf_counter()
        files = write_files(folder, args.preset)
        print(f"wrote {args.preset} files to {folder} in {time.perf_counter() - t0:.0f} s")
        raw = {}
        for name in ("fp16", "fp8"):
            raw_read_seconds(files[name])                           # warm the page cache for every run
            raw[name] = raw_read_seconds(files[name])
        runs = [("ours fp16 file", "ours", files["fp16"], raw["fp16"]),
                ("ours fp8 scaled", "ours", files["fp8"], raw["fp8"]),
                ("transformers fp16 (peer)", "peer", files["hf"], raw["fp16"])]
        print(f"{'loader':26} {'file GB':>7} {'weights':>14} {'compute':>14} {'RSS load':>9} {'RSS +enc':>9} "
              f"{'load s':>7} {'raw s':>6} {'load/raw':>8} {'(load+enc)/raw':>14}")
        results = []
        for label, kind, path, raw_s in runs:
            r = run_child(kind, path, args)
            r.update(label=label, raw_read_s=raw_s)
            results.append(r)
            print(f"{label:26} {r['file_bytes'] / 1e9:7.3f} {r['weights'][6:]:>14} {r['compute'][6:]:>14} "
                  f"{r['ratio_load']:9.3f} {r['ratio_load_encode']:9.3f} {r['load_s']:7.3f} {raw_s:6.3f} "
                  f"{r['load_s'] / raw_s:8.2f} {(r['load_s'] + r['encode_s']) / raw_s:14.2f}"
                  + ("" if r["finite"] else "  NON-FINITE OUTPUT"))
        ours16, ours8, peer = results
        print("targets: fp16 load+encode RSS ratio <= peer's: "
              f"{ours16['ratio_load_encode']:.3f} vs {peer['ratio_load_encode']:.3f} "
              f"(load only {ours16['ratio_load']:.3f} vs {peer['ratio_load']:.3f}); "
              f"fp8 incl. encode <= 1.1: {ours8['ratio_load_encode']:.3f}; "
              f"load <= 2x raw read: {ours16['load_s'] / ours16['raw_read_s']:.2f}x fp16, "
              f"{ours8['load_s'] / ours8['raw_read_s']:.2f}x fp8")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
