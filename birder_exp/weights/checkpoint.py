"""Birder's checkpoint layout, in ``.pt`` and ``.safetensors``.

A ``.pt`` file is a dict: ``state`` (the state_dict), ``birder_version``, ``task``, ``signature``,
``class_to_idx``, ``rgb_stats`` and, when the network was built with a config of its own, ``config`` /
``backbone_config``. A ``.safetensors`` file holds the same tensors and the same metadata in its header, every
value a string (dicts JSON-encoded). birder_exp also records ``network`` (and ``backbone`` for detection, MIM
and SSL networks) so a local file can be loaded by path alone; Birder ignores the extra keys.

Reading never runs pickle code (``torch.load(weights_only=True)``) and never copies what it does not have to:
``.pt`` files are memory-mapped, safetensors files are read tensor by tensor.
"""

import json
import os
import pickle
import tempfile
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import Optional

import torch
from torch import nn

from birder_exp.model_registry import Task
from birder_exp.model_registry import registry
from birder_exp.version import __version__
from birder_exp.weights.errors import CheckpointFormatError
from birder_exp.weights.errors import UnsupportedFormatError

FORMAT_SUFFIXES = {".pt": "pt", ".safetensors": "safetensors"}
_JSON_KEYS = ("class_to_idx", "signature", "rgb_stats", "config", "backbone_config")
_TEXT_KEYS = ("birder_version", "task", "network", "backbone")
_REQUIRED = ("signature", "class_to_idx", "rgb_stats")


@dataclass
class CheckpointMeta:
    signature: dict[str, Any]
    class_to_idx: dict[str, int]
    rgb_stats: dict[str, Any]
    task: Optional[str] = None
    config: Optional[dict[str, Any]] = None
    backbone_config: Optional[dict[str, Any]] = None
    birder_version: Optional[str] = None
    network: Optional[str] = None
    backbone: Optional[str] = None


@dataclass
class Checkpoint:
    path: Path
    file_format: str
    meta: CheckpointMeta
    state: dict[str, torch.Tensor] = field(repr=False)


def checkpoint_format(path: str | Path, file_format: Optional[str] = None) -> str:
    """The format given, else the one the file name says (``.pt`` / ``.safetensors``)."""

    if file_format is None:
        suffix = Path(path).suffix.lower()
        if suffix not in FORMAT_SUFFIXES:
            raise UnsupportedFormatError(
                f"cannot tell the format of {path} from its suffix; name it .pt or .safetensors or pass file_format"
            )
        return FORMAT_SUFFIXES[suffix]
    if file_format not in FORMAT_SUFFIXES.values():
        raise UnsupportedFormatError(f"birder_exp reads 'pt' and 'safetensors' checkpoints, not '{file_format}'")

    return file_format


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text != "" else type(error).__name__


def _meta_from(path: Path, values: dict[str, Any]) -> CheckpointMeta:
    missing = [key for key in _REQUIRED if values.get(key) is None]
    if len(missing) > 0:
        raise CheckpointFormatError(
            f"{path} is not a Birder checkpoint: it lacks {', '.join(missing)} (required: {', '.join(_REQUIRED)})"
        )
    signature = values["signature"]
    try:
        data_shape = signature["inputs"][0]["data_shape"]
        if len(data_shape) != 4:
            raise ValueError
    except (KeyError, IndexError, TypeError, ValueError):
        raise CheckpointFormatError(
            f"{path}: signature has no inputs[0].data_shape of the form [0, channels, height, width]"
        ) from None

    task = values.get("task")
    return CheckpointMeta(
        signature=signature,
        class_to_idx=dict(values["class_to_idx"]),
        rgb_stats=values["rgb_stats"],
        task=str(task) if task is not None else None,
        config=values.get("config") or None,
        backbone_config=values.get("backbone_config") or None,
        birder_version=values.get("birder_version"),
        network=values.get("network"),
        backbone=values.get("backbone"),
    )


def _torch_load(path: Path, mmap: bool) -> Any:
    return torch.load(path, map_location="cpu", mmap=mmap, weights_only=True)


def _read_pt(path: Path) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    try:
        try:
            data = _torch_load(path, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            data = _torch_load(path, mmap=False)  # Legacy (non-zip) files cannot be memory-mapped
    except pickle.UnpicklingError as exc:
        raise CheckpointFormatError(
            f"{path} holds objects other than tensors and plain data; refusing to run its pickle code "
            f"({_first_line(exc)})"
        ) from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointFormatError(f"{path} is not a readable torch checkpoint ({_first_line(exc)})") from None

    if not isinstance(data, dict) or not isinstance(data.get("state"), dict):
        keys = ", ".join(sorted(str(k) for k in data)[:6]) if isinstance(data, dict) else type(data).__name__
        raise CheckpointFormatError(
            f"{path} is not a Birder checkpoint (a dict with 'state', 'signature', 'class_to_idx', 'rgb_stats'); "
            f"found {keys}"
        )

    return data["state"], _meta_from(path, data)


def _read_safetensors(path: Path, device: torch.device) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    from safetensors import SafetensorError
    from safetensors import safe_open

    target = "cpu"  # Other devices: read on the CPU, moved tensor by tensor by the loader
    if device.type == "cuda":
        target = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    try:
        with safe_open(str(path), framework="pt", device=target) as handle:
            header: dict[str, str] = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError) as exc:
        raise CheckpointFormatError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None

    values: dict[str, Any] = {}
    for key in _TEXT_KEYS:
        if key in header:
            values[key] = header[key]
    for key in _JSON_KEYS:
        text = header.get(key)
        if text is None or text == "":
            continue
        try:
            values[key] = json.loads(text)
        except ValueError:
            raise CheckpointFormatError(f"{path}: header value '{key}' is not valid JSON") from None

    return state, _meta_from(path, values)


def read_checkpoint(
    path: str | Path, file_format: Optional[str] = None, *, device: Optional[torch.device] = None
) -> Checkpoint:
    """Tensors and metadata of a Birder checkpoint; ``.pt`` tensors stay memory-mapped on the CPU."""

    path = Path(path)
    file_format = checkpoint_format(path, file_format)
    if path.is_file() is False:
        raise FileNotFoundError(f"checkpoint {path} does not exist")

    if file_format == "pt":
        state, meta = _read_pt(path)
    else:
        state, meta = _read_safetensors(path, device if device is not None else torch.device("cpu"))

    return Checkpoint(path=path, file_format=file_format, meta=meta, state=state)


# Writing


def signature_of(net: nn.Module) -> dict[str, Any]:
    """The signature Birder's training scripts record for ``net`` (by its task)."""

    from birder_exp.net.base import get_signature
    from birder_exp.net.detection.base import DetectionBaseNet
    from birder_exp.net.detection.base import get_detection_signature
    from birder_exp.net.mim.base import MIMBaseNet
    from birder_exp.net.mim.base import get_mim_signature
    from birder_exp.net.ssl.base import SSLBaseNet
    from birder_exp.net.ssl.base import get_ssl_signature

    size = getattr(net, "size", None)
    channels = getattr(net, "input_channels", None)
    if size is None or channels is None:
        raise ValueError(f"cannot derive a signature for {type(net).__name__}: it has no size / input_channels")

    shape = (1, int(channels), int(size[0]), int(size[1]))
    if isinstance(net, DetectionBaseNet):
        return dict(get_detection_signature(shape, net.num_classes - 1, net.dynamic_size))
    if isinstance(net, MIMBaseNet):
        return dict(get_mim_signature(shape))
    if isinstance(net, SSLBaseNet):
        return dict(get_ssl_signature(shape))

    num_classes: Any = net.num_classes
    return dict(get_signature(shape, int(num_classes)))


def registered_name(module: nn.Module) -> Optional[str]:
    """The registry name that builds exactly this module's class, when there is one."""

    name = type(module).__name__.lower()
    if registry.exists(name) is True and registry.get_model_class(name) is type(module):
        return name

    return None


def _inner_network(net: nn.Module) -> Optional[nn.Module]:
    for attr in ("backbone", "encoder"):
        inner = getattr(net, attr, None)
        if isinstance(inner, nn.Module):
            return inner

    return None


def checkpoint_metadata(
    net: nn.Module,
    *,
    class_to_idx: dict[str, int],
    rgb_stats: dict[str, Any],
    signature: Optional[dict[str, Any]] = None,
    task: Optional[str] = None,
    config: Optional[dict[str, Any]] = None,
    backbone_config: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    task_value = task if task is not None else getattr(net, "task", None)
    if task_value is None:
        raise ValueError(f"cannot tell the task of {type(net).__name__}; pass task= (one of {', '.join(Task)})")

    meta: dict[str, Any] = {
        "birder_version": __version__,
        "task": str(Task(task_value)),
        "signature": signature if signature is not None else signature_of(net),
        "class_to_idx": dict(class_to_idx),
        "rgb_stats": rgb_stats,
    }
    if config is not None:
        meta["config"] = config
    if backbone_config is not None:
        meta["backbone_config"] = backbone_config

    network = registered_name(net)
    if network is not None:
        meta["network"] = network
    inner = _inner_network(net) if not isinstance(net, _base_net_type()) else None
    if inner is not None:
        inner_name = registered_name(inner)
        if inner_name is not None:
            meta["backbone"] = inner_name

    return meta


def _base_net_type() -> type:
    from birder_exp.net.base import BaseNet

    return BaseNet


def save_checkpoint(
    net: nn.Module,
    path: str | Path,
    *,
    format: Optional[str] = None,
    class_to_idx: Optional[dict[str, int]] = None,
    rgb_stats: dict[str, Any],
    signature: Optional[dict[str, Any]] = None,
    task: Optional[str] = None,
    config: Optional[dict[str, Any]] = None,
    backbone_config: Optional[dict[str, Any]] = None,
) -> Path:
    """Write ``net`` in Birder's layout (``pt`` or ``safetensors``, from ``format`` or the suffix), atomically.

    ``config`` / ``backbone_config`` are the configs the network was built with on top of its registered one
    (Birder's ``external_config``); a loader applies them again. Returns the path written.
    """

    path = Path(path)
    file_format = checkpoint_format(path, format)
    meta = checkpoint_metadata(
        net,
        class_to_idx=class_to_idx if class_to_idx is not None else {},
        rgb_stats=rgb_stats,
        signature=signature,
        task=task,
        config=config,
        backbone_config=backbone_config,
    )

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if file_format == "pt":
            torch.save({"state": net.state_dict(), **meta}, tmp)
        else:
            import safetensors.torch

            header = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in meta.items()}
            safetensors.torch.save_model(net, str(tmp), header, force_contiguous=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

    return path
