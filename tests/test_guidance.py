"""Classifier-free guidance and thresholding: the paper's formulas, diffusers' _threshold_sample, batching rules."""
import pytest
import torch

from comfyui_imagen.denoisers import make_denoiser
from comfyui_imagen.guidance import (CFGDenoiser, Thresholded, batch_cond_uncond, dynamic_threshold, row_quantile,
                                     static_threshold)
from comfyui_imagen.schedules import get_schedule


def test_dynamic_threshold_matches_diffusers_threshold_sample():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(thresholding=True, dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
    x0 = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.3, 1.1, 1.8, 5.0])[
        :, None, None, None]
    assert torch.allclose(dynamic_threshold(x0, 0.95, 1.5), sched._threshold_sample(x0), atol=1e-7)


def test_dynamic_threshold_known_answer_and_half_precision():
    x0 = torch.tensor([[0.5, -1.2, 1.4, 2.0]])  # quantile(|x0|, 0.5) = 1.3 -> s = 1.3
    s = 1.3
    assert torch.allclose(dynamic_threshold(x0, 0.5, 1.5), x0.clamp(-s, s) / s)
    assert torch.allclose(dynamic_threshold(x0, 1.0, 1.5), x0.clamp(-1.5, 1.5) / 1.5)  # capped at c
    assert torch.equal(dynamic_threshold(x0 * 0.1, 1.0, 1.5), x0 * 0.1)  # s clamps up to 1: nothing changes
    half = dynamic_threshold(x0.half(), 0.5, 1.5)
    assert half.dtype == torch.float16 and torch.allclose(half.float(), x0.clamp(-s, s) / s, atol=1e-3)
    assert torch.equal(static_threshold(x0), x0.clamp(-1, 1))


@pytest.mark.parametrize("percentile,max_value,match", [(0.0, 1.5, r"\(0, 1\]"), (1.2, 1.5, r"\(0, 1\]"),
                                                        (0.9, 0.5, ">= 1")])
def test_threshold_bad_arguments(percentile, max_value, match):
    with pytest.raises(ValueError, match=match):
        dynamic_threshold(torch.zeros(1, 4), percentile, max_value)
    with pytest.raises(ValueError, match=match):
        Thresholded(lambda x, s: x, "dynamic", percentile, max_value)


def test_thresholded_modes_and_unknown_mode():
    big = lambda x, s, **k: torch.full_like(x, 3.0)  # noqa: E731
    x = torch.zeros(1, 1, 2, 2)
    assert torch.equal(Thresholded(big, "static")(x, 1.0), torch.ones_like(x))
    assert torch.equal(Thresholded(big, "none")(x, 1.0), torch.full_like(x, 3.0))
    assert torch.equal(Thresholded(big, "dynamic", 0.95, 1.5)(x, 1.0), torch.ones_like(x))
    with pytest.raises(ValueError, match="unknown threshold mode 'clip'.*dynamic"):
        Thresholded(big, "clip")


class Counting:
    """A denoiser whose x0 is the 'c' conditioning broadcast over the image (plus x); counts batch sizes."""

    learned_variance = True

    def __init__(self):
        self.batches = []

    def __call__(self, x, sigma, *, c, shared=None, return_variance=False):
        self.batches.append(x.shape[0])
        x0 = x + c[:, :, None, None]
        if shared is not None:
            x0 = x0 + shared
        return (x0, torch.sigmoid(c)[:, :, None, None].expand_as(x)) if return_variance else x0


def test_cfg_is_the_imagen_formula_in_one_batched_forward():
    """eps~ = w eps(z, c) + (1 - w) eps(z): with x0 = x + c, the guided x0 is x + w c + (1 - w) u."""
    inner = Counting()
    x = torch.randn(2, 3, 4, 4)
    c, u = torch.tensor([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    out = CFGDenoiser(inner, 7.0)(x, 1.0, cond={"c": c}, uncond={"c": u})
    assert torch.allclose(out, x + (7.0 * c + (1 - 7.0) * u)[:, :, None, None])
    assert inner.batches == [4]
    assert torch.allclose(CFGDenoiser(inner, 1.0)(x, 1.0, cond={"c": c}, uncond={"c": u}), x + c[:, :, None, None])
    assert inner.batches == [4, 2]  # scale 1: the unconditional branch is skipped


def test_cfg_on_x0_equals_cfg_on_eps_for_a_real_wrapper():
    schedule = get_schedule("linear")
    net = lambda x_in, t, c: torch.tanh(x_in * c[:, :, None, None] + t[:, None, None, None] / 500)  # noqa: E731
    eps_denoiser = make_denoiser(net, schedule, "epsilon")
    x, sigma, w = torch.randn(2, 3, 4, 4, dtype=torch.float64), 3.0, 5.0
    c, u = torch.rand(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    t = schedule.sigma_to_t(torch.full((2,), sigma, dtype=torch.float64))
    x_in = x / (1 + sigma ** 2) ** 0.5
    eps = w * net(x_in, t, c) + (1 - w) * net(x_in, t, u)
    out = CFGDenoiser(eps_denoiser, w)(x, sigma, cond={"c": c}, uncond={"c": u})
    assert torch.allclose(out, x - sigma * eps, atol=1e-12)


def test_learned_variance_comes_from_the_cond_branch_and_passes_thresholding():
    inner = Counting()
    x = torch.zeros(1, 3, 2, 2)
    c, u = torch.tensor([[5.0, -5.0, 0.0]]), torch.tensor([[0.0, 0.0, 9.0]])
    guided = Thresholded(CFGDenoiser(inner, 4.0), "static")
    assert guided.learned_variance
    x0, frac = guided(x, 2.0, cond={"c": c}, uncond={"c": u}, return_variance=True)
    assert torch.allclose(frac, torch.sigmoid(c)[:, :, None, None].expand_as(x))
    assert x0.abs().max() <= 1


def test_cond_batching_pads_sequences_shares_missing_keys_and_rejects_mismatches():
    emb_c, emb_u = torch.ones(2, 5, 4), torch.full((2, 3, 4), 2.0)
    mask_c, mask_u = torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool)
    low = torch.randn(2, 3, 8, 8)
    merged = batch_cond_uncond({"text_embeds": emb_c, "text_mask": mask_c, "lowres_image": low, "mode": "a"},
                               {"text_embeds": emb_u, "text_mask": mask_u, "mode": "a"})
    assert merged["text_embeds"].shape == (4, 5, 4) and merged["text_embeds"][2:, 3:].abs().sum() == 0
    assert merged["text_mask"][2:].sum(dim=1).tolist() == [3, 3] and merged["text_mask"][:2].all()
    assert torch.equal(merged["lowres_image"], torch.cat([low, low])) and merged["mode"] == "a"
    with pytest.raises(ValueError, match="not both tensors"):
        batch_cond_uncond({"mode": "a"}, {"mode": "b"})
    with pytest.raises(ValueError, match="that cond lacks"):
        batch_cond_uncond({}, {"extra": 1})
    with pytest.raises(ValueError, match="only in sequence length"):
        batch_cond_uncond({"e": torch.ones(1, 2, 4)}, {"e": torch.ones(1, 2, 5)})
    with pytest.raises(ValueError, match="needs an unconditional branch"):
        CFGDenoiser(Counting(), 3.0)(torch.zeros(1, 3, 2, 2), 1.0, cond={"c": torch.zeros(1, 3)})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_row_quantile_is_torch_quantile_bit_for_bit(dtype):
    """The order-statistic selection equals torch.quantile's sort-and-lerp, ties, infinities and NaN rows included,
    for percentiles whose rank falls on and between elements."""
    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(3, 4096, generator=g, dtype=dtype).abs(),             # 64 px x 3 channels / 3 rows
             torch.randint(0, 4, (4, 1000), generator=g).to(dtype),             # heavy ties
             torch.rand(2, 7, generator=g, dtype=dtype), torch.rand(1, 1, dtype=dtype)]
    special = torch.rand(4, 301, generator=g, dtype=dtype)
    special[0, :200] = float("inf")
    special[1, 5] = float("nan")
    special[2, :] = 0.0
    cases.append(special)
    for values in cases:
        for q in (0.95, 0.5, 0.995, 1.0, 1e-3, 0.9):
            ours, theirs = row_quantile(values, q), torch.quantile(values, q, dim=1)
            assert torch.equal(ours.isnan(), theirs.isnan()), (values.shape, q)
            assert torch.equal(torch.nan_to_num(ours), torch.nan_to_num(theirs)), (values.shape, q)


def test_guidance_without_the_parallel_component_is_imagen_pytorchs_projection():
    """imagen-pytorch's forward_with_cond_scale(remove_parallel_component=True, keep_parallel_frac=f): with network
    outputs p_c, p_u, u = p_c - p_u projected on p_c (float64): out = p_c + (w - 1) (u_orth + f u_par), here on an
    eps network, then compared in x0."""
    class Net(torch.nn.Module):
        def forward(self, x, t, text_embeds=None, **_):
            return x * 0.3 + text_embeds.mean() * torch.ones_like(x) * torch.arange(x.shape[0])[:, None, None, None]

    schedule = get_schedule("squaredcos_cap_v2")
    raw = make_denoiser(Net(), schedule, "epsilon")
    x, sigma = torch.randn(1, 3, 4, 4) * 2, torch.tensor([1.5])
    cond, uncond = {"text_embeds": torch.ones(1, 2, 4)}, {"text_embeds": torch.zeros(1, 2, 4)}
    for frac in (0.0, 0.5):
        got = CFGDenoiser(raw, 4.0, parallel=frac)(x, sigma, cond=cond, uncond=uncond)
        net = Net()
        xin, t = x / (1 + 1.5 ** 2) ** 0.5, schedule.sigma_to_t(sigma)
        both = net(torch.cat([xin, xin]), t, text_embeds=torch.cat([cond["text_embeds"], uncond["text_embeds"]]))
        p_c, p_u = both.chunk(2)
        u, unit = (p_c - p_u).double().flatten(), torch.nn.functional.normalize(p_c.double().flatten(), dim=0)
        par = (u @ unit) * unit
        guided = p_c.double().flatten() + 3.0 * (u - par + frac * par)
        want = x - 1.5 * guided.reshape(x.shape).float()
        assert torch.allclose(got, want, atol=1e-5), frac
    plain = CFGDenoiser(raw, 4.0)(x, sigma, cond=cond, uncond=uncond)
    assert not torch.allclose(plain, got, atol=1e-3)
