"""T5 fp8 encode speed: `load_t5` on a scaled-fp8 T5 file and ``encode_for_guidance(prompt, "")`` (prompt and negative
prompt in one batch), next to transformers' ``T5EncoderModel`` in bf16 built from the same weights, each in a fresh
process; and the fp8 -> bf16 / fp32 weight upcast on its own (``--micro``).

    .venv/bin/python benchmarks/t5_speed.py --t5 t5xxl_fp8_e4m3fn_scaled.safetensors    # a real file: ~10 GB of RAM
    .venv/bin/python benchmarks/t5_speed.py --synthetic-layers 2                          # 2 random T5-XXL layers
    .venv/bin/python benchmarks/t5_speed.py --synthetic-layers 1 --preset t5_v1_1_small   # seconds (the test's run)
    .venv/bin/python benchmarks/t5_speed.py --micro                                      # upcast candidates, matmuls
    python benchmarks/t5_speed.py --synthetic-layers 24 --device cuda                     # a whole XXL, on a GPU

The transformers process reads the file with this package's reader (`read_encoder`: its keys, its scales) and
dequantizes every tensor to bf16 (scaled fp8: W = W_fp8 * scale in fp32, then bf16), dropping the file's mapped pages
as it goes; its peak is then reset, so its figure is the bf16 model resident plus the encode. Ours is measured over
load and encodes (the fp8 file's mapped pages included), as ComfyUI would hold it:

    encode     best of ``--repeats`` encodes after the first (which also pages the weights in), embedding cache
               cleared; wall seconds, and the CPU seconds of that run (all threads; steadier on a shared machine)
    peak RSS   VmHWM - RSS before loading (Linux; reset through /proc/self/clear_refs)
    ratios     ours / transformers, time and peak RSS; |diff| = max |ours - transformers| over all 2 x L x D values
               (both compute in bf16: on random synthetic weights it grows with depth, 0.2 after 2 XXL layers and 0.6
               after 4, each as far from an fp32 run as the other; in fp32 the two agree to 1e-4)

``--device cuda`` runs both encoders there (ours: `load_t5(..., device="cuda")`, fp8 weights upcast per layer, bf16
activations; transformers: the bf16 model moved there), the device synchronized around every timed encode, and adds
each one's peak CUDA memory (torch.cuda.max_memory_allocated after the load: weights resident plus the encode).
``--no-peer`` runs ours alone; ``--json FILE`` writes the report.

Targets (issue #14): encode time <= 1.0x transformers' bf16, peak RSS <= 0.55x. Every process runs ``--threads``
intra-op threads (default 2; ``--threads 1`` repeats better where other jobs share the CPUs). ``--micro`` times each
upcast candidate on the preset's FFN and attention weights (checked bit for bit against ``Tensor.to``), the matmuls,
and one layer forward four ways (before, the fast upcast of whole weights, now, and weights held in the compute dtype
as transformers holds them: the floor).
"""
from __future__ import annotations

import argparse
import gc
import json
import mmap
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from benchmarks.t5_gguf import cpu_line  # noqa: E402
from benchmarks.t5_load import SHARED_TOKENIZER, peak_rss, reset_peak, rss  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse on the moon, high detail"


def _tokenizer():
    from comfyui_imagen.text import load_tokenizer
    return load_tokenizer(SHARED_TOKENIZER if (SHARED_TOKENIZER / "tokenizer.json").is_file() else "byte")


def _name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.synchronize()


def _encodes(encode, repeats: int, device: str = "cpu") -> dict:
    """Wall seconds of the first call and the best of ``repeats`` more, and the CPU seconds of that best (all threads
    of this process: steadier than wall time on a shared machine); on CUDA the device is synchronized around each."""
    runs = []
    for _ in range(1 + repeats):
        _sync(device)
        cpu, wall = time.process_time(), time.perf_counter()
        encode()
        _sync(device)
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    best = min(runs[1:])
    return {"first_encode_s": runs[0][0], "encode_s": best[0], "encode_cpu_s": best[1]}


# -- one measurement per child process ---------------------------------------------------------------------------------
def child_ours(path: str, args) -> dict:
    import torch
    from comfyui_imagen.text import load_t5
    torch.set_grad_enabled(False)
    tokenizer = _tokenizer()
    base = rss()
    reset_peak()
    t0 = time.perf_counter()
    t5 = load_t5(path, tokenizer=tokenizer, device=args.device)
    _sync(args.device)
    load_s = time.perf_counter() - t0
    _reset_device_peak(args.device)
    passes = []
    t5.model.register_forward_hook(lambda module, inputs, output: passes.append(inputs[0].shape[0]))
    result = {}

    def encode():
        t5.cache.clear()
        result["pair"] = t5.encode_for_guidance(args.prompt, args.negative)
    timing = _encodes(encode, args.repeats, args.device)
    cond, uncond = result["pair"]
    torch.save(torch.cat([cond.embeds, uncond.embeds]).cpu(), args.out)
    per_encode = len(passes) // (1 + args.repeats)
    return {"kind": "ours", "load_s": load_s, **timing, "peak_bytes": peak_rss() - base,
            "device_peak_bytes": _device_peak(args.device), "compute": _name(t5.compute_dtype),
            "passes_per_encode": per_encode, "rows_per_pass": passes[:per_encode]}


def _reset_device_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        torch.cuda.reset_peak_memory_stats(device)


def _device_peak(device: str) -> int | None:
    """Peak bytes allocated on a CUDA device since the last `_reset_device_peak` (weights resident plus the encode)."""
    if not device.startswith("cuda"):
        return None
    import torch
    return int(torch.cuda.max_memory_allocated(device))


def _drop_mapped_pages(weights) -> None:
    """Release the pages of the file's private maps read so far (they are read again if touched)."""
    for mapped in getattr(weights, "_maps", {}).values():
        mapped.madvise(mmap.MADV_DONTNEED)


def bf16_state(weights) -> tuple:
    """(config, HF-keyed bf16 state dict) from a file as `load_t5` reads it: scales applied, GGML blocks
    dequantized."""
    import torch
    from comfyui_imagen.text import fp8, quant
    from comfyui_imagen.text.weights import read_encoder
    config, state, _ = read_encoder(weights)
    out = {}
    for key, value in state.items():
        if key.endswith((".weight_scale", ".weight_qtype")):
            continue
        layer = key[: -len(".weight")]
        qtype = state.get(layer + ".weight_qtype")
        if qtype is not None:
            out[key] = quant.dequantize_blocks(value, quant.type_name(int(qtype)), torch.bfloat16)
        else:
            out[key] = fp8.dequantize(value, state.get(layer + ".weight_scale"), torch.bfloat16)
        _drop_mapped_pages(weights)
    out["encoder.embed_tokens.weight"] = out["shared.weight"]   # tied in T5EncoderModel
    return config, out


def child_peer(path: str, args) -> dict:
    import torch
    from transformers import T5Config, T5EncoderModel
    from comfyui_imagen.files import open_weights
    from comfyui_imagen.text import pad_and_truncate, preprocess
    torch.set_grad_enabled(False)
    tokenizer = _tokenizer()
    base = rss()
    reset_peak()
    t0 = time.perf_counter()
    weights = open_weights(path)
    config, state = bf16_state(weights)
    with torch.device("meta"):
        model = T5EncoderModel(T5Config(**config.to_hf_dict()))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise RuntimeError(f"state dict does not fit T5EncoderModel: missing {missing}, unexpected {unexpected}")
    model.eval().to(args.device)
    del state, weights
    gc.collect()
    _sync(args.device)
    load_s = time.perf_counter() - t0
    load_peak = peak_rss() - base
    reset_peak()
    _reset_device_peak(args.device)
    batch = pad_and_truncate(tokenizer.tokenize([preprocess(p, "lower") for p in (args.prompt, args.negative)]),
                             args.max_length, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
    ids, mask = batch.ids.to(args.device), batch.mask.long().to(args.device)
    result = {}

    def encode():
        result["embeds"] = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    timing = _encodes(encode, args.repeats, args.device)
    torch.save(result["embeds"].cpu(), args.out)
    return {"kind": "transformers", "load_s": load_s, **timing, "peak_bytes": peak_rss() - base,
            "device_peak_bytes": _device_peak(args.device), "load_peak_bytes": load_peak, "compute": "bfloat16",
            "passes_per_encode": 1, "rows_per_pass": [len(batch.ids)]}


def run_child(kind: str, path: Path, out: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(path), "--out", str(out), "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--prompt", args.prompt, "--negative", args.negative,
           "--max-length", str(args.max_length), "--device", args.device]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(path: Path, args) -> dict:
    """Ours and transformers (unless ``--no-peer``) on the file at ``path``, printed as a table with the ratios."""
    import torch
    kinds = ("ours",) if args.no_peer else ("ours", "transformers")
    folder = Path(tempfile.mkdtemp(prefix="t5_speed_"))
    try:
        runs = {kind: run_child(kind, path, folder / f"{kind}.pt", args) for kind in kinds}
        outputs = {kind: torch.load(folder / f"{kind}.pt", weights_only=True) for kind in kinds}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    gpu = args.device.startswith("cuda")
    print(f"{'':14} {'compute':>9} {'load s':>7} {'1st enc s':>9} {'enc s':>7} {'enc CPU s':>9} {'peak GB':>8} "
          f"{'passes':>6}" + (f" {args.device + ' GB':>9}" if gpu else ""))
    for kind, r in runs.items():
        print(f"{kind:14} {r['compute']:>9} {r['load_s']:7.2f} {r['first_encode_s']:9.3f} {r['encode_s']:7.3f} "
              f"{r['encode_cpu_s']:9.3f} {r['peak_bytes'] / 1e9:8.3f} {r['passes_per_encode']:>6}"
              + (f" {r['device_peak_bytes'] / 1e9:9.3f}" if gpu else ""))
    summary = {"file": str(path), "file_bytes": path.stat().st_size, "device": args.device, "runs": runs}
    if args.no_peer:
        print("(transformers not run: --no-peer)")
        return summary
    o, p = runs["ours"], runs["transformers"]
    ours, peer = outputs["ours"], outputs["transformers"]
    diff = float((ours - peer).abs().max())
    summary.update({"time_ratio": o["encode_s"] / p["encode_s"],
                    "cpu_time_ratio": o["encode_cpu_s"] / p["encode_cpu_s"],
                    "rss_ratio": o["peak_bytes"] / p["peak_bytes"], "max_abs_diff": diff,
                    "peer_abs_max": float(peer.abs().max())})
    if gpu:
        summary["device_peak_ratio"] = o["device_peak_bytes"] / p["device_peak_bytes"]
    peak = summary["device_peak_ratio" if gpu else "rss_ratio"]
    print(f"ours / transformers: encode time {summary['time_ratio']:.2f}x (CPU time {summary['cpu_time_ratio']:.2f}x; "
          f"target <= 1.0), peak {'memory on ' + args.device if gpu else 'RSS'} {peak:.2f}x "
          f"(target <= 0.55{' for RSS on the CPU' if gpu else ''}); "
          f"max |ours - transformers| = {diff:.3g} (|transformers| <= {summary['peer_abs_max']:.3g}); "
          f"transformers' load peaked at {p['load_peak_bytes'] / 1e9:.2f} GB of RSS")
    return summary


def write_synthetic(path: Path, preset: str, layers: int) -> None:
    """A scaled-fp8 T5 file (ComfyUI's t5xxl_fp8_e4m3fn_scaled layout) of ``preset``'s shapes with ``layers``
    layers of random weights (spread 1/sqrt(fan_in), norms about 1)."""
    from safetensors.torch import save_file
    from benchmarks.t5_load import random_state

    from comfyui_imagen.text import PRESETS, to_fp8_state_dict
    state = random_state(replace(PRESETS[preset], num_layers=layers))
    save_file(to_fp8_state_dict(state, style="scaled_fp8"), path)


# -- the upcast on its own ---------------------------------------------------------------------------------------------
def _best_ms(fn, repeats: int) -> float:
    fn()
    return min(_timed(fn) for _ in range(repeats)) * 1e3


BEFORE, NOW = "torch .to(dtype)  [before]", "fp8.upcast per row block  [now]"


def upcast_candidates(weight, dtype) -> dict:
    """name -> function(keep) casting ``weight`` to ``dtype`` some way, returning [(rows, values)] (``keep``: values
    that outlive the next call, for the check)."""
    import torch
    from comfyui_imagen.text import fp8
    from comfyui_imagen.text.model import BLOCK_VALUES
    codes = weight.view(torch.uint8)
    table = torch.arange(256, dtype=torch.uint8).view(weight.dtype).to(dtype)
    int_table = table.view(torch.int16 if dtype.itemsize == 2 else torch.int32)
    held = torch.empty(weight.shape, dtype=dtype)
    rows = max(1, BLOCK_VALUES // weight.shape[1])
    block = torch.empty(rows * weight.shape[1], dtype=dtype)

    def whole(fn):
        return lambda keep=False: [(slice(None), fn())]

    def per_block(keep=False):   # as CastLinear runs it: each block into one small buffer, read by its matmul next
        done = []
        for start, rows_block in zip(range(0, len(weight), rows), weight.split(rows)):
            values = fp8.upcast(rows_block, dtype, out=block[:rows_block.numel()])
            done.append((slice(start, start + len(rows_block)), values.clone() if keep else values))
        return done
    return {BEFORE: whole(lambda: weight.to(dtype)),
            "torch copy_ into a held buffer": whole(lambda: held.copy_(weight)),
            "table[u8.long()]": whole(lambda: table[codes.long()]),
            "torch.take(table, u8.long())": whole(lambda: torch.take(table, codes.long())),
            "index_select(table, u8.int())": whole(
                lambda: torch.index_select(table, 0, codes.reshape(-1).int()).view(weight.shape)),
            "int table[u8.int()].view(dtype)": whole(lambda: int_table[codes.int()].view(dtype)),
            "fp8.upcast, fresh output": whole(lambda: fp8.upcast(weight, dtype)),
            "fp8.upcast into a held buffer": whole(lambda: fp8.upcast(weight, dtype, out=held)),
            NOW: per_block}


def micro(args) -> dict:
    import torch
    import torch.nn.functional as F
    from comfyui_imagen.text import PRESETS, pick_compute_dtype
    config = PRESETS[args.preset]
    d, ff = config.d_model, config.d_ff
    shapes = {"ffn": (ff, d), "attn": (d, d)}
    counts = {"ffn": 3 if config.gated else 2, "attn": 4}       # per layer: wi_0, wi_1, wo; q, k, v, o
    g = torch.Generator().manual_seed(0)
    out = {"upcast_ms": {}, "upcast_exact": {}, "matmul_ms": {}}
    print(f"fp8 e4m3fn weight upcast, best of {args.repeats} (ms; 'exact' = bit for bit equal to .to(dtype)):")
    for dtype in (torch.bfloat16, torch.float32):
        for name, shape in shapes.items():
            weight = (torch.randn(shape, generator=g) * (448 / 30)).to(torch.float8_e4m3fn)  # amax ~ 30 std
            int_dtype = torch.int16 if dtype.itemsize == 2 else torch.int32
            want = weight.to(dtype).view(int_dtype)
            for label, fn in upcast_candidates(weight, dtype).items():
                ms = _best_ms(fn, args.repeats)
                exact = all(torch.equal(got.view(int_dtype), want[rows]) for rows, got in fn(keep=True))
                out["upcast_ms"][f"{label}|{name}|{dtype}"] = ms
                out["upcast_exact"][f"{label}|{name}|{dtype}"] = exact
                print(f"  {_name(dtype):9} {list(shape)!s:13} {label:38} {ms:8.2f}  "
                      f"{'exact' if exact else 'DIFFERS'}")
    print(f"F.linear, x [{args.rows}, {args.max_length}, in], best of {args.repeats} (ms):")
    for dtype in (torch.bfloat16, torch.float32):
        for name, (o, i) in {**shapes, "ffn wo": (d, ff)}.items():
            x = torch.randn(args.rows, args.max_length, i, generator=g).to(dtype)
            w = (torch.randn(o, i, generator=g) * i ** -0.5).to(dtype)
            ms = _best_ms(lambda x=x, w=w: F.linear(x, w), args.repeats)
            out["matmul_ms"][f"{name}|{dtype}"] = ms
            print(f"  {_name(dtype):9} W {[o, i]!s:13} {ms:8.2f}  "
                  f"({2 * args.rows * args.max_length * o * i / ms / 1e6:.0f} GFLOP/s)")
    print(f"pick_compute_dtype(float8_e4m3fn, cpu) = {pick_compute_dtype(torch.float8_e4m3fn)}")
    print("per layer (gated FFN: 3 FFN-sized + 4 attention-sized weights), ms:")
    for dtype in (torch.bfloat16, torch.float32):
        mm = sum(counts[n] * out["matmul_ms"][f"{n if n == 'attn' else 'ffn'}|{dtype}"] for n in counts)
        for label in (BEFORE, NOW):
            up = sum(counts[n] * out["upcast_ms"][f"{label}|{n}|{dtype}"] for n in counts)
            print(f"  {_name(dtype):9} {label:38} upcast {up:7.1f} + matmul {mm:7.1f}: upcast is "
                  f"{100 * up / (up + mm):4.1f}% of the two")
    out["layer_ms"] = layer_forward(config, g, args)
    return out


def layer_forward(config, g, args) -> dict:
    """One layer of ``config`` as `T5Encoder` runs it, ms (best of interleaved runs): before (torch's cast of the whole
    weight), the fast upcast of the whole weight, now (the fast upcast per row block), and bf16 weights held as
    transformers holds them (no upcast: the floor)."""
    import torch
    from comfyui_imagen.text import model as t5_model
    from comfyui_imagen.text import quant
    from comfyui_imagen.text.model import CastLinear
    layer_config = replace(config, num_layers=1, vocab_size=min(config.vocab_size, 1000))
    fp8_model, held = (one_layer_model(layer_config, torch.Generator().manual_seed(0)) for _ in range(2))
    ids = torch.randint(0, layer_config.vocab_size, (args.rows, args.max_length), generator=g)
    variants = {"before: torch .to(dtype), whole weight": (fp8_model, lambda w, dt, out=None: w.to(dt), 1 << 62),
                "fp8.upcast, whole weight": (fp8_model, None, 1 << 62),
                "now: fp8.upcast per row block": (fp8_model, None, t5_model.BLOCK_VALUES),
                "weights held in that dtype (transformers)": (held, None, t5_model.BLOCK_VALUES)}
    saved = quant.upcast, t5_model.BLOCK_VALUES
    print(f"one {args.preset} layer forward, batch {args.rows} x {args.max_length}, best of {args.repeats} "
          "interleaved runs (ms):")
    result = {}
    with torch.no_grad():
        for dtype in (torch.bfloat16, torch.float32):
            for model in (fp8_model, held):
                model.set_compute_dtype(dtype)
            for module in held.modules():
                if isinstance(module, CastLinear) and module.weight.dtype != dtype:
                    module.weight = torch.nn.Parameter(quant.dequantize_weight(module.weight, None, dtype),
                                                       requires_grad=False)
            times, outputs = {k: [] for k in variants}, {}
            try:
                for _ in range(args.repeats + 1):
                    for label, (model, cast, block) in variants.items():
                        quant.upcast, t5_model.BLOCK_VALUES = cast or saved[0], block
                        t0 = time.perf_counter()
                        outputs[label] = model(ids)
                        times[label].append(time.perf_counter() - t0)
            finally:
                quant.upcast, t5_model.BLOCK_VALUES = saved
            reference = outputs["before: torch .to(dtype), whole weight"]
            for label, ts in times.items():
                ms, same = min(ts[1:]) * 1e3, torch.equal(outputs[label], reference)
                diff = float((outputs[label].float() - reference.float()).abs().max())
                result[f"{label}|{dtype}"] = {"ms": ms, "equal_to_before": same, "max_diff_to_before": diff}
                print(f"  {_name(dtype):9} {label:42} {ms:8.1f}  "
                      f"{'= before, bit for bit' if same else 'differs from before'}")
    return result


def one_layer_model(config, g):
    """A `T5Encoder` holding random scaled-fp8 weights in memory, as `load_t5` would hold a file's."""
    import torch
    from comfyui_imagen.text import T5Encoder, expected_shapes, to_fp8_state_dict
    state = {}
    for key, shape in expected_shapes(config).items():
        fan_in = shape[1] if len(shape) == 2 and "relative_attention_bias" not in key else 1
        state[key] = 1 + 0.1 * torch.randn(shape, generator=g) if len(shape) == 1 else \
            torch.randn(shape, generator=g) * fan_in ** -0.5
    state = {k.replace(".scale_weight", ".weight_scale"): v for k, v in to_fp8_state_dict(state).items()
             if k != "scaled_fp8"}                              # the file's names -> T5Encoder's
    model = T5Encoder(config, device="meta")
    for key in state:
        if key.endswith(".weight_scale"):
            model.get_submodule(key[: -len(".weight_scale")]).weight_scale = torch.empty((), device="meta")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


# -- parent ------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--t5", type=Path, help="a T5 file load_t5 reads (t5xxl_fp8_e4m3fn_scaled.safetensors)")
    parser.add_argument("--synthetic-layers", type=int, help="write a random scaled-fp8 file of --preset's shapes "
                        "with this many layers and compare on it")
    parser.add_argument("--micro", action="store_true", help="time the upcast candidates and the matmuls")
    parser.add_argument("--preset", default="t5_v1_1_xxl", help="shapes for --synthetic-layers and --micro")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads of every process")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first")
    parser.add_argument("--prompt", default=PROMPT)
    parser.add_argument("--negative", default="")
    parser.add_argument("--max-length", type=int, default=77)
    parser.add_argument("--rows", type=int, default=2, help="--micro: batch rows of the matmuls")
    parser.add_argument("--scratch", default=None, help="folder for the synthetic file (default: the temp dir)")
    parser.add_argument("--device", default="cpu", help="where both encoders run (cuda: peak device memory too)")
    parser.add_argument("--no-peer", action="store_true", help="time ours alone (no transformers run)")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    if args.child:
        kind, path = args.child
        result = (child_ours if kind == "ours" else child_peer)(path, args)
        print(json.dumps(result))
        return result
    if not (args.t5 or args.synthetic_layers or args.micro):
        parser.error("give --t5 FILE, --synthetic-layers N or --micro")
    print(f"{cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    report: dict = {}
    if args.micro:
        report["micro"] = micro(args)
    if args.t5:
        report["file"] = compare(args.t5, args)
    if args.synthetic_layers:
        folder = Path(tempfile.mkdtemp(prefix="t5_speed_file_", dir=args.scratch))
        try:
            path = folder / "t5_fp8_e4m3fn_scaled.safetensors"
            write_synthetic(path, args.preset, args.synthetic_layers)
            print(f"{args.preset} with {args.synthetic_layers} layer(s) of random weights, scaled fp8: "
                  f"{path.stat().st_size / 1e9:.3f} GB")
            report["synthetic"] = compare(path, args)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(report, default=str))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, default=str, indent=1))
    return report


if __name__ == "__main__":
    main()
