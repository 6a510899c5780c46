"""Every sampler x spacing the nodes and the CLI offer draws what the prompt says, or is refused with a reason.

Free-step spacings run on the shipped demo base stage at its recommended guidance (cfg 4, dynamic thresholding 0.95
capped at 1.5), judged by the shapes domain's exact judge (`comfyui_imagen.data.judge`) on two simple prompts. Steps:
10 where every sampler is right at 10; 15 for karras, leading and linspace, where DPM++ 2M (SDE) at 10-12 steps
draws wrong shapes or speckled backgrounds on the demo (karras puts 10 of 15 sigmas above 50 on its cosine schedule,
whose sigma_max is 2e4; leading starts at sigma 8.5 instead of pure noise). The DeepFloyd IF presets, which fix up to
185 steps, run on a closed-form toy instead (`tests.test_cascade.ExactToy`: every sampler must end on its exact x0).
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from comfyui_imagen import cascade
from comfyui_imagen.data import judge
from comfyui_imagen.denoisers import make_denoiser
from comfyui_imagen.evaluate import to_uint8
from comfyui_imagen.respacing import IF_PRESETS, SPACINGS, get_sigmas
from comfyui_imagen.samplers import HEUN_MAX_RATIO, SAMPLERS, get_sampler
from tests.test_cascade import SCHEDULE, Conditioning, ExactToy, embeds, stage

DEMO = Path(__file__).resolve().parents[1] / "comfyui_imagen" / "demo"
PROMPTS = ("a red circle", "a yellow triangle")
STEPS = {"karras": 15, "exponential": 10, "trailing": 10, "leading": 15, "linspace": 15}
ALIASES = {"uniform": "trailing"}  # the same grid on a discrete schedule


@pytest.fixture(scope="module")
def demo():
    from comfyui_imagen.checkpoints import load_stage
    from comfyui_imagen.text import load_t5

    base = load_stage(DEMO / "imagen-demo-base64.safetensors")
    t5 = load_t5(DEMO / "imagen-demo-t5.safetensors")
    return base, cascade.Conditioning(*t5.encode_for_guidance(list(PROMPTS)))


def test_the_matrix_covers_every_sampler_and_spacing_offered():
    from nodes.sampling import _sampling_inputs

    offered = _sampling_inputs()
    assert offered["sampler"][0][0] == offered["schedule"][0][0] == "auto"  # the stage's recommended, first
    assert set(offered["sampler"][0][1:]) == set(SAMPLERS)
    assert set(offered["schedule"][0][1:]) == set(SPACINGS) == set(STEPS) | set(ALIASES) | set(IF_PRESETS)
    for alias, spacing in ALIASES.items():
        assert torch.equal(get_sigmas(SCHEDULE, alias, 10), get_sigmas(SCHEDULE, spacing, 10))


@pytest.mark.parametrize("spacing", list(STEPS))
@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_every_sampler_and_spacing_draws_the_prompt_on_the_demo_base(demo, sampler, spacing):
    base, cond = demo
    settings = base.recommended.settings.replace(sampler=sampler, spacing=spacing, steps=STEPS[spacing], seed=0)
    with torch.no_grad():
        images = to_uint8(cascade.generate(base, cond, batch_size=len(PROMPTS), settings=settings))
    for image, prompt in zip(images, PROMPTS):
        verdict = judge(image, prompt)
        assert verdict.correct, f"{sampler}/{spacing}: {prompt!r} wrong in {verdict.attributes()}"


@pytest.mark.parametrize("preset", list(IF_PRESETS))
def test_every_sampler_ends_on_the_exact_x0_with_the_if_presets(preset):
    colour = (0.6, -0.3, 0.2)
    cond = Conditioning(embeds(colour), embeds((0.0, 0.0, 0.0)))
    want = torch.tensor(colour).view(1, 3, 1, 1)
    for sampler in SAMPLERS:
        settings = cascade.SamplingSettings(sampler=sampler, spacing=preset, cfg=1.0, seed=1)
        out = cascade.generate(stage(ExactToy()), cond, width=8, height=8, settings=settings)
        assert torch.allclose(out, want.expand_as(out), atol=1e-4), (sampler, preset)


def test_heun_takes_an_euler_step_across_a_huge_sigma_jump():
    """The first step of a trailing grid on the cosine schedule goes from sigma 2e4 to ~10; Heun's correction there
    would multiply the second call's error by ~1000, so that step (and the last, into 0) is a single call."""
    sigmas = get_sigmas(SCHEDULE, "trailing", 10)
    ratios = (sigmas[:-2] / sigmas[1:-1]).tolist()
    assert ratios[0] > 1000 and all(r < HEUN_MAX_RATIO for r in ratios[1:])
    net = ExactToy()
    x = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]
    text = embeds((0.1, 0.2, 0.3))
    get_sampler("heun")(make_denoiser(net, SCHEDULE, "epsilon"), x, sigmas,
                        extra_args={"text_embeds": text.embeds, "text_mask": text.mask})
    assert net.calls == 1 + 2 * 8 + 1
