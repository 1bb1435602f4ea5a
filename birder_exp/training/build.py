"""From a composed config to objects: the network (through the registry) and the task's LightningModule class.

Tasks plug in through ``TASK_MODULES``; a task without a module is refused with one line before any work.
"""

import contextlib
import importlib
from collections.abc import Mapping
from typing import Any
from typing import Optional

import torch
from torch import nn

from birder_exp.configs.errors import ConfigError
from birder_exp.model_registry import Task
from birder_exp.model_registry import UnknownNameError
from birder_exp.model_registry import registry
from birder_exp.net.meta import meta_build

TASK_MODULES: dict[str, str] = {
    str(Task.IMAGE_CLASSIFICATION): "birder_exp.training.classification:ClassificationModule",
}


def module_class(task: str) -> type:
    """The LightningModule class that trains networks of ``task``."""

    target = TASK_MODULES.get(task)
    if target is None:
        supported = ", ".join(sorted(TASK_MODULES))
        raise ConfigError(f"training '{task}' networks is not supported yet (supported tasks: {supported})")

    (module_name, class_name) = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)  # type: ignore[no-any-return]


def resolve_size(model: Mapping[str, Any], data_size: Optional[Any] = None) -> tuple[int, int]:
    """The input resolution: model.size (set by the user or a pretrained entry) > data.size > the default."""

    size = model.get("size")
    if size is None:
        size = data_size
    if size is None:
        return registry.get_default_size(model["name"])
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ConfigError(f"model.size must be [height, width] of positive ints, got {list(size)}")

    return (int(size[0]), int(size[1]))


def _spec_task(name: str) -> str:
    try:
        return str(registry.get_spec(name).task)
    except UnknownNameError:
        from birder_exp.configs.plugins import load_plugins

        load_plugins()  # A checkpoint of a plugin architecture, loaded outside the CLI
        return str(registry.get_spec(name).task)


def model_task(model: Mapping[str, Any]) -> str:
    return _spec_task(model["name"])


def _plain(config: Any) -> Optional[dict[str, Any]]:
    if config is None:
        return None
    return dict(config)


def _device_context(device: Optional[torch.device | str]) -> contextlib.AbstractContextManager[Any]:
    if device is None:
        return contextlib.nullcontext()
    if torch.device(device).type == "meta":
        return meta_build()  # A layout only: initialisers would fill tensors nobody reads
    return torch.device(device)


def build_network(
    model: Mapping[str, Any],
    num_classes: int,
    size: tuple[int, int],
    device: Optional[torch.device | str] = None,
) -> nn.Module:
    """Build ``model`` through the registry's factory for its task (on ``device``, e.g. "meta")."""

    name = model["name"]
    task = _spec_task(name)
    channels = int(model.get("input_channels", 3))
    config = _plain(model.get("config")) or None  # {} (no override) builds the registered config as it is
    try:
        with _device_context(device):
            return _build(model, name, task, num_classes, channels, config, size)
    except (ValueError, TypeError, KeyError) as exc:
        if isinstance(exc, ConfigError):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
        raise ConfigError(f"model '{name}' cannot be built at {size[0]}x{size[1]}: {message}") from exc


def _build(
    model: Mapping[str, Any],
    name: str,
    task: str,
    num_classes: int,
    channels: int,
    config: Optional[dict[str, Any]],
    size: tuple[int, int],
) -> nn.Module:
    if task == Task.IMAGE_CLASSIFICATION:
        return registry.net_factory(name, num_classes, channels, config=config, size=size)
    if task == Task.OBJECT_DETECTION:
        backbone = _required(model, "backbone", name, task)
        net = registry.net_factory(backbone, num_classes, channels, size=size)
        return registry.detection_net_factory(name, num_classes, net, config=config, size=size)  # type: ignore[arg-type]
    if task == Task.MASKED_IMAGE_MODELING:
        encoder = _required(model, "encoder", name, task)
        net = registry.net_factory(encoder, 0, channels, size=size)
        return registry.mim_net_factory(name, net, config=config, size=size)  # type: ignore[arg-type]
    if task == Task.SELF_SUPERVISED_LEARNING:
        backbone = _required(model, "backbone", name, task)
        net = registry.net_factory(backbone, 0, channels, size=size)
        return registry.ssl_net_factory(name, net, config=config, size=size)

    raise ConfigError(f"model '{name}' has an unknown task '{task}'")


def _required(model: Mapping[str, Any], key: str, name: str, task: str) -> str:
    value = model.get(key)
    if value is None:
        raise ConfigError(f"model '{name}' is a {task} network: set model.{key}=<architecture>")
    return str(value)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
