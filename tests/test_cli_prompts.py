"""`generate --prompts FILE -o DIR`: the file's formats and their errors (by line), output names, seeds per line,
resuming over existing files, and torchrun sharding the prompts over two CPU processes with the pixels of one."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from comfyui_imagen import cli
from comfyui_imagen.prompt_files import PromptJob, image_names, launch_rank, read_prompt_file
from comfyui_imagen.samplers import SEED_MAX
from tests.test_cli import ROOT

FAST = ["--no-sr", "--steps", "2", "--quiet"]


def write(tmp_path, text, name="p.txt"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def pixels(path):
    return np.asarray(Image.open(path))


def test_text_lines_are_numbered_by_line_and_seeded_by_number(tmp_path):
    """Blank lines are skipped but keep their numbers: blanking a prompt moves no other output or seed."""
    path = write(tmp_path, "a red circle\n\n  \r\n a blue square \r\n\na green triangle")
    assert read_prompt_file(path, seed=10, negative="x") == [
        PromptJob(0, 1, "a red circle", "x", 10, "00000.png", ("00000.png",)),
        PromptJob(3, 4, "a blue square", "x", 13, "00003.png", ("00003.png",)),
        PromptJob(5, 6, "a green triangle", "x", 15, "00005.png", ("00005.png",))]
    jobs = read_prompt_file(path, seed=SEED_MAX - 8, batch_size=3)  # no two images share a seed; wrapped at 2^64
    assert [(j.seed, j.outputs) for j in jobs][1:] == [(0, ("00003-0.png", "00003-1.png", "00003-2.png")),
                                                        (6, ("00005-0.png", "00005-1.png", "00005-2.png"))]
    assert image_names("cat.png", 1) == ["cat.png"] and image_names("a.b.jpg", 2) == ["a.b-0.jpg", "a.b-1.jpg"]


def test_jsonl_lines_give_their_seed_negative_and_name(tmp_path):
    lines = [{"prompt": "a red circle", "seed": 7, "negative": "a blue square", "out": "red.webp"}, {},
             {"prompt": "a yellow circle"}, {"prompt": "x", "seed": 3.0, "negative": None, "out": "Y.JPG"}]
    path = write(tmp_path, "\ufeff" + "\n".join(json.dumps(line) if line else "" for line in lines))  # a BOM too
    assert read_prompt_file(path, seed=100, negative="n", batch_size=2) == [
        PromptJob(0, 1, "a red circle", "a blue square", 7, "red.webp", ("red-0.webp", "red-1.webp")),
        PromptJob(2, 3, "a yellow circle", "n", 104, "00002.png", ("00002-0.png", "00002-1.png")),
        PromptJob(3, 4, "x", "n", 3, "Y.JPG", ("Y-0.JPG", "Y-1.JPG"))]
    # a .jsonl name is JSONL whatever its lines say; JSON that is not an object leaves a text file text
    assert read_prompt_file(write(tmp_path, '{"prompt": "a"}', "p.jsonl"))[0].prompt == "a"
    assert [j.prompt for j in read_prompt_file(write(tmp_path, '42\n"quoted"\n[1]'))] == ["42", '"quoted"', "[1]"]


BAD_FILES = [
    ('{"prompt": "a"}\n\n{"seed": 3}', r"p.txt line 3: give a non-empty \"prompt\""),
    ('{"prompt": "a"}\n{"prompt": "  "}', r"line 2: give a non-empty \"prompt\""),
    ('{"prompt": 3}', r'line 1: "prompt" must be text, got 3'),
    ('{"prompt": "a", "negative": ["b"]}', r'line 1: "negative" must be text'),
    ('{"prompt": "a", "seed": -1}', r'line 1: "seed" must be an integer from 0 to'),
    ('{"prompt": "a", "seed": "3"}', r'line 1: "seed" must be an integer .*pass a number, not text'),
    ('{"prompt": "a", "seed": true}', r'line 1: "seed" must be an integer'),
    ('{"prompt": "a", "out": "../x.png"}', r'line 1: "out" "../x.png" must be a plain file name'),
    ('{"prompt": "a", "out": "sub\\\\x.png"}', r"must be a plain file name \(no folder"),
    ('{"prompt": "a", "out": "x.gif"}', r'line 1: "out" must be a file name ending in .png, .jpg, .jpeg, .webp'),
    ('{"prompt": "a", "out": 5}', r'"out" must be a file name ending in'),
    ('{"prompt": "a", "negativ": "b"}', r"line 1: unknown key 'negativ'; the keys are prompt, seed, negative, out"),
    ('{"prompt": "a"}\na blue square', r"line 2 is not a JSON object \(Expecting value at column 1\)"),
    ('{"prompt": "a"}\n{"prompt": "b",}', r"line 2 is not a JSON object"),
    ('{"prompt": "a", "out": "x.png"}\n\n{"prompt": "b", "out": "X.png"}', r"lines 1 and 3 both write X\.png"),
    ('{"prompt": "a", "out": "00001.png"}\n{"prompt": "b"}', r"lines 1 and 2 both write 00001\.png"),
    ('{"prompt": "a \\udcff"}', r"line 1: the prompt is not valid text"),
    (b"a red circle\na \xff circle", r"p.txt line 2 is not UTF-8 text"),
    ("\n \n", r"no prompts in the file"),
]


@pytest.mark.parametrize("text,match", BAD_FILES, ids=[str(t)[:40] for t, _ in BAD_FILES])
def test_a_bad_file_is_an_error_naming_its_line(tmp_path, text, match):
    with pytest.raises(ValueError, match=match):
        read_prompt_file(write(tmp_path, text))


def test_launch_rank_reads_torchruns_environment():
    assert launch_rank({}) == (0, 1, 0)
    assert launch_rank({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == (3, 4, 1)
    for env, match in (({"WORLD_SIZE": "2"}, "RANK is None"), ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK must be"),
                       ({"WORLD_SIZE": "x", "RANK": "0"}, "WORLD_SIZE is 'x'")):
        with pytest.raises(ValueError, match=match):
            launch_rank(env)


def loads_counted(monkeypatch):
    """cli.cascade_loaders with every model load recorded by name."""
    real, loads = cli.cascade_loaders, []

    def counting(*args, **kwargs):
        def counted(name, load):
            return lambda: loads.append(name) or load()
        t5, base, srs = real(*args, **kwargs)
        return counted("t5", t5), counted("base", base), [counted("sr", sr) for sr in srs]

    monkeypatch.setattr(cli, "cascade_loaders", counting)
    return loads


@pytest.mark.parametrize("args,match", [
    ([], r"nothing to draw: give a prompt .* or --prompts FILE"),
    (["a red circle", "--prompts", "{p}"], r"a prompt and --prompts FILE were both given"),
    (["--prompts", "{tmp}/missing.txt"], r"--prompts .*missing\.txt: no such file"),
    (["--prompts", "{p}", "-o", "{tmp}/o.png"], r"with --prompts, -o is the folder the images go into"),
    (["--prompts", "{p}", "-o", "{p}"], r"with --prompts, -o is the folder"),
    (["--prompts", "{bad}"], r"bad\.txt line 2: unknown key 'sed'"),
    (["a red circle", "TORCHRUN"], r"under torchrun \(2 processes\) every process would draw the same prompt"),
    (["--prompts", "{p}", "--device", "cuda:1", "TORCHRUN"], r"--device cuda:1 under torchrun would put every"),
])
def test_cli_refuses_before_loading_a_model(tmp_path, monkeypatch, capsys, args, match):
    loads = loads_counted(monkeypatch)
    if "TORCHRUN" in args:  # as torchrun --nproc_per_node 2 sets it for the first process
        args = [a for a in args if a != "TORCHRUN"]
        for key, value in (("RANK", "0"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "0")):
            monkeypatch.setenv(key, value)
    files = {"{p}": write(tmp_path, "a red circle"), "{tmp}": tmp_path,
             "{bad}": write(tmp_path, '{"prompt": "a"}\n{"prompt": "b", "sed": 1}', "bad.txt")}
    for key, value in files.items():
        args = [a.replace(key, str(value)) for a in args]
    assert cli.main(["generate", *args, *FAST]) == 2 and loads == []
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and re.search(match, err), err


def test_each_prompt_draws_what_generate_draws_with_its_seed_and_negative(tmp_path, monkeypatch):
    lines = [{"prompt": "a red circle"}, {"prompt": "a blue square", "seed": 9, "negative": "a red circle"},
             {"prompt": "a green triangle", "out": "tri.png"}]
    path = write(tmp_path, "\n".join(map(json.dumps, lines)))
    loads = loads_counted(monkeypatch)
    assert cli.main(["generate", "--prompts", str(path), "-o", str(tmp_path / "d"), "--seed", "4",
                     "--batch-size", "2", *FAST]) == 0
    assert loads == ["t5", "base"]  # once for the whole file
    assert sorted(os.listdir(tmp_path / "d")) == ["00000-0.png", "00000-1.png", "00001-0.png", "00001-1.png",
                                                  "tri-0.png", "tri-1.png"]
    monkeypatch.undo()
    for prompt, extra, name in (("a red circle", ["--seed", "4"], "00000"),  # --seed + 0 * batch
                                ("a blue square", ["--seed", "9", "--negative", "a red circle"], "00001"),
                                ("a green triangle", ["--seed", "8"], "tri")):  # --seed + 2 * batch
        assert cli.main(["generate", prompt, "-o", str(tmp_path / "one.png"), "--batch-size", "2", *extra,
                         *FAST]) == 0
        for k in (0, 1):
            assert np.array_equal(pixels(tmp_path / f"one-{k}.png"), pixels(tmp_path / "d" / f"{name}-{k}.png"))


def test_a_resumed_run_skips_the_files_that_exist(tmp_path, capsys):
    path = write(tmp_path, "a red circle\na blue square\na green triangle")
    out = tmp_path / "d"
    out.mkdir()
    (out / "00001.png").write_bytes(b"kept")  # done by an earlier run: never looked into, never rewritten
    os.utime(out / "00001.png", (1e9, 1e9))
    (out / ".00002.999.part.png").write_bytes(b"half")  # an interrupted write: not done
    assert cli.main(["generate", "--prompts", str(path), "-o", str(out), *FAST]) == 0
    err = capsys.readouterr().err
    assert "wrote 2 images for 2 prompts" in err and "skipped 1 existing" in err
    assert (out / "00001.png").read_bytes() == b"kept" and (out / "00001.png").stat().st_mtime == 1e9
    assert Image.open(out / "00002.png").size == (64, 64)
    assert sorted(os.listdir(out)) == [".00002.999.part.png", "00000.png", "00001.png", "00002.png"]
    done = {name: (out / name).stat().st_mtime_ns for name in ("00000.png", "00002.png")}
    assert cli.main(["generate", "--prompts", str(path), "-o", str(out), "--no-sr"]) == 0
    err = capsys.readouterr().err
    assert "wrote 0 images for 0 prompts" in err and "skipped 3 existing" in err and "prompts [" not in err
    assert {name: (out / name).stat().st_mtime_ns for name in done} == done


def test_torchrun_shards_the_prompts_over_two_processes_with_the_pixels_of_one(tmp_path):
    lines = [{"prompt": "a red circle"}, {"prompt": "a blue square", "seed": 11}, {"prompt": "a yellow circle"},
             {"prompt": "a green triangle", "negative": "a red circle", "out": "tri.png"}, {"prompt": "a x"}]
    path = write(tmp_path, "\n".join(map(json.dumps, lines)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    args = ["-m", "comfyui_imagen", "generate", "--prompts", str(path), "--seed", "2", *FAST]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    procs = {d: subprocess.run([*launcher, *args, "-o", str(tmp_path / d)], cwd=ROOT, env=env, check=False,
                               capture_output=True, text=True, timeout=120)
             for d, launcher in (("two", torchrun), ("one", [sys.executable]))}
    for proc in procs.values():
        assert proc.returncode == 0, proc.stderr[-3000:]
    err = procs["two"].stderr
    # rank 0 takes prompts 0, 2, 4 and rank 1 prompts 1, 3: each written once, by one process
    assert "rank 0/2: wrote 3 images for 3 prompts" in err and "rank 1/2: wrote 2 images for 2 prompts" in err, err
    names = ["00000.png", "00001.png", "00002.png", "00004.png", "tri.png"]
    assert sorted(os.listdir(tmp_path / "two")) == sorted(os.listdir(tmp_path / "one")) == names
    for name in names:
        assert np.array_equal(pixels(tmp_path / "two" / name), pixels(tmp_path / "one" / name)), name
