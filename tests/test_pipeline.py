"""The cascade runner holds one model at a time (issue #13): the T5 is released before the base stage loads, each
stage before the next; kept and given models stay; the pictures are the all-loaded cascade's, bit for bit. On the
bundled demo cascade (fp32: the device's dtype choice keeps it fp32)."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch
from PIL import Image

from comfyui_imagen import cli
from comfyui_imagen.cascade import SamplingSettings
from comfyui_imagen.cli import cascade_loaders, load_cascade, text_to_image
from comfyui_imagen.pipeline import CascadeRunner

FAST = SamplingSettings(steps=2, cfg=3.0, seed=5)
CLI_FAST = ["--steps", "2", "--sr-steps", "2", "--quiet"]


class Recorder:
    """Wraps `cascade_loaders`' functions: records ("load", name) with the names of the models still alive at that
    moment (through weak references only), and ("loaded", name, dtype of the first parameter)."""

    def __init__(self):
        self.log: list = []
        self.refs: dict[str, weakref.ref] = {}

    def alive(self) -> list[str]:
        gc.collect()
        return sorted(name for name, ref in self.refs.items() if ref() is not None)

    def wrap(self, name: str, load):
        def wrapped():
            self.log.append(("load", name, self.alive()))
            model = load()
            self.refs[name] = weakref.ref(model)
            return model
        return wrapped

    def loaders(self, *args, **kwargs):
        t5, base, srs = cascade_loaders(*args, **kwargs)
        return (self.wrap("t5", t5), self.wrap("base", base), [self.wrap(f"sr{i + 1}", s) for i, s in enumerate(srs)])


def test_runner_releases_the_t5_before_the_base_stage_and_each_stage_before_the_next():
    rec, events = Recorder(), []
    runner = CascadeRunner(*rec.loaders(), on_event=lambda action, name: events.append((action, name)))
    with torch.inference_mode():
        outs = runner(["a red circle"], base_settings=FAST, sr_settings=FAST)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 64, 64), (1, 3, 256, 256)]
    assert events == [("load", "t5"), ("release", "t5"), ("load", "base"), ("release", "base"),
                      ("load", "sr1"), ("release", "sr1")]
    # nothing else held a model: each was dead when the next one started loading, and all are dead now
    assert rec.log == [("load", "t5", []), ("load", "base", []), ("load", "sr1", [])]
    assert rec.alive() == []
    assert not (runner.t5.loaded or runner.base.loaded or runner.srs[0].loaded)


def test_runner_draws_the_pictures_of_the_all_loaded_cascade():
    with torch.inference_mode():
        loaded = text_to_image(load_cascade(), ["a red circle", "a blue square"], negative="green",
                               base_settings=FAST, sr_settings=FAST)
        lazy = CascadeRunner(*cascade_loaders())(["a red circle", "a blue square"], negative="green",
                                                 base_settings=FAST, sr_settings=FAST)
    assert len(lazy) == len(loaded) == 2
    for a, b in zip(lazy, loaded):
        assert torch.equal(a, b)


def test_kept_models_stay_loaded_across_calls_until_released():
    events = []
    runner = CascadeRunner(*cascade_loaders(), keep=True, on_event=lambda action, name: events.append((action, name)))
    with torch.inference_mode():
        first = runner(["a red circle"], base_settings=FAST, sr_settings=FAST)
        second = runner(["a red circle"], base_settings=FAST, sr_settings=FAST)
    assert events == [("load", "t5"), ("load", "base"), ("load", "sr1")]  # once, none released
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    runner.release()
    assert events[3:] == [("release", "t5"), ("release", "base"), ("release", "sr1")]
    assert not runner.base.loaded


def test_given_models_are_the_callers_and_never_released():
    cascade = load_cascade()
    events = []
    runner = CascadeRunner(cascade.t5, cascade.base, cascade.srs, on_event=lambda *e: events.append(e))
    with torch.inference_mode():
        runner(["a red circle"], base_settings=FAST, sr_settings=FAST)
    runner.release()
    assert events == [] and runner.t5.get() is cascade.t5 and runner.srs[0].get() is cascade.srs[0]


def test_settings_may_be_a_function_of_the_loaded_stage():
    seen = []

    def settings(stage):
        seen.append(stage.config.role)
        return stage.recommended.settings.replace(steps=1, seed=2)

    with torch.inference_mode():
        CascadeRunner(*cascade_loaders())(["a red circle"], base_settings=settings, sr_settings=[settings])
    assert seen == ["base", "sr"]
    with pytest.raises(ValueError, match="2 settings for 1 SR stages"):
        CascadeRunner(*cascade_loaders())(["x"], sr_settings=[settings, settings])


def test_cli_holds_one_model_at_a_time_and_keep_models_draws_the_same(tmp_path, monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(cli, "cascade_loaders", rec.loaders)
    assert cli.main(["generate", "a red circle", "-o", str(tmp_path / "one.png"), *CLI_FAST]) == 0
    assert rec.log == [("load", "t5", []), ("load", "base", []), ("load", "sr1", [])]
    rec.log.clear()
    assert cli.main(["generate", "a red circle", "-o", str(tmp_path / "kept.png"), "--keep-models", *CLI_FAST]) == 0
    assert rec.log == [("load", "t5", []), ("load", "base", ["t5"]), ("load", "sr1", ["base", "t5"])]
    one, kept = (np.asarray(Image.open(tmp_path / f"{n}.png")) for n in ("one", "kept"))
    assert one.shape == (256, 256, 3) and np.array_equal(one, kept)


def test_cli_refuses_an_unknown_dtype_before_loading(tmp_path, monkeypatch, capsys):
    def no_loading(*a, **k):
        raise AssertionError("models were set up before the arguments were checked")

    monkeypatch.setattr(cli, "cascade_loaders", no_loading)
    assert cli.main(["generate", "x", "-o", str(tmp_path / "o.png"), "--dtype", "fp64"]) == 2
    assert "--dtype 'fp64': use one of auto, fp32, fp16, bf16" in capsys.readouterr().err


def test_cli_dtype_flag_reaches_the_stages(tmp_path, monkeypatch):
    seen = []
    real = cli.cascade_loaders

    def spy(*args, **kwargs):
        seen.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "cascade_loaders", spy)
    assert cli.main(["generate", "x", "-o", str(tmp_path / "o.png"), "--no-sr", "--dtype", "bf16", *CLI_FAST]) == 0
    assert cli.main(["generate", "x", "-o", str(tmp_path / "o.png"), "--no-sr", *CLI_FAST]) == 0
    assert seen == [torch.bfloat16, "auto"]


def test_steps_given_over_an_if_preset_run_that_many_steps():
    from torch import nn

    from comfyui_imagen.checkpoints import IF_STAGES
    from comfyui_imagen.stage import Stage

    stage = Stage(unet=nn.Identity(), config=IF_STAGES["IF-I-XL"])
    assert stage.recommended.settings.spacing == "smart100"  # IF's: 100 steps whatever steps says
    assert cli.stage_settings(stage, 3).spacing == "smart100"
    one = cli.stage_settings(stage, 3, steps=1)
    assert (one.steps, one.spacing, one.sampler, one.cfg) == (1, "trailing", "ddpm", 7.0)
    assert stage.sigmas(one).numel() == 2
    assert cli.stage_settings(stage, 3, steps=27, spacing="smart27").spacing == "smart27"
