"""Per-layer casting and ComfyUI's partial (low-VRAM) loading of a U-Net (issue #13, item 2).

Without ComfyUI: a stand-in for ``ModelPatcher.load``'s low-VRAM rule on a fake device budget (the modules that do
not fit stay "offloaded", held in float64 here, the one other place a CPU-only test has: an offloaded layer can only
run if it is brought over for its call, as on a GPU). With ``COMFYUI_PATH`` (and ``COMFYUI_PYTHON``) naming a
ComfyUI checkout: the real ``comfy.model_patcher.ModelPatcher`` loads our U-Net partially on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from comfyui_imagen import layercast
from comfyui_imagen.unet import ImagenUNet
from comfyui_imagen.unet.config import TINY_BASE
from nodes import comfy_compat
from tests.tiny_models import TINY_IMAGEN_PYTORCH_UNET

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = os.environ.get("COMFYUI_PATH")
OFFLOADED = torch.float64  # where an offloaded weight lives in these tests


def tiny_unet() -> ImagenUNet:
    torch.manual_seed(0)
    unet = ImagenUNet(TINY_BASE).eval().requires_grad_(False)
    unet.set_winograd(False)  # the same kernels for every layer, offloaded or not: outputs comparable bit for bit
    return unet


def forward(unet):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 32, 32, generator=g)
    text = torch.randn(2, 5, TINY_BASE.text_embed_dim, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([10.0, 500.0]), text)


def module_bytes(m: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in m.state_dict().values())


class LowVramStandIn:
    """ComfyUI's ``ModelPatcher.load(device, lowvram_model_memory)`` rule (comfy/model_patcher.py): leaf modules
    that hold parameters, biggest first; one that has ``comfy_cast_weights`` and does not fit the budget stays on the
    offload device with ``comfy_cast_weights = True`` and ``weight_function = []``; the rest is loaded. Non-leaf
    modules' own parameters are not listed, and stay where they are (loaded, here)."""

    def __init__(self, model: nn.Module, budget: int):
        self.model, self.budget = model, budget
        self.loaded_bytes = 0
        self.offloaded: list[str] = []

    def load(self) -> None:
        listed = []
        first = next(self.model.parameters())  # its layer goes to the run device (`comfy_compat.place_first_layer`)
        for name, m in self.model.named_modules():
            if any(p is first for p in m._parameters.values()):
                continue
            own = {id(p) for p in m._parameters.values() if p is not None}
            leaf = all(id(p) in own for p in m.parameters())
            if own and leaf:
                listed.append((module_bytes(m), name, m))
        for size, name, m in sorted(listed, key=lambda t: t[0], reverse=True):
            if hasattr(m, "comfy_cast_weights") and self.loaded_bytes + size > self.budget:
                m.prev_comfy_cast_weights, m.comfy_cast_weights, m.weight_function = m.comfy_cast_weights, True, []
                m.to(OFFLOADED)
                self.offloaded.append(name)
            else:
                self.loaded_bytes += size


def test_cast_hooks_restore_the_stored_weights_after_each_call_even_on_errors():
    layer = layercast.enable(nn.Linear(4, 3))
    layer.to(OFFLOADED)
    stored = layer.weight
    layer.comfy_cast_weights = True
    y = layer(torch.ones(2, 4))
    assert y.dtype == torch.float32 and layer.weight is stored and layer.weight.dtype == OFFLOADED
    torch.testing.assert_close(y, (torch.ones(2, 4, dtype=OFFLOADED) @ stored.T + layer.bias).float())
    with pytest.raises(RuntimeError):
        layer(torch.ones(2, 5))  # wrong width: the forward raises inside the call
    assert layer.weight is stored and "_layercast_saved" not in layer.__dict__


def test_weight_functions_apply_to_the_cast_weight():
    layer = layercast.enable(nn.Linear(4, 3))
    plain = layer(torch.ones(1, 4))
    layer.weight_function = [lambda w: 2 * w]  # as ComfyUI's low-VRAM LoRA patches
    torch.testing.assert_close(layer(torch.ones(1, 4)), 2 * (plain - layer.bias) + layer.bias)


def test_enable_is_idempotent_and_marks_every_layer_with_parameters():
    unet = layercast.enable(layercast.enable(tiny_unet()))
    holders = [m for m in unet.modules() if layercast.holds_parameters(m)]
    assert holders and all(m.comfy_cast_weights is False and m.weight_function == [] for m in holders)
    assert all(len(m._forward_pre_hooks) == 1 for m in holders)


def test_layers_whose_parameters_are_not_weight_and_bias_get_both_as_none():
    # ComfyUI's ModelPatcher reads m.weight and m.bias of every module it may offload; imagen-pytorch's norms hold
    # only a "gamma", its time embedding "weights"
    class Norm(nn.Module):
        def __init__(self):
            super().__init__()
            self.gamma = nn.Parameter(torch.full((4,), 2.0))

        def forward(self, x):
            return x * self.gamma

    model = layercast.enable(nn.Sequential(Norm(), nn.Linear(4, 4, bias=False)))
    assert (model[0].weight, model[0].bias, model[1].bias) == (None, None, None)
    assert model[1].weight is not None and list(dict(model[0].named_parameters())) == ["gamma"]
    model[0].comfy_cast_weights = True
    x = torch.ones(1, 4, dtype=torch.float64)
    assert torch.equal(model[0](x), x * 2) and model[0].gamma.dtype == torch.float32


@pytest.mark.parametrize("share", [0.0, 0.3, 0.7])
def test_a_partially_loaded_unet_runs_its_offloaded_layers_one_call_at_a_time(share):
    unet = tiny_unet()
    reference = forward(unet)
    budget = int(share * module_bytes(unet))
    patcher = LowVramStandIn(layercast.enable(unet), budget)
    patcher.load()
    assert patcher.offloaded and patcher.loaded_bytes <= budget
    assert layercast.resident_bytes(unet, "cpu") > 0
    assert torch.equal(forward(unet), reference)
    # nothing stays converted: the offloaded weights are still where they were put
    for name in patcher.offloaded:
        assert all(p.dtype == OFFLOADED for p in unet.get_submodule(name).parameters())


def test_managed_model_lets_comfyui_load_a_unet_partially_and_a_t5_whole(monkeypatch):
    calls = []

    class FakeMM:
        budget = 0

        @staticmethod
        def get_torch_device():
            return torch.device("cpu")

        text_encoder_device = unet_offload_device = text_encoder_offload_device = get_torch_device

        @classmethod
        def load_models_gpu(cls, patchers, force_full_load=False):
            calls.append(force_full_load)
            for p in patchers:
                p.budget = 1e18 if force_full_load else cls.budget
                p.load()

    class FakePatcher(LowVramStandIn):
        def __init__(self, model, load_device, offload_device):
            super().__init__(model, 0)
            self.load_device = load_device

    modules = {"comfy.model_management": FakeMM, "comfy.model_patcher": type("MP", (), {"ModelPatcher": FakePatcher})}
    monkeypatch.setattr(comfy_compat, "_comfy", modules.get)
    unet = tiny_unet()
    reference = forward(unet)
    FakeMM.budget = module_bytes(unet) // 2
    managed = comfy_compat.ManagedModel(unet)
    assert managed.load() is unet and calls == [False]
    assert managed.patcher.offloaded and torch.equal(forward(unet), reference)
    t5ish = nn.Sequential(nn.Linear(4, 4))
    comfy_compat.ManagedModel(t5ish, text_encoder=True).load()
    assert calls == [False, True] and not layercast.is_enabled(t5ish)


def test_first_layer_is_placed_on_the_run_device():
    unet = tiny_unet().to(OFFLOADED)
    comfy_compat.place_first_layer(unet, torch.device("cpu"))  # already there: nothing moves
    assert unet.conv_in.weight.dtype == OFFLOADED
    # another device ("meta" stands in for a GPU here): the first parameter's layer moves, and only that layer
    comfy_compat.place_first_layer(unet, torch.device("meta"))
    moved = [name for name, p in unet.named_parameters() if p.device.type == "meta"]
    assert next(unet.parameters()).device.type == "meta"
    assert moved and all(name.rsplit(".", 1)[0] == moved[0].rsplit(".", 1)[0] for name in moved)
    assert sum(p.device.type == "cpu" for p in unet.parameters()) == len(list(unet.parameters())) - len(moved)


# the two U-Net families (Efficient U-Net; imagen-pytorch's, whose layers hold "gamma" / "weights" parameters)
PATCHER_UNETS = {
    "efficient": """
        from comfyui_imagen.unet import ImagenUNet
        from comfyui_imagen.unet.config import TINY_BASE
        unet = ImagenUNet(TINY_BASE).eval().requires_grad_(False)
        unet.set_winograd(False)
        width, t = TINY_BASE.text_embed_dim, torch.tensor([10.0, 500.0])""",
    "imagen-pytorch": f"""
        from comfyui_imagen.unet.imagen_pytorch import ImagenPytorchUNet, ImagenPytorchUNetConfig
        kwargs = {TINY_IMAGEN_PYTORCH_UNET!r}
        unet = ImagenPytorchUNet(ImagenPytorchUNetConfig.from_kwargs(kwargs)).eval().requires_grad_(False)
        width, t = kwargs["text_embed_dim"], torch.tensor([-3.0, 5.0])""",
}


@pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run against its ModelPatcher")
@pytest.mark.parametrize("family", list(PATCHER_UNETS))
def test_comfyui_model_patcher_loads_our_unet_partially(family):
    build = textwrap.indent(textwrap.dedent(PATCHER_UNETS[family]).strip(), " " * 8)
    script = textwrap.dedent(f"""
        import importlib.util, json, sys
        sys.path[:0] = [{str(Path(COMFYUI).expanduser())!r}, {str(ROOT)!r}]
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import comfy.model_patcher
        import torch
        from comfyui_imagen import layercast
        spec = importlib.util.spec_from_file_location("imagen_compat", {str(ROOT / "nodes" / "comfy_compat.py")!r})
        compat = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(compat)
        torch.manual_seed(0)
{build}
        g = torch.Generator().manual_seed(1)
        inputs = (torch.randn(2, 3, 32, 32, generator=g), t, torch.randn(2, 5, width, generator=g))
        forward = lambda: unet(*inputs)
        module_bytes = lambda m: sum(t.numel() * t.element_size() for t in m.state_dict().values())
        with torch.no_grad():
            reference = forward()
        cpu = torch.device("cpu")
        patcher = comfy.model_patcher.ModelPatcher(compat.ImagenWeights(layercast.enable(unet)), load_device=cpu,
                                                   offload_device=cpu)
        patcher.patch_model(device_to=cpu, lowvram_model_memory=module_bytes(unet) // 3)
        flagged = sum(1 for m in unet.modules() if getattr(m, "comfy_cast_weights", False))
        with torch.no_grad():
            same = torch.equal(forward(), reference)
        lowvram = bool(patcher.model.model_lowvram)
        patcher.unpatch_model(cpu)
        after = sum(1 for m in unet.modules() if getattr(m, "comfy_cast_weights", False))
        print(json.dumps(dict(flagged=flagged, same=same, lowvram=lowvram, after=after)))
    """)
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    proc = subprocess.run([python, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"flagged": result["flagged"], "same": True, "lowvram": True, "after": 0}
    assert result["flagged"] > 0
