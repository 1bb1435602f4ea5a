"""The cache: where files go, the verified marker, offline loads, the cross-process lock and the 8-process race."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from weights_testkit import WeightsServer
from weights_testkit import finish
from weights_testkit import leftovers
from weights_testkit import publish
from weights_testkit import spawn_child

from birder_exp.model_registry import registry
from birder_exp.weights import DownloadError
from birder_exp.weights import VerificationError
from birder_exp.weights import download_weights
from birder_exp.weights import load_pretrained_model
from birder_exp.weights import settings
from birder_exp.weights.cache import FileLock
from birder_exp.weights.cache import marker_path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_cache_dir_comes_from_the_setting_then_the_platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIRDER_EXP_CACHE", str(tmp_path / "mine"))
    assert settings.current().cache_dir == tmp_path / "mine"

    monkeypatch.delenv("BIRDER_EXP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert settings.current().cache_dir == tmp_path / "xdg" / "birder_exp"
        monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert settings.current().cache_dir == tmp_path / "home" / ".cache" / "birder_exp"
    monkeypatch.chdir(tmp_path)
    assert settings.current().cache_dir.is_absolute() and settings.current().cache_dir != tmp_path


def test_bad_settings_fail_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIRDER_EXP_DOWNLOAD_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"^BIRDER_EXP_DOWNLOAD_TIMEOUT must be a number >= 0.001, got 'soon'$"):
        settings.current()
    monkeypatch.delenv("BIRDER_EXP_DOWNLOAD_TIMEOUT")
    monkeypatch.setenv("BIRDER_EXP_OFFLINE", "maybe")
    with pytest.raises(ValueError, match="BIRDER_EXP_OFFLINE must be one of"):
        settings.current()


def test_entries_without_url_use_the_base_url_setting(
    tmp_path: Path, weights_env: Path, server: WeightsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_base", register=False)
    info = {
        "description": "no url",
        "resolution": (16, 16),
        "formats": {"pt": {"file_size": 0.1, "sha256": entry.sha256}},
        "net": {"network": "tiny_w8"},
    }
    registry.register_weights("tiny_base", info)
    from birder_exp.weights.download import resolve_source

    assert resolve_source("tiny_base", "pt").url == f"{settings.BIRDER_BASE_URL}/tiny_base.pt"
    monkeypatch.setenv("BIRDER_EXP_BASE_URL", f"{server.url}/models/")
    assert download_weights("tiny_base", progress_bar=False).read_bytes() == entry.data
    assert server.gets[entry.url_path] == 1


def test_dst_overrides_the_cache(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    entry = publish(server, tmp_path / "src", "tiny_dst")
    dst = tmp_path / "chosen" / "weights.pt"
    (net, _) = load_pretrained_model("tiny_dst", dst=dst, progress_bar=False)
    assert dst.read_bytes() == entry.data and marker_path(dst).exists()
    assert leftovers(weights_env) == []
    assert net.stem.weight.shape == (8, 3, 3, 3)

    into_folder = download_weights("tiny_dst", dst=tmp_path / "chosen", progress_bar=False)
    assert into_folder == tmp_path / "chosen" / "tiny_dst.pt" and into_folder.read_bytes() == entry.data

    other = tmp_path / "chosen" / "mine.pt"
    other.write_bytes(b"a file of the user's own")
    with pytest.raises(VerificationError, match=r"exists with sha256 [0-9a-f]{64}, expected .*; move it away"):
        download_weights("tiny_dst", dst=other, progress_bar=False)
    assert other.read_bytes() == b"a file of the user's own"  # Never deleted


def test_a_matching_file_without_marker_is_adopted_without_download(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_adopt")
    weights_env.mkdir(parents=True)
    (weights_env / "tiny_adopt.pt").write_bytes(entry.data)  # e.g. copied from Birder's models dir
    download_weights("tiny_adopt", progress_bar=False)
    assert server.gets[entry.url_path] == 0
    assert marker_path(weights_env / "tiny_adopt.pt").exists()


def test_a_file_changed_after_verification_is_replaced(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_changed")
    path = download_weights("tiny_changed", progress_bar=False)
    path.write_bytes(entry.data[:-10] + b"0123456789")  # Same size, new mtime, other bytes
    assert download_weights("tiny_changed", progress_bar=False).read_bytes() == entry.data
    assert server.gets[entry.url_path] == 2


def test_a_cached_verified_file_loads_with_no_network_at_all(
    tmp_path: Path, weights_env: Path, server: WeightsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_offline")
    load_pretrained_model("tiny_offline", progress_bar=False)
    server.files.clear()

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    (net, info) = load_pretrained_model("tiny_offline", progress_bar=False, inference=True)
    assert info.rgb_stats == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    assert torch.equal(net.stem.weight, entry.net.stem.weight)


def test_offline_mode_never_downloads(
    tmp_path: Path, weights_env: Path, server: WeightsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_off")
    monkeypatch.setenv("BIRDER_EXP_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"tiny_off.pt is not cached and BIRDER_EXP_OFFLINE is set$"):
        download_weights("tiny_off", progress_bar=False)
    assert server.gets[entry.url_path] == 0


_HOLDER = """
import sys, time
from pathlib import Path
from birder_exp.weights.cache import FileLock
lock = FileLock(Path(sys.argv[1]), timeout=5)
lock.acquire()
print("locked", flush=True)
time.sleep(60)
"""


def _hold_lock(target: Path) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(target)], env=_env(), stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "locked"
    return child


def test_a_lock_held_too_long_times_out_and_a_killed_holders_lock_is_free(
    tmp_path: Path, weights_env: Path, server: WeightsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_lock")
    weights_env.mkdir(parents=True)
    target = weights_env / "tiny_lock.pt"
    holder = _hold_lock(target)
    try:
        monkeypatch.setenv("BIRDER_EXP_LOCK_TIMEOUT", "0.5")
        with pytest.raises(DownloadError, match=r"another process held .*tiny_lock.pt.lock for more than 0.5s"):
            download_weights("tiny_lock", progress_bar=False)

        os.kill(holder.pid, signal.SIGKILL)  # Its lock dies with it: nothing stale is left to clean up
        holder.wait(timeout=10)
        start = time.monotonic()
        assert download_weights("tiny_lock", progress_bar=False).read_bytes() == entry.data
        assert time.monotonic() - start < 0.5
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


def test_the_lock_excludes_other_processes(tmp_path: Path) -> None:
    target = tmp_path / "x.pt"
    holder = _hold_lock(target)
    try:
        with pytest.raises(DownloadError, match=r"for more than 0\.2s"):
            FileLock(target, timeout=0.2).acquire()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    with FileLock(target, timeout=1):
        assert (tmp_path / "x.pt.lock").exists()


def test_non_zero_local_ranks_wait_for_rank_0(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    entry = publish(server, tmp_path / "src", "tiny_rank")
    waiter = spawn_child("download", "tiny_rank", env={"LOCAL_RANK": "1"})
    try:
        time.sleep(0.3)
        assert waiter.poll() is None and server.gets[entry.url_path] == 0  # Rank 1 never downloads
        (net, _) = load_pretrained_model("tiny_rank", progress_bar=False)  # This process is local rank 0
    finally:
        (code, out, err) = finish(waiter)
    assert code == 0, err
    assert f"path {weights_env / 'tiny_rank.pt'}" in out and f"sha256 {entry.sha256}" in out
    assert server.gets[entry.url_path] == 1
    assert torch.equal(net.stem.weight, entry.net.stem.weight)


def test_eight_processes_loading_one_entry_download_it_once(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_race")
    server.delay[entry.url_path] = 1.0  # A slow transfer, so the others arrive while it runs
    go = tmp_path / "go"
    # Seven fetch the entry without importing torch, one loads it fully; all start together
    children = [spawn_child("download", "tiny_race", go=go) for _ in range(7)]
    children.append(spawn_child("load", "tiny_race", go=go))
    go.touch()
    results = [finish(child, timeout=180) for child in children]

    for code, _, err in results:
        assert code == 0, err
    for _, out, _ in results[:7]:
        assert f"path {weights_env / 'tiny_race.pt'}" in out
        assert f"sha256 {entry.sha256}" in out
        assert "torch imported False" in out
    expected = float(sum(p.detach().double().sum() for p in entry.net.parameters()))
    assert float(results[7][1].split()[-1]) == pytest.approx(expected)
    assert server.gets[entry.url_path] == 1
    assert leftovers(weights_env) == ["tiny_race.pt", "tiny_race.pt.verified"]
