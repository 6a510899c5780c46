"""imagen-pytorch checkpoints as cascade stages, against imagen-pytorch 2.1.0 itself (a test-only oracle).

Checkpoints are written by imagen-pytorch's own ``ImagenTrainer.save`` / ``Unet.persist_to_file`` and read by
`load_stage`; sampling goes through our cascade (`generate`, `super_resolve`) and is compared with imagen-pytorch's own
sampler on the same noise. Tiny U-Nets (16 px base, 32 px SR), 12 continuous-time steps, 1 thread.
"""
from __future__ import annotations

import json
import pickle

import pytest
import torch

from comfyui_imagen.cascade import generate, super_resolve
from comfyui_imagen.checkpoints import CheckpointError, load_stage, peek_stage
from comfyui_imagen.files import list_stages, resolve
from comfyui_imagen.settings import Conditioning
from comfyui_imagen.text import TextEmbeds
from imagen_pytorch_oracle import imagen_pytorch, randomise

D = 32  # T5 width of the tiny U-Nets
STEPS = 12
BASE = dict(dim=16, dim_mults=(1, 2), num_resnet_blocks=1, layer_attns=(False, True), layer_cross_attns=(False, True),
            attn_heads=2, attn_dim_head=8, max_text_len=8)
SR = dict(dim=16, dim_mults=(1, 2), num_resnet_blocks=(1, 1), layer_attns=False, layer_cross_attns=(False, True),
          attn_heads=2, attn_dim_head=8, memory_efficient=True, use_linear_cross_attn=(False, True), max_text_len=8)


@pytest.fixture(scope="module")
def ip():
    torch.set_num_threads(1)
    return imagen_pytorch()


def _imagen(ip, **kwargs):
    config = dict(unets=[BASE, SR], image_sizes=[16, 32], timesteps=STEPS, text_embed_dim=D,
                  lowres_sample_noise_level=0.2, **kwargs)
    imagen = ip.ImagenConfig(**config).create().eval()
    for i, unet in enumerate(imagen.unets):
        randomise(unet, i)
    return imagen


def _trainer_checkpoint(ip, imagen, path, ema_shift: float = 0.0):
    trainer = ip.ImagenTrainer(imagen=imagen, use_ema=True)
    if ema_shift:
        with torch.no_grad():
            for ema in trainer.ema_unets:
                for p in ema.ema_model.parameters():
                    p.add_(ema_shift)
    trainer.save(str(path))
    return trainer


def _embeds(batch: int = 1, length: int = 5, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    embeds = torch.randn(batch, length, D, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[:, -1] = False  # one padded position, zeroed as imagen-pytorch's t5_encode_text does
    return embeds * mask[..., None], mask


def _conditioning(embeds, mask) -> Conditioning:
    empty = TextEmbeds(torch.zeros(1, 1, D), torch.ones(1, 1, dtype=torch.bool))  # "" is its end token alone
    return Conditioning(TextEmbeds(embeds, mask), empty)


@pytest.fixture(scope="module")
def checkpoint(ip, tmp_path_factory):
    path = tmp_path_factory.mktemp("ip") / "imagen.pt"
    imagen = _imagen(ip)
    _trainer_checkpoint(ip, imagen, path, ema_shift=0.01)
    return path, imagen


def test_a_trainer_checkpoint_lists_and_loads_each_unet_preferring_ema(ip, checkpoint):
    path, imagen = checkpoint
    assert list_stages([path.parent]) == ["imagen.pt [unet 1]", "imagen.pt [unet 2]"]
    assert resolve("imagen.pt [unet 2]", [path.parent]) == path.parent / "imagen.pt [unet 2]"
    base, sr = load_stage(f"{path} [unet 1]"), load_stage(f"{path} [unet 2]")
    assert (base.config.role, base.config.resolution) == ("base", 16)
    assert (sr.config.role, sr.config.resolution, sr.config.lowres_resolution) == ("sr", 32, 16)
    assert sr.config.lowres_upsample == "nearest" and sr.config.lowres_schedule == "continuous_linear"
    assert sr.recommended.noise_level == 200 and base.recommended.settings.cfg_parallel == 0.0
    online = load_stage(f"{path} [unet 1, online]")
    for ours, theirs, shift in ((base, imagen.unets[0], 0.01), (online, imagen.unets[0], 0.0)):
        for name, tensor in theirs.state_dict().items():
            assert torch.allclose(ours.unet.state_dict()[name], tensor + shift), name
    with pytest.raises(CheckpointError, match=r"holds 2 U-Nets.*\[unet 1\] or .*\[unet 2\]"):
        load_stage(path)
    with pytest.raises(CheckpointError, match="has no U-Net 3"):
        load_stage(f"{path} [unet 3]")
    assert peek_stage(f"{path} [unet 2]").unet.init_conv.convs[0].weight.is_meta


def test_the_base_stage_reproduces_imagen_pytorchs_own_sampler(ip, checkpoint):
    """Their ancestral DDPM over STEPS continuous-time steps, classifier-free guidance 3 with the parallel component
    removed and the learned null embedding as the unconditional branch, dynamic thresholding 0.95: same noise
    (their global RNG seeded as our item generator), same image to 1e-3."""
    path, imagen = checkpoint
    embeds, mask = _embeds()
    torch.manual_seed(11)
    theirs = imagen.sample(text_embeds=embeds, text_masks=mask, cond_scale=3.0, stop_at_unet_number=1,
                           use_tqdm=False, use_one_unet_in_gpu=False)
    # our file holds EMA weights shifted by 0.01: compare the online ones, which are imagen's
    stage = load_stage(f"{path} [unet 1, online]")
    settings = stage.recommended.settings.replace(cfg=3.0, seed=11)
    assert (settings.sampler, settings.spacing, settings.steps) == ("ddpm", "uniform", STEPS)
    ours = generate(stage, _conditioning(embeds, mask), settings=settings)
    assert (ours.clamp(-1, 1) + 1).div(2).sub(theirs).abs().max() <= 1e-3


def test_the_sr_stage_reproduces_imagen_pytorchs_own_sampler(ip, checkpoint, monkeypatch):
    """Their SR stage: the 16 px image resized by nearest, noised at lowres_sample_noise_level 0.2 on the linear
    log-SNR schedule, conditioned on that level's log-SNR. Their sampler draws the augmentation noise before the
    start noise, ours after it: the test hands theirs our draws in their order."""
    path, imagen = checkpoint
    embeds, mask = _embeds()
    low = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(5)
    ours_draws = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(STEPS + 2)]  # start, augmentation, steps
    queue = [ours_draws[1], ours_draws[0], *ours_draws[2:]]
    monkeypatch.setattr(torch, "randn_like", lambda t, **_: queue.pop(0).to(t.dtype))
    monkeypatch.setattr(torch, "randn", lambda *shape, **_: queue.pop(0))
    theirs = imagen.sample(text_embeds=embeds, text_masks=mask, cond_scale=2.0, start_at_unet_number=2,
                           start_image_or_video=low, use_tqdm=False, use_one_unet_in_gpu=False)
    monkeypatch.undo()
    stage = load_stage(f"{path} [unet 2, online]")
    settings = stage.recommended.settings.replace(cfg=2.0, seed=5)
    ours = super_resolve(stage, _conditioning(embeds, mask), low * 2 - 1, settings=settings)
    assert (ours.clamp(-1, 1) + 1).div(2).sub(theirs).abs().max() <= 1e-3


def test_dpmpp_2m_at_a_few_steps_runs_on_an_imagen_pytorch_stage(checkpoint):
    path, _ = checkpoint
    stage = load_stage(f"{path} [unet 1]")
    settings = stage.recommended.settings.replace(sampler="dpmpp_2m", spacing="karras", steps=6, cfg=3.0)
    out = generate(stage, _conditioning(*_embeds()), settings=settings)
    assert out.shape == (1, 3, 16, 16) and torch.isfinite(out).all()


def test_a_checkpoint_without_imagen_params_needs_its_settings_file(ip, tmp_path):
    unets = [ip.Unet(**BASE, text_embed_dim=D), ip.Unet(**SR, text_embed_dim=D)]
    imagen = ip.Imagen(unets, image_sizes=(16, 32), timesteps=STEPS, text_embed_dim=D, pred_objectives="v")
    for i, unet in enumerate(imagen.unets):
        randomise(unet, i)
    path = tmp_path / "plain.pt"
    ip.ImagenTrainer(imagen=imagen, use_ema=False).save(str(path))
    with pytest.raises(CheckpointError, match=r"records no Imagen settings.*plain\.json"):
        load_stage(f"{path} [unet 2]")
    side = tmp_path / "plain.json"
    side.write_text(json.dumps({"image_sizes": [16, 32], "pred_objectives": "v"}))
    with pytest.raises(CheckpointError, match=r"plain\.json lacks elucidated, noise_schedules, "
                                              r"lowres_sample_noise_level: add them"):
        load_stage(f"{path} [unet 2]")
    settings = {"image_sizes": [16, 32], "pred_objectives": "v", "elucidated": False, "noise_schedules": "cosine",
                "lowres_sample_noise_level": 0.3}
    x = torch.randn(1, 3, 32, 32)
    t, level = torch.tensor([0.3]), torch.tensor([0.5])
    e, m = _embeds()
    lowres = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = imagen.unets[1](x, t, text_embeds=e, text_mask=m, lowres_cond_img=lowres, lowres_noise_times=level)
    # the SR U-Net's linear cross-attention has exactly a CrossAttention's tensors: only the settings file can say
    for hints, matches in (({}, False), ({"unets": [{}, {"use_linear_cross_attn": [False, True]}]}, True)):
        side.write_text(json.dumps({**settings, **hints}))
        sr = load_stage(f"{path} [unet 2]")
        with torch.no_grad():
            got = sr.unet(x, t, text_embeds=e, text_mask=m, lowres_image=lowres, noise_level=level)
        assert ((got - want).abs().max() <= 1e-4) == matches, hints
    assert sr.config.prediction_type == "v_prediction" and sr.recommended.noise_level == 300
    assert sr.config.schedule == "continuous_cosine"  # imagen-pytorch pads 'cosine' to the first two U-Nets
    side.write_text(json.dumps({**settings, "unets": [{}, {"dim_mults": [1, 2]}]}))
    with pytest.raises(CheckpointError, match=r"unets\[1\] has \['dim_mults'\]; give either"):
        load_stage(f"{path} [unet 2]")


def test_three_unet_configs_saved_by_their_trainer_load_and_match(ip, tmp_path):
    """test_imagen_pytorch_unet's three configs (base, memory-efficient SR with linear cross-attention, linear
    attention with a plain init conv and nearest upsampling) as one Imagen without ImagenConfig, saved by
    ImagenTrainer.save: each loaded by load_stage (structure from the shapes, the two arguments the weights cannot
    show from the settings file's "unets") gives their U-Net's output to 1e-4."""
    from test_imagen_pytorch_unet import CONFIGS

    unets = [ip.Unet(**kwargs) for kwargs, _, _ in CONFIGS.values()]
    imagen = ip.Imagen(unets, image_sizes=(16, 32, 64), timesteps=STEPS, text_embed_dim=D).eval()
    for i, unet in enumerate(imagen.unets):
        randomise(unet, 20 + i)
    path = tmp_path / "three.pt"
    ip.ImagenTrainer(imagen=imagen, use_ema=False).save(str(path))
    hints = [{k: kwargs[k] for k in ("use_linear_cross_attn", "scale_skip_connection") if k in kwargs}
             for kwargs, _, _ in CONFIGS.values()]
    (tmp_path / "three.json").write_text(json.dumps({
        "image_sizes": [16, 32, 64], "elucidated": False, "pred_objectives": "noise", "noise_schedules": "cosine",
        "lowres_sample_noise_level": 0.2, "unets": hints}))
    g = torch.Generator().manual_seed(1)
    e, m = _embeds(batch=2)
    for number, (theirs, (_, size, _)) in enumerate(zip(imagen.unets, CONFIGS.values()), 1):
        stage = load_stage(f"{path} [unet {number}]")
        assert stage.config.role == ("base" if number == 1 else "sr")
        x, t = torch.randn(2, 3, *size, generator=g), torch.randn(2, generator=g) * 4
        low = dict(lowres_cond_img=torch.randn(2, 3, *size, generator=g), lowres_noise_times=torch.rand(2)) \
            if number > 1 else {}
        with torch.no_grad():
            want = theirs(x, t, text_embeds=e, text_mask=m, **low)
            got = stage.unet(x, t, text_embeds=e, text_mask=m, lowres_image=low.get("lowres_cond_img"),
                             noise_level=low.get("lowres_noise_times"))
        assert 0.05 < want.abs().max() and (got - want).abs().max() <= 1e-4, number


def test_persist_to_file_and_safetensors_conversions_load(ip, tmp_path):
    unet = ip.Unet(**BASE, text_embed_dim=D)
    randomise(unet, 4)
    path = tmp_path / "base.pt"
    unet.persist_to_file(str(path))
    (tmp_path / "base.json").write_text(json.dumps({"image_sizes": [16], "elucidated": False, "pred_objectives":
                                                   "noise", "noise_schedules": "cosine",
                                                   "lowres_sample_noise_level": 0.2}))
    stage = load_stage(path)
    assert stage.config.role == "base" and stage.config.unet.attn_heads == 2
    from safetensors.torch import save_file

    save_file({f"unets.0.{k}": v.contiguous() for k, v in unet.state_dict().items()},
              str(tmp_path / "conv.safetensors"))
    (tmp_path / "conv.json").write_text((tmp_path / "base.json").read_text())
    converted = load_stage(tmp_path / "conv.safetensors [unet 1]")
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([1.5])
    e, m = _embeds()
    with torch.no_grad():
        want = unet(x, t, text_embeds=e, text_mask=m)
        for s in (stage, converted):
            assert (s.unet(x, t, text_embeds=e, text_mask=m) - want).abs().max() <= 1e-4


def test_convert_writes_a_native_file_that_needs_no_settings_file(ip, checkpoint, tmp_path):
    from comfyui_imagen.cli import main

    path, _ = checkpoint
    out = tmp_path / "sr.safetensors"
    assert main(["convert", str(path), "--unet", "2", "-o", str(out)]) == 0
    native, original = load_stage(out), load_stage(f"{path} [unet 2]")
    assert native.config == original.config.replace(name=native.config.name)
    for name, tensor in original.unet.state_dict().items():
        assert torch.equal(native.unet.state_dict()[name], tensor), name
    assert main(["convert", f"{path} [unet 1]", "--unet", "2", "-o", str(out)]) == 2


def test_the_elucidated_stage_matches_their_preconditioned_network(ip, tmp_path):
    """ElucidatedImagen: D(x; sigma) = c_skip x + c_out F(c_in x, ln(sigma) / 4), thresholded; our EDM denoiser (no
    guidance) on the same U-Net and inputs."""
    config = ip.ElucidatedImagenConfig(unets=[BASE], image_sizes=[16], text_embed_dim=D, num_sample_steps=8)
    imagen = config.create().eval()
    randomise(imagen.unets[0], 9)
    path = tmp_path / "edm.pt"
    ip.ImagenTrainer(imagen=imagen, use_ema=False).save(str(path))
    stage = load_stage(f"{path} [unet 1]")
    assert stage.config.prediction_type == "edm" and stage.recommended.settings.steps == 8
    x = torch.randn(2, 3, 16, 16) * 3
    e, m = _embeds(batch=2)
    settings = stage.recommended.settings.replace(cfg=1.0)
    with torch.no_grad():
        for sigma in (0.05, 1.3, 40.0):
            want = imagen.preconditioned_network_forward(imagen.unets[0].forward_with_cond_scale, x, sigma,
                                                         sigma_data=0.5, clamp=True, text_embeds=e, text_mask=m)
            got = stage.denoiser(settings)(x, torch.full((2,), sigma), cond=dict(text_embeds=e, text_mask=m))
            assert (got - want).abs().max() <= 1e-4, sigma


class _Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_malicious_pickle_named_like_a_trainer_checkpoint_does_not_run(tmp_path, capsys):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": {"unets.0.init_conv.weight": torch.zeros(1)}, "imagen_params": _Boom()}, str(path))
    for name in (path, f"{path} [unet 1]"):
        with pytest.raises(CheckpointError, match=r"\(GLOBAL [\w.]*print\).*refused it unrun"):
            load_stage(name)
    legacy = tmp_path / "legacy.pt"  # a plain pickle (protocol 5), as pickle.dump writes it
    legacy.write_bytes(pickle.dumps({"model": _Boom()}, protocol=5))
    with pytest.raises(CheckpointError, match="nothing in it was run"):
        load_stage(f"{legacy} [unet 1]")
    assert "must never run" not in capsys.readouterr().out
    assert list_stages([tmp_path]) == ["checkpoint.pt", "legacy.pt"]  # listed as they are; loading says why not


def test_a_t5_of_the_wrong_width_names_the_t5_the_checkpoint_needs(ip, tmp_path):
    # imagen-pytorch's default T5 is t5-v1_1-base (768 wide): ComfyUI's t5xxl (4096) does not fit it
    unet = ip.Unet(**BASE, text_embed_dim=768)
    unet.persist_to_file(str(tmp_path / "base.pt"))
    (tmp_path / "base.json").write_text(json.dumps({"image_sizes": [16], "elucidated": False, "pred_objectives":
                                                   "noise", "noise_schedules": "cosine",
                                                   "lowres_sample_noise_level": 0.2}))
    stage = load_stage(tmp_path / "base.pt")
    xxl = TextEmbeds(torch.zeros(1, 4, 4096), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"4096 wide but this model was trained on 768-wide.*T5 v1\.1 base"):
        generate(stage, Conditioning(xxl, xxl), settings=stage.recommended.settings.replace(steps=2))


def test_the_cli_draws_an_imagen_pytorch_base_with_their_text_handling(tmp_path, monkeypatch):
    from comfyui_imagen.cli import main
    from comfyui_imagen.text import T5TextEncoder
    from tests.tiny_models import write_tiny_imagen_pytorch, write_tiny_t5

    write_tiny_imagen_pytorch(tmp_path / "imagen.pt")
    write_tiny_t5(tmp_path / "t5.safetensors")
    seen, encode = [], T5TextEncoder.encode
    monkeypatch.setattr(T5TextEncoder, "encode", lambda self, prompts, max_length=77, **kw: seen.append(
        (max_length, kw.get("preprocess_mode"))) or encode(self, prompts, max_length, **kw))
    out = tmp_path / "out.png"
    assert main(["generate", "A red circle", "--t5", str(tmp_path / "t5.safetensors"), "--tokenizer", "byte",
                 "--base", f"{tmp_path / 'imagen.pt'} [unet 1]", "--no-sr", "--steps", "2", "--spacing", "uniform",
                 "--preprocess", "none", "--max-length", "256", "-o", str(out), "--quiet"]) == 0
    assert out.is_file() and seen == [(256, "none")] * 2  # the prompt and the negative prompt


def _settings_file(path, **fields) -> None:
    base = {"image_sizes": [16, 32], "elucidated": False, "pred_objectives": "noise", "noise_schedules": "cosine",
            "lowres_sample_noise_level": 0.2}
    path.with_suffix(".json").write_text(json.dumps({**base, **fields}))


def test_what_the_samplers_cannot_feed_is_refused_naming_it(ip, tmp_path):
    path = tmp_path / "selfcond.pt"
    torch.save(ip.Unet(**BASE, text_embed_dim=D, self_cond=True).state_dict(), str(path))
    _settings_file(path, image_sizes=[16])
    with pytest.raises(CheckpointError, match="self_cond=True, or cond_images_channels"):
        load_stage(path)
    video = tmp_path / "video.pt"
    torch.save(ip.Unet(**BASE, text_embed_dim=D).state_dict(), str(video))
    _settings_file(video, image_sizes=[16], video=True)
    with pytest.raises(CheckpointError, match="video Imagen"):
        load_stage(video)
    empty = tmp_path / "placeholders.pt"
    torch.save({"model": {"unets.0.dummy_parameter": torch.zeros(1)}, "imagen_params": {"image_sizes": [16]}},
               str(empty))
    with pytest.raises(CheckpointError, match="no trained U-Net.*NullUnet"):
        load_stage(empty)


def test_a_unet_saved_alone_is_placed_in_its_cascade(ip, tmp_path):
    path = tmp_path / "sr.pt"
    ip.Unet(**SR, text_embed_dim=D, lowres_cond=True).persist_to_file(str(path))
    _settings_file(path, image_sizes=[16, 32, 64])
    with pytest.raises(CheckpointError, match='image_sizes .16, 32, 64. name 3 U-Nets.*add "unet_number"'):
        load_stage(path)
    _settings_file(path, image_sizes=[16, 32, 64], unet_number="3")
    with pytest.raises(CheckpointError, match="unet_number must be a whole number"):
        load_stage(path)
    _settings_file(path, image_sizes=[16, 32, 64], unet_number=3)
    assert (load_stage(path).config.lowres_resolution, load_stage(path).config.resolution) == (32, 64)
    _settings_file(path)  # two sizes: an SR U-Net is the second
    assert (load_stage(path).config.lowres_resolution, load_stage(path).config.resolution) == (16, 32)


def test_an_imagen_of_one_unet_takes_its_arguments_from_the_settings_file(ip, tmp_path):
    # Imagen.__init__ gives its U-Nets the T5's width whatever their own arguments say (768 by default)
    imagen = ip.Imagen([ip.Unet(**BASE)], image_sizes=(16,), timesteps=STEPS, text_embed_dim=D).eval()
    randomise(imagen.unets[0], 3)
    path = tmp_path / "one.pt"
    ip.ImagenTrainer(imagen=imagen, use_ema=False).save(str(path))
    _settings_file(path, image_sizes=[16], unets=[BASE])
    stage = load_stage(path)
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([0.7])
    e, m = _embeds()
    with torch.no_grad():
        want = imagen.unets[0](x, t, text_embeds=e, text_mask=m)
        assert (stage.unet(x, t, text_embeds=e, text_mask=m) - want).abs().max() <= 1e-4


def test_a_legacy_pickle_is_listed_whole_and_still_loads_by_unet(tmp_path):
    from tests.tiny_models import write_tiny_imagen_pytorch

    write_tiny_imagen_pytorch(tmp_path / "zip.pt")
    raw = torch.load(str(tmp_path / "zip.pt"), weights_only=True)
    torch.save(raw, str(tmp_path / "legacy.pt"), _use_new_zipfile_serialization=False)
    assert list_stages([tmp_path]) == ["legacy.pt", "zip.pt [unet 1]", "zip.pt [unet 2]"]  # not read to list it
    assert load_stage(f"{tmp_path / 'legacy.pt'} [unet 2]").config.role == "sr"


def test_convert_picks_the_online_weights(checkpoint, tmp_path):
    from comfyui_imagen.cli import main

    path, imagen = checkpoint
    out = tmp_path / "online.safetensors"
    assert main(["convert", f"{path} [unet 2]", "--online", "-o", str(out)]) == 0
    for name, tensor in imagen.unets[1].state_dict().items():
        assert torch.equal(load_stage(out).unet.state_dict()[name], tensor), name


def test_an_elucidated_stages_karras_grid_takes_its_rho(ip, tmp_path):
    from comfyui_imagen.respacing import get_sigmas_karras

    config = ip.ElucidatedImagenConfig(unets=[BASE], image_sizes=[16], text_embed_dim=D, num_sample_steps=8,
                                       rho=5.0, sigma_max=60.0)
    path = tmp_path / "edm.pt"
    ip.ImagenTrainer(imagen=config.create(), use_ema=False).save(str(path))
    stage = load_stage(path)
    settings = stage.recommended.settings
    assert (settings.sampler, settings.spacing, settings.steps) == ("heun", "karras", 8)
    assert torch.allclose(stage.sigmas(settings), get_sigmas_karras(8, 0.002, 60.0, 5.0).float())


def test_sigma_spaced_grids_start_where_their_ddpm_first_lands(checkpoint):
    # the float32 cap puts the cosine schedule's t = 1 at sigma 2.3e7: a Karras grid from there would spend most
    # steps on pure noise; it starts at sigma(1 - 1/timesteps) instead, their DDPM's first landing
    path, _ = checkpoint
    stage = load_stage(f"{path} [unet 1]")
    settings = stage.recommended.settings
    ddpm = stage.sigmas(settings)
    assert ddpm[0] > 1e7 and ddpm.numel() == STEPS + 1
    for spacing in ("karras", "exponential"):
        grid = stage.sigmas(settings.replace(sampler="dpmpp_2m", spacing=spacing, steps=30))
        assert torch.isclose(grid[0], ddpm[1]) and grid[-2] == ddpm[-1]
