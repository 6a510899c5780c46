"""Every sampler against diffusers' schedulers (a test-only oracle) on a toy network with identical noise.

Our samplers run in VE space (x = x0 + sigma eps); diffusers' DDPM/DDIM/DPM-Solver run on the VP sample
x_vp = x / sqrt(1 + sigma^2) and its Euler/Heun schedulers on x itself. Trajectories are compared step by step on the
VP scale, where every state is O(1).

Grids: the scheduler's own timesteps, turned into sigmas by *our* schedule and checked against the scheduler's; then
both sides run on the same grid and the same alpha_bar table (diffusers' values). The comparison runs in float64, where
the two agree to ~1e-13 (DDPM, DDIM, Heun) or ~1e-6 (Euler, Euler ancestral and DPM-Solver, whose step casts the
sample to float32), so the assertion (<= 1e-5) measures the algorithm, not rounding. In float32 the first steps
from sigma_max ~ 2e4 (IF's cosine schedule) lose ~1e-4 to cancellation in x0 = x - sigma eps on *both* sides (each
is ~3e-5..9e-5 from the float64 answer), so the float32 run of the IF path gets a float32-sized tolerance.
"""
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from comfyui_imagen.denoisers import make_denoiser  # noqa: E402
from comfyui_imagen.guidance import CFGDenoiser, Thresholded  # noqa: E402
from comfyui_imagen.respacing import get_sigmas, sigmas_from_timesteps  # noqa: E402
from comfyui_imagen.samplers import get_sampler, make_generators, randn_like_items  # noqa: E402
from comfyui_imagen.schedules import DiscreteSchedule  # noqa: E402

SHAPE = (2, 3, 8, 8)
SEED = 1234
TOL = {torch.float64: 1e-5, torch.float32: 3e-4}
F64 = torch.float64


class ToyNet:
    """A nonlinear eps-predicting network whose implied x0 is bounded: x0 = 1.3 tanh(W x_in + b + t/700) and
    eps = (x_in - sqrt(a) x0) / sqrt(1 - a), a = alpha_bar(t). Optionally 3 more channels of learned variance in
    [-1, 1], and a text embedding that shifts x0 (for guidance). Computes in x_in's dtype."""

    def __init__(self, schedule, learned_variance=False):
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3, 3, generator=g) * 0.8
        self.b = torch.randn(3, generator=g) * 0.4
        self.ac = schedule.alphas_cumprod
        self.learned_variance = learned_variance

    def alpha_bar(self, t):
        t = t.double().clamp(0, len(self.ac) - 1)
        lo = t.floor().long().clamp(max=len(self.ac) - 2)
        w = t - lo
        return (1 - w) * self.ac[lo] + w * self.ac[lo + 1]

    def __call__(self, x_in, t, text=None):
        dtype = x_in.dtype
        t = torch.as_tensor(t, dtype=F64).reshape(-1).expand(x_in.shape[0])
        a = self.alpha_bar(t).to(dtype)[:, None, None, None]
        tt = t.to(dtype)[:, None, None, None]
        h = torch.einsum("oc,bchw->bohw", self.w.to(dtype), x_in) + self.b.to(dtype)[:, None, None] + tt / 700
        if text is not None:
            h = h + text.to(dtype)[:, :, None, None]
        x0 = 1.3 * torch.tanh(h)
        eps = (x_in - a.sqrt() * x0) / (1 - a).sqrt()
        if not self.learned_variance:
            return eps
        return torch.cat([eps, torch.tanh(1.5 * x_in.flip(1) - tt / 1000)], dim=1)


def _start(dtype):
    """Initial VP noise, and generators positioned just after drawing it (as a pipeline would)."""
    gens = make_generators(SEED, SHAPE[0])
    return randn_like_items(SHAPE, gens, dtype=dtype), gens


def _replayed_noises(dtype):
    """Replays the noise our samplers draw after the initial noise."""
    _, gens = _start(dtype)
    return lambda: randn_like_items(SHAPE, gens, dtype=dtype)


def _ours(sampler, denoiser, sigmas, dtype=F64, extra_args=None, start_scale=None, **opts):
    """Our trajectory on the VP scale. Starts where diffusers does: its VP noise is noise * sqrt(1 + sigma_0^2) in
    VE space; its Euler-family schedulers start at noise * init_noise_sigma (pass that as start_scale)."""
    noise, gens = _start(dtype)
    x = noise * (start_scale or math.sqrt(1 + float(sigmas[0]) ** 2))
    traj = []
    sampler(denoiser, x, sigmas, extra_args=extra_args, generator=gens,
            callback=lambda d: traj.append(d["x"] / math.sqrt(1 + d["sigma_next"] ** 2)), **opts)
    return torch.stack(traj)


def _theirs(scheduler, model_fn, ve_space, dtype=F64, step_kwargs=lambda i: {}, model_t=None):
    noise, _ = _start(dtype)
    sample = noise * scheduler.init_noise_sigma if ve_space else noise
    traj = []
    for i, t in enumerate(scheduler.timesteps):
        out = model_fn(scheduler.scale_model_input(sample, t), t if model_t is None else model_t[i])
        sample = scheduler.step(out, t, sample, **step_kwargs(i)).prev_sample
        if ve_space:
            whole_step = getattr(scheduler, "state_in_first_order", True) or i == len(scheduler.timesteps) - 1
            if whole_step:  # Heun: skip its intermediate (predictor) states
                sigma_next = float(scheduler.sigmas[scheduler.step_index])
                traj.append(sample / math.sqrt(1 + sigma_next ** 2))
        else:
            traj.append(sample)
    return torch.stack(traj)


def _compare(ours, theirs, dtype=F64, min_steps=20):
    assert ours.shape == theirs.shape and ours.shape[0] >= min_steps
    assert ours.dtype == theirs.dtype == dtype
    err = (ours - theirs).abs().max().item()
    assert err <= TOL[dtype], f"max abs error {err:.3g} over {ours.shape[0]} steps"
    return err


def _shared(scheduler):
    """Our schedule on the scheduler's own alpha_bar table."""
    return DiscreteSchedule(scheduler.alphas_cumprod)


def _align(scheduler, schedule, sigmas, dtype=F64):
    """Run `scheduler` in `dtype` on our grid `sigmas`, after checking that its own grid is the same one."""
    scheduler.alphas_cumprod = schedule.alphas_cumprod.to(dtype)
    for name in ("one", "final_alpha_cumprod"):
        if isinstance(getattr(scheduler, name, None), torch.Tensor):
            setattr(scheduler, name, getattr(scheduler, name).to(dtype))
    if getattr(scheduler, "sigmas", None) is not None:
        if scheduler.sigmas.numel() != sigmas.numel():  # Heun visits every inner sigma twice
            sigmas = torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])
        assert torch.allclose(scheduler.sigmas.double(), sigmas.double(), rtol=1e-6, atol=0), "grids differ"
        scheduler.sigmas = sigmas.to(dtype)


def _patch_randn(monkeypatch, module, dtype=F64):
    draw = _replayed_noises(dtype)
    monkeypatch.setattr(module, "randn_tensor", lambda shape, **kw: draw())


# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ddpm_deepfloyd_if_learned_variance_cfg_dynamic_thresholding(monkeypatch, dtype):
    """The DeepFloyd IF stage I path: cosine schedule, IF's smart50 respacing, learned-range variance, CFG on
    [cond; uncond] with the cond branch's variance, dynamic thresholding (p 0.95, c 1.5)."""
    from diffusers import DDPMScheduler
    from diffusers.pipelines.deepfloyd_if.timesteps import smart50_timesteps
    from diffusers.schedulers import scheduling_ddpm

    sched = DDPMScheduler(beta_schedule="squaredcos_cap_v2", variance_type="learned_range", thresholding=True,
                          dynamic_thresholding_ratio=0.95, sample_max_value=1.5)
    sched.set_timesteps(timesteps=smart50_timesteps)
    schedule = _shared(sched)
    net = ToyNet(schedule, learned_variance=True)
    cond, uncond, scale = {"text": torch.tensor([[0.3, -0.2, 0.1]] * 2)}, {"text": torch.zeros(2, 3)}, 4.0
    sigmas = get_sigmas(schedule, "smart50", dtype=torch.float64)
    _align(sched, schedule, sigmas, dtype)
    denoiser = Thresholded(CFGDenoiser(make_denoiser(net, schedule, "epsilon", "learned_range"), scale),
                           "dynamic", percentile=0.95, max_value=1.5)
    ours = _ours(get_sampler("ddpm"), denoiser, sigmas, dtype, extra_args={"cond": cond, "uncond": uncond})

    def if_pipeline_model(x, t):  # diffusers' IFPipeline guidance
        out = net(torch.cat([x, x]), t, text=torch.cat([cond["text"], uncond["text"]]))
        text_out, uncond_out = out.chunk(2)
        eps_text, variance = text_out.split(3, dim=1)
        eps_uncond, _ = uncond_out.split(3, dim=1)
        return torch.cat([eps_uncond + scale * (eps_text - eps_uncond), variance], dim=1)

    _patch_randn(monkeypatch, scheduling_ddpm, dtype)
    err = _compare(ours, _theirs(sched, if_pipeline_model, False, dtype), dtype, min_steps=50)
    print(f"ddpm (IF: learned variance + CFG + dynamic thresholding, smart50, {dtype}): {err:.2e}")


def test_ddpm_fixed_variance_linear(monkeypatch):
    from diffusers import DDPMScheduler
    from diffusers.schedulers import scheduling_ddpm

    sched = DDPMScheduler(beta_schedule="linear", clip_sample=False)
    sched.set_timesteps(25)
    schedule = _shared(sched)
    net = ToyNet(schedule)
    sigmas = sigmas_from_timesteps(schedule, sched.timesteps.tolist())
    _align(sched, schedule, sigmas)
    ours = _ours(get_sampler("ddpm"), make_denoiser(net, schedule), sigmas)
    _patch_randn(monkeypatch, scheduling_ddpm)
    err = _compare(ours, _theirs(sched, net, ve_space=False))
    print(f"ddpm (fixed small variance, linear, 25 leading steps): {err:.2e}")


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim(eta):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(beta_schedule="squaredcos_cap_v2", thresholding=True, dynamic_thresholding_ratio=0.95,
                          sample_max_value=1.5, set_alpha_to_one=True)
    sched.set_timesteps(25)
    schedule = _shared(sched)
    net = ToyNet(schedule)
    sigmas = sigmas_from_timesteps(schedule, sched.timesteps.tolist())
    _align(sched, schedule, sigmas)
    denoiser = Thresholded(make_denoiser(net, schedule), "dynamic", 0.95, 1.5)
    ours = _ours(get_sampler("ddim"), denoiser, sigmas, eta=eta)
    draw = _replayed_noises(F64)
    last = len(sched.timesteps) - 1
    kwargs = lambda i: {"eta": eta, "use_clipped_model_output": True,  # noqa: E731
                        "variance_noise": (draw() if i < last else torch.zeros(SHAPE, dtype=F64)) if eta else None}
    err = _compare(ours, _theirs(sched, net, ve_space=False, step_kwargs=kwargs))
    print(f"ddim eta={eta} (dynamic thresholding, 25 steps): {err:.2e}")


@pytest.mark.parametrize("algorithm", ["dpmsolver++", "sde-dpmsolver++"])
def test_dpmpp_2m(algorithm):
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(beta_schedule="linear", algorithm_type=algorithm, solver_order=2)
    sched.set_timesteps(20)
    schedule = _shared(sched)
    net = ToyNet(schedule)
    sigmas = sigmas_from_timesteps(schedule, sched.timesteps.tolist())
    _align(sched, schedule, sigmas)
    name = "dpmpp_2m" if algorithm == "dpmsolver++" else "dpmpp_2m_sde"
    ours = _ours(get_sampler(name), make_denoiser(net, schedule), sigmas)
    draw = _replayed_noises(F64)
    last = len(sched.timesteps) - 1
    kwargs = (lambda i: {"variance_noise": draw() if i < last else torch.zeros(SHAPE, dtype=F64)}) \
        if "sde" in algorithm else (lambda i: {})
    err = _compare(ours, _theirs(sched, net, ve_space=False, step_kwargs=kwargs))
    print(f"{name} (linear, 20 steps): {err:.2e}")


def test_dpmpp_2m_karras_v_prediction():
    """Karras sigmas on IF's cosine schedule with a v-prediction network: our get_sigmas(..., "karras") against
    diffusers' grid, and our sigma_to_t against its _sigma_to_t (diffusers then casts those fractional timesteps to
    int64; its model is fed the fractional ones here, as ours is)."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler(beta_schedule="squaredcos_cap_v2", use_karras_sigmas=True,
                                        prediction_type="v_prediction")
    sched.set_timesteps(20)
    schedule = _shared(sched)
    eps_net = ToyNet(schedule)

    def v_net(x_in, t, **kw):  # the same toy, re-expressed as v = sqrt(a) eps - sqrt(1 - a) x0
        a = eps_net.alpha_bar(torch.as_tensor(t, dtype=F64).reshape(-1)).to(x_in.dtype)[:, None, None, None]
        eps = eps_net(x_in, t, **kw)
        x0 = (x_in - (1 - a).sqrt() * eps) / a.sqrt()
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    sigmas = get_sigmas(schedule, "karras", 20, dtype=F64)
    log_sigmas = schedule.log_sigmas.numpy()
    their_t = torch.tensor([float(sched._sigma_to_t(s, log_sigmas)) for s in sigmas[:-1].numpy()], dtype=F64)
    assert torch.allclose(schedule.sigma_to_t(sigmas[:-1]), their_t, rtol=0, atol=1e-9)
    _align(sched, schedule, sigmas)
    sched.set_begin_index(0)  # its truncated timesteps repeat 998 nine times, which confuses its own step lookup
    ours = _ours(get_sampler("dpmpp_2m"), make_denoiser(v_net, schedule, "v_prediction"), sigmas)
    err = _compare(ours, _theirs(sched, v_net, ve_space=False, model_t=their_t))
    print(f"dpmpp_2m (karras, v-prediction, cosine, 20 steps): {err:.2e}")


@pytest.mark.parametrize("name", ["euler", "euler_ancestral", "heun"])
def test_euler_family(name, monkeypatch):
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler
    from diffusers.schedulers import scheduling_euler_ancestral_discrete

    cls = {"euler": EulerDiscreteScheduler, "euler_ancestral": EulerAncestralDiscreteScheduler,
           "heun": HeunDiscreteScheduler}[name]
    sched = cls(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, timestep_spacing="trailing")
    sched.set_timesteps(20)
    schedule = _shared(sched)
    net = ToyNet(schedule)
    sigmas = get_sigmas(schedule, "trailing", 20, dtype=F64)
    _align(sched, schedule, sigmas)
    ours = _ours(get_sampler(name), make_denoiser(net, schedule), sigmas, start_scale=float(sched.init_noise_sigma))
    _patch_randn(monkeypatch, scheduling_euler_ancestral_discrete)
    err = _compare(ours, _theirs(sched, net, ve_space=True))
    print(f"{name} (linear, 20 trailing steps): {err:.2e}")
