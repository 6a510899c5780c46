"""DeepFloyd IF at real size: random weights in the published shapes (T5-v1.1-XXL 4.7 B, IF-I-XL 4.3 B, IF-II-L
1.2 B), then peak memory and time per phase, ours against diffusers' ``IFPipeline`` / ``IFSuperResolutionPipeline``
with transformers' T5 on the same weights (issue #13, item 4).

    .venv/bin/python benchmarks/real_scale.py                    # write the files (once), then measure everything
    .venv/bin/python benchmarks/real_scale.py --only ours        # skip the peer's phases
    .venv/bin/python benchmarks/real_scale.py --only cli         # the headless CLI, whole cascade, one process
    .venv/bin/python benchmarks/real_scale.py --only nodes       # the DeepFloyd workflow's nodes, one process
    .venv/bin/python benchmarks/real_scale.py --clean            # remove the scratch folder

The files go to one scratch folder (default /work/scratch-realsize, ~25 GB with the peer's bf16 T5; never
committed), written tensor by tensor (this process never holds a model) and reused between runs:

    t5xxl_fp8_e4m3fn_scaled.safetensors   T5-XXL encoder, ComfyUI's legacy scaled-fp8 layout, Hugging Face key names
    t5xxl_bf16/                           the same weights dequantised, a Hugging Face folder (transformers' input:
                                          it cannot read the scaled-fp8 file)
    IF-I-XL-v1.0/, IF-II-L-v1.0/          diffusers folders: unet/config.json (IF-I-XL's published one; IF-II-L's
                                          from the issue) + diffusion_pytorch_model.fp16.safetensors, scheduler/

Each phase runs in its own process (a child's peak RSS is its own: this parent imports no torch), sampled every
20 ms for RssAnon (the process's own memory, not the file pages it maps) next to the kernel's peak RSS (VmHWM):

    T5 load + encode        prompt and the empty prompt, 77 tokens
    stage I load + 1 step   64 px, cfg 7 (IF's): two U-Net images
    stage II load + 1 step  64 -> 256 px, cfg 4, noise level 250

Ours runs in the dtype ``load_stage(..., "auto")`` picks (`comfyui_imagen.dtypes.stage_dtypes`: bf16 on a CPU with
native bf16, fp32 cast per layer elsewhere); the peer runs in bf16 (what a user on a CPU would pick; fp16 is not a
CPU dtype), loading through accelerate when ``<dir>/peer-site`` holds it (``pip install --no-deps --target
<dir>/peer-site accelerate``: diffusers without it builds IF-I-XL with random fp32 weights first, 17 GB). The
output tables give both and their ratios (ours / peer). The peer's stage I phase peaks at ~12 GB.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
SCRATCH = Path("/work/scratch-realsize")
SHARED_TOKENIZER = ROOT.parent / "shared" / "t5-v1_1-xxl"
PROMPT = "a photograph of a red fox in the snow, high detail"

# IF-I-XL-v1.0 unet/config.json, as published (issue #13)
IF_I_XL_CONFIG = {
    "_class_name": "UNet2DConditionModel", "act_fn": "gelu", "addition_embed_type": "text",
    "addition_embed_type_num_heads": 64, "attention_head_dim": 64, "block_out_channels": [704, 1408, 2112, 2816],
    "center_input_sample": False, "class_embed_type": None, "cross_attention_dim": 2816,
    "cross_attention_norm": "group_norm",
    "down_block_types": ["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": 4096,
    "encoder_hid_dim_type": "text_proj", "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 3,
    "layers_per_block": 3, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 6, "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "scale_shift", "sample_size": 64, "time_embedding_type": "positional",
    "up_block_types": ["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"], "upcast_attention": False,
    "use_linear_projection": False}
# IF-II-L: the description (block_out_channels, layers, block mix, class embedding, widths, pooling heads,
# 1/0.7071 skips, resnet_skip_time_act); the rest as IF-I-XL's
IF_II_L_CONFIG = {
    **IF_I_XL_CONFIG, "block_out_channels": [160, 320, 640, 960, 1280], "layers_per_block": [2, 2, 3, 5, 5],
    "down_block_types": ["ResnetDownsampleBlock2D"] * 3 + ["SimpleCrossAttnDownBlock2D"] * 2,
    "up_block_types": ["SimpleCrossAttnUpBlock2D"] * 2 + ["ResnetUpsampleBlock2D"] * 3,
    "class_embed_type": "timestep", "cross_attention_dim": 1280, "in_channels": 6, "sample_size": 256,
    "mid_block_scale_factor": 1 / 0.7071, "resnet_out_scale_factor": 1 / 0.7071, "resnet_skip_time_act": True,
    "time_embedding_act_fn": "gelu", "time_embedding_dim": 1280}
SCHEDULER = {"_class_name": "DDPMScheduler", "beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000,
             "prediction_type": "epsilon", "variance_type": "learned_range", "thresholding": True,
             "dynamic_thresholding_ratio": 0.95, "sample_max_value": 1.5, "clip_sample": True,
             "clip_sample_range": 1.0}
STAGES = {"IF-I-XL-v1.0": IF_I_XL_CONFIG, "IF-II-L-v1.0": IF_II_L_CONFIG}
T5_FP8 = "t5xxl_fp8_e4m3fn_scaled.safetensors"
T5_HF = "t5xxl_bf16"
UNET_FILE = "diffusion_pytorch_model.fp16.safetensors"
PEER_SITE = "peer-site"  # accelerate for the peer (pip --target), so diffusers loads as its users' installs do


# -- writing: one tensor at a time ------------------------------------------------------------------------------------

def write_safetensors(path: Path, specs: list[tuple[str, tuple, "object"]], make, metadata: dict | None = None):
    """A .safetensors file of ``specs`` (key, shape, torch dtype), each tensor ``make(key, shape)`` cast to its
    dtype and written as soon as it is made (never a whole state dict in memory). Written to a .part file, renamed
    when complete."""
    import torch

    names = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}
    header, offset = {}, 0
    for key, shape, dtype in specs:
        nbytes = math.prod(shape) * dtype.itemsize
        header[key] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    part = path.with_name(path.name + ".part")
    with open(part, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for key, shape, dtype in specs:
            tensor = make(key, shape)
            tensor = tensor.to(dtype).contiguous().reshape(shape)
            f.write(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    part.rename(path)


def _random(key: str, shape: tuple, generator):
    """Weights that keep activations in range: norm scales 1, biases 0, matrices N(0, 1/fan_in)."""
    import torch

    if len(shape) == 1 or key.endswith(".bias"):
        return torch.ones(shape) if key.endswith(".weight") and "norm" in key else torch.zeros(shape)
    fan_in = math.prod(shape[1:]) if "relative_attention_bias" not in key and "positional" not in key else 1
    return torch.randn(shape, generator=generator) * fan_in ** -0.5


def write_t5(folder: Path) -> None:
    """T5-v1.1-XXL, linear layers per-tensor scaled fp8 (``scale_weight``, the ``scaled_fp8`` marker), the
    embedding and norms fp16: ComfyUI's ``t5xxl_fp8_e4m3fn_scaled.safetensors`` layout."""
    import torch

    from comfyui_imagen.text import T5_V1_1_XXL, expected_shapes, quantize_fp8

    g = torch.Generator().manual_seed(0)
    specs, scales = [], {}
    for key, shape in expected_shapes(T5_V1_1_XXL).items():
        linear = len(shape) == 2 and (".SelfAttention." in key or ".DenseReluDense." in key) \
            and "relative_attention_bias" not in key
        specs.append((key, shape, torch.float8_e4m3fn if linear else torch.float16))
        if linear:
            specs.append((key[: -len(".weight")] + ".scale_weight", (), torch.float32))
    specs.append(("scaled_fp8", (0,), torch.float8_e4m3fn))

    def make(key, shape):
        if key == "scaled_fp8":
            return torch.empty(0)
        if key.endswith(".scale_weight"):
            return scales.pop(key)
        w = _random(key, shape, g)
        if ".SelfAttention." in key or ".DenseReluDense." in key:
            if "relative_attention_bias" not in key:
                q, scales[key[: -len(".weight")] + ".scale_weight"] = quantize_fp8(w)
                return q
        return w

    write_safetensors(folder / T5_FP8, specs, make)


def write_t5_peer(folder: Path) -> None:
    """The fp8 file's weights dequantised to bf16, as a Hugging Face folder transformers' T5EncoderModel reads."""
    import torch

    from comfyui_imagen import files
    from comfyui_imagen.text import T5_V1_1_XXL, dequantize

    weights = files.open_weights(folder / T5_FP8)
    out = folder / T5_HF
    out.mkdir(exist_ok=True)
    (out / "config.json").write_text(json.dumps({**T5_V1_1_XXL.to_hf_dict(), "architectures": ["T5EncoderModel"]}))
    keys = [k for k in weights.keys() if k != "scaled_fp8" and not k.endswith(".scale_weight")]

    def make(key, shape):
        scale_key = key[: -len(".weight")] + ".scale_weight"
        scale = weights.mapped(scale_key) if scale_key in weights.shapes else None
        return dequantize(weights.mapped(key), scale, torch.bfloat16)

    write_safetensors(out / "model.safetensors", [(k, weights.shapes[k], torch.bfloat16) for k in keys], make,
                      {"format": "pt"})


def write_stage(folder: Path, name: str, config: dict) -> None:
    """A diffusers IF folder: model_index.json, scheduler/, unet/config.json and its fp16 weights (random)."""
    import torch

    from comfyui_imagen.checkpoints.deepfloyd import unet_config_from_diffusers
    from comfyui_imagen.unet import ImagenUNet

    root = folder / name
    (root / "unet").mkdir(parents=True, exist_ok=True)
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "IFPipeline" if "-I-" in name else "IFSuperResolutionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER))
    (root / "unet" / "config.json").write_text(json.dumps(config, indent=1))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ImagenUNet(unet_config_from_diffusers(config)).state_dict().items()}
    g = torch.Generator().manual_seed(1)
    write_safetensors(root / "unet" / UNET_FILE, [(k, s, torch.float16) for k, s in shapes.items()],
                      lambda key, shape: _random(key, shape, g), {"format": "pt"})


def ensure_files(folder: Path, peer: bool) -> None:
    """Write what is missing (each file appears only when complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(folder / T5_FP8, lambda: write_t5(folder))]
    jobs += [(folder / name / "unet" / UNET_FILE, lambda n=name, c=cfg: write_stage(folder, n, c))
             for name, cfg in STAGES.items()]
    if peer:
        jobs.append((folder / T5_HF / "model.safetensors", lambda: write_t5_peer(folder)))
    for target, job in jobs:
        if not target.exists():
            t0 = time.perf_counter()
            job()
            print(f"wrote {target} ({target.stat().st_size / 1e9:.2f} GB, {time.perf_counter() - t0:.0f} s)",
                  flush=True)


# -- measuring: a child per phase, sampled from outside --------------------------------------------------------------

def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def measure(cmd: list[str], env: dict | None = None, interval: float = 0.02) -> dict:
    """Run ``cmd`` under ``/usr/bin/time -v`` (when there) and sample its process every ``interval`` s: peak RSS
    (time's maximum resident set size; the last VmHWM seen), peak RssAnon (sampled: the process's own memory, not
    the file pages it maps), wall time, and the command's last JSON line of stdout, if any."""
    from comfyui_imagen.memory import process_memory

    timed = ["/usr/bin/time", "-v", *cmd] if Path("/usr/bin/time").exists() else cmd
    proc = subprocess.Popen(timed, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"RssAnon": 0, "VmHWM": 0, "RssFile": 0}
    done = threading.Event()

    def sample():
        while not done.is_set():
            pids = _children(proc.pid) if timed is not cmd else [proc.pid]
            for pid in pids:
                for key, value in process_memory(pid).items():
                    if key in peak:
                        peak[key] = max(peak[key], value)
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    result = {"returncode": proc.returncode, "wall_s": wall, "peak_rss": peak["VmHWM"], "peak_anon": peak["RssAnon"],
              "peak_file": peak["RssFile"]}
    for line in stderr.splitlines():
        if "Maximum resident set size" in line:
            result["peak_rss"] = int(line.split(":")[1]) * 1024
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if lines:
        result.update(json.loads(lines[-1]))
    if proc.returncode != 0:
        result["error"] = stderr[-3000:]
    return result


def _embeds(seed: int = 0):
    """Random T5-XXL-shaped embeddings (prompt and empty prompt) for the stage phases: each phase stands alone."""
    import torch

    from comfyui_imagen.cascade import Conditioning
    from comfyui_imagen.text import TextEmbeds

    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(1, 77, dtype=torch.bool)
    mask[:, :12] = True
    return Conditioning(*(TextEmbeds(torch.randn(1, 77, 4096, generator=g) * 0.1, mask) for _ in range(2)))


def phase_ours(name: str, folder: Path) -> dict:
    """One of our phases, in this (fresh) process."""
    import torch

    from comfyui_imagen import cascade
    from comfyui_imagen.checkpoints import load_stage, loaded_plan
    from comfyui_imagen.dtypes import describe

    torch.set_grad_enabled(False)
    t0 = time.perf_counter()
    if name == "t5":
        from comfyui_imagen.text import load_t5

        t5 = load_t5(folder / T5_FP8, tokenizer=SHARED_TOKENIZER)
        t1 = time.perf_counter()
        out = t5.encode([PROMPT, ""])
        return {"load_s": t1 - t0, "run_s": time.perf_counter() - t1, "dtype": str(t5.compute_dtype)[6:],
                "finite": bool(torch.isfinite(out.embeds).all())}
    stage = load_stage(folder / ("IF-I-XL-v1.0" if name == "stage1" else "IF-II-L-v1.0"), "auto")
    t1 = time.perf_counter()
    settings = stage.recommended.settings.replace(steps=1, spacing="trailing", seed=0)
    with torch.inference_mode():
        if name == "stage1":
            out = cascade.generate(stage, _embeds(), settings=settings)
        else:
            low = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
            out = cascade.super_resolve(stage, _embeds(), low, settings=settings)
    return {"load_s": t1 - t0, "run_s": time.perf_counter() - t1, "dtype": describe(loaded_plan(stage)),
            "finite": bool(torch.isfinite(out).all())}


def phase_peer(name: str, folder: Path) -> dict:
    """The same phase with transformers' T5EncoderModel / diffusers' IF pipelines, in bf16."""
    import torch

    torch.set_grad_enabled(False)
    bf16 = torch.bfloat16
    t0 = time.perf_counter()
    if name == "t5":
        from transformers import T5EncoderModel, T5TokenizerFast

        tokenizer = T5TokenizerFast.from_pretrained(SHARED_TOKENIZER)
        model = T5EncoderModel.from_pretrained(folder / T5_HF, torch_dtype=bf16, local_files_only=True).eval()
        t1 = time.perf_counter()
        batch = tokenizer([PROMPT.lower(), ""], padding="max_length", max_length=77, truncation=True,
                          return_tensors="pt")
        out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
        return {"load_s": t1 - t0, "run_s": time.perf_counter() - t1, "dtype": "bf16",
                "finite": bool(torch.isfinite(out).all())}
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline, UNet2DConditionModel

    root = folder / ("IF-I-XL-v1.0" if name == "stage1" else "IF-II-L-v1.0")
    unet = UNet2DConditionModel.from_pretrained(root / "unet", variant="fp16", torch_dtype=bf16)
    none = dict(tokenizer=None, text_encoder=None, safety_checker=None, feature_extractor=None, watermarker=None,
                requires_safety_checker=False)
    embeds = _embeds()
    kw = dict(prompt_embeds=embeds.positive.embeds.to(bf16), negative_prompt_embeds=embeds.negative.embeds.to(bf16),
              num_inference_steps=1, output_type="pt", generator=torch.Generator().manual_seed(0))
    if name == "stage1":
        pipe = IFPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(root / "scheduler"), **none)
        t1 = time.perf_counter()
        out = pipe(**kw).images
    else:
        pipe = IFSuperResolutionPipeline(unet=unet, scheduler=DDPMScheduler.from_pretrained(root / "scheduler"),
                                         image_noising_scheduler=DDPMScheduler.from_pretrained(root / "scheduler"),
                                         **none)
        low = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
        t1 = time.perf_counter()
        out = pipe(image=low, noise_level=250, **kw).images
    return {"load_s": t1 - t0, "run_s": time.perf_counter() - t1, "dtype": "bf16",
            "finite": bool(torch.isfinite(out).all())}


def phase_nodes(folder: Path) -> dict:
    """The DeepFloyd workflow's nodes in ComfyUI's order (loaders first), outside ComfyUI, in this process: the
    sockets' one-model-at-a-time policy (`nodes.loaders`) on the real-size files."""
    import torch

    from nodes import comfy_compat as cc
    from nodes import loaders, sampling, text

    cc.set_fallback_folders(cc.IMAGEN_FOLDER, [folder])
    cc.set_fallback_folders(cc.TEXT_ENCODER_FOLDER, [folder])
    cc.comfy_t5_tokenizer_dir = lambda: str(SHARED_TOKENIZER)  # stands in for ComfyUI's bundled T5 tokenizer
    t0 = time.perf_counter()
    base, _, _ = loaders.ImagenModelLoader().load("IF-I-XL-v1.0")
    sr, _, _ = loaders.ImagenModelLoader().load("IF-II-L-v1.0")
    (t5,) = loaders.ImagenT5Loader().load(T5_FP8)
    (embeds,) = text.ImagenTextEncode().encode(t5, PROMPT, "", 77)
    common = dict(seed=0, steps=1, sampler="ddpm", schedule="trailing", dynamic_threshold=0.95, width=0, height=0)
    (image,) = sampling.ImagenBaseSampler().sample(base, embeds, cfg=7.0, batch_size=1, **common)
    (image,) = sampling.ImagenSuperResolution().upscale(sr, embeds, image, noise_level=250, cfg=4.0, **common)
    return {"load_s": 0.0, "run_s": time.perf_counter() - t0, "dtype": "auto",
            "finite": bool(torch.isfinite(image).all()), "shape": list(image.shape)}


def cli_command(folder: Path, with_sr: bool) -> list[str]:
    """The headless CLI on the real-size files: T5-XXL fp8 + IF-I-XL (+ IF-II-L), one step each."""
    cmd = [sys.executable, "-m", "comfyui_imagen", "generate", "a red circle", "-o", str(folder / "out.png"),
           "--t5", str(folder / T5_FP8), "--tokenizer", str(SHARED_TOKENIZER), "--base", str(folder / "IF-I-XL-v1.0"),
           "--steps", "1", "--quiet"]
    return cmd + (["--sr", str(folder / "IF-II-L-v1.0"), "--sr-steps", "1"] if with_sr else ["--no-sr"])


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f}"


def report_phases(folder: Path, impls: list[str]) -> None:
    rows = {}
    print("| phase | impl | dtype | peak RSS (GB) | peak RssAnon (GB) | load (s) | run (s) | wall (s) |")
    print("|---|---|---|---|---|---|---|---|")
    site = folder / PEER_SITE
    peer_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(site), os.environ.get("PYTHONPATH"))))}
    if "peer" in impls and not site.is_dir():
        print(f"note: no {site}: diffusers without accelerate builds IF-I-XL with random fp32 weights first (17 GB); "
              f"`pip install --no-deps --target {site} accelerate` gives the peer its users' loading path")
    for name in ("t5", "stage1", "stage2"):
        for impl in impls:
            r = measure([sys.executable, __file__, "--dir", str(folder), "--phase", name, impl],
                        env=peer_env if impl == "peer" else None)
            rows[name, impl] = r
            if r["returncode"]:
                print(f"| {name} | {impl} | failed: {r.get('error', '')[-300:]!r} |")
                continue
            print(f"| {name} | {impl} | {r['dtype']} | {_gb(r['peak_rss'])} | {_gb(r['peak_anon'])} | "
                  f"{r['load_s']:.1f} | {r['run_s']:.1f} | {r['wall_s']:.1f} |" + ("" if r["finite"] else " NaN!"),
                  flush=True)
    if "peer" in impls and "ours" in impls:
        print("\nratios ours / peer (peak RSS, load, run):")
        for name in ("t5", "stage1", "stage2"):
            a, b = rows[name, "ours"], rows[name, "peer"]
            if not (a["returncode"] or b["returncode"]):
                print(f"  {name}: {a['peak_rss'] / b['peak_rss']:.2f} {a['load_s'] / b['load_s']:.2f} "
                      f"{a['run_s'] / b['run_s']:.2f}")


def report_cli(folder: Path) -> None:
    print("| CLI run | peak RSS (GB) | peak RssAnon (GB) | wall (s) |")
    print("|---|---|---|---|")
    for with_sr in (False, True):
        r = measure(cli_command(folder, with_sr))
        label = "T5-XXL fp8 + IF-I-XL" + (" + IF-II-L" if with_sr else "") + ", 1 step each"
        if r["returncode"]:
            print(f"| {label} | failed: {r.get('error', '')[-500:]!r} |")
            continue
        print(f"| {label} | {_gb(r['peak_rss'])} | {_gb(r['peak_anon'])} | {r['wall_s']:.0f} |", flush=True)


def report_nodes(folder: Path) -> None:
    r = measure([sys.executable, __file__, "--dir", str(folder), "--phase", "nodes", "ours"])
    if r["returncode"]:
        print(f"nodes: failed: {r.get('error', '')[-1500:]}")
        return
    print(f"| the DeepFloyd workflow's nodes (outside ComfyUI), 1 step each | {_gb(r['peak_rss'])} | "
          f"{_gb(r['peak_anon'])} | {r['wall_s']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", type=Path, default=SCRATCH, help=f"scratch folder (default {SCRATCH})")
    parser.add_argument("--only", choices=("files", "ours", "peer", "cli", "nodes"), default=None)
    parser.add_argument("--clean", action="store_true", help="remove the scratch folder and exit")
    parser.add_argument("--phase", nargs=2, metavar=("PHASE", "IMPL"), help=argparse.SUPPRESS)
    parser.add_argument("--write", choices=("ours", "peer"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clean:
        shutil.rmtree(args.dir, ignore_errors=True)
        print(f"removed {args.dir}")
        return
    if args.write:
        ensure_files(args.dir, peer=args.write == "peer")
        return
    if args.phase:
        name, impl = args.phase
        if name == "nodes":
            print(json.dumps(phase_nodes(args.dir)))
        else:
            print(json.dumps((phase_ours if impl == "ours" else phase_peer)(name, args.dir)))
        return
    # this process imports no torch: the files are written by a child, so that no phase inherits its memory
    made = subprocess.run([sys.executable, __file__, "--dir", str(args.dir), "--write",
                           "peer" if args.only in (None, "peer") else "ours"], cwd=ROOT)
    if made.returncode:
        sys.exit(made.returncode)
    if args.only == "files":
        return
    if args.only in (None, "cli"):
        report_cli(args.dir)
    if args.only in (None, "nodes"):
        report_nodes(args.dir)
    if args.only in (None, "ours", "peer"):
        report_phases(args.dir, {"ours": ["ours"], "peer": ["peer"]}.get(args.only, ["ours", "peer"]))


if __name__ == "__main__":
    main()
