"""The speed benchmarks run end to end on tiny shapes and report what they promise (structure, not timings):
benchmarks/sampling_overhead.py (issue #14 item 4), benchmarks/unet_speed.py without diffusers, and
benchmarks/gpu_suite.py --cpu-tiny on a subset of its steps (item 5)."""
from __future__ import annotations

import argparse
import json
import math
import sys

import pytest
import torch

from benchmarks import gpu_suite, sampling_overhead, unet_speed
from comfyui_imagen.samplers import MASKED_SAMPLERS, SAMPLERS


def test_sampling_overhead_tiny(tmp_path, capsys):
    """Every sampler (and RePaint) on a tiny random base stage, the SR row on a tiny SR stage: each row counts the
    U-Net calls it replayed (guided: batch 2), one preview in every step, finite ratios; the JSON is the report."""
    threads = torch.get_num_threads()
    report = sampling_overhead.main(["--tiny", "--json", str(tmp_path / "so.json")])
    assert torch.get_num_threads() == threads  # restored
    assert json.loads((tmp_path / "so.json").read_text()) == json.loads(json.dumps(report))
    rows = {(r["stage"], r["sampler"]): r for r in report["rows"]}
    assert set(rows) == {("tiny-base", s) for s in (*SAMPLERS, *MASKED_SAMPLERS)} | {("tiny-sr", "dpmpp_2m")}
    for (stage, sampler), r in rows.items():
        assert r["steps"] == 2 and r["unet_batch"] == 2  # cond and uncond in one call
        want = 2 * 2 if sampler == "repaint" else 2      # repaint: --resample 2 passes per step
        assert r["unet_calls"] == want, (stage, sampler)
        assert r["previews_per_step"] == 1 and r["steps_with_preview"] == 2 and r["preview_ok"]
        for key in ("ratio", "ratio_wall", "ratio_cpu", "in_run_ratio"):
            assert math.isfinite(r[key]) and r[key] > 0
        assert r["over_limit"] == (r["ratio"] > report["limit"])
    out = capsys.readouterr().out
    assert "| tiny-base | heun |" in out and "more than one preview per step: none" in out


def test_preview_counts_per_step():
    preview = sampling_overhead.Preview(64)
    for step in (0, 1, 1):
        preview({"step": step, "x0": torch.zeros(1, 3, 8, 8)})
    assert dict(preview.per_step) == {0: 1, 1: 2}


def test_unet_speed_without_diffusers(monkeypatch, capsys):
    """A GPU image may lack diffusers: ours is timed alone, with a note, instead of an ImportError."""
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers -> ImportError
    report = unet_speed.main(["--preset", "IF-I-tiny", "--size", "16", "--dtypes", "fp32", "--repeats", "1",
                              "--tokens", "4", "--matmul-size", "64"])
    assert report["peer"] is None and len(report["rows"]) == 1
    row = report["rows"][0]
    assert row["ours_ms"] > 0 and math.isnan(row["diffusers_ms"]) and row["gflop"] > 0
    assert "diffusers is not installed" in capsys.readouterr().out


def test_gpu_suite_cpu_tiny(tmp_path):
    """--cpu-tiny on two of its steps: one log and one JSON in the folder, each step's own report inside."""
    pytest.importorskip("diffusers")
    report = gpu_suite.main([str(tmp_path), "--cpu-tiny", "--only", "unet-if-i,sampling-if-i"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_suite.json", "gpu_suite.log"]
    assert json.loads((tmp_path / "gpu_suite.json").read_text())["steps"][0]["step"] == "unet-if-i"
    assert report["cpu_tiny"] and report["diffusers"]
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["unet-if-i", "sampling-if-i"]
    assert all(s["rc"] == 0 and not s["timed_out"] for s in steps.values())
    unet = steps["unet-if-i"]["report"]
    assert unet["preset"] == "IF-I-tiny" and unet["peer"] == "diffusers"
    assert [r["dtype"] for r in unet["rows"]] == ["fp32", "bf16"]
    assert unet["rows"][0]["max_abs_diff"] < 1e-4  # same weights in both models
    sampling = steps["sampling-if-i"]["report"]
    assert {r["sampler"] for r in sampling["rows"]} == {"ddpm", "dpmpp_2m"}
    log = (tmp_path / "gpu_suite.log").read_text()
    assert "# summary" in log and "| unet-if-i |" in log and "| sampling-if-i |" in log


def test_gpu_suite_plans_the_gpu_steps():
    """Without --cpu-tiny the steps carry the issue's shapes and flags, and the peers drop out when missing."""
    args = argparse.Namespace(cpu_tiny=False, device="cuda", t5=None, t5_layers=24, only=None)
    steps = {s.name: s for s in gpu_suite.plan(args, have_diffusers=False, have_transformers=False)}
    assert list(steps) == list(gpu_suite.STEP_NAMES)
    assert steps["unet-if-i"].args[:4] == ["--preset", "IF-I-XL", "--size", "64"]
    assert "--no-peer" in steps["unet-if-i"].args and "bf16,fp16" in steps["unet-if-i"].args
    assert steps["unet-if-ii"].args[:4] == ["--preset", "IF-II-L", "--size", "256"]
    assert "--synthetic-layers" in steps["t5"].args and "--no-peer" in steps["t5"].args
    assert all(s.args[s.args.index("--device") + 1] == "cuda" for s in steps.values())
