"""GGUF T5 cost: peak memory and encode time of `load_t5` on GGUF files (Q8_0, Q4_K), next to our fp8 path (a
scaled-fp8 safetensors file of the same weights) and transformers' ``T5EncoderModel`` in bf16, plus the speed of the
dequantizers (ours in torch against the gguf package's numpy ones).

    .venv/bin/python benchmarks/t5_gguf.py                       # T5 v1.1 XXL shape: ~25 GB of scratch disk
    .venv/bin/python benchmarks/t5_gguf.py --preset t5_v1_1_large --scratch /tmp

Random weights of the chosen shape are synthesized straight into each format in a scratch folder (removed afterwards):
Q8_0 blocks (random int8, fp16 scales) and Q4_K super-blocks (random bytes, fp16 scales set for a 1/sqrt(fan_in)
spread), written with the gguf package's writer in llama.cpp's T5 layout; the Q8_0 weights, dequantized, give the
scaled-fp8 file (ComfyUI's t5xxl_fp8_e4m3fn_scaled layout) and the bf16 Hugging Face folder, so three of the four runs
hold the same weights. Each loader runs in a fresh process right after its file was read once (page cache warm):

    peak RSS / file = (peak RSS over load and two encodes - RSS before loading) / file size
    encode = the second encode of N prompts (the first also pages the weights in), also as ratios to ours-fp8 and
             to transformers-bf16

Every process runs ``--threads`` intra-op threads (default 1: on the 2 shared vCPUs this was measured on, with other
jobs running, 2-thread timings swung 10x from run to run, each parallel region waiting on a descheduled thread;
one thread per process gives per-core figures that repeat). Needs the test requirements (gguf, for the writer and
the numpy dequantizers). Peak RSS is reset through /proc/self/clear_refs (Linux).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
from benchmarks.t5_load import PROMPTS, SHARED_TOKENIZER, peak_rss, raw_read_seconds, reset_peak, rss  # noqa: E402

QTYPES = ("Q8_0", "Q4_K")


def cpu_line() -> str:
    """lscpu's model name and whether the CPU has native bf16 matmuls (avx512_bf16 / AMX)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1] for ln in info.splitlines() if ln.startswith("flags")), "").split())
    marks = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return f"{model}, {os.cpu_count()} logical CPUs, {'+'.join(marks) or 'no avx512_bf16/amx'}"


# -- synthesizing the files --------------------------------------------------------------------------------------------
# where a block's fp16 scales sit, and what their integer parts spread over (so the weights spread ~1/sqrt(fan_in)):
# Q8_0 d * q (q uniform int8: std 74); Q4_K / Q5_K d * sc * q - dmin * m (sc, m 0..63; q 0..15 / 0..31; dmin cancels
# the mean); Q6_K d * sc * (q - 32) (sc int8)
_SCALES = {"Q8_0": ((0, 74),), "Q4_K": ((0, 31.5 * 15), (2, 63)), "Q5_K": ((0, 31.5 * 31), (2, 63)),
           "Q6_K": ((208, 1300),)}


def quantized_rows(qtype: str, rows: int, cols: int, g):
    """Random rows of GGML blocks (uint8 [rows, bytes]): random bytes, fp16 scales set so the weights spread about
    1/sqrt(cols) (every other byte pattern is a valid block)."""
    import torch
    from comfyui_imagen.files import GGML_TYPE_IDS, GGML_TYPES
    kind = GGML_TYPES[GGML_TYPE_IDS[qtype]]
    n = cols // kind.block_size
    raw = torch.randint(0, 256, (rows, n, kind.type_size), dtype=torch.uint8, generator=g)
    spread = cols ** -0.5 * (0.5 + torch.rand(rows, n, 1, generator=g))
    for at, divisor in _SCALES[qtype]:
        raw[..., at:at + 2] = (spread / divisor).half().view(torch.uint8)
    return raw.reshape(rows, -1)


def gguf_name(key: str) -> str:
    from tests.test_text_gguf import gguf_name as name   # llama.cpp's T5 names, as the tests write them
    return name(key)


def write_gguf(path: Path, config, qtype: str, seed: int) -> None:
    """A GGUF T5 encoder: big weights in ``qtype``, norms and the position bias in F32; streamed tensor by tensor."""
    import gguf
    import numpy as np
    import torch
    from comfyui_imagen.text import expected_shapes
    shapes = expected_shapes(config)
    w = gguf.GGUFWriter(str(path), "t5encoder")
    for add, value in (("context_length", 512), ("embedding_length", config.d_model),
                       ("feed_forward_length", config.d_ff), ("block_count", config.num_layers),
                       ("head_count", config.num_heads), ("key_length", config.d_kv), ("value_length", config.d_kv),
                       ("layer_norm_eps", 1e-6), ("layer_norm_rms_eps", 1e-6),
                       ("relative_attn_buckets_count", config.relative_attention_num_buckets)):
        getattr(w, "add_" + add)(value)
    def kind(key: str) -> str:   # as llama.cpp's quantizer: a row that does not fit the blocks falls back to Q8_0
        if len(shapes[key]) != 2 or "relative_attention_bias" in key:
            return "F32"
        return qtype if shapes[key][1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][0] == 0 else "Q8_0"
    kinds = {k: kind(k) for k in shapes}
    for key, shape in shapes.items():
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kinds[key]]]
        stored = (*shape[:-1], shape[-1] // block * size)   # (F32: the shape in bytes)
        w.add_tensor_info(gguf_name(key), shape if block == 1 else stored, np.dtype(np.float32 if block == 1 else
                          np.uint8), math.prod(stored), raw_dtype=gguf.GGMLQuantizationType[kinds[key]])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    g = torch.Generator().manual_seed(seed)
    for key, shape in shapes.items():
        if kinds[key] != "F32":
            w.write_tensor_data(quantized_rows(kinds[key], shape[0], shape[1], g).numpy())
        else:
            w.write_tensor_data(small_tensor(key, shape, g).numpy())
    w.close()


def small_tensor(key: str, shape, g):
    import torch
    if len(shape) == 1:
        return 1 + 0.1 * torch.randn(shape, generator=g)
    return torch.randn(shape, generator=g)           # relative attention bias


def write_safetensors(path: Path, specs: list[tuple[str, str, tuple[int, ...]]], produce) -> None:
    """A safetensors file streamed tensor by tensor: ``specs`` (key, dtype name, shape) in file order, ``produce(key)``
    the tensor (each held only while it is written)."""
    import torch
    from comfyui_imagen.files import SAFETENSORS_DTYPES
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, dtype, shape in specs:
        n = math.prod(shape) * SAFETENSORS_DTYPES[dtype].itemsize
        header[key] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little") + blob)
        for key, dtype, _ in specs:
            f.write(produce(key).contiguous().view(-1).view(torch.uint8).numpy().tobytes())


def write_same_weights(q8_path: Path, config, folder: Path) -> dict[str, Path]:
    """The Q8_0 file's weights as a scaled-fp8 single file and a bf16 Hugging Face folder."""
    import torch
    from comfyui_imagen.files import open_weights
    from comfyui_imagen.text import expected_shapes
    from comfyui_imagen.text.fp8 import quantize_fp8
    from comfyui_imagen.text.quant import dequantize_blocks
    src, shapes = open_weights(q8_path), expected_shapes(config)

    def weight(key: str) -> torch.Tensor:
        name = gguf_name(key)
        if src.dtypes[name] is not None:
            return src.mapped(name).float()
        return dequantize_blocks(src.blocks(name), src.qtypes[name]).view(shapes[key])

    def linear(key: str) -> bool:
        return len(shapes[key]) == 2 and (".SelfAttention." in key or ".DenseReluDense." in key) \
            and "relative_attention_bias" not in key

    specs, scales = [], {}
    for key, shape in shapes.items():
        if linear(key):
            specs += [(key, "F8_E4M3", shape), (key[: -len(".weight")] + ".scale_weight", "F32", ())]
        else:
            specs.append((key, "F16", shape))

    def fp8_tensor(key: str) -> torch.Tensor:
        if key.endswith(".scale_weight"):
            return scales.pop(key)
        if not linear(key):
            return weight(key).half()
        q, scale = quantize_fp8(weight(key))
        scales[key[: -len(".weight")] + ".scale_weight"] = scale
        return q

    fp8 = folder / "t5_fp8_e4m3fn_scaled.safetensors"
    write_safetensors(fp8, specs + [("scaled_fp8", "F8_E4M3", (0,))],
                      lambda k: torch.empty(0, dtype=torch.float8_e4m3fn) if k == "scaled_fp8" else fp8_tensor(k))
    hf = folder / "hf_bf16"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps(config.to_hf_dict()))
    write_safetensors(hf / "model.safetensors", [(k, "BF16", s) for k, s in shapes.items()],
                      lambda k: weight(k).bfloat16())
    return {"fp8": fp8, "hf": hf}


# -- one measurement per child process ---------------------------------------------------------------------------------
def child(kind: str, path: str, n_prompts: int, max_length: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    import transformers  # noqa: F401  (imported before the baseline, for every loader)
    from comfyui_imagen.text import load_t5, load_tokenizer, pad_and_truncate
    from comfyui_imagen.text.model import CastLinear

    tokenizer = load_tokenizer(SHARED_TOKENIZER if (SHARED_TOKENIZER / "tokenizer.json").is_file() else "byte")
    prompts = (PROMPTS * (n_prompts // len(PROMPTS) + 1))[:n_prompts]
    torch.set_grad_enabled(False)
    base = rss()
    reset_peak()
    t0 = time.perf_counter()
    if kind == "peer":
        from transformers import T5EncoderModel
        model = T5EncoderModel.from_pretrained(path, dtype=torch.bfloat16, local_files_only=True).eval()
        batch = pad_and_truncate(tokenizer.tokenize([p.lower() for p in prompts]), max_length,
                                 pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
        held, compute = "bf16", "bf16"

        def encode():
            return model(input_ids=batch.ids, attention_mask=batch.mask.long()).last_hidden_state.float()
    else:
        t5 = load_t5(path, tokenizer=tokenizer)
        layer = next(m for m in t5.model.modules() if isinstance(m, CastLinear))
        held = layer.qtype or str(layer.weight.dtype).replace("torch.", "")
        compute = str(t5.compute_dtype).replace("torch.", "")

        def encode():
            t5.cache.clear()
            return t5.encode(prompts, max_length=max_length).embeds
    t_load = time.perf_counter() - t0
    times = []
    for _ in range(2):
        t1 = time.perf_counter()
        embeds = encode()
        times.append(time.perf_counter() - t1)
    size = sum(f.stat().st_size for f in Path(path).rglob("*.safetensors")) if Path(path).is_dir() \
        else Path(path).stat().st_size
    return {"kind": kind, "file_bytes": size, "held": held, "compute": compute, "load_s": t_load,
            "first_encode_s": times[0], "encode_s": times[1], "finite": bool(torch.isfinite(embeds).all()),
            "peak_bytes": peak_rss() - base, "ratio": (peak_rss() - base) / size}


def run_child(kind: str, path: Path, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, str(path), "--prompts", str(args.prompts),
           "--max-length", str(args.max_length), "--threads", str(args.threads)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- dequantizer speed -------------------------------------------------------------------------------------------------
def dequant_speed(rows: int, cols: int) -> list[dict]:
    """Mweights/s of ours (torch, this process's threads) and the gguf package's numpy dequantizer, best of 3."""
    import gguf
    import torch
    from comfyui_imagen.text.quant import TORCH_DEQUANTIZERS, dequantize_blocks
    g = torch.Generator().manual_seed(0)
    results = []
    for qtype in TORCH_DEQUANTIZERS:
        raw = quantized_rows(qtype, rows, cols, g)
        out = torch.empty(rows, cols, dtype=torch.bfloat16)
        best = {}
        for name, fn in (("torch", lambda: dequantize_blocks(raw, qtype, torch.bfloat16, out=out)),
                         ("numpy", lambda: gguf.quants.dequantize(raw.numpy(), gguf.GGMLQuantizationType[qtype]))):
            fn()
            best[name] = min(_timed(fn) for _ in range(3))
        results.append({"qtype": qtype, "torch_mw_s": rows * cols / best["torch"] / 1e6,
                        "numpy_mw_s": rows * cols / best["numpy"] / 1e6, "speedup": best["numpy"] / best["torch"]})
    return results


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- parent ------------------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="t5_v1_1_xxl")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=77)
    parser.add_argument("--scratch", default=None, help="folder for the synthesized files (default: the temp dir)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads of every process")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.prompts, args.max_length, args.threads)))
        return
    import torch
    torch.set_num_threads(args.threads)
    from comfyui_imagen.text import PRESETS
    config = PRESETS[args.preset]
    print(f"{args.preset}: {cpu_line()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    folder = Path(tempfile.mkdtemp(prefix="t5_gguf_bench_", dir=args.scratch))
    try:
        t0 = time.perf_counter()
        paths = {q: folder / f"t5-encoder-{q}.gguf" for q in QTYPES}
        for i, (qtype, path) in enumerate(paths.items()):
            write_gguf(path, config, qtype, seed=i)
        paths.update(write_same_weights(paths["Q8_0"], config, folder))
        print(f"wrote the files to {folder} in {time.perf_counter() - t0:.0f} s")
        runs = [("ours, GGUF Q8_0", "ours", paths["Q8_0"]), ("ours, GGUF Q4_K", "ours", paths["Q4_K"]),
                ("ours, fp8 scaled safetensors", "ours", paths["fp8"]),
                ("transformers bf16 (peer)", "peer", paths["hf"])]
        results = []
        for label, kind, path in runs:
            for f in ([path] if path.is_file() else sorted(path.glob("*.safetensors"))):
                raw_read_seconds(f)                                   # into the page cache, right before its run
            r = run_child(kind, path, args)
            r["label"] = label
            results.append(r)
        fp8, peer = results[2], results[3]
        print(f"{'loader':30} {'file GB':>7} {'held as':>8} {'compute':>8} {'peak GB':>7} {'RSS/file':>8} "
              f"{'load s':>6} {'1st enc s':>9} {'enc s':>6} {'enc/fp8':>7} {'enc/peer':>8}")
        for r in results:
            print(f"{r['label']:30} {r['file_bytes'] / 1e9:7.2f} {r['held']:>8} {r['compute']:>8} "
                  f"{r['peak_bytes'] / 1e9:7.2f} {r['ratio']:8.3f} {r['load_s']:6.2f} {r['first_encode_s']:9.2f} "
                  f"{r['encode_s']:6.2f} {r['encode_s'] / fp8['encode_s']:7.2f} {r['encode_s'] / peer['encode_s']:8.2f}"
                  + ("" if r["finite"] else "  NON-FINITE OUTPUT"))
        d = config.d_model
        print(f"dequantizing one FFN weight [{config.d_ff}, {d}] to bf16 (Mweights/s, best of 3):")
        for r in dequant_speed(config.d_ff, d):
            print(f"  {r['qtype']:5} torch {r['torch_mw_s']:6.0f}   gguf/numpy {r['numpy_mw_s']:6.0f}   "
                  f"torch is {r['speedup']:.1f}x faster")
        print(json.dumps({"preset": args.preset, "cpu": cpu_line(), "runs": results}))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
