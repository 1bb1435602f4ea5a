"""Getting the bytes: HTTP(S) and file:// streamed by urllib, huggingface.co through huggingface_hub.

Every byte is hashed as it arrives and counted against the entry's size, so a wrong or runaway stream is
stopped early and a finished one needs no second read. Timeouts, dropped connections and 5xx answers are
retried with exponential back-off, resuming with a Range request when the server allows it; 404 and other
client errors fail at once. Hub downloads keep huggingface_hub's own cache, retries and progress bar (tqdm);
their bytes are hashed once they are there. Nothing here decides where a file lives: see ``download``.
"""

import errno
import hashlib
import http.client
import io
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from typing import Optional
from urllib.error import HTTPError
from urllib.error import URLError
from urllib.parse import unquote
from urllib.parse import urlsplit
from urllib.request import Request
from urllib.request import urlopen

from birder_exp.version import __version__
from birder_exp.weights.cache import new_partial
from birder_exp.weights.cache import sha256_file
from birder_exp.weights.errors import DownloadError
from birder_exp.weights.errors import VerificationError
from birder_exp.weights.settings import MAX_BACKOFF
from birder_exp.weights.settings import WeightsSettings

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
CHUNK_SIZE = 1024 * 1024
SIZE_TOLERANCE_MIB = 0.1  # Entries state sizes in MiB rounded to one decimal
HF_HOSTS = frozenset({"huggingface.co", "www.huggingface.co", "hf.co"})
_RETRY_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class Expected:
    """What a file must be: the entry's sha256 and its size in MiB (as the catalogue states it)."""

    label: str
    sha256: str
    size_mib: float

    @property
    def min_bytes(self) -> int:
        return max(0, int((self.size_mib - SIZE_TOLERANCE_MIB) * MIB))

    @property
    def max_bytes(self) -> int:
        return int((self.size_mib + SIZE_TOLERANCE_MIB) * MIB) + 1

    def size_fits(self, num_bytes: int) -> bool:
        return self.min_bytes <= num_bytes <= self.max_bytes

    def mismatch_message(self, source: str, digest: str, num_bytes: int) -> str:
        return (
            f"{self.label}: sha256 mismatch for {source}: expected {self.sha256}, got {digest} "
            f"({num_bytes} bytes, the entry says {self.size_mib:g} MiB); the file was deleted"
        )


class _TransientError(Exception):
    """A failure worth another attempt (timeout, dropped connection, 5xx)."""


class _WriteFailedError(Exception):
    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Progress:
    """A rich download bar on stderr (or nothing when disabled)."""

    def __init__(self, description: str, enabled: bool) -> None:
        self._progress: Any = None
        self._task: Any = None
        if enabled is False:
            return

        from rich.console import Console
        from rich.progress import BarColumn
        from rich.progress import DownloadColumn
        from rich.progress import Progress as RichProgress
        from rich.progress import TextColumn
        from rich.progress import TimeRemainingColumn
        from rich.progress import TransferSpeedColumn

        self._progress = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task(description, total=None)

    def __enter__(self) -> "Progress":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def restart(self, completed: int, total: Optional[int]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=completed, total=total)

    def advance(self, num_bytes: int) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=num_bytes)


class _Stream:
    """The running state of one file's transfer, kept across attempts so a retry can resume."""

    def __init__(self, out: io.FileIO) -> None:
        self.out = out
        self.hasher = hashlib.sha256()
        self.received = 0

    def write(self, chunk: bytes) -> None:
        """Unbuffered writes: a full disk fails here, never later in a flush on close."""

        view = memoryview(chunk)
        try:
            while len(view) > 0:
                written = self.out.write(view)
                if written is None or written <= 0:
                    raise OSError(errno.EIO, "short write")
                view = view[written:]
        except OSError as exc:
            raise _WriteFailedError(exc) from None

    def restart(self) -> None:
        self.out.seek(0)
        self.out.truncate()
        self.hasher = hashlib.sha256()
        self.received = 0


def _is_timeout(error: BaseException) -> bool:
    return isinstance(error, (TimeoutError, socket.timeout))


def _open(url: str, offset: int, expected: Expected, timeout: float) -> Any:
    headers = {"User-Agent": f"birder_exp/{__version__}", "Accept-Encoding": "identity"}
    if offset > 0:
        headers["Range"] = f"bytes={offset}-"

    try:
        return urlopen(Request(url, headers=headers), timeout=timeout)
    except HTTPError as exc:
        exc.close()
        if exc.code >= 500 or exc.code in _RETRY_STATUS:
            raise _TransientError(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{expected.label}: HTTP {exc.code} {exc.reason} for {url}") from None
    except URLError as exc:
        reason = exc.reason
        if isinstance(reason, BaseException) and _is_timeout(reason) is True:
            raise _TransientError("timed out") from None
        if isinstance(reason, FileNotFoundError):
            raise DownloadError(f"{expected.label}: no such file {unquote(urlsplit(url).path)}") from None
        if isinstance(reason, socket.gaierror):
            raise DownloadError(f"{expected.label}: cannot resolve the host of {url} ({reason.strerror})") from None
        if isinstance(reason, (ConnectionError, OSError)):
            raise _TransientError(f"cannot connect ({getattr(reason, 'strerror', None) or reason})") from None
        raise DownloadError(f"{expected.label}: cannot open {url} ({reason})") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        what = "timed out" if _is_timeout(exc) else f"connection failed ({type(exc).__name__})"
        raise _TransientError(what) from None


def _content_length(response: Any) -> Optional[int]:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _resumed(response: Any, offset: int) -> bool:
    content_range = response.headers.get("Content-Range", "")
    return getattr(response, "status", None) == 206 and content_range.startswith(f"bytes {offset}-")


def _attempt(url: str, stream: _Stream, expected: Expected, timeout: float, bar: Progress) -> None:
    """One request: append to ``stream`` until the body ends; raise _TransientError for anything worth retrying."""

    response = _open(url, stream.received, expected, timeout)
    with response:
        if stream.received > 0 and _resumed(response, stream.received) is False:
            logger.info(f"{expected.label}: the server did not resume, starting over")
            stream.restart()

        length = _content_length(response)
        total = None if length is None else stream.received + length
        if total is not None and expected.size_fits(total) is False:
            raise VerificationError(
                f"{expected.label}: {url} announces {total} bytes but the entry says {expected.size_mib:g} MiB "
                f"(expected sha256 {expected.sha256}); nothing was kept"
            )

        bar.restart(stream.received, total)
        read = response.read1 if hasattr(response, "read1") else response.read  # Whatever has arrived, not 1 MiB
        while True:
            try:
                chunk = read(CHUNK_SIZE)
            except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
                what = "timed out" if _is_timeout(exc) else f"connection lost ({type(exc).__name__})"
                raise _TransientError(f"{what} after {stream.received} bytes") from None
            if not chunk:
                break

            stream.write(chunk)
            stream.hasher.update(chunk)
            stream.received += len(chunk)
            bar.advance(len(chunk))
            if stream.received > expected.max_bytes:
                raise VerificationError(
                    f"{expected.label}: {url} sent more than the entry's {expected.size_mib:g} MiB "
                    f"(expected sha256 {expected.sha256}); the download was deleted"
                )

        if total is not None and stream.received < total:
            raise _TransientError(f"connection closed after {stream.received} of {total} bytes")


def stream_to_file(
    url: str, target: Path, expected: Expected, *, settings: WeightsSettings, progress_bar: bool = True
) -> None:
    """Fetch ``url`` into ``target`` through a temporary file; only verified bytes ever get the target name."""

    partial = new_partial(target)
    try:
        with open(partial, "r+b", buffering=0) as out, Progress(target.name, progress_bar) as bar:
            stream = _Stream(out)
            attempt = 0
            while True:
                try:
                    _attempt(url, stream, expected, settings.timeout, bar)
                    break
                except _TransientError as exc:
                    attempt += 1
                    if attempt > settings.retries:
                        raise DownloadError(
                            f"{expected.label}: {exc} fetching {url}; gave up after {attempt} attempts"
                        ) from None

                    delay = min(settings.backoff * 2 ** (attempt - 1), MAX_BACKOFF)
                    logger.warning(f"{expected.label}: {exc}; retry {attempt}/{settings.retries} in {delay:.1f}s")
                    time.sleep(delay)

            try:
                os.fsync(out.fileno())
            except OSError as exc:
                raise _WriteFailedError(exc) from None

        digest = stream.hasher.hexdigest()
        if digest != expected.sha256 or expected.size_fits(stream.received) is False:
            raise VerificationError(expected.mismatch_message(url, digest, stream.received))

        try:
            os.replace(partial, target)
        except OSError as exc:
            raise DownloadError(f"{expected.label}: cannot move the download to {target} ({exc.strerror})") from None
        logger.info(f"{expected.label}: saved {target}")
    except _WriteFailedError as exc:
        raise DownloadError(f"{expected.label}: cannot write into {target.parent} ({exc.error.strerror})") from None
    finally:
        partial.unlink(missing_ok=True)


# Hugging Face Hub


@dataclass(frozen=True)
class HfLocation:
    repo_id: str
    revision: str
    subfolder: Optional[str] = None
    repo_type: Optional[str] = None

    def filename(self, name: str) -> str:
        return name if self.subfolder is None else f"{self.subfolder}/{name}"


def parse_hf_url(url: str) -> Optional[HfLocation]:
    """``https://huggingface.co/<org>/<repo>/resolve/<rev>[/<folder>]`` as a hub location (else None)."""

    parts = urlsplit(url)
    if parts.scheme != "https" or (parts.hostname or "") not in HF_HOSTS:
        return None

    segments = [unquote(s) for s in parts.path.split("/") if s != ""]
    repo_type = None
    if len(segments) > 0 and segments[0] in ("datasets", "spaces"):
        repo_type = segments[0][:-1]
        segments = segments[1:]
    if len(segments) < 4 or segments[2] != "resolve":
        return None

    subfolder = "/".join(segments[4:]) or None
    return HfLocation(f"{segments[0]}/{segments[1]}", segments[3], subfolder, repo_type)


def hf_cached(location: HfLocation, name: str) -> Optional[Path]:
    """The file in the Hugging Face cache, found without any network access (None when absent)."""

    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(
        location.repo_id, location.filename(name), revision=location.revision, repo_type=location.repo_type
    )
    return Path(path) if isinstance(path, str) else None


def _hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text != "" else type(error).__name__


def _hf_download_once(
    location: HfLocation, name: str, expected: Expected, *, settings: WeightsSettings, progress_bar: bool, force: bool
) -> Path:
    import huggingface_hub
    from huggingface_hub import errors as hf_errors

    tqdm_class: Any = None
    if progress_bar is False:
        from huggingface_hub.utils import tqdm

        class _Silent(tqdm):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        tqdm_class = _Silent

    try:
        path = huggingface_hub.hf_hub_download(
            location.repo_id,
            location.filename(name),
            repo_type=location.repo_type,
            revision=location.revision,
            force_download=force,
            etag_timeout=settings.timeout,
            library_name="birder_exp",
            library_version=__version__,
            tqdm_class=tqdm_class,
        )
    except hf_errors.LocalEntryNotFoundError:
        raise DownloadError(
            f"{expected.label}: cannot reach the Hugging Face Hub and {name} is not in its cache "
            "(check the connection or the HF_ENDPOINT / HF_HUB_OFFLINE settings)"
        ) from None
    except (
        hf_errors.RepositoryNotFoundError,
        hf_errors.RevisionNotFoundError,
        hf_errors.EntryNotFoundError,
        hf_errors.GatedRepoError,
    ) as exc:
        raise DownloadError(f"{expected.label}: {_first_line(exc)}") from None
    except hf_errors.HfHubHTTPError as exc:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None)
        what = f"HTTP {status}" if status is not None else _first_line(exc)
        raise DownloadError(f"{expected.label}: {what} from the Hugging Face Hub ({_first_line(exc)})") from None
    except (TimeoutError, ConnectionError) as exc:
        raise DownloadError(f"{expected.label}: {type(exc).__name__} talking to the Hugging Face Hub") from None
    except OSError as exc:
        raise DownloadError(f"{expected.label}: cannot store the file ({exc.strerror or exc})") from None

    return Path(path)


def _remove_from_hf_cache(path: Path) -> None:
    blob = path.resolve()
    path.unlink(missing_ok=True)
    if blob != path:
        blob.unlink(missing_ok=True)


def hf_fetch(
    location: HfLocation, name: str, expected: Expected, *, settings: WeightsSettings, progress_bar: bool = True
) -> Path:
    """The verified file in the Hugging Face cache: reused when its bytes match, else (re)downloaded."""

    cached = hf_cached(location, name)
    if cached is not None:
        if sha256_file(cached) == expected.sha256:
            return cached
        logger.warning(f"{expected.label}: the Hugging Face cache holds a different {name}, downloading it again")

    if settings.offline is True or _hf_offline() is True:
        raise DownloadError(
            f"{expected.label}: {name} is not in the Hugging Face cache and offline mode is on "
            "(HF_HUB_OFFLINE / BIRDER_EXP_OFFLINE)"
        )

    # huggingface_hub retries timeouts, connection errors and 5xx itself; one call here
    path = _hf_download_once(
        location, name, expected, settings=settings, progress_bar=progress_bar, force=cached is not None
    )

    digest = sha256_file(path)
    size = path.stat().st_size
    if digest != expected.sha256 or expected.size_fits(size) is False:
        _remove_from_hf_cache(path)
        raise VerificationError(expected.mismatch_message(f"hf://{location.repo_id}/{name}", digest, size))

    return path


def copy_verified(source: Path, target: Path, expected: Expected) -> None:
    """Copy a verified file to ``target`` atomically (a user's ``dst`` for a file kept in another cache)."""

    partial = new_partial(target)
    try:
        try:
            shutil.copyfile(source, partial)
        except OSError as exc:
            raise DownloadError(f"{expected.label}: cannot write into {target.parent} ({exc.strerror})") from None
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
