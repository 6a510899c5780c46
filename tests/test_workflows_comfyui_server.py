"""The pack inside a real ComfyUI server. Skipped unless ``COMFYUI_PATH`` names a ComfyUI checkout.

    COMFYUI_PATH=~/ComfyUI COMFYUI_PYTHON=~/ComfyUI/venv/bin/python pytest tests/test_workflows_comfyui_server.py

Starts ``main.py --cpu`` on a free port with an ``--extra-model-paths-config`` that adds this repository as a
custom-nodes folder and a models folder of tiny random stages under the demo's file names (so it runs in seconds on a
CPU), and ``--input-directory workflows/input``. Checks: the pack imports without failure; ``/object_info`` lists
every node; every workflow runs via ``/prompt`` to a saved image (the DeepFloyd one only where IF's files and the SD x4
upscaler are installed); progress and preview events arrive on the websocket; ``/interrupt`` stops a long run; bad
input gives a node error with our message and the server keeps serving.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests import comfy_helpers as ch
from tests.comfy_helpers import DEMO_NAMES, write_tiny_stage, write_tiny_t5

COMFYUI = os.environ.get("COMFYUI_PATH")
pytestmark = pytest.mark.skipif(not COMFYUI, reason="set COMFYUI_PATH to a ComfyUI checkout to run the server tests")
PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)
START_TIMEOUT = 240
RUN_TIMEOUT = 600
PREVIEW_IMAGE = 1  # ComfyUI's BinaryEventTypes.PREVIEW_IMAGE
T5XXL_TINY = "t5xxl_tiny_fp16.safetensors"  # a t5xxl-style name with T5 v1.1's SentencePiece-sized vocabulary


# ------------------------------------------------------------------------------------------------ minimal websocket
class WebSocket:
    """Just enough of RFC 6455 to read ComfyUI's events: text frames as dicts, binary frames as (type, bytes)."""

    def __init__(self, port: int, client_id: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=RUN_TIMEOUT)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)
        assert b" 101 " in head.split(b"\r\n")[0], head

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("websocket closed")
            data += chunk
        return data

    def receive(self):
        message, opcode = b"", None
        while True:
            b0, b1 = self._read(2)
            opcode = opcode or (b0 & 0x0F)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            message += self._read(n)
            if b0 & 0x80:
                break
        if opcode == 1:
            return json.loads(message)
        if opcode == 2:
            return struct.unpack(">I", message[:4])[0], message[4:]
        return None  # ping / pong / close

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------------------------------------ server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, port: int, log: Path):
        self.port, self.log = port, log

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
        ws = WebSocket(self.port, client_id)
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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    custom = root / "custom_nodes"
    custom.mkdir()
    (custom / "comfyui-imagen").symlink_to(ch.ROOT, target_is_directory=True)
    models = root / "models"
    (models / "imagen").mkdir(parents=True)
    (models / "text_encoders").mkdir()
    write_tiny_stage(models / "imagen" / DEMO_NAMES["base"], "base")
    write_tiny_stage(models / "imagen" / DEMO_NAMES["sr"], "sr")
    write_tiny_t5(models / "text_encoders" / DEMO_NAMES["t5"])
    write_tiny_t5(models / "text_encoders" / T5XXL_TINY, vocab_size=32128)  # no tokenizer beside it
    config = root / "extra_model_paths.yaml"
    config.write_text(f"imagen_test:\n    base_path: {models}\n    imagen: imagen\n    text_encoders: text_encoders\n"
                      f"    custom_nodes: {custom}\n")
    port, log = _free_port(), root / "comfyui.log"
    (root / "user").mkdir()
    with open(log, "w") as out:  # everything ComfyUI writes goes to root: the checkout is only read
        process = subprocess.Popen(
            [PYTHON, "main.py", "--cpu", "--port", str(port), "--listen", "127.0.0.1", "--extra-model-paths-config",
             str(config), "--input-directory", str(ch.INPUT_DIR), "--output-directory", str(root / "output"),
             "--temp-directory", str(root / "temp"), "--user-directory", str(root / "user"),
             "--database-url", "sqlite:///:memory:", "--disable-auto-launch"],
            cwd=COMFYUI, stdout=out, stderr=subprocess.STDOUT)
    srv = Server(port, log)
    deadline = time.time() + START_TIMEOUT
    while True:
        try:
            srv.get("/system_stats")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"ComfyUI did not start:\n{log.read_text()[-4000:]}")
            time.sleep(1)
    srv.output = root / "output"
    yield srv
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def test_pack_imports_and_lists_every_node(server):
    log = server.log.read_text()
    failed = [line for line in log.splitlines() if "IMPORT FAILED" in line or "Cannot import" in line]
    assert not [line for line in failed if "comfyui-imagen" in line], log[-4000:]
    info = server.get("/object_info")
    from nodes import NODE_CLASS_MAPPINGS

    for node_id in NODE_CLASS_MAPPINGS:
        assert node_id in info, node_id
        assert info[node_id]["category"].startswith("imagen/")
    assert DEMO_NAMES["base"] in info["ImagenModelLoader"]["input"]["required"]["model_name"][0]
    assert DEMO_NAMES["t5"] in info["ImagenT5Loader"]["input"]["required"]["t5_name"][0]


def _quick(name: str) -> dict:
    from tests.test_workflows import quick

    return quick(ch.load_json(ch.API_DIR / f"{name}.json"))


@pytest.mark.parametrize("path", sorted(ch.API_DIR.glob("*.json")), ids=lambda p: p.stem)
def test_every_workflow_runs_to_a_saved_image(server, path):
    prompt = ch.load_json(path)
    if "deepfloyd" in path.stem:
        info = server.get("/object_info")
        wanted = {n["inputs"].get("ckpt_name") or n["inputs"].get("model_name") or n["inputs"].get("t5_name")
                  for n in prompt.values() if n["class_type"].endswith(("Loader", "LoaderSimple"))}
        offered = {v for node in ("ImagenModelLoader", "ImagenT5Loader", "CheckpointLoaderSimple")
                   for v in next(iter(info[node]["input"]["required"].values()))[0]}
        if not wanted <= offered:
            pytest.skip(f"needs {sorted(wanted - offered)} installed in ComfyUI's models folders")
    else:
        prompt = _quick(path.stem)
    prompt_id, events = server.run(prompt)
    assert events[-1]["type"] == "execution_success", events[-3:]
    outputs = server.history(prompt_id)["outputs"]
    saved = [img for out in outputs.values() for img in out.get("images", []) if img["type"] == "output"]
    assert saved and all((server.output / s["subfolder"] / s["filename"]).is_file() for s in saved)


def test_progress_and_previews_arrive(server):
    prompt = _quick("imagen_base_64")
    for node in prompt.values():
        if node["class_type"] == "ImagenBaseSampler":
            node["inputs"]["steps"] = 4
    _, events = server.run(prompt)
    progress = [e for e in events if isinstance(e, dict) and e["type"] == "progress"]
    previews = [e for e in events if isinstance(e, tuple) and e[0] == PREVIEW_IMAGE]
    assert [p["data"]["value"] for p in progress][-4:] == [1, 2, 3, 4]
    # each preview: a 4-byte image type (1 = JPEG), then the JPEG itself
    assert len(previews) >= 4 and all(p[1][:4] == b"\x00\x00\x00\x01" and p[1][4:6] == b"\xff\xd8"
                                      for p in previews)


def test_interrupt_stops_a_long_run_and_the_server_keeps_serving(server):
    prompt = _quick("imagen_base_64")
    for node in prompt.values():
        if node["class_type"] == "ImagenBaseSampler":
            node["inputs"].update(steps=1000, seed=123)
    start = time.time()
    _, events = server.run(prompt, interrupt_after_progress=True)
    assert events[-1]["type"] == "execution_interrupted"
    assert time.time() - start < 120
    assert server.get("/system_stats")


def test_t5xxl_file_without_a_tokenizer_uses_comfyuis_bundled_one(server):
    """Real ComfyUI's ``comfy`` is a namespace package (no ``__init__.py``): the T5 Loader must still find the
    bundled ``comfy/text_encoders/t5_tokenizer`` for a t5xxl file that has no tokenizer beside it."""
    prompt = {
        "1": {"class_type": "ImagenT5Loader", "inputs": {"t5_name": T5XXL_TINY, "dtype": "default"}},
        "2": {"class_type": "ImagenTextEncode",
              "inputs": {"t5": ["1", 0], "prompt": "a red circle", "negative_prompt": "", "max_length": 77}},
        "3": {"class_type": "ImagenModelLoader", "inputs": {"model_name": DEMO_NAMES["base"], "dtype": "default"}},
        "4": {"class_type": "ImagenBaseSampler",
              "inputs": {"model": ["3", 0], "embeds": ["2", 0], "seed": 1, "steps": 1, "cfg": 4.0,
                         "sampler": "euler_ancestral", "schedule": "karras", "dynamic_threshold": 0.95, "width": 0,
                         "height": 0, "batch_size": 1}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "imagen/t5xxl"}},
    }
    prompt_id, events = server.run(prompt)
    assert events[-1]["type"] == "execution_success", events[-1]["data"].get("exception_message", events[-3:])
    saved = [img for out in server.history(prompt_id)["outputs"].values() for img in out.get("images", [])
             if img["type"] == "output"]
    assert len(saved) == 1 and (server.output / saved[0]["subfolder"] / saved[0]["filename"]).is_file()


def test_bad_input_is_a_node_error_and_the_server_keeps_serving(server):
    prompt = _quick("imagen_cascade_64_256_1024")
    base_loader = next(k for k, n in prompt.items() if n["inputs"].get("model_name") == DEMO_NAMES["base"])
    for node in prompt.values():
        if node["class_type"] == "ImagenSuperResolution":
            node["inputs"]["model"] = [base_loader, 0]
    _, events = server.run(prompt)
    assert events[-1]["type"] == "execution_error"
    assert "super-resolution stage" in events[-1]["data"]["exception_message"]
    _, events = server.run(_quick("imagen_base_64"))
    assert events[-1]["type"] == "execution_success"
