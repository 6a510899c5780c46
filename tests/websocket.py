"""A minimal RFC 6455 websocket client (stdlib only) for the tests that talk to a real server or browser.

Used for ComfyUI's ``/ws`` events (``tests.comfy_server``) and for Chromium's DevTools protocol (``tests.cdp``).
Text frames come back as decoded JSON, binary frames as bytes; client frames are masked as the RFC requires.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct

TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


class WebSocket:
    """``WebSocket(host, port, path)``: ``send(obj)`` writes a JSON text frame; ``receive()`` returns the next
    message (a dict for text, bytes for binary, None for control frames)."""

    def __init__(self, host: str, port: int, path: str, *, timeout: float):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError(f"websocket {path}: closed during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"websocket {path}: handshake refused: {head.decode(errors='replace')}")

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("websocket closed")
            data += chunk
        return data

    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        head = bytes([0x80 | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n < 1 << 16:
            head += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack(">Q", n)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send(self, message: dict) -> None:
        self._frame(TEXT, json.dumps(message).encode())

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
        if opcode == TEXT:
            return json.loads(message)
        if opcode == BINARY:
            return message
        if opcode == PING:
            self._frame(PONG, message)
        elif opcode == CLOSE:
            raise ConnectionError("websocket closed by the server")
        return None

    def close(self) -> None:
        self.sock.close()
