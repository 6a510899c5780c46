"""imagen-pytorch 2.1.0 as a test-only oracle, importable offline and without torchvision or datasets.

`imagen_pytorch()` returns the package (or skips the test when it is not installed: ``scripts/dev.sh test`` installs
it with ``--no-deps`` from requirements-oracle.txt). Three things stand in during the import only:

* its hub call at import time: default arguments call ``T5Config.from_pretrained('google/t5-v1_1-base')``; that name
  is answered with a local ``T5Config(d_model=768)`` (any other name still goes to transformers, offline);
* ``torchvision.transforms``, imported at module level for its data pipeline and PIL output, neither of which the
  tests use (PyPI's torchvision for torch 2.13.0 is a CUDA build that fails to import beside the CPU torch);
* ``datasets`` (its data module reads a user-agent string from it at import).

Nothing here is imported by the library.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types

import pytest
import torch

DEFAULT_T5 = "google/t5-v1_1-base"


def _stand_in(name: str, **attrs) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__stand_in__ = True
    return module


def _unusable(*_args, **_kwargs):
    raise RuntimeError("a test stand-in (tests/imagen_pytorch_oracle.py): imagen-pytorch's data and PIL paths are "
                       "not available in the tests")


class _Transforms(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _unusable


@contextlib.contextmanager
def _import_shims():
    import transformers

    added = {}
    for name, module in _missing_modules().items():
        if name not in sys.modules:
            sys.modules[name] = added[name] = module
    original = transformers.T5Config.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        if name == DEFAULT_T5:
            return transformers.T5Config(d_model=768)
        return original(cls, name, *args, **kwargs)

    transformers.T5Config.from_pretrained = classmethod(from_pretrained)
    try:
        yield
    finally:
        transformers.T5Config.from_pretrained = classmethod(original)
        for name in added:  # the package keeps its references; later imports see the real thing (or nothing)
            sys.modules.pop(name, None)


def _missing_modules() -> dict[str, types.ModuleType]:
    modules = {}
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:
        transforms = _Transforms("torchvision.transforms")
        modules["torchvision"] = _stand_in("torchvision", transforms=transforms)
        modules["torchvision.transforms"] = transforms
    try:
        import datasets.utils.file_utils  # noqa: F401
    except Exception:
        file_utils = _stand_in("datasets.utils.file_utils", get_datasets_user_agent=lambda: "tests")
        utils = _stand_in("datasets.utils", file_utils=file_utils)
        modules.update({"datasets": _stand_in("datasets", utils=utils), "datasets.utils": utils,
                        "datasets.utils.file_utils": file_utils})
    return modules


def imagen_pytorch():
    """The imagen_pytorch package (2.x), imported once; skips the calling test when it is not installed."""
    if "imagen_pytorch" in sys.modules:
        return sys.modules["imagen_pytorch"]
    if importlib.util.find_spec("imagen_pytorch") is None:
        pytest.skip("imagen-pytorch is not installed (scripts/dev.sh test installs it: requirements-oracle.txt)")
    with _import_shims():
        return importlib.import_module("imagen_pytorch")


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Every tensor random: gains around 1, weights ~ 1/sqrt(fan-in), biases and learned embeddings around 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("g", "gamma", "q_scale", "k_scale") or (leaf == "weight" and p.ndim == 1):
                p.copy_(1 + 0.3 * noise)
            elif p.ndim >= 2 and leaf == "weight":
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.5 * noise)
