"""From an entry name to a verified local file: resolve, lock, fetch once, mark verified.

Torch is never imported here, so ``birder-exp download`` and ``verify`` start fast.
"""

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from typing import Optional

from birder_exp.model_registry import registry
from birder_exp.weights import settings as weights_settings
from birder_exp.weights.cache import FileLock
from birder_exp.weights.cache import clean_partials
from birder_exp.weights.cache import drop_marker
from birder_exp.weights.cache import entry_file_name
from birder_exp.weights.cache import marked_file
from birder_exp.weights.cache import sha256_file
from birder_exp.weights.cache import trusted_file
from birder_exp.weights.cache import write_marker
from birder_exp.weights.errors import DownloadError
from birder_exp.weights.errors import UnsupportedFormatError
from birder_exp.weights.errors import VerificationError
from birder_exp.weights.fetch import Expected
from birder_exp.weights.fetch import HfLocation
from birder_exp.weights.fetch import copy_verified
from birder_exp.weights.fetch import hf_cached
from birder_exp.weights.fetch import hf_fetch
from birder_exp.weights.fetch import parse_hf_url
from birder_exp.weights.fetch import stream_to_file
from birder_exp.weights.settings import WeightsSettings

logger = logging.getLogger(__name__)

LOADABLE_FORMATS = ("pt", "safetensors")


@dataclass(frozen=True)
class WeightsSource:
    """Where one format of one entry comes from and what its bytes must hash to."""

    entry: str
    file_format: str
    url: str
    hf: Optional[HfLocation]
    expected: Expected

    @property
    def file_name(self) -> str:
        return entry_file_name(self.entry, self.file_format)


def resolve_source(weights: str, file_format: str, s: Optional[WeightsSettings] = None) -> WeightsSource:
    """The URL and expected hash of ``weights`` in ``file_format`` (UnknownNameError for an unknown entry)."""

    s = s if s is not None else weights_settings.current()
    metadata = registry.get_pretrained_metadata(weights)
    formats = metadata["formats"]
    if file_format not in formats:
        raise UnsupportedFormatError(
            f"pretrained entry '{weights}' has no '{file_format}' file (available: {', '.join(formats)})"
        )

    base_url = metadata.get("url") or s.base_url
    base_url = base_url.rstrip("/")
    info = formats[file_format]
    return WeightsSource(
        entry=weights,
        file_format=file_format,
        url=f"{base_url}/{entry_file_name(weights, file_format)}",
        hf=parse_hf_url(base_url),
        expected=Expected(f"entry '{weights}' ({file_format})", info["sha256"].lower(), float(info["file_size"])),
    )


def target_path(weights: str, file_format: str, dst: Optional[str | Path], s: WeightsSettings) -> Path:
    if dst is not None:
        path = Path(dst).expanduser().absolute()
        return path / entry_file_name(weights, file_format) if path.is_dir() else path

    return s.cache_dir / entry_file_name(weights, file_format)


def local_rank() -> Optional[int]:
    raw = os.environ.get("LOCAL_RANK", "").strip()
    if raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"LOCAL_RANK must be an integer, got {raw!r}") from None


def _wait_for_local_rank0(target: Path, source: WeightsSource, rank: int, s: WeightsSettings) -> Path:
    """Non-zero local ranks never download: they wait until rank 0's file carries its verified marker."""

    logger.info(f"{source.expected.label}: local rank {rank} waits for local rank 0 to fetch {target.name}")
    deadline = time.monotonic() + s.lock_timeout
    delay = 0.05
    while True:
        hit = trusted_file(target, source.expected.sha256)
        if hit is not None:
            return hit
        if time.monotonic() >= deadline:
            raise DownloadError(
                f"{source.expected.label}: local rank {rank} waited {s.lock_timeout:g}s for local rank 0 to fetch "
                f"{target} (does rank 0 load the same entry and format?)"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 1.0)


def _adopt_existing(target: Path, source: WeightsSource, user_dst: bool) -> Optional[Path]:
    """A file already at the target without a valid marker (Birder's cache, a copy, a lost marker)."""

    if target.is_file() is False:
        return None

    digest = sha256_file(target)
    if digest == source.expected.sha256:
        write_marker(target, target, digest)
        return target
    if user_dst is True:
        raise VerificationError(
            f"{source.expected.label}: {target} exists with sha256 {digest}, expected {source.expected.sha256}; "
            "move it away or pass another dst"
        )

    logger.warning(f"{source.expected.label}: replacing {target}, whose sha256 {digest} does not match the entry")
    target.unlink()
    return None


def _fetch(target: Path, source: WeightsSource, user_dst: bool, s: WeightsSettings, progress_bar: bool) -> Path:
    if source.hf is not None:
        path = hf_fetch(source.hf, source.file_name, source.expected, settings=s, progress_bar=progress_bar)
        if user_dst is False:
            return path  # Kept in the Hugging Face cache; our marker points at it

        copy_verified(path, target, source.expected)
        return target

    if s.offline is True:
        raise DownloadError(f"{source.expected.label}: {target} is not cached and BIRDER_EXP_OFFLINE is set")

    stream_to_file(source.url, target, source.expected, settings=s, progress_bar=progress_bar)
    return target


def download_weights(
    weights: str,
    *,
    dst: Optional[str | Path] = None,
    file_format: str = "pt",
    progress_bar: bool = True,
) -> Path:
    """The local path of ``weights`` in ``file_format``, fetched and verified once, then reused.

    ``dst`` is the file path to use instead of the cache (Birder's meaning; an existing directory gets
    ``<entry>.<format>`` inside it). A file that matches its verified
    marker is returned without hashing or touching the network. Otherwise one process per machine (the one
    holding the file's lock; in a distributed run local rank 0) fetches it while the others wait.
    """

    s = weights_settings.current()
    source = resolve_source(weights, file_format, s)
    target = target_path(weights, file_format, dst, s)
    hit = trusted_file(target, source.expected.sha256)
    if hit is not None:
        return hit

    rank = local_rank()
    if rank is not None and rank != 0:
        return _wait_for_local_rank0(target, source, rank, s)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"{source.expected.label}: cannot create {target.parent} ({exc.strerror})") from None

    with FileLock(target, s.lock_timeout, label=source.expected.label):
        hit = trusted_file(target, source.expected.sha256)
        if hit is not None:
            return hit  # Another process fetched it while we waited

        clean_partials(target)
        drop_marker(target)
        path = _adopt_existing(target, source, user_dst=dst is not None)
        if path is None:
            path = _fetch(target, source, dst is not None, s, progress_bar)
            write_marker(target, path, source.expected.sha256)

    return path


@dataclass(frozen=True)
class VerifyResult:
    entry: str
    file_format: str
    status: Literal["ok", "mismatch", "missing"]
    path: Optional[Path]
    expected: str
    actual: Optional[str]

    def line(self) -> str:
        name = entry_file_name(self.entry, self.file_format)
        if self.status == "ok":
            return f"ok        {name}  sha256 {self.actual}  {self.path}"
        if self.status == "missing":
            return f"missing   {name}  not in the cache"

        return f"MISMATCH  {name}  expected {self.expected}, got {self.actual}  {self.path} (marker removed)"


def _local_copy(target: Path, source: WeightsSource) -> Optional[Path]:
    """Where the entry's bytes are on this machine, without any network access."""

    marked = marked_file(target)
    if marked is not None and marked.is_file() is True:
        return marked
    if target.is_file() is True:
        return target
    if source.hf is not None:
        return hf_cached(source.hf, source.file_name)

    return None


def verify_weights(weights: str, *, file_format: str = "pt", dst: Optional[str | Path] = None) -> VerifyResult:
    """Hash the local copy again; refresh its marker when it matches, drop the marker when it does not."""

    s = weights_settings.current()
    source = resolve_source(weights, file_format, s)
    target = target_path(weights, file_format, dst, s)
    path = _local_copy(target, source)
    if path is None:
        return VerifyResult(weights, file_format, "missing", None, source.expected.sha256, None)

    digest = sha256_file(path)
    if digest == source.expected.sha256:
        write_marker(target, path, digest)
        return VerifyResult(weights, file_format, "ok", path, source.expected.sha256, digest)

    drop_marker(target)
    return VerifyResult(weights, file_format, "mismatch", path, source.expected.sha256, digest)


def cached_entries() -> list[tuple[str, str]]:
    """(entry, format) pairs with a file or a verified marker in the cache directory."""

    folder = weights_settings.current().cache_dir
    try:
        names = set(os.listdir(folder))
    except OSError:
        return []

    found = []
    for entry, metadata in registry.pretrained.items():
        for file_format in metadata["formats"]:
            name = entry_file_name(entry, file_format)
            if name in names or f"{name}.verified" in names:
                found.append((entry, file_format))

    return found
