"""Pretrained entry metadata: its shape, and the checks every entry passes before it is listed."""

import re
from collections.abc import Callable
from typing import Any
from typing import NotRequired
from typing import TypedDict

from birder_exp.model_registry.errors import InvalidWeightsEntryError

FORMATS = ("pt", "safetensors", "pt2", "pts", "ptl")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class FormatInfo(TypedDict):
    file_size: float
    sha256: str


class NetRef(TypedDict):
    network: str
    tag: NotRequired[str]
    reparameterized: NotRequired[bool]
    epoch: NotRequired[int]


class ModelMetadataType(TypedDict):
    url: NotRequired[str]
    description: str
    resolution: tuple[int, int]
    formats: dict[str, FormatInfo]
    net: NetRef
    backbone: NotRequired[NetRef]
    encoder: NotRequired[NetRef]
    task: NotRequired[str]


def _fail(name: str, key: str, problem: str) -> InvalidWeightsEntryError:
    return InvalidWeightsEntryError(f"weights entry '{name}': {key} {problem}")


def _check_net_ref(name: str, key: str, ref: Any, network_exists: Callable[[str], bool]) -> None:
    if not isinstance(ref, dict):
        raise _fail(name, key, f"must be a dict with a 'network' name, got {type(ref).__name__}")
    network = ref.get("network")
    if not isinstance(network, str) or network == "":
        raise _fail(name, f"{key}.network", "must be a non-empty string")
    if not network_exists(network):
        raise _fail(name, f"{key}.network", f"'{network}' is not a registered architecture")
    if "tag" in ref and not isinstance(ref["tag"], str):
        raise _fail(name, f"{key}.tag", "must be a string")


def validate_entry(name: Any, info: Any, network_exists: Callable[[str], bool]) -> dict[str, Any]:
    """Check a user's entry and return a normalised copy (resolution as a tuple, task kept)."""

    if not isinstance(name, str) or _NAME_RE.match(name) is None:
        raise InvalidWeightsEntryError(
            f"weights entry name {name!r} is invalid: use only letters, digits, '_', '.' and '-'"
        )
    if not isinstance(info, dict):
        raise _fail(name, "info", f"must be a dict, got {type(info).__name__}")

    for key in ("description", "resolution", "formats", "net"):
        if key not in info:
            raise _fail(name, key, "is missing (required: description, resolution, formats, net)")

    if not isinstance(info["description"], str):
        raise _fail(name, "description", "must be a string")
    if "url" in info and (not isinstance(info["url"], str) or info["url"] == ""):
        raise _fail(name, "url", "must be a non-empty string")

    resolution = info["resolution"]
    if (
        not isinstance(resolution, (list, tuple))
        or len(resolution) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in resolution)
    ):
        raise _fail(name, "resolution", f"must be two positive ints (h, w), got {resolution!r}")

    formats = info["formats"]
    if not isinstance(formats, dict) or len(formats) == 0:
        raise _fail(name, "formats", f"must be a non-empty dict keyed by one of {', '.join(FORMATS)}")
    for fmt, fmt_info in formats.items():
        if fmt not in FORMATS:
            raise _fail(name, f"formats.{fmt}", f"is not a known format (known: {', '.join(FORMATS)})")
        if not isinstance(fmt_info, dict):
            raise _fail(name, f"formats.{fmt}", "must be a dict with file_size and sha256")
        size = fmt_info.get("file_size")
        if not isinstance(size, (int, float)) or isinstance(size, bool) or size <= 0:
            raise _fail(name, f"formats.{fmt}.file_size", f"must be a number > 0 (MiB), got {size!r}")
        sha = fmt_info.get("sha256")
        if not isinstance(sha, str) or _SHA256_RE.match(sha.lower()) is None:
            raise _fail(name, f"formats.{fmt}.sha256", f"must be 64 hex characters, got {sha!r}")

    _check_net_ref(name, "net", info["net"], network_exists)
    for key in ("backbone", "encoder"):
        if key in info:
            _check_net_ref(name, key, info[key], network_exists)

    entry = dict(info)
    entry["resolution"] = (resolution[0], resolution[1])
    entry["formats"] = {
        fmt: {"file_size": float(v["file_size"]), "sha256": v["sha256"].lower()} for fmt, v in formats.items()
    }

    return entry
