"""Fixtures of the weights tests: the misbehaving HTTP server and an isolated cache with the tiny networks."""

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from tiny_weights_nets import register_tiny_networks  # noqa: E402
from weights_testkit import WeightsServer  # noqa: E402

from birder_exp.model_registry import registry  # noqa: E402


@pytest.fixture
def server() -> Iterator[WeightsServer]:
    srv = WeightsServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.stopping.set()
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def weights_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None) -> Path:
    """An isolated cache, quick timeouts and retries, the tiny networks registered; returns the cache dir."""

    cache = tmp_path / "cache"
    monkeypatch.setenv("BIRDER_EXP_CACHE", str(cache))
    monkeypatch.setenv("BIRDER_EXP_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setenv("BIRDER_EXP_DOWNLOAD_RETRIES", "2")
    monkeypatch.setenv("BIRDER_EXP_RETRY_BACKOFF", "0.01")
    monkeypatch.setenv("BIRDER_EXP_LOCK_TIMEOUT", "60")
    for name in ("LOCAL_RANK", "BIRDER_EXP_OFFLINE", "BIRDER_EXP_BASE_URL"):
        monkeypatch.delenv(name, raising=False)

    register_tiny_networks(registry)
    return cache
