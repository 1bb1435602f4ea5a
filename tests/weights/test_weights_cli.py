"""``birder-exp download`` and ``birder-exp verify``: in-process for registered entries, as real commands for
the built-in catalogue."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from weights_testkit import REPO
from weights_testkit import WeightsServer
from weights_testkit import publish

from birder_exp.cli.main import main
from birder_exp.weights.cache import marker_path


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "birder_exp.cli.main", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_download_then_verify(
    tmp_path: Path, weights_env: Path, server: WeightsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_cli")
    assert main(["download", "tiny_cli", "--no-progress"]) == 0
    path = weights_env / "tiny_cli.pt"
    assert capsys.readouterr().out.strip() == str(path)
    assert path.read_bytes() == entry.data

    assert main(["verify", "tiny_cli"]) == 0
    assert capsys.readouterr().out.startswith(f"ok        tiny_cli.pt  sha256 {entry.sha256}")

    assert main(["verify"]) == 0  # Everything cached
    assert "tiny_cli.pt" in capsys.readouterr().out

    path.write_bytes(b"flipped bits")
    assert main(["verify", "tiny_cli"]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"MISMATCH  tiny_cli.pt  expected {entry.sha256}, got ")
    assert not marker_path(path).exists()

    assert main(["download", "tiny_cli", "--no-progress"]) == 0  # The bad copy is replaced
    assert path.read_bytes() == entry.data


def test_download_to_dst_and_missing_files(
    tmp_path: Path, weights_env: Path, server: WeightsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(server, tmp_path / "src", "tiny_cli_dst")
    dst = tmp_path / "out" / "x.pt"
    assert main(["download", "tiny_cli_dst", "--dst", str(dst), "--no-progress"]) == 0
    assert dst.exists() and capsys.readouterr().out.strip() == str(dst)

    assert main(["verify", "tiny_cli_dst"]) == 1  # Not in the cache (it went to --dst)
    assert capsys.readouterr().out.startswith("missing   tiny_cli_dst.pt")

    assert main(["download", "tiny_cli_dst", "tiny_cli_dst", "--dst", str(dst)]) == 2
    assert capsys.readouterr().err.strip() == "birder-exp download: --dst names one file; got 2 entries"


def test_download_failure_is_one_line(
    tmp_path: Path, weights_env: Path, server: WeightsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = publish(server, tmp_path / "src", "tiny_cli_404")
    server.fault(entry.url_path, "404")
    assert main(["download", "tiny_cli_404", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert (
        err == f"birder-exp download: entry 'tiny_cli_404' (pt): HTTP 404 Not Found for {server.url}{entry.url_path}\n"
    )


def test_the_command_fetches_built_in_entries_from_the_base_url(tmp_path: Path, server: WeightsServer) -> None:
    # A published entry without its own url; the server has other bytes under its name
    server.add("/mirror/cait_xxs24_il-common.pt", b"not the published checkpoint")
    env = {"BIRDER_EXP_CACHE": str(tmp_path / "cache"), "BIRDER_EXP_BASE_URL": f"{server.url}/mirror"}
    result = _run("download", "cait_xxs24_il-common", "--no-progress", env=env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(
        f"birder-exp download: entry 'cait_xxs24_il-common' (pt): {server.url}/mirror/cait_xxs24_il-common.pt "
        "announces 28 bytes but the entry says 45.4 MiB (expected sha256 1e7b3ba14b34b3d849eb"
    )
    assert server.gets["/mirror/cait_xxs24_il-common.pt"] == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["cait_xxs24_il-common.pt.lock"]

    unknown = _run("download", "cait_xxs24_il-commonn", env=env)
    assert unknown.returncode == 2
    assert unknown.stderr.count("\n") == 1
    assert unknown.stderr.startswith(
        "birder-exp download: unknown pretrained entry 'cait_xxs24_il-commonn'; closest: cait_xxs24_il-common"
    )


def test_the_command_reports_a_corrupted_cache_file(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "alexnet_inat21.pt").write_bytes(b"corrupted")
    result = _run("verify", env={"BIRDER_EXP_CACHE": str(cache)})
    assert result.returncode == 1, result.stderr
    assert result.stdout.startswith("MISMATCH  alexnet_inat21.pt  expected c8af2e9b95a7151520778382474763dd96ab96")
