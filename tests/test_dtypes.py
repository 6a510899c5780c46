"""The compute dtype fits the device (issue #13, item 3): the choice per (stored dtype, device, CPU capability), with
the capability faked; what `load_stage(..., "auto")` then holds and computes in; fp32 files unchanged."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfyui_imagen import dtypes, layercast
from comfyui_imagen.checkpoints import STAGE_DTYPES, StageConfig, load_stage, loaded_plan, save_stage, stage_plan
from comfyui_imagen.demo import demo_files
from comfyui_imagen.dtypes import DtypePlan, cpu_has_fast_bf16, stage_dtypes
from comfyui_imagen.unet import ImagenUNet
from comfyui_imagen.unet.config import TINY_BASE

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64

CHOICES = [  # stored, device, native bf16 on the CPU, bf16 on the GPU -> (storage, compute)
    (F16, "cpu", True, None, (BF16, BF16)),
    (BF16, "cpu", True, None, (BF16, BF16)),
    (F16, "cpu", False, None, (F16, F32)),      # weights stay fp16, cast per layer: not twice the memory
    (BF16, "cpu", False, None, (BF16, F32)),
    (F32, "cpu", True, None, (F32, F32)),       # fp32 files (the demo) keep fp32 whatever the CPU
    (F32, "cpu", False, None, (F32, F32)),
    (F64, "cpu", True, None, (F64, F64)),
    (F16, "cuda", None, False, (F16, F16)),
    (F16, "cuda", None, True, (F16, F16)),
    (BF16, "cuda", None, True, (BF16, BF16)),
    (BF16, "cuda", None, False, (BF16, F32)),   # a card without bf16: fp32 compute from the bf16 weights
    (F32, "cuda", None, True, (F32, F32)),
    (F16, "mps", None, None, (F16, F16)),
    (F16, "xpu", None, None, (F16, F32)),
]


@pytest.mark.parametrize("stored,device,cpu_bf16,gpu_bf16,expected", CHOICES,
                         ids=[f"{s}-{d}-cpu{c}-gpu{g}".replace("torch.", "") for s, d, c, g, _ in CHOICES])
def test_choice_per_stored_dtype_device_and_capability(stored, device, cpu_bf16, gpu_bf16, expected):
    plan = stage_dtypes(stored, device, fast_bf16=cpu_bf16, cuda_bf16=gpu_bf16)
    assert plan == DtypePlan(*expected)
    assert plan.cast_per_layer == (expected[0] != expected[1])


@pytest.mark.parametrize("features,native", [
    ({"avx512f", "avx512_bf16"}, True),           # AMD Zen 4 / Intel Cooper Lake
    ({"avx512f", "amx_tile", "amx_bf16"}, True),  # Intel Sapphire Rapids
    ({"avx512f", "avx512bw", "avx512vl"}, False),  # AVX-512 without BF16: oneDNN emulates it, slower than fp32
    ({"avx2", "fma3", "f16c"}, False),
    ({"fp", "asimd", "bf16"}, True),              # Arm with FEAT_BF16 (Graviton 3), /proc/cpuinfo's Features
    ({"fp", "asimd"}, False),
    (set(), False),
])
def test_native_bf16_from_the_cpu_flags(features, native):
    assert cpu_has_fast_bf16(features) is native


def test_the_cpu_query_answers_from_this_machine():
    flags = dtypes.cpu_features()
    assert isinstance(flags, frozenset) and all(isinstance(f, str) for f in flags)
    assert cpu_has_fast_bf16() == bool(flags & dtypes.NATIVE_BF16_FLAGS or "bf16" in flags)


@pytest.fixture(scope="module")
def fp16_stage(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = StageConfig(role="base", resolution=32, unet=TINY_BASE, name="tiny-fp16")
    path = tmp_path_factory.mktemp("fp16") / "tiny-fp16.safetensors"
    save_stage(path, ImagenUNet(TINY_BASE).half(), config)
    return path


def _forward(unet, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    text = torch.randn(2, 5, TINY_BASE.text_embed_dim, generator=g)
    with torch.no_grad():
        return unet(x.to(dtype), torch.tensor([10.0, 500.0]), text.to(dtype))


def _param_bytes(unet) -> int:
    return sum(p.numel() * p.element_size() for p in unet.parameters())


def test_auto_on_a_cpu_with_native_bf16_converts_half_files_to_bf16(fp16_stage, monkeypatch):
    monkeypatch.setattr(dtypes, "cpu_has_fast_bf16", lambda features=None: True)
    stage = load_stage(fp16_stage, "auto")
    assert {p.dtype for p in stage.unet.parameters()} == {BF16}
    assert loaded_plan(stage) == DtypePlan(BF16, BF16) and not layercast.is_enabled(stage.unet)
    assert torch.isfinite(_forward(stage.unet, BF16)).all()


def test_auto_on_other_cpus_computes_fp32_from_the_fp16_weights_layer_by_layer(fp16_stage, monkeypatch):
    monkeypatch.setattr(dtypes, "cpu_has_fast_bf16", lambda features=None: False)
    assert stage_plan(fp16_stage) == DtypePlan(F16, F32)
    stage = load_stage(fp16_stage, "auto")
    assert loaded_plan(stage) == DtypePlan(F16, F32)
    assert stage.unet.conv_in.weight.dtype == F32  # the (tiny) layer that sets the compute dtype
    assert all(p.dtype == F16 for n, p in stage.unet.named_parameters() if not n.startswith("conv_in."))
    fp16_bytes = _param_bytes(load_stage(fp16_stage).unet)
    assert _param_bytes(stage.unet) <= 1.02 * fp16_bytes  # the fp16 memory, not twice it
    # the same numbers as the fp16 weights converted to fp32 up front (same kernels: Winograd off there, as here)
    reference = load_stage(fp16_stage, torch.float32).unet
    reference.set_winograd(False)
    out = _forward(stage.unet)
    assert out.dtype == F32 and torch.equal(out, _forward(reference))
    assert all(p.dtype == F16 for n, p in stage.unet.named_parameters() if not n.startswith("conv_in."))


def test_fp32_files_stay_fp32_under_auto_whatever_the_cpu(monkeypatch):
    """The bundled demo's files are fp32: its outputs do not change with the machine (tests/test_sampling_frozen.py,
    tests/test_cli.py)."""
    for native in (True, False):
        monkeypatch.setattr(dtypes, "cpu_has_fast_bf16", lambda features=None, n=native: n)
        stage = load_stage(demo_files()["base"], "auto")
        assert {p.dtype for p in stage.unet.parameters()} == {F32} and not layercast.is_enabled(stage.unet)


def test_auto_for_a_gpu_picks_fp16_for_fp16_files(fp16_stage):
    assert stage_plan(fp16_stage, "cuda") == DtypePlan(F16, F16)


def test_explicit_dtypes_override_and_none_keeps_the_file(fp16_stage):
    assert {p.dtype for p in load_stage(fp16_stage).unet.parameters()} == {F16}
    assert {p.dtype for p in load_stage(fp16_stage, F32).unet.parameters()} == {F32}
    with pytest.raises(ValueError, match=r"or 'auto' \(the device's choice\)"):
        load_stage(fp16_stage, "fp64")


def test_the_loader_nodes_dtype_combo_keeps_its_values_and_default_is_the_devices_choice():
    assert list(STAGE_DTYPES) == ["default", "fp32", "fp16", "bf16"]  # saved workflows' values, in order
    assert STAGE_DTYPES["default"] == "auto"


def test_describe_names_the_plan():
    assert dtypes.describe(DtypePlan(BF16, BF16)) == "bf16"
    assert dtypes.describe(DtypePlan(F16, F32)) == "fp32 compute, fp16 weights cast per layer"
