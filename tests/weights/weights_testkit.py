"""The weights tests' kit: a real HTTP server on 127.0.0.1 that can misbehave, and helpers that publish entries.

The server serves bytes the tests put on it. A fault set for a path applies to the next requests for it:

- ``404`` / ``500``: that status
- ``truncate``: the first half of the body, no Content-Length (the close ends it)
- ``wrong_bytes``: a body of the right length with its bytes changed
- ``stall``: the headers and 1 KiB, then silence (until the client gives up or the server stops)
- ``drop``: the headers announce the full length, half the body is sent, then the connection is closed
- ``oversize``: the body followed by 2 MiB more, no Content-Length
- ``bad_length``: a Content-Length far larger than the file, and the real body
"""

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from typing import Optional

import torch
from tiny_weights_nets import seeded

from birder_exp.model_registry import registry

RGB_STATS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
REPO_COMMIT = "0123456789abcdef0123456789abcdef01234567"


class WeightsServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.faults: dict[str, list[str]] = {}
        self.delay: dict[str, float] = {}
        self.gets: Counter[str] = Counter()
        self.heads: Counter[str] = Counter()
        self.ranges: list[tuple[str, str]] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def add(self, path: str, data: bytes) -> str:
        self.files[path] = data
        return self.url + path

    def fault(self, path: str, kind: str, times: int = 1000) -> None:
        self.faults[path] = [kind] * times

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up early (a refused size, a timeout, a kill) are expected here, not errors."""

        error = sys.exc_info()[1]
        if not isinstance(error, (BrokenPipeError, ConnectionResetError, TimeoutError)):
            super().handle_error(request, client_address)

    def next_fault(self, path: str) -> Optional[str]:
        with self._lock:
            queue = self.faults.get(path)
            return queue.pop(0) if queue else None


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WeightsServer

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _headers(self, status: int, data: bytes, length: Optional[int], extra: Optional[dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", REPO_COMMIT)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()

    def _error(self, status: int) -> None:
        body = f"error {status}".encode()
        self.send_response(status)
        self.send_header("Connection", "close")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send(self, body: bytes, path: str) -> None:
        delay = self.server.delay.get(path, 0.0)
        step = max(1, len(body) // 8)
        for start in range(0, len(body), step):
            self.wfile.write(body[start : start + step])
            if delay > 0:
                self.wfile.flush()
                time.sleep(delay / 8)

    def _serve(self, head: bool) -> None:
        path = self.path.split("?", 1)[0]
        (self.server.heads if head else self.server.gets)[path] += 1
        data = self.server.files.get(path)
        fault = None if head else self.server.next_fault(path)
        if data is None or fault == "404":
            self._error(404)
            return
        if fault == "500":
            self._error(500)
            return
        if head:
            self._headers(200, data, len(data))
            return

        if fault == "truncate":
            self._headers(200, data, None)
            self.wfile.write(data[: len(data) // 2])
        elif fault == "wrong_bytes":
            self._headers(200, data, len(data))
            self.wfile.write(bytes(b ^ 0x5A for b in data))
        elif fault == "stall":
            self._headers(200, data, len(data))
            self.wfile.write(data[:1024])
            self.wfile.flush()
            self.server.stopping.wait(10.0)
        elif fault == "drop":
            self._headers(200, data, len(data))
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
        elif fault == "oversize":
            self._headers(200, data, None)
            self.wfile.write(data + b"\0" * (2 * 1024 * 1024))
        elif fault == "bad_length":
            self._headers(200, data, len(data) * 1000 + 50 * 1024 * 1024)
            self.wfile.write(data)
        else:
            range_header = self.headers.get("Range")
            if range_header is not None and range_header.startswith("bytes=") and range_header.endswith("-"):
                start = int(range_header[len("bytes=") : -1])
                self.server.ranges.append((path, range_header))
                body = data[start:]
                extra = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"}
                self._headers(206, data, len(body), extra)
                self._send(body, path)
            else:
                self._headers(200, data, len(data))
                self._send(data, path)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)


@dataclass
class Published:
    name: str
    network: str
    path: Path  # The checkpoint as written (the server's copy of it)
    data: bytes
    sha256: str
    url_path: str  # Path on the server
    net: torch.nn.Module

    @property
    def file_name(self) -> str:
        return self.url_path.rsplit("/", 1)[1]


def build(network: str, num_classes: int = 5, backbone: Optional[str] = None, seed: int = 0) -> torch.nn.Module:
    """A seeded network of the tests' own registry names (detection / MIM / SSL around ``backbone``)."""

    spec = registry.get_spec(network)
    if backbone is None:
        net: Any = registry.net_factory(network, num_classes)
    elif str(spec.task) == "object_detection":
        net = registry.detection_net_factory(network, num_classes, registry.net_factory(backbone, num_classes))
    elif str(spec.task) == "masked_image_modeling":
        net = registry.mim_net_factory(network, registry.net_factory(backbone, 0))
    else:
        net = registry.ssl_net_factory(network, registry.net_factory(backbone, 0))

    return seeded(net, seed).eval()


def file_size_mib(data: bytes) -> float:
    return max(0.1, round(len(data) / (1024 * 1024), 1))


def publish(
    server: WeightsServer,
    folder: Path,
    name: str,
    network: str = "tiny_w8",
    *,
    file_format: str = "pt",
    backbone: Optional[str] = None,
    seed: int = 0,
    url: Optional[str] = None,
    register: bool = True,
    config: Optional[dict[str, Any]] = None,
    backbone_config: Optional[dict[str, Any]] = None,
) -> Published:
    """Write a checkpoint, put it on the server under /models/<name>.<format>, register the entry."""

    from birder_exp.weights import save_checkpoint

    net = build(network, backbone=backbone, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(
        net,
        folder / f"{name}.{file_format}",
        class_to_idx={f"class_{i}": i for i in range(5)},
        rgb_stats=RGB_STATS,
        config=config,
        backbone_config=backbone_config,
    )
    data = path.read_bytes()
    url_path = f"/models/{name}.{file_format}"
    server.add(url_path, data)
    digest = hashlib.sha256(data).hexdigest()
    if register is True:
        info: dict[str, Any] = {
            "url": url if url is not None else f"{server.url}/models",
            "description": f"test entry {name}",
            "resolution": tuple(net.size),
            "formats": {file_format: {"file_size": file_size_mib(data), "sha256": digest}},
            "net": {"network": network, "tag": "test"},
        }
        if backbone is not None:
            key = "backbone" if str(registry.get_spec(network).task) == "object_detection" else "encoder"
            info[key] = {"network": backbone}
        registry.register_weights(name, info)

    return Published(name, network, path, data, digest, url_path, net)


def leftovers(folder: Path) -> list[str]:
    """Files in ``folder`` a later load could mistake for a download (anything but lock files)."""

    if folder.exists() is False:
        return []

    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))


CHILD = Path(__file__).resolve().parent / "weights_child.py"
REPO = Path(__file__).resolve().parent.parent.parent


def spawn_child(
    mode: str,
    name: str,
    *,
    go: Optional[Path] = None,
    max_file_bytes: Optional[int] = None,
    env: Optional[dict[str, str]] = None,
) -> "subprocess.Popen[str]":
    """Start weights_child.py for a registered entry (its metadata travels as JSON); wait for its 'ready'."""

    info = dict(registry.get_pretrained_metadata(name))
    command = [sys.executable, str(CHILD), mode, name, json.dumps(info)]
    if go is not None:
        command += ["--go", str(go)]
    if max_file_bytes is not None:
        command += ["--max-file-bytes", str(max_file_bytes)]

    child_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    child = subprocess.Popen(command, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert child.stdout is not None
    line = child.stdout.readline().strip()
    if line != "ready":
        child.kill()
        _, err = child.communicate()
        raise AssertionError(f"child did not start: {line!r} {err}")

    return child


def finish(child: "subprocess.Popen[str]", timeout: float = 120) -> tuple[int, str, str]:
    try:
        out, err = child.communicate(timeout=timeout)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()

    return (child.returncode, out, err)
