"""nodes.interop without ComfyUI: Imagen Sigmas and Imagen Custom Sampler on the tiny models, with a stand-in for
ComfyUI's ``KSAMPLER`` (``sampler_function`` + ``extra_options``) wrapping k-diffusion's dpmpp_2m."""
from __future__ import annotations

import inspect

import pytest
import torch

from nodes import interop, sampling
from tests.test_external import kd_sample_dpmpp_2m
from tests.test_nodes import chain  # noqa: F401  (the fixture: tiny base, SR and embeds)

SETTINGS = {"seed": 3, "cfg": 3.0, "dynamic_threshold": 0.95}


class KSampler:
    """Stands in for comfy.samplers.KSAMPLER."""

    def __init__(self, sampler_function, extra_options=None):
        self.sampler_function, self.extra_options = sampler_function, extra_options or {}


@pytest.mark.parametrize("cls", [interop.ImagenSamplerCustom, interop.ImagenSigmas])
def test_declarations(cls):
    spec = cls.INPUT_TYPES()
    names = [name for section in spec.values() for name in section]
    assert all(entry[1].get("tooltip") for section in spec.values() for entry in section.values())
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    assert [p for p in params if p != "self"] == names
    assert cls.CATEGORY == "imagen/sampling" and "Imagen" in cls.DISPLAY_NAME


def test_sigmas_are_the_stages_grid_as_core_sigmas(chain):
    base, _, _ = chain
    (sigmas,) = interop.ImagenSigmas().sigmas(base, "karras", 5)
    assert sigmas.dtype == torch.float32 and sigmas.shape == (6,) and sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    (preset,) = interop.ImagenSigmas().sigmas(base, "smart27", 0)
    assert preset.shape == (28,)
    (auto,) = interop.ImagenSigmas().sigmas(base, "auto", 0)  # the stage's recommended spacing and steps
    stage = base.config_stage
    assert torch.equal(auto, stage.sigmas(stage.recommended.settings).float())


def test_custom_sampler_equals_the_base_sampler_with_dpmpp_2m_on_the_same_sigmas(chain):
    base, _, embeds = chain
    (sigmas,) = interop.ImagenSigmas().sigmas(base, "karras", 4)
    (theirs,) = interop.ImagenSamplerCustom().sample(base, embeds, KSampler(kd_sample_dpmpp_2m), sigmas, width=0,
                                                     height=0, batch_size=2, **SETTINGS)
    (ours,) = sampling.ImagenBaseSampler().sample(base, embeds, steps=4, sampler="dpmpp_2m", schedule="karras",
                                                  width=0, height=0, batch_size=2, **SETTINGS)
    assert theirs.shape == ours.shape == (2, 64, 64, 3)
    assert (theirs - ours).abs().max() <= 1e-3  # IMAGE is 0..1: half the library's -1..1 tolerance


def test_custom_sampler_upscales_with_an_sr_stage_as_the_sr_node(chain):
    _, sr, embeds = chain
    image = torch.rand(1, 64, 64, 3)
    (sigmas,) = interop.ImagenSigmas().sigmas(sr, "karras", 3)
    (theirs,) = interop.ImagenSamplerCustom().sample(sr, embeds, KSampler(kd_sample_dpmpp_2m), sigmas, width=0,
                                                     height=0, batch_size=1, image=image, noise_level=100,
                                                     **SETTINGS)
    (ours,) = sampling.ImagenSuperResolution().upscale(sr, embeds, image, noise_level=100, steps=3,
                                                       sampler="dpmpp_2m", schedule="karras", width=0, height=0,
                                                       strength=1.0, **SETTINGS)
    assert theirs.shape == ours.shape == (1, 256, 256, 3)
    assert (theirs - ours).abs().max() <= 1e-3


def test_wrong_inputs_are_node_errors(chain):
    base, sr, embeds = chain
    sigmas = torch.tensor([10.0, 0.0])
    node = interop.ImagenSamplerCustom()
    with pytest.raises(ValueError, match="^Imagen Custom Sampler: the sampler input is a str"):
        node.sample(base, embeds, "dpmpp_2m", sigmas, width=0, height=0, batch_size=1, **SETTINGS)
    with pytest.raises(ValueError, match="^Imagen Custom Sampler: a super-resolution stage needs the image"):
        node.sample(sr, embeds, KSampler(kd_sample_dpmpp_2m), sigmas, width=0, height=0, batch_size=1, **SETTINGS)
    with pytest.raises(ValueError, match="^Imagen Custom Sampler: the image input is for super-resolution"):
        node.sample(base, embeds, KSampler(kd_sample_dpmpp_2m), sigmas, width=0, height=0, batch_size=1,
                    image=torch.rand(1, 64, 64, 3), **SETTINGS)
    with pytest.raises(ValueError, match="^Imagen Custom Sampler: the sigmas must be strictly descending"):
        node.sample(base, embeds, KSampler(kd_sample_dpmpp_2m), sigmas.flip(0), width=0, height=0, batch_size=1,
                    **SETTINGS)
