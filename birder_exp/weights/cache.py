"""The cache on disk: where an entry's file lives, a cross-process lock per file, and the verified marker.

A file is trusted only through its marker ``<file>.verified`` (sha256, size, mtime_ns): a file that matches its
marker loads without being hashed again and without any network access. Downloads write to a unique
``.<name>.<random>.partial`` file beside the target and ``os.replace`` it into place after the hash matched, so
a crash, a kill or a full disk never leaves a file under the target name that a later load would trust.
"""

import errno
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any
from typing import Optional

from birder_exp.weights.errors import DownloadError

logger = logging.getLogger(__name__)

MARKER_SUFFIX = ".verified"
LOCK_SUFFIX = ".lock"
PARTIAL_SUFFIX = ".partial"

if sys.platform == "win32":  # pragma: no cover
    import msvcrt

    def _lock_nonblocking(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

else:
    import fcntl

    def _lock_nonblocking(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def entry_file_name(entry: str, file_format: str) -> str:
    return f"{entry}.{file_format}"


def marker_path(target: Path) -> Path:
    return target.with_name(target.name + MARKER_SUFFIX)


def lock_path(target: Path) -> Path:
    return target.with_name(target.name + LOCK_SUFFIX)


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read_marker(target: Path) -> Optional[dict[str, Any]]:
    try:
        data = json.loads(marker_path(target).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None

    return data if isinstance(data, dict) else None


def _marker_file(target: Path, data: dict[str, Any]) -> Path:
    name = str(data.get("file", ""))
    path = Path(name)
    return path if path.is_absolute() else target.parent / path


def marked_file(target: Path) -> Optional[Path]:
    """The file ``target``'s marker points at, whether or not it still matches (None without a marker)."""

    data = _read_marker(target)
    return None if data is None else _marker_file(target, data)


def trusted_file(target: Path, sha256: str) -> Optional[Path]:
    """The verified file for ``target`` when its marker still matches it (no hashing, no network), else None."""

    data = _read_marker(target)
    if data is None or data.get("sha256") != sha256:
        return None

    path = _marker_file(target, data)
    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_size != data.get("size") or st.st_mtime_ns != data.get("mtime_ns"):
        return None

    return path


def write_marker(target: Path, file: Path, sha256: str) -> None:
    """Record that ``file`` (the target itself, or a file in another cache) hashed to ``sha256``."""

    st = file.stat()
    name = file.name if file.parent.absolute() == target.parent.absolute() else str(file.absolute())
    data = {"file": name, "sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "verified_at": time.time()}
    tmp: Optional[str] = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".marker-tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, marker_path(target))
    except OSError as exc:  # A read-only cache still loads; it just hashes again next time
        logger.warning(f"Could not write the verified marker for {target}: {exc}")
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def drop_marker(target: Path) -> None:
    marker_path(target).unlink(missing_ok=True)


def new_partial(target: Path) -> Path:
    """A unique temporary file beside ``target`` (same filesystem, so ``os.replace`` is atomic)."""

    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX)
    os.close(fd)
    return Path(tmp)


def clean_partials(target: Path) -> int:
    """Remove partial downloads of ``target`` left by killed processes; call with the lock held."""

    prefix = f".{target.name}."
    removed = 0
    try:
        names = os.listdir(target.parent)
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix) and (name.endswith(PARTIAL_SUFFIX) or name.endswith(".marker-tmp")):
            try:
                (target.parent / name).unlink()
                removed += 1
            except OSError:
                pass

    if removed > 0:
        logger.info(f"Removed {removed} partial file(s) of {target.name} left by an interrupted download")

    return removed


class FileLock:
    """An exclusive lock on ``<target>.lock`` shared by every process on the machine.

    Built on ``flock`` (``msvcrt.locking`` on Windows): the operating system drops the lock when its holder
    exits or is killed, so a lock file left on disk is never stale and needs no clean-up. Waiting polls with a
    growing interval and gives up after ``timeout`` seconds with a one-line error.
    """

    def __init__(self, target: Path, timeout: float, *, label: str = "") -> None:
        self.path = lock_path(target)
        self.timeout = timeout
        self.label = label or target.name
        self._fd: Optional[int] = None

    def _try_lock(self, fd: int) -> bool:
        try:
            _lock_nonblocking(fd)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
                return False
            raise DownloadError(
                f"{self.label}: cannot lock {self.path} ({exc.strerror}); use a local cache dir"
            ) from None

        return True

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise DownloadError(f"{self.label}: cannot create the lock file {self.path} ({exc.strerror})") from None
        deadline = time.monotonic() + self.timeout
        delay = 0.02
        try:
            while self._try_lock(fd) is False:
                if time.monotonic() >= deadline:
                    raise DownloadError(
                        f"{self.label}: another process held {self.path} for more than {self.timeout:g}s "
                        "(raise BIRDER_EXP_LOCK_TIMEOUT to wait longer)"
                    )
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)
        except BaseException:
            os.close(fd)
            raise

        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            _unlock(self._fd)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: Optional[type[BaseException]],
        exc: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> None:
        self.release()
