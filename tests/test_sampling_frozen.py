"""Every run, on the frozen tiny v1 stages, gives the numbers the release before the Stage redesign gave (commit
d101b10): a change in the order noise is drawn, in dtype handling or in a default shows up here. The digests in
tests/fixtures/sampling-digests.json were written by that release's code with exactly these calls."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from comfyui_imagen import cascade
from comfyui_imagen.checkpoints import load_stage
from comfyui_imagen.text import TextEmbeds

FIXTURES = Path(__file__).parent / "fixtures"
DIGESTS = json.loads((FIXTURES / "sampling-digests.json").read_text())
S = cascade.SamplingSettings


@pytest.fixture(scope="module")
def inputs():
    base = load_stage(FIXTURES / "stage-v1-tiny-base.safetensors", dtype=torch.float32)
    sr = load_stage(FIXTURES / "stage-v1-tiny-sr.safetensors", dtype=torch.float32)
    width = base.config.text_embed_dim
    g = torch.Generator().manual_seed(0)
    ones = torch.ones(1, 6, dtype=torch.bool)
    cond = cascade.Conditioning(TextEmbeds(torch.randn(1, 6, width, generator=g), ones),
                                TextEmbeds(torch.randn(1, 6, width, generator=g), ones))
    low = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    big = torch.rand(1, 3, 256, 256, generator=g) * 2 - 1
    img = torch.rand(1, 3, 64, 64, generator=g) * 2 - 1
    mask, bigmask = torch.zeros(1, 64, 64), torch.zeros(1, 256, 256)
    mask[:, 10:40, 20:50], bigmask[:, 40:160, 80:200] = 1, 1
    return dict(base=base, sr=sr, cond=cond, low=low, big=big, img=img, mask=mask, bigmask=bigmask)


RUNS = {
    "generate_ea": lambda i: cascade.generate(i["base"], i["cond"], batch_size=2, settings=S(
        sampler="euler_ancestral", steps=4, cfg=3.0, spacing="trailing", seed=3)),
    "generate_ddpm": lambda i: cascade.generate(i["base"], i["cond"], settings=S(
        sampler="ddpm", steps=4, cfg=2.0, spacing="karras", seed=4)),
    "sr_full": lambda i: cascade.super_resolve(i["sr"], i["cond"], i["low"], noise_level=100, strength=1.0, settings=S(
        sampler="dpmpp_2m_sde", steps=3, cfg=2.0, spacing="trailing", seed=5)),
    "sr_half": lambda i: cascade.super_resolve(i["sr"], i["cond"], i["low"], noise_level=60, strength=0.5, settings=S(
        sampler="euler", steps=4, cfg=1.0, spacing="trailing", seed=6)),
    "img2img_base": lambda i: cascade.image_to_image(i["base"], i["cond"], i["img"], strength=0.6, settings=S(
        sampler="ddim", steps=5, cfg=3.0, eta=0.5, seed=7)),
    "img2img_sr": lambda i: cascade.image_to_image(i["sr"], i["cond"], i["big"], strength=0.4, noise_level=200,
                                                   lowres_image=i["img"], settings=S(
                                                       sampler="euler_ancestral", steps=5, cfg=2.0, seed=8)),
    "inpaint_base": lambda i: cascade.inpaint(i["base"], i["cond"], i["img"], i["mask"], resample=2,
                                              settings=S(steps=3, cfg=2.0, seed=9)),
    "inpaint_sr": lambda i: cascade.inpaint(i["sr"], i["cond"], i["big"], i["bigmask"], resample=2, noise_level=150,
                                            lowres_image=i["img"], settings=S(steps=2, cfg=2.0, seed=10)),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_run_matches_the_release_before_the_redesign(inputs, name):
    with torch.no_grad():
        x = RUNS[name](inputs).double()
    want = DIGESTS[name]
    # the signed sum cancels: its rounding (other CPUs' kernels sum in other orders) scales with the absolute sum
    assert float(x.sum()) == pytest.approx(want["sum"], abs=1e-5 * want["abs"])
    assert float(x.abs().sum()) == pytest.approx(want["abs"], rel=1e-5)
    assert x[0, :, 0, :4].flatten().tolist() == pytest.approx(want["corner"], abs=1e-4)
