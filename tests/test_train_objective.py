"""The trainer's math against known answers and against the denoiser wrappers it must agree with."""
import json
import math

import pytest
import torch

from comfyui_imagen.denoisers import make_denoiser
from comfyui_imagen.schedules import get_schedule
from comfyui_imagen.train.config import TrainConfig, warmup_cosine
from comfyui_imagen.train.ema import EMA, ema_decay_at
from comfyui_imagen.train.objective import prediction_target, q_sample, snr_loss_weights, weighted_mse


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_targets_invert_through_the_denoiser_wrappers(prediction_type):
    """A network that outputs the exact training target makes the sampling-time denoiser return x0 exactly: training
    and sampling use one convention (VP input, integer timestep, same schedule)."""
    schedule = get_schedule("squaredcos_cap_v2", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)  # float64: at t=999 sigma is ~1e4
    noise = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 250, 600, 999])
    alpha_bar = schedule.alphas_cumprod[t]
    x_t = q_sample(x0, noise, alpha_bar)
    target = prediction_target(prediction_type, x0, noise, alpha_bar)
    sigma = schedule.sigmas[t]

    def oracle(x_in, t_model, **cond):
        torch.testing.assert_close(t_model, t.double(), atol=1e-6, rtol=0)  # the wrapper asks for our timestep
        torch.testing.assert_close(x_in, x_t)      # and feeds our noised input
        return target

    x_ve = x_t * (1 + sigma * sigma).sqrt().view(-1, 1, 1, 1)
    x0_hat = make_denoiser(oracle, schedule, prediction_type)(x_ve, sigma)
    torch.testing.assert_close(x0_hat, x0, atol=1e-6, rtol=1e-6)


def test_min_snr_weights_known_values():
    ab = torch.tensor([0.5, 10 / 11, 1 / 11])  # SNR 1, 10, 0.1
    torch.testing.assert_close(snr_loss_weights(ab, "epsilon", "min_snr", 5.0), torch.tensor([1.0, 0.5, 1.0]))
    torch.testing.assert_close(snr_loss_weights(ab, "v_prediction", "min_snr", 5.0),
                               torch.tensor([0.5, 5 / 11, 0.1 / 1.1]))
    torch.testing.assert_close(snr_loss_weights(ab, "sample", "min_snr", 5.0), torch.tensor([1.0, 5.0, 0.1]))
    torch.testing.assert_close(snr_loss_weights(ab, "epsilon", "p2", 1.0, p2_k=1.0),
                               torch.tensor([0.5, 1 / 11, 1 / 1.1]))
    assert torch.equal(snr_loss_weights(ab, "epsilon", "none"), torch.ones(3))
    with pytest.raises(ValueError, match="min_snr"):
        snr_loss_weights(ab, "epsilon", "snr")


def test_weighted_mse_known_value():
    pred, target = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    target[1] = 2.0
    assert float(weighted_mse(pred, target, torch.tensor([1.0, 0.5]))) == pytest.approx((1 + 0.5 * 4) / 2)


def test_learning_rate_warmup_and_cosine_ends():
    c = TrainConfig(steps=110, lr=1e-3, lr_final=1e-4, warmup_steps=10)
    assert c.learning_rate(0) == pytest.approx(1e-4)
    assert c.learning_rate(9) == pytest.approx(1e-3)
    assert c.learning_rate(60) == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert c.learning_rate(110) == pytest.approx(1e-4)


def test_warmup_cosine_known_values():
    """By hand, 4 warm-up steps then a cosine over the remaining 8 from 1 to 0.2: warm-up (s + 1) / 4; at step
    4 + k the cosine is 0.2 + 0.4 (1 + cos(pi k / 8)), cos(pi / 4) = sqrt(2) / 2, cos(pi / 2) = 0."""
    kw = dict(steps=12, lr=1.0, lr_final=0.2, warmup_steps=4)
    assert [warmup_cosine(s, **kw) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert warmup_cosine(4, **kw) == pytest.approx(1.0)
    assert warmup_cosine(6, **kw) == pytest.approx(0.2 + 0.4 * (1 + math.sqrt(2) / 2))  # 0.88284
    assert warmup_cosine(8, **kw) == pytest.approx(0.6)
    assert warmup_cosine(12, **kw) == pytest.approx(0.2) and warmup_cosine(50, **kw) == pytest.approx(0.2)
    # no warm-up, to zero (the demo T5's shape): a quarter of the way the cosine is (1 + sqrt(2)/2) / 2 = 0.85355
    assert warmup_cosine(0, steps=100, lr=2.0) == pytest.approx(2.0)
    assert warmup_cosine(25, steps=100, lr=2.0) == pytest.approx(1.0 + math.sqrt(2) / 2)
    assert warmup_cosine(100, steps=100, lr=2.0) == 0.0


def test_ema_follows_the_decay_formula():
    model = torch.nn.Linear(1, 1, bias=False)
    model.weight.data.fill_(0.0)
    ema = EMA(model, decay=0.9)
    model.weight.data.fill_(1.0)
    ema.update(model, step=100)  # decay min(0.9, 101/110) = 0.9
    assert float(ema.shadow.weight) == pytest.approx(0.1)
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert not ema.shadow.weight.requires_grad


def test_config_dict_round_trip_refuses_unknown_fields():
    c = TrainConfig(steps=7, lr=3e-4, weighting="p2", precision="bf16", crop=64)
    assert TrainConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**c.to_dict(), "momentum": 0.9})


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of 8"):
        TrainConfig(crop=100)
    with pytest.raises(ValueError, match="weighting"):
        TrainConfig(weighting="snr")


def test_warmup_cosine_overlap_is_the_demo_t5_schedule():
    """The demo T5's pre-training formula as it was written before the one home: lr * min(1, (s + 1) / 100) *
    0.5 (1 + cos(pi s / steps)); at s = 150 of 300: 1e-3 * 1 * 0.5 = 5e-4, at s = 49: 1e-3 * 0.5 * (1 + cos(0.163 pi))."""
    old = [1e-3 * min(1.0, (s + 1) / 100) * 0.5 * (1 + math.cos(math.pi * s / 300)) for s in range(300)]
    new = [warmup_cosine(s, steps=300, lr=1e-3, warmup_steps=100, overlap=True) for s in range(300)]
    assert new == pytest.approx(old, rel=1e-12, abs=1e-15)
    assert new[150] == pytest.approx(5e-4) and new[0] == pytest.approx(1e-5 * 0.5 * 2)
