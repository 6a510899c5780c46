"""Denoiser wrappers: every parameterization gives back a known x0; v-prediction against diffusers; learned variance."""
import pytest
import torch

from comfyui_imagen.denoisers import EpsDenoiser, VDenoiser, X0Denoiser, make_denoiser, sigma_batch
from comfyui_imagen.schedules import get_schedule

SCHEDULE = get_schedule("squaredcos_cap_v2")
GEN = torch.Generator().manual_seed(0)
X0 = torch.rand(2, 3, 4, 4, generator=GEN, dtype=torch.float64) * 2 - 1
EPS = torch.randn(2, 3, 4, 4, generator=GEN, dtype=torch.float64)
SIGMA = torch.tensor([0.05, 30.0], dtype=torch.float64)  # one sigma per item


class Recorder:
    """A 'network' that returns what it was told, checking that it got the VP sample and the schedule's timestep."""

    def __init__(self, answer):
        self.answer, self.calls = answer, []

    def __call__(self, x_in, t, **cond):
        self.calls.append((x_in, t, cond))
        return self.answer(t)


def _known(prediction):
    s = SIGMA[:, None, None, None]
    alpha, sigma_vp = (1 + s * s).rsqrt(), s * (1 + s * s).rsqrt()
    return {"epsilon": EPS, "sample": X0, "v_prediction": alpha * EPS - sigma_vp * X0}[prediction]


@pytest.mark.parametrize("prediction,cls", [("epsilon", EpsDenoiser), ("v_prediction", VDenoiser),
                                            ("sample", X0Denoiser)])
def test_every_parameterization_returns_the_true_x0(prediction, cls):
    x = X0 + SIGMA[:, None, None, None] * EPS
    net = Recorder(lambda t: _known(prediction))
    denoiser = make_denoiser(net, SCHEDULE, prediction)
    assert isinstance(denoiser, cls) and not denoiser.learned_variance
    assert torch.allclose(denoiser(x, SIGMA, text_embeds="passed through"), X0, atol=1e-12)
    x_in, t, cond = net.calls[0]
    x_vp = X0 * (1 + SIGMA[:, None, None, None] ** 2).rsqrt() + EPS * SIGMA[:, None, None, None] * (
        1 + SIGMA[:, None, None, None] ** 2).rsqrt()
    assert torch.allclose(x_in, x_vp, atol=1e-12)
    assert torch.allclose(t, SCHEDULE.sigma_to_t(SIGMA)) and cond == {"text_embeds": "passed through"}


def test_v_prediction_matches_diffusers_ddim_pred_original_sample():
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDIMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                                   clip_sample=False)
    sched.set_timesteps(10)
    t = int(sched.timesteps[3])
    a = sched.alphas_cumprod[t].double()
    sigma = ((1 - a) / a).sqrt()
    x_vp = torch.randn(1, 3, 4, 4, generator=GEN, dtype=torch.float64)
    v = torch.randn(1, 3, 4, 4, generator=GEN, dtype=torch.float64)
    theirs = sched.step(v, t, x_vp).pred_original_sample
    ours = make_denoiser(lambda x_in, tt: v, SCHEDULE, "v_prediction")(x_vp / a.sqrt(), sigma)
    assert torch.allclose(ours, theirs.double(), atol=1e-6)


def test_learned_variance_splits_channels_and_returns_the_fraction():
    v = torch.linspace(-1, 1, 2 * 3 * 16).reshape(2, 3, 4, 4).double()
    net = Recorder(lambda t: torch.cat([EPS, v], dim=1))
    denoiser = make_denoiser(net, SCHEDULE, "epsilon", "learned_range")
    assert denoiser.learned_variance
    x = X0 + SIGMA[:, None, None, None] * EPS
    x0, frac = denoiser(x, SIGMA, return_variance=True)
    assert torch.allclose(x0, X0, atol=1e-12) and torch.allclose(frac, (v + 1) / 2)
    assert torch.allclose(denoiser(x, SIGMA), X0, atol=1e-12)


def test_channel_mismatches_and_bad_names_say_what_to_fix():
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match="variance_type='learned_range'"):
        make_denoiser(lambda x_in, t: torch.zeros(1, 6, 2, 2), SCHEDULE)(x, 1.0)
    with pytest.raises(ValueError, match="must return 6 channels"):
        make_denoiser(lambda x_in, t: torch.zeros(1, 3, 2, 2), SCHEDULE, variance_type="learned_range")(x, 1.0)
    with pytest.raises(ValueError, match="needs a learned-variance denoiser"):
        make_denoiser(lambda x_in, t: x_in, SCHEDULE)(x, 1.0, return_variance=True)
    with pytest.raises(ValueError, match="unknown prediction_type 'eps'.*v_prediction"):
        make_denoiser(None, SCHEDULE, "eps")
    with pytest.raises(ValueError, match="unknown variance_type 'learned'.*learned_range"):
        make_denoiser(None, SCHEDULE, "epsilon", "learned")


def test_sigma_batch_accepts_scalars_and_per_item_tensors():
    x = torch.zeros(3, 1, 2, 2)
    assert sigma_batch(2.0, x).tolist() == [2.0, 2.0, 2.0]
    assert sigma_batch(torch.tensor([1.0, 2.0, 3.0]), x).tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="one per batch item"):
        sigma_batch(torch.tensor([1.0, 2.0]), x)


class _Fixed(torch.nn.Module):
    """A network returning a fixed output whatever it is given, recording its inputs."""

    def __init__(self, out):
        super().__init__()
        self.out, self.seen = out, None

    def forward(self, x, t, **_):
        self.seen = (x, t)
        return self.out


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample", "edm"])
def test_prediction_direction_is_parallel_to_the_network_output(prediction):
    out = torch.randn(2, 3, 4, 4)
    schedule = get_schedule("edm") if prediction == "edm" else get_schedule("squaredcos_cap_v2")
    denoiser = make_denoiser(_Fixed(out), schedule, prediction)
    x, sigma = torch.randn(2, 3, 4, 4) * 3, torch.tensor([0.7, 5.0])
    direction = denoiser.prediction_direction(x, sigma, denoiser(x, sigma))
    for d, o in zip(direction, out):
        cos = torch.nn.functional.cosine_similarity(d.flatten(), o.flatten(), dim=0)
        assert abs(abs(float(cos)) - 1) < 1e-5


def test_edm_denoiser_is_karras_preconditioning():
    """Karras et al. 2022 Table 1 with sigma_data 0.5: c_in = 1/sqrt(s^2 + d^2), c_noise = ln(s)/4, c_skip = d^2/(s^2 +
    d^2), c_out = s d / sqrt(s^2 + d^2)."""
    out = torch.randn(1, 3, 2, 2)
    net = _Fixed(out)
    denoiser = make_denoiser(net, get_schedule("edm", sigma_min=0.01, sigma_max=50.0), "edm", sigma_data=0.5)
    x, s, d = torch.randn(1, 3, 2, 2), 2.0, 0.5
    x0 = denoiser(x, s)
    assert torch.allclose(net.seen[0], x / (s * s + d * d) ** 0.5)
    assert torch.allclose(net.seen[1], torch.tensor([0.25 * torch.log(torch.tensor(s)).item()]))
    assert torch.allclose(x0, d * d / (s * s + d * d) * x + s * d / (s * s + d * d) ** 0.5 * out, atol=1e-6)
    with pytest.raises(ValueError, match="sigma_data must be positive"):
        make_denoiser(net, get_schedule("edm"), "edm", sigma_data=0.0)
