"""The command lines on the bundled cascade: `python -m comfyui_imagen generate` makes a 256 px PNG from a prompt;
`python -m comfyui_imagen.evaluate` runs on a small prompt set (no accuracy threshold here: that is the report's)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from comfyui_imagen.cascade import SamplingSettings
from comfyui_imagen.cli import load_cascade, main, text_to_image
from comfyui_imagen.data import ShapesDataset, evaluation_prompts, judge, render
from comfyui_imagen.demo import demo_files
from comfyui_imagen.evaluate import main as evaluate_main
from comfyui_imagen.evaluate import contact_sheet, parse_sweep, psnr

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--steps", "2", "--sr-steps", "2"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: two threads can be far slower than one
    yield
    torch.set_num_threads(threads)


def test_bundled_files_exist_and_fit_the_budget():
    files = demo_files()
    demo = ROOT / "comfyui_imagen" / "demo"
    assert files == {"t5": demo / "imagen-demo-t5.safetensors", "base": demo / "imagen-demo-base64.safetensors",
                     "sr": demo / "imagen-demo-sr256.safetensors"}
    assert sum(p.stat().st_size for p in files.values()) <= 40 * 2**20


def test_bundled_cascade_returns_256px_for_a_prompt():
    cascade = load_cascade()
    assert cascade.base.config.role == "base" and [s.config.role for s in cascade.srs] == ["sr"]
    assert cascade.base.config.text_embed_dim == cascade.t5.config.d_model == cascade.srs[0].config.text_embed_dim
    settings = SamplingSettings(steps=2, cfg=4.0, seed=3)
    with torch.inference_mode():
        base, sr = text_to_image(cascade, ["a red circle"], base_settings=settings, sr_settings=settings)
    assert base.shape == (1, 3, 64, 64) and sr.shape == (1, 3, 256, 256)
    assert base.std() > 0.1  # a picture, not a flat canvas (measured 0.52)
    # the SR stage draws the base image at 256 px: brought back to 64 px it is the base image (measured 37.6 dB)
    assert psnr(F.interpolate(sr, size=(64, 64), mode="area"), base) > 30


def test_sdedit_super_resolution_keeps_the_size():
    cascade = load_cascade()
    settings = SamplingSettings(steps=4, cfg=1.0, seed=0)
    with torch.inference_mode():
        outs = text_to_image(cascade, ["a red circle"], base_settings=settings, sr_strength=0.5)
    assert [tuple(o.shape) for o in outs] == [(1, 3, 64, 64), (1, 3, 256, 256)]


def test_generate_writes_a_png_and_draws_progress(tmp_path, capsys):
    out = tmp_path / "out.png"
    assert main(["generate", "a red circle to the left of a blue square", "-o", str(out), *FAST]) == 0
    assert Image.open(out).size == (256, 256)
    err = capsys.readouterr().err
    assert "base [" in err and "2/2" in err and "sr1 [" in err and "wrote" in err


def test_batch_writes_one_file_per_image_and_seeds_differ(tmp_path):
    out = tmp_path / "b.png"
    assert main(["generate", "a blue square", "-o", str(out), "--batch-size", "2", "--no-sr", "--quiet", *FAST]) == 0
    a, b = (Image.open(tmp_path / f"b-{k}.png") for k in (0, 1))
    assert a.size == (64, 64) and a.tobytes() != b.tobytes()


def test_bad_sampler_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "a red circle", "-o", str(tmp_path / "x.png"), "--sampler", "nope", "--quiet"]) == 2
    assert "dpmpp_2m" in capsys.readouterr().err  # names the valid choices


def test_module_entry_point(tmp_path):
    """`python -m comfyui_imagen` is `main`: the same arguments draw the same picture as a call in this process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["generate", "a yellow triangle", "--no-sr", "--quiet", *FAST]
    proc = subprocess.run([sys.executable, "-m", "comfyui_imagen", *args, "-o", str(tmp_path / "m.png")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert main([*args, "-o", str(tmp_path / "here.png")]) == 0
    there, here = (np.asarray(Image.open(tmp_path / name), dtype=np.int16) for name in ("m.png", "here.png"))
    assert there.shape == (64, 64, 3) and np.abs(there - here).max() <= 1  # one process's rounding from another's


def test_psnr_known_values():
    assert psnr(torch.full((1, 3, 4, 4), -1.0), torch.ones(1, 3, 4, 4)) == pytest.approx(0.0)
    assert psnr(torch.zeros(1, 3, 4, 4), torch.full((1, 3, 4, 4), 0.2)) == pytest.approx(20.0)
    assert math.isfinite(psnr(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)))


def test_parse_sweep():
    assert parse_sweep("ddpm:100, dpmpp_2m:10,") == [("ddpm", 100), ("dpmpp_2m", 10)]
    with pytest.raises(ValueError, match="SAMPLER:STEPS"):
        parse_sweep("ddpm")


def test_small_evaluation_reports_every_section(tmp_path, capsys):
    out = tmp_path / "eval.json"
    code = evaluate_main(["--n-seen", "1", "--n-heldout", "1", "--steps", "2", "--sr-steps", "2",
                          "--sweep", "dpmpp_2m:2", "--sweep-prompts", "1", "--psnr-count", "2", "--json", str(out),
                          "--grid", str(tmp_path / "grid.png")])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["prompts"] == 4
    # The reported accuracy is the judge's verdict on the drawn images: re-judge the 64 px images the contact sheet
    # shows (one row, per prompt truth | 64 px | 256 px, x2), and read the 256 px verdicts off its green/red bars.
    grid = np.asarray(Image.open(tmp_path / "grid.png").convert("RGB"))[::2, ::2]
    prompts = evaluation_prompts(n_seen=1, n_heldout=1, seed=0)  # seen/1, seen/2, heldout/1, heldout/2
    cells = [k * (3 * 64 + 4) for k in range(4)]
    verdicts = {"64": [judge(np.ascontiguousarray(grid[:64, x + 64:x + 128]), p.scene).correct
                       for x, p in zip(cells, prompts)],
                "256": [grid[66, x + 140].tolist() == [40, 170, 60] for x in cells]}
    for key, correct in verdicts.items():
        groups = result["accuracy"][key]
        assert groups["all"]["n"] == 4 and groups["seen/1"]["n"] == 1 and groups["heldout/2"]["n"] == 1
        assert [groups[g]["correct"] for g in ("seen/1", "seen/2", "heldout/1", "heldout/2")] == correct, key
        assert groups["all"]["correct"] == pytest.approx(sum(correct) / 4), key
    # bicubic's PSNR computed here on the same two dataset renders (the report pools a batch's squared error)
    items = [ShapesDataset(seed=0, split="all").item(i) for i in range(2)]
    small, big = (torch.from_numpy(np.stack([it.image(r) for it in items])).permute(0, 3, 1, 2) / 255.0
                  for r in (64, 256))
    bicubic = F.interpolate(small, size=(256, 256), mode="bicubic", align_corners=False).clamp(0, 1)
    reference = 10 * math.log10(1 / float((bicubic - big).pow(2).mean()))
    assert result["sr_psnr"]["n"] == 2 and result["sr_psnr"]["bicubic"] == pytest.approx(reference, abs=1e-3)
    assert math.isfinite(result["sr_psnr"]["sr"])
    assert [(r["sampler"], r["steps"]) for r in result["sweep"]] == [("dpmpp_2m", 2)]
    report = capsys.readouterr().out
    assert "Fraction correct at 64 px" in report and "SR 64→256 PSNR" in report and "| dpmpp_2m | 2 |" in report
    # 4 prompts in one row of 8 cells: truth | 64 px | 256 px, 64 px tiles, a 4 px bar, 4 px gaps, all x2
    assert Image.open(tmp_path / "grid.png").size == (8 * (3 * 64 + 4) * 2, (64 + 4 + 4) * 2)


def test_contact_sheet_marks_each_judged_image():
    prompts = evaluation_prompts(n_seen=1, n_heldout=0, seed=0)[:1]
    truth = render(prompts[0].scene, 64)
    images = {"64": [truth], "256": [np.full((256, 256, 3), 245, np.uint8)]}  # right; an empty white canvas
    verdicts = {key: [judge(img, prompts[0].scene) for img in imgs] for key, imgs in images.items()}
    assert verdicts["64"][0].correct and not verdicts["256"][0].correct
    sheet = contact_sheet(prompts, images, verdicts, per_row=1, scale=1)
    assert sheet.shape == (64 + 4 + 4, 3 * 64 + 4, 3)
    np.testing.assert_array_equal(sheet[:64, :64], truth)
    np.testing.assert_array_equal(sheet[:64, 64:128], truth)
    assert sheet[66, 70].tolist() == [40, 170, 60] and sheet[66, 140].tolist() == [220, 40, 40]


def test_a_prompt_outside_the_demo_grammar_gets_one_warning_naming_what_it_draws(tmp_path, capsys):
    from comfyui_imagen.cli import demo_prompt_warning

    assert demo_prompt_warning("a red circle to the left of a blue square") is None
    assert demo_prompt_warning("A small Blue square in the top left on a black background.") is None
    warning = demo_prompt_warning("a photo of a corgi wearing a red scarf")
    assert "corgi" in warning and "purple" in warning and "triangle" in warning and "--t5" in warning
    assert main(["generate", "a photo of a corgi", "-o", str(tmp_path / "o.png"), "--steps", "1", "--no-sr",
                     "--quiet"]) == 0
    assert capsys.readouterr().err.count("warning: the bundled demo draws only") == 1
