"""Where weights come from and where they are kept; read from the environment on every call.

Environment variables (all optional):

- ``BIRDER_EXP_CACHE``: the cache directory (default: the platform's user cache dir + ``birder_exp``)
- ``BIRDER_EXP_BASE_URL``: base URL of entries that carry no ``url`` (default: Birder's public bucket)
- ``BIRDER_EXP_OFFLINE``: ``1`` never touches the network; only cached, verified files load
- ``BIRDER_EXP_DOWNLOAD_TIMEOUT``: seconds a socket may stay silent before the attempt is retried (60)
- ``BIRDER_EXP_DOWNLOAD_RETRIES``: extra attempts after a timeout, dropped connection or 5xx (4)
- ``BIRDER_EXP_RETRY_BACKOFF``: first back-off delay in seconds, doubled per attempt, capped at 30 (1.0)
- ``BIRDER_EXP_LOCK_TIMEOUT``: seconds to wait for another process's download of the same file (1800)
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

BIRDER_BASE_URL = "https://f000.backblazeb2.com/file/birder/models"
MAX_BACKOFF = 30.0
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class WeightsSettings:
    cache_dir: Path
    base_url: str
    offline: bool
    timeout: float
    retries: int
    backoff: float
    lock_timeout: float


def user_cache_dir() -> Path:
    """The platform's per-user cache directory for birder_exp (never the working directory)."""

    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "birder_exp" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "birder_exp"

    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg != "" and Path(xdg).is_absolute() else Path.home() / ".cache"  # XDG: relative is invalid
    return base / "birder_exp"


def _number(name: str, default: float, *, minimum: float = 0.0, integer: bool = False) -> float:
    raw = os.environ.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = int(raw) if integer is True else float(raw)
    except ValueError:
        kind = "an integer" if integer is True else "a number"
        raise ValueError(f"{name} must be {kind} >= {minimum:g}, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {raw!r}")

    return value


def _flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False

    raise ValueError(f"{name} must be one of 1/0/true/false/yes/no/on/off, got {raw!r}")


def cache_dir() -> Path:
    raw = os.environ.get("BIRDER_EXP_CACHE", "").strip()
    if raw != "":
        return Path(raw).expanduser().absolute()

    return user_cache_dir()


def current() -> WeightsSettings:
    base_url = os.environ.get("BIRDER_EXP_BASE_URL", "").strip() or BIRDER_BASE_URL
    return WeightsSettings(
        cache_dir=cache_dir(),
        base_url=base_url.rstrip("/"),
        offline=_flag("BIRDER_EXP_OFFLINE"),
        timeout=_number("BIRDER_EXP_DOWNLOAD_TIMEOUT", 60.0, minimum=0.001),
        retries=int(_number("BIRDER_EXP_DOWNLOAD_RETRIES", 4, integer=True)),
        backoff=_number("BIRDER_EXP_RETRY_BACKOFF", 1.0),
        lock_timeout=_number("BIRDER_EXP_LOCK_TIMEOUT", 1800.0),
    )
