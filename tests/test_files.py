"""The model-file layer: both read modes give the stored tensors (safetensors, sharded index, pickles), the mapped one
costs no anonymous memory, damaged files are refused by name, the classifier names every family, and folder
discovery lists and resolves what the loaders read."""
from __future__ import annotations

import gc
import json
import mmap
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from comfyui_imagen import files
from comfyui_imagen.checkpoints import CheckpointError, load_stage
from comfyui_imagen.files import ModelFileError, open_weights
from comfyui_imagen.text import TextEncoderError, load_t5
from tests.tiny_models import write_tiny_t5

SHARED_T5 = Path(__file__).resolve().parents[2] / "shared" / "t5-v1_1-xxl"


def tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"conv.weight": torch.randn(8, 4, 3, 3, generator=g), "half": torch.randn(5, 7, generator=g).half(),
            "bf": torch.randn(3, generator=g).bfloat16(), "f8": torch.randn(4, 4, generator=g).to(torch.float8_e4m3fn),
            "ids": torch.arange(6, dtype=torch.int64).view(2, 3), "flag": torch.tensor([True, False]),
            "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}


def both_modes(weights: files.Weights, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    out = torch.empty(weights.shapes[key], dtype=weights.dtypes[key])
    weights.read_into(key, out)
    return out, weights.mapped(key)


def check_all(weights: files.Weights, want: dict[str, torch.Tensor]) -> None:
    assert sorted(weights.keys()) == sorted(want)
    for key, ref in want.items():
        assert weights.shapes[key] == tuple(ref.shape) and weights.dtypes[key] == ref.dtype, key
        for got in both_modes(weights, key):
            assert got.dtype == ref.dtype and torch.equal(bits(got), bits(ref)), key


def bits(t: torch.Tensor) -> torch.Tensor:
    """Comparable contents (fp8 compared bit for bit)."""
    return t.view(torch.uint8) if t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else t


def test_safetensors_both_modes_and_converting_reads(tmp_path):
    want = tensors()
    save_file(want, tmp_path / "w.safetensors", metadata={"note": "x"})
    weights = open_weights(tmp_path / "w.safetensors")
    check_all(weights, want)
    assert weights.metadata == {"note": "x"} and weights.nbytes == (tmp_path / "w.safetensors").stat().st_size
    # materialised into another dtype and layout: what stage loading asks for
    out = torch.empty(8, 4, 3, 3, dtype=torch.bfloat16, memory_format=torch.channels_last)
    weights.read_into("conv.weight", out)
    assert torch.equal(out, want["conv.weight"].bfloat16()) and out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ModelFileError, match="shape"):
        weights.read_into("half", torch.empty(7, 5, dtype=torch.float16))


def test_sharded_index_with_a_variant_name(tmp_path):
    want = tensors()
    names = sorted(want)
    shards = {"m-00001-of-00002.safetensors": names[:4], "m-00002-of-00002.safetensors": names[4:]}
    for shard, keys in shards.items():
        save_file({k: want[k] for k in keys}, tmp_path / shard)
    index = tmp_path / "diffusion_pytorch_model.safetensors.index.fp16.json"  # diffusers' variant naming
    index.write_text(json.dumps({"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    weights = open_weights(index)
    check_all(weights, want)
    assert len(weights.files) == 2
    (tmp_path / "m-00002-of-00002.safetensors").unlink()
    with pytest.raises(ModelFileError, match="m-00002-of-00002.safetensors, which is missing"):
        open_weights(index)


@pytest.mark.filterwarnings("ignore:.*legacy")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_pickles_both_modes(tmp_path, legacy):
    # (torch's legacy format cannot store fp8: an old pickle never holds it)
    want = {k: v for k, v in tensors().items() if k != "empty" and not (legacy and k == "f8")}
    torch.save({"state_dict": want, "epoch": 3}, tmp_path / "w.pt", _use_new_zipfile_serialization=not legacy)
    check_all(open_weights(tmp_path / "w.pt"), want)


def test_unaligned_tensor_is_read_not_mapped(tmp_path):
    """A writer is free to place an fp32 tensor at an odd offset: the mapped mode then copies it."""
    data = torch.arange(4, dtype=torch.float32)
    header = json.dumps({"pad": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                         "x": {"dtype": "F32", "shape": [4], "data_offsets": [1, 17]}}).encode()
    header += b" " * (-len(header) % 8)
    (tmp_path / "odd.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\x07"
                                               + data.numpy().tobytes())
    weights = open_weights(tmp_path / "odd.safetensors")
    materialised, mapped = both_modes(weights, "x")
    assert torch.equal(materialised, data) and torch.equal(mapped, data)


def _map_kb(address: int) -> dict[str, int]:
    """The /proc/self/smaps fields (kB) of the mapping that holds ``address``: its own Rss and Anonymous pages, which
    no other allocation of the process (another thread, the allocator's caches) can move."""
    fields, inside = {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            lo, hi = (int(x, 16) for x in head.split("-"))
            inside = lo <= address < hi
        elif inside and line.split()[-1] == "kB":
            fields[head.rstrip(":")] = int(line.split()[1])
    return fields


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="needs Linux /proc")
def test_mapped_mode_costs_no_anonymous_memory(tmp_path):
    """64 MB of fp32, every page touched: the mapped tensor's pages are resident in the file's map and none of them
    anonymous (a copy would be); the materialised read of the same tensor into fresh anonymous pages is the control.
    The map outlives the `Weights`."""
    size = 16 << 20
    save_file({"big": torch.ones(size)}, tmp_path / "big.safetensors")
    weights = open_weights(tmp_path / "big.safetensors")
    mapped = weights.mapped("big")
    assert float(mapped.sum(dtype=torch.float64)) == size
    ranges = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in Path("/proc/self/maps").read_text()
              .splitlines() if line.endswith(str(tmp_path / "big.safetensors"))]
    assert any(lo <= mapped.data_ptr() < hi for lo, hi in ranges)
    in_map = _map_kb(mapped.data_ptr())
    assert in_map["Rss"] > 56 << 10 and in_map["Anonymous"] < 8 << 10, in_map
    # never-touched private anonymous pages (the heap may hold resident free memory; Python's default is shared)
    fresh = mmap.mmap(-1, size * 4, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    out = torch.frombuffer(fresh, dtype=torch.float32)
    weights.read_into("big", out)
    assert _map_kb(out.data_ptr())["Anonymous"] > 56 << 10
    del weights, out
    gc.collect()
    assert float(mapped[-1]) == 1.0  # still readable: the tensor keeps the map alive


@pytest.mark.parametrize("blob, match", [
    (b"12", "shorter than the 8-byte header length"), (struct.pack("<Q", 1 << 40) + b"{}", "exceeds the file size"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"), (struct.pack("<Q", 4) + b"{x:1", "not JSON"),
    (struct.pack("<Q", 64) + json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
     .encode().ljust(64), "lies outside the file"),
])
def test_damaged_safetensors_are_refused_by_name(tmp_path, blob, match):
    (tmp_path / "bad.safetensors").write_bytes(blob)
    with pytest.raises(ModelFileError, match=f"bad.safetensors is not a readable safetensors file.*{match}"):
        open_weights(tmp_path / "bad.safetensors")


def test_unknown_dtype_is_listed_but_not_read(tmp_path):
    header = json.dumps({"x": {"dtype": "F4", "shape": [2], "data_offsets": [0, 1]}}).encode().ljust(48)
    (tmp_path / "f4.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\x00")
    weights = open_weights(tmp_path / "f4.safetensors")
    assert weights.shapes == {"x": (2,)} and weights.dtypes == {"x": None}
    with pytest.raises(ModelFileError, match="'x' is stored as 'F4'"):
        weights.mapped("x")


def test_fingerprint_storage_dtype_and_errors(tmp_path):
    save_file({"a": torch.zeros(10, dtype=torch.float16), "b": torch.zeros(3), "i": torch.zeros(50, dtype=torch.int64)},
              tmp_path / "w.safetensors")
    weights = open_weights(tmp_path / "w.safetensors")
    assert weights.storage_dtype() == torch.float16 and weights.storage_dtype(["b"]) == torch.float32
    first = weights.fingerprint()
    assert str((tmp_path / "w.safetensors").resolve()) in first and first == weights.fingerprint()
    save_file({"a": torch.zeros(11, dtype=torch.float16)}, tmp_path / "w.safetensors")
    assert open_weights(tmp_path / "w.safetensors").fingerprint() != first
    for cls in (CheckpointError, TextEncoderError):
        assert issubclass(cls, ModelFileError) and issubclass(cls, ValueError)
    with pytest.raises(CheckpointError, match="unsupported file type '.onnx'") as info:   # (GGUF: test_text_gguf)
        (tmp_path / "x.onnx").write_bytes(b"ONNX")
        load_stage(tmp_path / "x.onnx")
    assert type(info.value.__cause__) is ModelFileError  # converted once, at the package boundary
    with pytest.raises(CheckpointError, match="dtype must be one of"):
        load_stage(tmp_path / "w.safetensors", dtype=torch.float8_e4m3fn)


# -- the classifier --------------------------------------------------------------------------------------------------
Z = torch.zeros(1)


@pytest.mark.parametrize("keys, metadata, family", [
    (["conv_in.weight"], {"comfyui_imagen.format": "stage-v9"}, "native"),
    (files.IF_PROBE_KEYS, None, "deepfloyd"),
    (["input_blocks.0.0.weight", "encoder_proj.weight"], None, "deepfloyd-original"),
    (["encoder_pooling.1.q_proj.weight"], None, "deepfloyd-original"),
    (["unets.0.init_conv.weight"], None, "imagen-pytorch"),
    (["init_conv.weight", "final_conv.weight"], None, "imagen-pytorch"),
    (["model.diffusion_model.input_blocks.0.0.weight"], None, "sd"),
    (["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight", "conv_in.weight"], None, "sd"),
    (["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"], None, "flux"),
    (["model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
      "text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.q.weight"], None, "sd3"),
    (["down_blocks.0.resnets.0.conv1.weight", "conv_in.weight"], None, "diffusers-unet"),
    (["encoder.block.0.layer.0.SelfAttention.q.weight", "shared.weight"], None, "t5"),
    (["text_model.encoder.layers.0.mlp.fc1.weight"], None, "clip"),
    (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"], None, "vae"),
    (["encoder.down_blocks.0.resnets.0.conv1.weight"], None, "vae"),
    (["foo.weight"], None, None),
])
def test_identify_names_each_family(keys, metadata, family):
    found = files.identify(keys, metadata)
    assert (found.name if found else None) == family
    if found:
        assert found.what and found.advice


def test_both_loaders_word_the_family(tmp_path):
    save_file({"model.diffusion_model.double_blocks.0.img_attn.qkv.weight": Z}, tmp_path / "flux.safetensors")
    for load, error in ((load_stage, CheckpointError), (lambda p: load_t5(p, tokenizer="byte"), TextEncoderError)):
        with pytest.raises(error, match="flux.safetensors.*looks like a Flux transformer.*ComfyUI's own loaders"):
            load(tmp_path / "flux.safetensors")
    t5_folder = tmp_path / "t5"
    t5_folder.mkdir()
    (t5_folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    with pytest.raises(CheckpointError, match="Hugging Face T5 folder: load it with the Imagen T5 loader"):
        load_stage(t5_folder)
    root = tmp_path / "IF-I-XL-v1.0"
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(TextEncoderError, match="DeepFloyd IF model folder.*text_encoder"):
        load_t5(root, tokenizer="byte")


def test_folder_family(tmp_path):
    def folder(name, rel=None, data=None):
        path = tmp_path / name
        path.mkdir()
        if rel:
            (path / rel).parent.mkdir(parents=True, exist_ok=True)
            (path / rel).write_text(data if isinstance(data, str) else json.dumps(data))
        return path

    unet = {"_class_name": "UNet2DConditionModel"}
    assert files.folder_family(folder("a", "model_index.json", {})) is files.IF_PIPELINE
    assert files.folder_family(folder("b", "unet/config.json", unet)) is files.IF_PIPELINE  # no model_index.json
    assert files.folder_family(folder("c", "config.json", unet)) is files.UNET_FOLDER
    assert files.folder_family(folder("d", "config.json", {"architectures": ["T5EncoderModel"]})) is files.T5_FOLDER
    assert files.folder_family(folder("e", "config.json", "{not json")) is None
    assert files.folder_family(folder("f")) is None


# -- discovery -------------------------------------------------------------------------------------------------------
def write_if_unet(unet_dir: Path) -> None:
    """A tiny IF stage I U-Net in diffusers layout: config.json and weights."""
    from comfyui_imagen.checkpoints.deepfloyd import unet_config_from_diffusers
    from comfyui_imagen.unet import ImagenUNet
    from tests.test_unet_parity import if_diffusers_kwargs

    config = {"_class_name": "UNet2DConditionModel", **if_diffusers_kwargs(1)}
    torch.manual_seed(0)
    unet = ImagenUNet(unet_config_from_diffusers(config))
    unet_dir.mkdir(parents=True)
    (unet_dir / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
              unet_dir / "diffusion_pytorch_model.safetensors")


def test_if_roots_are_listed_by_their_unet_files_and_every_spelling_loads(tmp_path):
    models = tmp_path / "imagen"
    write_if_unet(models / "IF-I-XL-v1.0" / "unet")
    write_tiny_t5(models / "IF-I-XL-v1.0" / "text_encoder.safetensors")  # a file inside a model folder: not listed
    (models / "IF-II-M-v1.0" / "text_encoder").mkdir(parents=True)
    (models / "IF-II-M-v1.0" / "model_index.json").write_text("{}")
    (models / "IF-II-M-v1.0" / "text_encoder" / "config.json").write_text(json.dumps({"model_type": "t5"}))
    (models / "sub").mkdir()
    (models / "sub" / "stage.safetensors").write_bytes(b"")
    (models / "sub" / "notes.txt").write_text("")
    found = files.scan_folder(models)
    # every entry names a weights file (ComfyUI's frontend checks a workflow's models by such names only); a root
    # whose unet/ holds no weights file is listed as itself
    assert found.stages == ("IF-I-XL-v1.0/unet/diffusion_pytorch_model.safetensors", "IF-II-M-v1.0",
                            "sub/stage.safetensors")
    assert found.t5 == ("IF-II-M-v1.0/text_encoder",)
    bundled = tmp_path / "bundled" / "stage.safetensors"
    assert files.list_stages([models], [bundled, tmp_path / "demo.safetensors"]) == [*found.stages, "stage.safetensors",
                                                                                     "demo.safetensors"]
    assert files.resolve("demo.safetensors", [models], [tmp_path / "demo.safetensors"]) == tmp_path / "demo.safetensors"
    stages = []
    # the listed file, and what the shipped workflow and earlier versions named
    for name in ("IF-I-XL-v1.0/unet/diffusion_pytorch_model.safetensors", "IF-I-XL-v1.0", "IF-I-XL-v1.0/unet"):
        path = files.resolve(name, [tmp_path / "elsewhere", models])
        assert path == models / name
        stages.append(load_stage(path).config)
    assert stages[0] == stages[1] and stages[0].name == "IF-I-XL-v1.0"
    assert stages[0].unet == stages[2].unet


def test_list_t5_files_folders_and_bundled(tmp_path):
    text, models = tmp_path / "text_encoders", tmp_path / "imagen"
    (text / "deep").mkdir(parents=True)
    for name in ("t5xxl_fp16.safetensors", "deep/t5.sft", "readme.md"):
        (text / name).write_bytes(b"")
    (models / "my_t5").mkdir(parents=True)
    (models / "my_t5" / "config.json").write_text(json.dumps({"model_type": "umt5"}))
    assert files.list_t5([text], [models], [tmp_path / "demo-t5.safetensors"]) == [
        "deep/t5.sft", "t5xxl_fp16.safetensors", "my_t5", "demo-t5.safetensors"]


@pytest.mark.parametrize("name", ["../secret.safetensors", "a/../../b.safetensors", "/etc/passwd", "", "."])
def test_resolve_refuses_names_outside_the_folders(tmp_path, name):
    (tmp_path / "models").mkdir()
    with pytest.raises(ModelFileError, match="invalid model name"):
        files.resolve(name, [tmp_path / "models"])


def test_resolve_names_the_folders_searched(tmp_path):
    with pytest.raises(ModelFileError, match=r"'x.safetensors' was not found \(searched: .*models\).*models/imagen"):
        files.resolve("x.safetensors", [tmp_path / "models"])


# -- the tokenizer, chosen once by load_t5 --------------------------------------------------------------------------
def test_fallback_tokenizer_only_for_a_sentencepiece_sized_model(tmp_path):
    from comfyui_imagen.text import ByteTokenizer

    write_tiny_t5(tmp_path / "byte_t5.safetensors")
    byte = load_t5(tmp_path / "byte_t5.safetensors", fallback_tokenizer=tmp_path / "unused")
    assert isinstance(byte.tokenizer, ByteTokenizer)
    if not (SHARED_T5 / "tokenizer.json").is_file():
        pytest.skip("needs the shared T5 tokenizer folder")
    write_tiny_t5(tmp_path / "t5xxl_tiny.safetensors", vocab_size=32128)
    t5 = load_t5(tmp_path / "t5xxl_tiny.safetensors", fallback_tokenizer=SHARED_T5)
    assert t5.tokenizer.tokenize(["a red circle"])[0] == [3, 9, 1131, 8196]


def test_a_second_name_for_a_folder_is_listed_and_a_link_cycle_is_not_followed(tmp_path):
    """Saved workflows may name a model through a link (``current -> v3``): every name is offered; a link back into
    a folder it sits in is not walked twice."""
    models = tmp_path / "imagen"
    (models / "v3").mkdir(parents=True)
    (models / "v3" / "x.safetensors").write_bytes(b"")
    (models / "current").symlink_to(models / "v3", target_is_directory=True)
    (models / "v3" / "loop").symlink_to(models, target_is_directory=True)
    assert files.scan_folder(models).stages == ("current/x.safetensors", "v3/x.safetensors")


def test_a_sharded_or_doubled_if_unet_is_listed_once_by_what_loads(tmp_path):
    models = tmp_path / "imagen"
    sharded, doubled = models / "IF-S" / "unet", models / "IF-D" / "unet"
    for unet in (sharded, doubled):
        unet.mkdir(parents=True)
        (unet / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    for name in ("diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002"
                 ".safetensors", "diffusion_pytorch_model.safetensors.index.json"):
        (sharded / name).write_bytes(b"")
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                 "diffusion_pytorch_model.fp16.bin"):
        (doubled / name).write_bytes(b"")
    assert files.scan_folder(models).stages == (
        "IF-D/unet/diffusion_pytorch_model.fp16.bin", "IF-D/unet/diffusion_pytorch_model.safetensors", "IF-S")


def test_no_pickle_is_opened_on_a_torch_whose_weights_only_loader_can_run_code(tmp_path, monkeypatch):
    from comfyui_imagen.files import reader

    path = tmp_path / "unet.pt"
    torch.save({"conv_in.weight": torch.zeros(1)}, str(path))
    assert reader._torch_version() >= reader.SAFE_UNPICKLER_TORCH  # this torch: opened
    monkeypatch.setattr(reader, "_torch_version", lambda: (2, 5))
    for load in (files.load_pickle, open_weights):
        with pytest.raises(ModelFileError, match=r"CVE-2025-32434.*update torch to 2\.6"):
            load(path)
