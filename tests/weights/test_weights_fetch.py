"""Downloads over real HTTP on 127.0.0.1: every server fault ends in one clear line and no file a load would trust."""

import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
from weights_testkit import WeightsServer
from weights_testkit import finish
from weights_testkit import leftovers
from weights_testkit import publish
from weights_testkit import spawn_child

from birder_exp.weights import DownloadError
from birder_exp.weights import VerificationError
from birder_exp.weights import download_weights
from birder_exp.weights import load_pretrained_model
from birder_exp.weights.cache import marker_path


def _one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_download_verifies_once_then_reuses_the_file(
    tmp_path: Path, weights_env: Path, server: WeightsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_ok")
    path = download_weights("tiny_ok", progress_bar=False)
    assert path == weights_env / "tiny_ok.pt"
    assert path.read_bytes() == entry.data
    assert marker_path(path).exists()
    assert server.gets[entry.url_path] == 1
    assert leftovers(weights_env) == ["tiny_ok.pt", "tiny_ok.pt.verified"]

    def no_hashing(_: Path) -> str:
        raise AssertionError("a verified file was hashed again")

    monkeypatch.setattr("birder_exp.weights.download.sha256_file", no_hashing)
    assert download_weights("tiny_ok", progress_bar=False) == path
    assert server.gets[entry.url_path] == 1


def _assert_nothing_trusted(cache: Path, name: str) -> None:
    assert leftovers(cache) == []
    assert not (cache / f"{name}.pt").exists()


@pytest.mark.parametrize("fault", ["truncate", "wrong_bytes"])
def test_bad_bytes_fail_verification_and_are_deleted(
    tmp_path: Path, weights_env: Path, server: WeightsServer, fault: str
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_bad")
    server.fault(entry.url_path, fault)
    served = entry.data[: len(entry.data) // 2] if fault == "truncate" else bytes(b ^ 0x5A for b in entry.data)
    with pytest.raises(VerificationError) as error:
        load_pretrained_model("tiny_bad", progress_bar=False)
    message = _one_line(error)
    assert "entry 'tiny_bad' (pt)" in message
    assert f"expected {entry.sha256}, got {hashlib.sha256(served).hexdigest()}" in message
    assert "the file was deleted" in message
    assert server.gets[entry.url_path] == 1  # A hash mismatch is not retried
    _assert_nothing_trusted(weights_env, "tiny_bad")


def test_500_is_retried_with_backoff_then_gives_up(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    entry = publish(server, tmp_path / "src", "tiny_500")
    server.fault(entry.url_path, "500")
    with pytest.raises(DownloadError) as error:
        download_weights("tiny_500", progress_bar=False)
    message = _one_line(error)
    assert message == (
        f"entry 'tiny_500' (pt): HTTP 500 Internal Server Error fetching {server.url}{entry.url_path}; "
        "gave up after 3 attempts"
    )
    assert server.gets[entry.url_path] == 3
    _assert_nothing_trusted(weights_env, "tiny_500")


def test_a_passing_500_is_survived(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    entry = publish(server, tmp_path / "src", "tiny_500_once")
    server.fault(entry.url_path, "500", times=1)
    (net, _) = load_pretrained_model("tiny_500_once", progress_bar=False)
    assert server.gets[entry.url_path] == 2
    assert net.stem.weight.shape == (8, 3, 3, 3)


def test_404_answers_at_once(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    entry = publish(server, tmp_path / "src", "tiny_404")
    server.fault(entry.url_path, "404")
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        download_weights("tiny_404", progress_bar=False)
    assert _one_line(error) == f"entry 'tiny_404' (pt): HTTP 404 Not Found for {server.url}{entry.url_path}"
    assert server.gets[entry.url_path] == 1
    assert time.monotonic() - start < 1.0
    _assert_nothing_trusted(weights_env, "tiny_404")


def test_a_stalled_server_times_out(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    entry = publish(server, tmp_path / "src", "tiny_stall")
    server.fault(entry.url_path, "stall")
    start = time.monotonic()
    with pytest.raises(DownloadError) as error:
        download_weights("tiny_stall", progress_bar=False)
    message = _one_line(error)
    assert message.startswith("entry 'tiny_stall' (pt): timed out after 1024 bytes fetching ")
    assert message.endswith("gave up after 3 attempts")
    assert server.gets[entry.url_path] == 3
    assert time.monotonic() - start < 8.0  # 3 attempts x 1 s socket timeout
    _assert_nothing_trusted(weights_env, "tiny_stall")


def test_a_connection_dropped_mid_stream_is_retried_then_reported(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_drop")
    server.fault(entry.url_path, "drop")
    with pytest.raises(DownloadError) as error:
        download_weights("tiny_drop", progress_bar=False)
    half = len(entry.data) // 2
    message = _one_line(error)
    assert f"connection closed after {half} of {len(entry.data)} bytes" in message
    assert "gave up after 3 attempts" in message
    _assert_nothing_trusted(weights_env, "tiny_drop")


def test_a_dropped_connection_resumes_with_a_range_request(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_resume")
    server.fault(entry.url_path, "drop", times=1)
    path = download_weights("tiny_resume", progress_bar=False)
    assert path.read_bytes() == entry.data
    assert server.ranges == [(entry.url_path, f"bytes={len(entry.data) // 2}-")]


def test_a_runaway_body_is_cut_off(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    entry = publish(server, tmp_path / "src", "tiny_big")
    server.fault(entry.url_path, "oversize")
    with pytest.raises(VerificationError) as error:
        download_weights("tiny_big", progress_bar=False)
    assert _one_line(error) == (
        f"entry 'tiny_big' (pt): {server.url}{entry.url_path} sent more than the entry's 0.1 MiB "
        f"(expected sha256 {entry.sha256}); the download was deleted"
    )
    _assert_nothing_trusted(weights_env, "tiny_big")


def test_an_announced_size_that_disagrees_stops_before_the_body(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_len")
    server.fault(entry.url_path, "bad_length")
    with pytest.raises(VerificationError, match=r"announces \d+ bytes but the entry says 0.1 MiB") as error:
        download_weights("tiny_len", progress_bar=False)
    assert entry.sha256 in _one_line(error)
    _assert_nothing_trusted(weights_env, "tiny_len")


def test_file_urls_are_streamed_and_verified(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    folder = tmp_path / "published"
    entry = publish(server, folder, "tiny_file", url=folder.as_uri())
    (_, info) = load_pretrained_model("tiny_file", progress_bar=False, inference=True)
    assert (weights_env / "tiny_file.pt").read_bytes() == entry.data
    assert info.class_to_idx == {f"class_{i}": i for i in range(5)}
    assert server.gets[entry.url_path] == 0

    publish(server, tmp_path / "elsewhere", "tiny_nofile", url=(tmp_path / "missing").as_uri())
    with pytest.raises(DownloadError, match=r"^entry 'tiny_nofile' \(pt\): no such file .*missing/tiny_nofile.pt$"):
        download_weights("tiny_nofile", progress_bar=False)


def test_a_full_disk_leaves_no_partial_file(tmp_path: Path, weights_env: Path, server: WeightsServer) -> None:
    entry = publish(server, tmp_path / "src", "tiny_disk")
    assert len(entry.data) > 4096
    # The child may write at most 4 KiB per file: the download's writes fail as on a full disk
    (code, _, err) = finish(spawn_child("download", "tiny_disk", max_file_bytes=4096))
    assert code == 3, err
    assert err.strip().splitlines()[-1] == (
        f"ERROR DownloadError: entry 'tiny_disk' (pt): cannot write into {weights_env} (File too large)"
    )
    _assert_nothing_trusted(weights_env, "tiny_disk")


def test_a_killed_download_leaves_nothing_a_later_load_trusts(
    tmp_path: Path, weights_env: Path, server: WeightsServer
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_kill")
    server.fault(entry.url_path, "stall", times=1)
    child = spawn_child("download", "tiny_kill", env={"BIRDER_EXP_DOWNLOAD_TIMEOUT": "30"})
    try:
        deadline = time.monotonic() + 30
        while not any(name.endswith(".partial") for name in leftovers(weights_env)):
            assert child.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        finish(child)

    partials = [name for name in leftovers(weights_env) if name.endswith(".partial")]
    assert len(partials) == 1 and not (weights_env / "tiny_kill.pt").exists()
    assert not (weights_env / "tiny_kill.pt.verified").exists()

    # The killed process's lock died with it; the next load cleans its partial file up and succeeds
    (net, _) = load_pretrained_model("tiny_kill", progress_bar=False)
    assert leftovers(weights_env) == ["tiny_kill.pt", "tiny_kill.pt.verified"]
    assert (weights_env / "tiny_kill.pt").read_bytes() == entry.data
    assert net.stem.weight.shape == (8, 3, 3, 3)


def test_progress_bar_draws_on_stderr(
    tmp_path: Path, weights_env: Path, server: WeightsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(server, tmp_path / "src", "tiny_bar")
    download_weights("tiny_bar", progress_bar=True)
    captured = capsys.readouterr()
    assert "tiny_bar.pt" in captured.err and captured.out == ""
    publish(server, tmp_path / "src", "tiny_quiet")
    download_weights("tiny_quiet", progress_bar=False)
    assert capsys.readouterr().err == ""
