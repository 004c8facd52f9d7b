"""The host's progress bar and live preview while the Preprocessor runs a long batch (issue 12), read from the
host's own websocket (/ws) as the editor reads it. A minimal RFC 6455 client: the test interpreter has none."""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import threading

from tests.host.assets import HINT_IMAGE
from tests.host.graphs import Graph

CLIENT_ID = "controlnet-core-tests"  # the id Server.queue sends with every prompt
PREVIEW_EVENTS = {1, 4}  # BinaryEventTypes.PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA (server.py)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("websocket closed")
        data += chunk
    return data


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?clientId={CLIENT_ID} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += _recv_exact(sock, 1)
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return sock


def _frames(sock: socket.socket, out: list, stop: threading.Event) -> None:
    """(opcode, payload) of every server frame (unmasked, unfragmented as aiohttp sends them) until `stop`."""
    while not stop.is_set():
        try:
            b1, b2 = _recv_exact(sock, 2)
        except (TimeoutError, ConnectionError, OSError):
            return
        n = b2 & 0x7F
        if n == 126:
            n = struct.unpack(">H", _recv_exact(sock, 2))[0]
        elif n == 127:
            n = struct.unpack(">Q", _recv_exact(sock, 8))[0]
        out.append((b1 & 0x0F, _recv_exact(sock, n)))


def run_watching(server, prompt: dict) -> list:
    """Run `prompt`, returning every (opcode, payload) frame the host sent over /ws meanwhile."""
    sock = _connect(server.port)
    received: list = []
    stop = threading.Event()
    reader = threading.Thread(target=_frames, args=(sock, received, stop), daemon=True)
    reader.start()
    try:
        server.run(prompt)
    finally:
        stop.set()
        sock.close()
        reader.join(timeout=10)
    return received


def test_long_batch_moves_the_progress_bar_with_a_live_preview(server):
    g = Graph()
    image = g.add("LoadImage", image=HINT_IMAGE)
    frames = g.add("RepeatImageBatch", image=g.out(image), amount=40)  # 40 frames: chunks of 16, 16, 8
    pre = g.add("CNCore_Preprocessor", image=g.out(frames), preprocessor="canny")
    received = run_watching(server, g.prompt())
    texts = [json.loads(p) for op, p in received if op == 1]
    ours = [m["data"] for m in texts if m.get("type") == "progress" and m["data"].get("node") == pre]
    assert ours, f"no progress message for node {pre}: {[m.get('type') for m in texts]}"
    values = [m["value"] for m in ours]
    assert values == sorted(values) and values[-1] == ours[-1]["max"] == 40 and len(set(values)) >= 3, ours
    previews = [p for op, p in received if op == 2 and int.from_bytes(p[:4], "big") in PREVIEW_EVENTS]
    assert len(previews) >= 2, f"{len(previews)} live previews for 3 chunks"
