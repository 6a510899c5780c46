"""Bad input, as a hostile or careless user gives it, through the library, the node classes and the command line:
every case is refused with a ValueError subclass whose message names the input and says what to do; NaN never
comes back as a (black) image; nothing runs code from a file; the CLI refuses before it loads a model."""
from __future__ import annotations

import re
import struct
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from comfyui_imagen import cascade, images, memory
from comfyui_imagen.checkpoints import CheckpointError, load_stage
from comfyui_imagen.samplers import SEED_MAX
from comfyui_imagen.text import TextEmbeds, TextEncoderError, load_t5
from tests.tiny_models import write_tiny_t5

FIXTURES = Path(__file__).parent / "fixtures"
S = cascade.SamplingSettings
NAN = float("nan")


def random_cond(width: int, seed: int = 0) -> cascade.Conditioning:
    g = torch.Generator().manual_seed(seed)
    ones = torch.ones(1, 6, dtype=torch.bool)
    return cascade.Conditioning(*(TextEmbeds(torch.randn(1, 6, width, generator=g), ones) for _ in range(2)))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """The tiny frozen stages (32-wide text), conditioning of their width and of twice it, a tiny T5."""
    root = tmp_path_factory.mktemp("bad")
    base, sr = (load_stage(FIXTURES / f"stage-v1-tiny-{role}.safetensors") for role in ("base", "sr"))
    write_tiny_t5(root / "t5.safetensors")
    return dict(root=root, base=base, sr=sr, cond=random_cond(32), wide=random_cond(64),
                img=torch.rand(1, 3, 64, 64) * 2 - 1, mask=torch.ones(1, 1, 64, 64), t5=load_t5(root / "t5.safetensors"))


def nan_at(tensor, *index, value=NAN):
    out = tensor.clone()
    out[index] = value
    return out


def small_mask():
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 28:36, 28:36] = 1
    return mask


def gen(e, **kw):
    kw.setdefault("settings", S(steps=1))
    return cascade.generate(e["base"], e["cond"], **kw)


def sr(e, image=None, **kw):
    kw.setdefault("settings", S(steps=1))
    return cascade.super_resolve(e["sr"], e["cond"], e["img"] if image is None else image, **kw)


def i2i(e, image=None, **kw):
    kw.setdefault("settings", S(steps=1))
    kw.setdefault("strength", 0.5)
    return cascade.image_to_image(e["base"], e["cond"], e["img"] if image is None else image, **kw)


def inp(e, image=None, mask=None, **kw):
    kw.setdefault("settings", S(steps=1))
    kw.setdefault("resample", 1)
    return cascade.inpaint(e["base"], e["cond"], e["img"] if image is None else image,
                           e["mask"] if mask is None else mask, **kw)


def cond_with(e, embeds):
    ones = torch.ones(1, 6, dtype=torch.bool)
    return cascade.Conditioning(TextEmbeds(embeds, ones), e["cond"].negative)


def stage_file(e, name, edit):
    """A copy of the tiny base stage file, its tensors and metadata changed by ``edit(tensors, metadata)``."""
    from safetensors import safe_open

    source = FIXTURES / "stage-v1-tiny-base.safetensors"
    with safe_open(str(source), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(source)
    metadata = edit(tensors, metadata)
    save_file(tensors, e["root"] / name, metadata=metadata)
    return e["root"] / name


def t5_file(e, name, edit):
    tensors = load_file(e["root"] / "t5.safetensors")
    edit(tensors)
    save_file(tensors, e["root"] / name)
    return e["root"] / name


def raw_file(e, name, data: bytes):
    (e["root"] / name).write_bytes(data)
    return e["root"] / name


class _Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def code_pickle(e, name):
    torch.save({"conv_in.weight": torch.zeros(1), "hook": _Payload(e["root"] / "pwned.txt")}, e["root"] / name)
    return e["root"] / name


def huge_header(e, name):
    data = struct.pack("<Q", 20_000_000) + b"{" + b" " * 20_000_010
    return raw_file(e, name, data)


def bad_tokenizer(e):
    folder = e["root"] / "tok"
    folder.mkdir(exist_ok=True)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "Unigram"')
    return folder


def node_image(*shape, scale=1.0, dtype=torch.float32):
    return (torch.rand(*shape) * scale).to(dtype)


# (id, call(env), exception type, regex the message must match: the input and the fix)
CASES = [
    # sizes, numbers and types of the run's arguments
    ("width not a multiple", lambda e: gen(e, width=60), ValueError,
     r"width 60 must be a positive multiple of 8.*e\.g\. 64"),
    ("width fraction", lambda e: gen(e, width=64.5), ValueError, r"width 64\.5 must be a positive multiple of 8"),
    ("width text", lambda e: gen(e, width="64"), ValueError, r"width '64' must be a positive multiple of 8"),
    ("width negative", lambda e: gen(e, height=-8), ValueError, r"height -8 must be a positive multiple"),
    ("width far beyond", lambda e: gen(e, width=1024), ValueError, r"far beyond.*add a super-resolution stage"),
    ("batch 0", lambda e: gen(e, batch_size=0), ValueError, r"batch_size must be an integer from 1 to 64"),
    ("batch 65", lambda e: gen(e, batch_size=65), ValueError, r"batch_size must be an integer from 1 to 64"),
    ("batch bool", lambda e: gen(e, batch_size=True), ValueError, r"batch_size must be an integer"),
    ("cfg text", lambda e: S(cfg="7"), ValueError, r"cfg must be a finite number >= 0.*pass a number, not text"),
    ("cfg nan", lambda e: S(cfg=NAN), ValueError, r"cfg must be a finite number >= 0"),
    ("cfg negative", lambda e: S(cfg=-1), ValueError, r"cfg must be a finite number >= 0 \(1 = no guidance"),
    ("steps 0", lambda e: S(steps=0), ValueError, r"steps must be an integer >= 1"),
    ("steps fraction", lambda e: S(steps=2.5), ValueError, r"steps must be an integer >= 1"),
    ("steps text", lambda e: S(steps="10"), ValueError, r"steps must be an integer.*pass a number, not text"),
    ("seed negative", lambda e: S(seed=-1), ValueError, r"seed must be an integer from 0 to 18446744073709551615"),
    ("seed 2^64", lambda e: S(seed=2**64), ValueError, r"seed must be an integer from 0 to 18446744073709551615"),
    ("sampler unknown", lambda e: S(sampler="dpm_fast"), ValueError, r"unknown sampler 'dpm_fast'; expected one of"),
    ("spacing unknown", lambda e: S(spacing="cosine"), ValueError, r"unknown schedule 'cosine'; expected one of"),
    ("threshold 1.5", lambda e: S(dynamic_threshold=1.5), ValueError, r"dynamic_threshold is a percentile in \(0, 1\]"),
    ("settings not settings", lambda e: gen(e, settings="fast"), ValueError, r"settings must be a SamplingSettings"),
    # wiring: roles, T5 widths, batches
    ("sr stage in generate", lambda e: cascade.generate(e["sr"], e["cond"], settings=S(steps=1)), ValueError,
     r"needs a base stage.*use super_resolve\(\) \(node: Imagen Super-Resolution\)"),
    ("base stage in super_resolve", lambda e: cascade.super_resolve(e["base"], e["cond"], e["img"]), ValueError,
     r"needs a super-resolution stage.*load an SR model in Imagen Model Loader"),
    ("t5 of the wrong width", lambda e: cascade.generate(e["base"], e["wide"], settings=S(steps=1)), ValueError,
     r"64 wide but this model was trained on 32-wide.*pick the T5"),
    ("not a conditioning", lambda e: cascade.generate(e["base"], "a red circle"), ValueError,
     r"expected a Conditioning.*Imagen Text Encode"),
    ("embeds batch 3 for 2", lambda e: cascade.generate(e["base"], cond_with(e, torch.zeros(3, 6, 32)), batch_size=2,
                                                        settings=S(steps=1)), ValueError,
     r"batch 3 but 2 images are sampled; encode one prompt"),
    ("lowres with a base stage", lambda e: i2i(e, lowres_image=e["img"]), ValueError,
     r"lowres_image is only used with super-resolution stages"),
    ("library image in comfy layout", lambda e: sr(e, torch.rand(1, 64, 64, 3)), ValueError,
     r"RGB images \[B, 3, H, W\].*from_comfy_image"),
    ("empty image batch", lambda e: sr(e, torch.zeros(0, 3, 64, 64)), ValueError, r"empty batch.*connect at least one"),
    ("sr output size", lambda e: sr(e, width=260, height=256), ValueError,
     r"super-resolution output: width 260 must be a positive multiple of 8.*e\.g\. 256"),
    ("noise level 1000", lambda e: sr(e, noise_level=1000), ValueError,
     r"noise_level must be an integer from 0 to 999"),
    ("strength 0", lambda e: sr(e, strength=0), ValueError, r"strength must be in \(0, 1\]"),
    ("img2img strength 1.5", lambda e: i2i(e, strength=1.5), ValueError, r"strength must be in \(0, 1\]"),
    ("resample 0", lambda e: inp(e, resample=0), ValueError, r"resample must be an integer from 1 to 20"),
    ("mask of another size", lambda e: inp(e, mask=torch.ones(1, 1, 32, 32)), ValueError, r"mask of the image's size"),
    ("mask empty", lambda e: inp(e, mask=torch.zeros(1, 1, 64, 64)), ValueError,
     r"the mask is empty.*Paint the area to change"),
    # NaN / Inf and ranges of images and masks: an error naming the input, never a NaN (black) image
    ("sr image NaN", lambda e: sr(e, nan_at(e["img"], 0, 0, 3, 3)), ValueError,
     r"the low-resolution image contains 1 NaN or Inf values.*fix or replace that input"),
    ("sr image Inf", lambda e: sr(e, nan_at(e["img"], 0, 1, 3, 3, value=float("inf"))), ValueError,
     r"the low-resolution image contains 1 NaN or Inf"),
    ("img2img image NaN", lambda e: i2i(e, nan_at(e["img"], 0, 2, 0, 0)), ValueError,
     r"the input image contains 1 NaN or Inf"),
    ("inpaint NaN outside the mask", lambda e: inp(e, nan_at(e["img"], 0, 0, 0, 0), mask=small_mask()), ValueError,
     r"the input image contains 1 NaN or Inf"),
    ("inpaint mask partly NaN", lambda e: inp(e, mask=nan_at(e["mask"], 0, 0, 5, 5)), ValueError,
     r"the mask contains 1 NaN or Inf values"),
    ("inpaint mask all NaN", lambda e: inp(e, mask=torch.full((1, 1, 64, 64), NAN)), ValueError,
     r"the mask contains 4096 NaN or Inf values"),
    ("mask 0..255", lambda e: inp(e, mask=torch.full((1, 1, 64, 64), 255.0)), ValueError,
     r"the mask has values from 255 to 255.*divide a 0\.\.255 mask by 255"),
    ("image 0..255 in the library", lambda e: i2i(e, torch.full((1, 3, 64, 64), 200.0)), ValueError,
     r"far outside -1\.\.1.*0\.\.255 ones with x / 127\.5 - 1"),
    ("image uint8 in the library", lambda e: i2i(e, torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), ValueError,
     r"is a torch\.uint8 tensor; expected float values in -1\.\.1"),
    ("prompt embeddings NaN", lambda e: cascade.generate(e["base"], cond_with(e, torch.full((1, 6, 32), NAN)),
                                                         settings=S(steps=1)), ValueError,
     r"the prompt embeddings contain NaN or Inf values: the T5.*damaged"),
    # ComfyUI IMAGE sockets
    ("IMAGE uint8", lambda e: images.from_comfy_image(node_image(1, 8, 8, 3, scale=255, dtype=torch.uint8)),
     ValueError, r"torch\.uint8 tensor, but ComfyUI images are float 0\.\.1.*/ 255"),
    ("IMAGE 0..255", lambda e: images.from_comfy_image(node_image(1, 8, 8, 3, scale=255)), ValueError,
     r"far outside 0\.\.1; ComfyUI images are 0\.\.1: divide a 0\.\.255 image by 255"),
    ("IMAGE -1..1", lambda e: images.from_comfy_image(node_image(1, 8, 8, 3) * 2 - 1), ValueError,
     r"map a -1\.\.1 image with \(x \+ 1\) / 2"),
    ("IMAGE in library layout", lambda e: images.from_comfy_image(torch.rand(1, 3, 8, 8)), ValueError,
     r"IMAGE tensor \[B, H, W, C\].*connect the IMAGE output"),
    ("MASK 4-d of 3 channels", lambda e: images.from_comfy_mask(torch.rand(1, 3, 8, 8)), ValueError,
     r"MASK tensor.*LoadImage"),
    # memory: a size where one image cannot fit
    ("one image beyond memory", lambda e: gen(e, width=256, height=256, free_memory=lambda device: 50 * 2**20),
     memory.MemoryLimitError, r"needs ~\d+\.\d+ GB free for one 256x256 image but 0\.05 GB is free.*lower width"),
    # model files
    ("stage dtype fp64", lambda e: load_stage(FIXTURES / "stage-v1-tiny-base.safetensors", dtype="fp64"),
     CheckpointError, r"dtype must be one of"),
    ("t5 dtype fp64", lambda e: load_t5(e["root"] / "t5.safetensors", dtype="fp64"), TextEncoderError,
     r"dtype must be one of"),
    ("stage file missing", lambda e: load_stage(e["root"] / "nope.safetensors"), CheckpointError,
     r"does not exist: put the stage file in ComfyUI's models/imagen"),
    ("random bytes in a .pt", lambda e: load_stage(raw_file(e, "rand.pt", b"\x80\x02" + bytes(range(7, 250)))),
     CheckpointError, r"not a PyTorch checkpoint that can be read safely.*nothing in it was run.*safetensors version"),
    ("pickle that runs code", lambda e: load_stage(code_pickle(e, "evil.pt")), CheckpointError,
     r"refers to Python code or objects.*GLOBAL .*open.*refused it unrun"),
    ("huge safetensors header", lambda e: load_stage(huge_header(e, "huge.safetensors")), CheckpointError,
     r"header claims 19\.1 MiB.*at most 8 MiB are read.*copy it again"),
    ("truncated safetensors", lambda e: load_stage(raw_file(
        e, "cut.safetensors", (FIXTURES / "stage-v1-tiny-base.safetensors").read_bytes()[:5000])), CheckpointError,
     r"truncated or corrupt: download or copy it again"),
    ("native file without its metadata", lambda e: load_stage(stage_file(e, "nometa.safetensors", lambda t, m: None)),
     CheckpointError, r"its stage config is missing from its metadata.*save_stage"),
    ("stage weights NaN", lambda e: load_stage(stage_file(
        e, "nan.safetensors", lambda t, m: t["conv_in.weight"].view(-1).__setitem__(0, NAN) or m)), CheckpointError,
     r"'conv_in\.weight' contains NaN or Inf values.*Use another copy"),
    ("t5 weights NaN", lambda e: load_t5(t5_file(
        e, "t5-nan.safetensors", lambda t: t["shared.weight"].view(-1).__setitem__(3, NAN))), TextEncoderError,
     r"'shared\.weight' contains NaN or Inf values; the T5 file is damaged.*another copy"),
    ("t5 weights Inf", lambda e: load_t5(t5_file(
        e, "t5-inf.safetensors",
        lambda t: t["encoder.block.0.layer.1.DenseReluDense.wo.weight"].view(-1).__setitem__(0, float("inf")))),
     TextEncoderError, r"contains NaN or Inf values; the T5 file is damaged"),
    ("a stage given as the T5", lambda e: load_t5(FIXTURES / "stage-v1-tiny-base.safetensors"), TextEncoderError,
     r"is not a T5 text encoder.*models/text_encoders"),
    ("broken tokenizer.json", lambda e: load_tokenizer_of(e), TextEncoderError,
     r"tok/tokenizer\.json is not a readable tokenizer\.json.*copy it again"),
    # prompts
    ("prompt with a lone surrogate", lambda e: e["t5"].encode(["a red \ud800 circle"]), TextEncoderError,
     r"prompt is not valid text: character 7 \('\\ud800'\) is a lone surrogate.*retype it"),
    ("prompt of undecodable bytes", lambda e: e["t5"].encode_for_guidance(["ok", b"a \xff circle".decode(
        "utf-8", "surrogateescape")]), TextEncoderError, r"prompt 2 is not valid text.*save the text as UTF-8"),
    ("negative prompt with a surrogate", lambda e: e["t5"].encode_for_guidance("ok", "\udcff"), TextEncoderError,
     r"negative_prompt is not valid text"),
    ("prompt not text", lambda e: e["t5"].encode([7]), TextEncoderError, r"must all be strings"),
]


def load_tokenizer_of(e):
    from comfyui_imagen.text.tokenizers import load_tokenizer

    return load_tokenizer(bad_tokenizer(e))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message_naming_the_fix(env, case):
    _, call, error, match = case
    with pytest.raises(error, match=match) as raised:
        call(env)
    assert isinstance(raised.value, ValueError)
    message = str(raised.value)
    assert "weights_only=False" not in message and "weights_only set to False" not in message
    assert "add_safe_globals" not in message
    assert not (env["root"] / "pwned.txt").exists()  # no file's payload ever ran


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40


def test_a_nan_result_is_an_error_never_a_black_image(env):
    """A network that overflows (fp16 weights, a damaged copy that slipped through) returns NaN: the run says so."""
    from tests.test_cascade import Conditioning, embeds, stage

    class Overflowing(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x, timesteps, **_):
            return x * NAN

    cond = Conditioning(embeds((0.1, 0.2, 0.3)), embeds((0, 0, 0)))
    with pytest.raises(ValueError, match="sampling produced NaN or Inf values.*load the stage in fp32 or bf16"):
        cascade.generate(stage(Overflowing()), cond, width=8, height=8, settings=S(steps=2, cfg=1.0))


def test_whole_floats_are_the_integers_they_are(env):
    out = gen(env, width=64.0, height=64.0, batch_size=2.0, settings=S(steps=1.0, seed=3.0))
    assert out.shape == (2, 3, 64, 64) and isinstance(S(steps=4.0).steps, int)


def test_every_seed_the_widget_allows_works_and_wraps_modulo_2_64(env):
    from comfyui_imagen.samplers import make_generators, randn_like_items

    top, wrapped = make_generators(SEED_MAX, 2), make_generators(0, 1)
    assert torch.equal(randn_like_items((1, 4), top[1:]), randn_like_items((1, 4), wrapped))
    settings = S(sampler="euler_ancestral", steps=2, spacing="trailing", seed=SEED_MAX)
    batch = gen(env, batch_size=2, settings=settings)
    one = gen(env, settings=settings.replace(seed=0))
    assert torch.isfinite(batch).all() and torch.allclose(batch[1], one[0], atol=1e-2)  # (a random net's rounding)


def test_slight_overshoot_is_clamped_not_refused(env):
    """Bicubic resizing overshoots 0..1 a little; within `validation.RANGE_SLACK` that is clamped silently."""
    comfy = torch.rand(1, 16, 16, 3) * 1.1 - 0.05
    lib = images.from_comfy_image(comfy)
    assert lib.min() >= -1 and lib.max() <= 1
    out = i2i(env, torch.full((1, 3, 64, 64), 1.2))
    assert torch.isfinite(out).all()


def test_nodes_report_bad_images_naming_their_input(model_folders):
    from nodes import loaders, sampling, text

    sr_model, _, _ = loaders.ImagenModelLoader().load("imagen-demo-sr256.safetensors")
    base_model, _, _ = loaders.ImagenModelLoader().load("imagen-demo-base64.safetensors")
    (t5,) = loaders.ImagenT5Loader().load("imagen-demo-t5.safetensors")
    (embeds,) = text.ImagenTextEncode().encode(t5, "a red circle", "", 77)
    nan_image = nan_at(torch.rand(1, 64, 64, 3), 0, 3, 3, 1)
    with pytest.raises(ValueError, match=r"the image input contains 1 NaN or Inf values"):
        sampling.ImagenSuperResolution().upscale(sr_model, embeds, nan_image, 100, 0, 2, 1.0, "euler", "trailing",
                                                 0.95, 0, 0)
    with pytest.raises(ValueError, match=r"the lowres_image input has values from .* divide a 0\.\.255 image"):
        sampling.ImagenImageToImage().edit(sr_model, embeds, torch.rand(1, 256, 256, 3), 0.5, 0, 2, 1.0, "euler",
                                           "trailing", 0.95, 100, lowres_image=torch.rand(1, 64, 64, 3) * 255)
    with pytest.raises(ValueError, match=r"needs a super-resolution stage.*Imagen Model Loader"):
        sampling.ImagenSuperResolution().upscale(base_model, embeds, torch.rand(1, 64, 64, 3), 100, 0, 2, 1.0,
                                                 "euler", "trailing", 0.95, 0, 0)
    with pytest.raises(ValueError, match=r"the mask contains 4096 NaN"):
        sampling.ImagenInpaint().inpaint(base_model, embeds, torch.rand(1, 64, 64, 3),
                                         torch.full((1, 64, 64), NAN), 1, 0, 2, 1.0, "trailing", 0.95, 100)
    (images_out,) = sampling.ImagenBaseSampler().sample(base_model, embeds, SEED_MAX, 1, 1.0, "euler", "trailing",
                                                        0.95, 0, 0, 2)  # the widget's top seed, batch 2
    assert images_out.shape == (2, 64, 64, 3)


CLI_CASES = [
    (["--batch-size", "0"], r"batch_size must be an integer from 1 to 64"),
    (["--device", "bogus"], r"--device 'bogus' is not a device; use cpu, cuda"),
    (["-o", "out.xyz"], r"--output 'out\.xyz': the name must end in one of \.png"),
    (["-o", "/proc/out.png"], r"--output '/proc/out\.png': cannot write to /proc"),
    (["-o", "{tmp}"], r"the name must end in one of"),
    (["-o", "{tmp}/a-file/out.png"], r"cannot write to .*a-file.*pick another place"),
    (["--sr-strength", "2"], r"strength must be in \(0, 1\]"),
    (["--sr-strength", "0"], r"strength must be in \(0, 1\]"),
    (["--steps", "0"], r"steps must be an integer >= 1"),
    (["--sr-steps", "5000"], r"--sr-steps 5000: at most 1000"),
    (["--cfg", "-2"], r"cfg must be a finite number >= 0"),
    (["--seed", "-1"], r"seed must be an integer from 0 to"),
    (["--noise-level", "1000"], r"--noise-level must be an integer from 0 to 999"),
    (["--sampler", "nope"], r"unknown sampler 'nope'; expected one of"),
    (["--spacing", "nope"], r"unknown schedule 'nope'"),
    (["--base", "{tmp}/missing.safetensors"], r"--base .*missing\.safetensors: no such file or folder"),
    (["--t5", "{tmp}/missing"], r"--t5 .*missing: no such file or folder"),
    (["--prompt-is", "a \udcff circle"], r"the prompt is not valid text: character 3"),
]


@pytest.mark.parametrize("args,match", CLI_CASES, ids=[" ".join(a) for a, _ in CLI_CASES])
def test_cli_refuses_before_loading_a_model(tmp_path, monkeypatch, capsys, args, match):
    from comfyui_imagen import cli

    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cli, "cascade_loaders", no_loading)
    (tmp_path / "a-file").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    prompt = args.pop(1) if args[0] == "--prompt-is" else "a red circle"
    args = [a for a in args if a != "--prompt-is"]
    assert cli.main(["generate", prompt, *(["-o", str(tmp_path / "o.png")] if "-o" not in args else []), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(match, err), err


def test_cli_refuses_cuda_on_a_build_without_it(monkeypatch, capsys, tmp_path):
    from comfyui_imagen import cli

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.main(["generate", "a red circle", "--device", "cuda", "-o", str(tmp_path / "o.png")]) == 2
    assert "use --device cpu" in capsys.readouterr().err


def test_embedding_cache_is_safe_under_threads():
    from comfyui_imagen.text.encoder import EmbeddingCache

    cache, errors = EmbeddingCache(max_entries=8), []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible

    def work(offset):
        try:
            for i in range(30000):  # 9 keys in 8 places: an eviction at almost every miss
                key = (offset + i) % 9
                if cache.get(key) is None:
                    cache.put(key, i)
        except Exception as e:  # a KeyError from move_to_end without the lock
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == [] and len(cache) <= 8
