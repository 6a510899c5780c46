"""A real ComfyUI server with this pack for the server and browser tests (``COMFYUI_PATH`` names the checkout,
``COMFYUI_PYTHON`` its interpreter).

``start_comfyui(root, input_dir)`` runs ``main.py --cpu`` on a free port with an ``--extra-model-paths-config`` that
adds this repository as a custom-nodes folder (as ``comfyui-imagen``) and a models folder of tiny random stages under
the demo's file names (so workflows run in seconds on a CPU), and the test-only nodes of tests/comfy_test_nodes.py.
Everything ComfyUI writes goes under ``root``; the checkout is only read.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from comfyui_imagen.memory import process_memory
from tests import comfy_helpers as ch
from tests.tiny_models import (DEMO_NAMES, IMAGEN_PYTORCH_NAME, TINY_T5, write_tiny_imagen_pytorch, write_tiny_stage,
                               write_tiny_t5)
from tests.websocket import WebSocket

COMFYUI = os.environ.get("COMFYUI_PATH")
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
PACK = "comfyui-imagen"  # the custom-nodes folder name: ComfyUI lists and serves our templates under it
START_TIMEOUT = 240
RUN_TIMEOUT = 600
T5XXL_TINY = "t5xxl_tiny_fp16.safetensors"  # a t5xxl-style name with T5 v1.1's SentencePiece-sized vocabulary


class EventSocket(WebSocket):
    """ComfyUI's ``/ws`` events: text frames as dicts, binary frames as (event type, bytes)."""

    def __init__(self, port: int, client_id: str):
        super().__init__("127.0.0.1", port, f"/ws?clientId={client_id}", timeout=RUN_TIMEOUT)

    def receive(self):
        message = super().receive()
        if isinstance(message, bytes):
            return struct.unpack(">I", message[:4])[0], message[4:]
        return message


def free_port(lo: int | None = None, hi: int | None = None) -> int:
    """A free local port: any, or the first free one in [lo, hi]."""
    for port in range(lo, hi + 1) if lo is not None else [0]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in {lo}..{hi}")


class Server:
    def __init__(self, port: int, log: Path, output: Path, pid: int | None = None):
        self.port, self.log, self.output = port, log, output
        self.pid = pid  # the ComfyUI process (main.py), for memory figures

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        request = urllib.request.Request(self.url(path), data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                body = r.read()
                return r.status, (json.loads(body) if body.strip() else {})
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def history(self, prompt_id: str) -> dict:
        """The prompt's history entry (written just after its execution_success event, so poll briefly)."""
        for _ in range(100):
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry:
                return entry
            time.sleep(0.1)
        raise AssertionError(f"no history for prompt {prompt_id}")

    def run(self, prompt: dict, *, interrupt_after_progress: bool = False) -> tuple[str, list]:
        """Queue a prompt and collect its websocket events until it ends; returns (prompt_id, events)."""
        client_id = uuid.uuid4().hex
        ws = EventSocket(self.port, client_id)
        try:
            status, answer = self.post("/prompt", {"prompt": prompt, "client_id": client_id})
            assert status == 200, answer
            prompt_id, events = answer["prompt_id"], []
            while True:
                event = ws.receive()
                if event is None:
                    continue
                events.append(event)
                if interrupt_after_progress and isinstance(event, dict) and event["type"] == "progress":
                    self.post("/interrupt", {})
                    interrupt_after_progress = False
                if isinstance(event, dict) and event.get("data", {}).get("prompt_id") == prompt_id and (
                        event["type"] in ("execution_success", "execution_error", "execution_interrupted")):
                    return prompt_id, events
        finally:
            ws.close()


def write_models(models: Path) -> None:
    """models/imagen (tiny base + SR under the demo names, a tiny imagen-pytorch checkpoint and a T5 folder named
    as its template's) and models/text_encoders (the demo T5, a t5xxl one)."""
    (models / "imagen").mkdir(parents=True)
    (models / "text_encoders").mkdir()
    write_tiny_stage(models / "imagen" / DEMO_NAMES["base"], "base")
    write_tiny_stage(models / "imagen" / DEMO_NAMES["sr"], "sr")
    write_tiny_imagen_pytorch(models / "imagen" / IMAGEN_PYTORCH_NAME)
    write_tiny_t5(models / "text_encoders" / DEMO_NAMES["t5"])
    write_tiny_t5(models / "text_encoders" / T5XXL_TINY, vocab_size=32128)  # no tokenizer beside it
    # its config in ComfyUI's form, for the test-only CLIP loader (tests/comfy_test_nodes.py)
    config = {"d_ff": TINY_T5["d_ff"], "d_kv": TINY_T5["d_kv"], "d_model": TINY_T5["d_model"],
              "num_heads": TINY_T5["num_heads"], "num_layers": TINY_T5["num_layers"], "vocab_size": 32128,
              "dense_act_fn": "gelu_pytorch_tanh", "is_gated_act": True, "model_type": "t5"}
    (models / "text_encoders" / T5XXL_TINY).with_suffix(".json").write_text(json.dumps(config))
    # imagen-pytorch's default T5 as its Hugging Face folder, under the name the imagen-pytorch template uses (no
    # tokenizer files: ComfyUI's bundled T5 tokenizer stands in, the same SentencePiece model)
    folder = models / "imagen" / "t5-v1_1-base"
    folder.mkdir()
    write_tiny_t5(folder / "model.safetensors", vocab_size=32128)
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["T5EncoderModel"]}))


def link_models(models: Path, links: dict[str, Path]) -> None:
    """Symbolic links under ``models``, e.g. ``{"imagen/IF-I-XL-v1.0/unet/config.json": target}``: real folders
    (made as needed) holding links to the files, as a user's download would lie."""
    for name, target in links.items():
        path = models / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.symlink_to(Path(target).resolve())


@contextlib.contextmanager
def start_comfyui(root: Path, input_dir: Path, *, port: int | None = None, links: dict[str, Path] | None = None):
    """Yield a started :class:`Server` (``--input-directory input_dir``); stops it on exit. ``links``: more model
    files, linked into the models folder by `link_models` (``imagen/...``, ``text_encoders/...``).

    Raises RuntimeError with the end of ComfyUI's log when it does not start within START_TIMEOUT."""
    custom = root / "custom_nodes"
    custom.mkdir()
    (custom / PACK).symlink_to(ch.ROOT, target_is_directory=True)
    (custom / "imagen_test_nodes").mkdir()
    (custom / "imagen_test_nodes" / "__init__.py").symlink_to(Path(__file__).with_name("comfy_test_nodes.py"))
    models = root / "models"
    write_models(models)
    link_models(models, links or {})
    config = root / "extra_model_paths.yaml"
    config.write_text(f"imagen_test:\n    base_path: {models}\n    imagen: imagen\n    text_encoders: text_encoders\n"
                      f"    custom_nodes: {custom}\n")
    port, log = port or free_port(), root / "comfyui.log"
    (root / "user").mkdir()
    with open(log, "w") as out:
        process = subprocess.Popen(
            [PYTHON, "main.py", "--cpu", "--port", str(port), "--listen", "127.0.0.1", "--extra-model-paths-config",
             str(config), "--input-directory", str(input_dir), "--output-directory", str(root / "output"),
             "--temp-directory", str(root / "temp"), "--user-directory", str(root / "user"),
             "--database-url", "sqlite:///:memory:", "--disable-auto-launch"],
            cwd=COMFYUI, stdout=out, stderr=subprocess.STDOUT)
    try:
        srv = Server(port, log, root / "output", pid=process.pid)
        deadline = time.time() + START_TIMEOUT
        while True:
            try:
                srv.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ComfyUI did not start:\n{log.read_text()[-4000:]}") from None
                time.sleep(1)
        yield srv
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def memory_peaks(pid: int, interval: float = 0.05):
    """Yield a dict that holds, once the ``with`` block ends, the largest value of each `process_memory` field of
    process ``pid`` sampled every ``interval`` s meanwhile (VmHWM's last value is the kernel's own peak RSS)."""
    peaks: dict[str, int] = {}
    done = threading.Event()

    def sample() -> None:
        while True:
            for key, value in process_memory(pid).items():
                peaks[key] = max(peaks.get(key, 0), value)
            if done.wait(interval):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peaks
    finally:
        done.set()
        thread.join()
