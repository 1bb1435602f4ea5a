"""Birder's model registry, backed by a plain-data catalogue.

Architectures come from one JSON table per family (``catalogue/<family>.json``) and pretrained entries from
``data/pretrained.json``. Both are read on first use; a family's network module is imported only when a name
of it is built (or when a caller filters by class), so listing and describing never import torch.
"""

import copy
import fnmatch
import importlib
import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field
from importlib import resources
from typing import TYPE_CHECKING
from typing import Any
from typing import Literal
from typing import Optional
from typing import TypeAlias

from birder_exp.model_registry.entries import ModelMetadataType
from birder_exp.model_registry.entries import validate_entry
from birder_exp.model_registry.errors import RegistryError
from birder_exp.model_registry.errors import UnknownNameError
from birder_exp.model_registry.task import Task

if TYPE_CHECKING:
    from birder_exp.net.base import BaseNet
    from birder_exp.net.base import DetectorBackbone
    from birder_exp.net.base import PreTrainEncoder
    from birder_exp.net.detection.base import DetectionBaseNet
    from birder_exp.net.mim.base import MIMBaseNet
    from birder_exp.net.ssl.base import SSLBaseNet

    BaseNetObjType: TypeAlias = BaseNet | DetectionBaseNet | MIMBaseNet | SSLBaseNet

NET_PACKAGE = "birder_exp.net"
DEFAULT_NUM_CHANNELS = 3
Filter: TypeAlias = str | Iterable[str] | None


def group_sort(model_list: list[str]) -> list[str]:
    """Stable sort on the text before the first '_' (Birder's order for pretrained listings)."""

    index_map = {item: index for index, item in enumerate(model_list)}
    return sorted(model_list, key=lambda x: (x.split("_")[0], index_map[x]))


def _patterns(value: Filter) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value.lower()]

    return [v.lower() for v in value]


def apply_filters(names: list[str], include_filter: Filter, exclude_filter: Filter) -> list[str]:
    """Keep names matching any include glob and no exclude glob; order is preserved."""

    includes = _patterns(include_filter)
    excludes = _patterns(exclude_filter)
    out = []
    for name in names:
        if len(includes) > 0 and not any(fnmatch.fnmatchcase(name, p) for p in includes):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in excludes):
            continue
        out.append(name)

    return out


@dataclass
class ModelSpec:
    """One architecture: where its class lives and the config it is built with."""

    name: str
    task: Task
    family: str
    class_name: str
    config: Optional[dict[str, Any]]
    default_size: tuple[int, int]
    detector_backbone: bool = False
    pretrain_encoder: bool = False
    builtin: bool = True
    net_type: Optional[type] = field(default=None, repr=False)

    @property
    def module(self) -> str:
        return f"{NET_PACKAGE}.{self.family}"

    def resolve(self) -> type:
        """Import the family module (once) and return the class this name builds."""

        if self.net_type is None:
            module = importlib.import_module(self.module)
            base = getattr(module, self.class_name)
            if self.config is None:
                self.net_type = base
            else:
                attrs: dict[str, Any] = {"config": self.config, "__module__": module.__name__}
                if tuple(base.default_size) != self.default_size:
                    attrs["default_size"] = self.default_size
                self.net_type = type(self.name, (base,), attrs)

        return self.net_type

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "task": str(self.task),
            "family": self.family,
            "class": self.class_name,
            "config": copy.deepcopy(self.config),
            "default_size": list(self.default_size),
            "detector_backbone": self.detector_backbone,
            "pretrain_encoder": self.pretrain_encoder,
            "builtin": self.builtin,
        }


def _read_json(*parts: str) -> Any:
    path = resources.files("birder_exp.model_registry").joinpath(*parts)
    with path.open("r", encoding="utf-8") as handle:
        return json.load(handle)


def load_catalogue() -> list[ModelSpec]:
    """Every built family's table, families in name order, architectures in table order."""

    specs = []
    folder = resources.files("birder_exp.model_registry").joinpath("catalogue")
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if not item.name.endswith(".json"):
            continue
        with item.open("r", encoding="utf-8") as handle:
            table = json.load(handle)
        for name, arch in table["architectures"].items():
            specs.append(
                ModelSpec(
                    name=name,
                    task=Task(table["task"]),
                    family=table["family"],
                    class_name=table["class"],
                    config=arch["config"],
                    default_size=(arch["default_size"][0], arch["default_size"][1]),
                    detector_backbone=arch.get("detector_backbone", False),
                    pretrain_encoder=arch.get("pretrain_encoder", False),
                )
            )

    return specs


class ModelRegistry:
    def __init__(self) -> None:
        self._specs: dict[str, ModelSpec] = {}
        self.name_aliases: dict[str, str] = {}
        self._pretrained: dict[str, dict[str, Any]] = {}
        self._catalogue_loaded = False
        self._pretrained_loaded = False

    # Loading

    def _ensure_catalogue(self) -> None:
        if self._catalogue_loaded is True:
            return

        self._catalogue_loaded = True
        user_specs = self._specs
        self._specs = {spec.name: spec for spec in load_catalogue()}
        self._specs.update(user_specs)  # Registered before first use: keep, user wins
        aliases: dict[str, str] = _read_json("data", "aliases.json")
        for alias, target in aliases.items():
            if target in self._specs and alias not in self._specs:
                self.name_aliases.setdefault(alias, target)

    def _ensure_pretrained(self) -> None:
        if self._pretrained_loaded is True:
            return

        self._pretrained_loaded = True
        user_entries = self._pretrained
        builtin: dict[str, dict[str, Any]] = _read_json("data", "pretrained.json")
        for entry in builtin.values():
            entry["resolution"] = tuple(entry["resolution"])

        self._pretrained = builtin
        self._pretrained.update(user_entries)

    @property
    def specs(self) -> dict[str, ModelSpec]:
        self._ensure_catalogue()
        return self._specs

    @property
    def registered_configs(self) -> dict[str, ModelSpec]:
        return {name: spec for name, spec in self.specs.items() if spec.config is not None}

    # Registration

    def _assert_name_not_alias(self, name: str) -> None:
        if name in self.name_aliases:
            raise RegistryError(f"model name '{name}' is reserved by a name alias")

    def _add_spec(self, spec: ModelSpec) -> None:
        self._assert_name_not_alias(spec.name)
        if spec.name in self.specs:
            warnings.warn(
                f"Network '{spec.name}' is already registered and will be overwritten", UserWarning, stacklevel=3
            )

        self._specs[spec.name] = spec

    @staticmethod
    def _family_of(net_type: type) -> str:
        module: str = net_type.__module__
        prefix = f"{NET_PACKAGE}."
        return module[len(prefix) :] if module.startswith(prefix) else module

    def _spec_for_type(self, name: str, net_type: type, config: Optional[dict[str, Any]]) -> ModelSpec:
        task = getattr(net_type, "task", None)
        if task not in list(Task):
            raise RegistryError(
                f"cannot register '{name}': {net_type!r} has no valid 'task' "
                f"(expected a birder_exp network class with task in {', '.join(Task)})"
            )

        default_size = getattr(net_type, "default_size", (224, 224))
        return ModelSpec(
            name=name,
            task=Task(task),
            family=self._family_of(net_type),
            class_name=net_type.__name__,
            config=copy.deepcopy(config),
            default_size=(int(default_size[0]), int(default_size[1])),
            detector_backbone=_is_subclass_named(net_type, "DetectorBackbone"),
            pretrain_encoder=_is_subclass_named(net_type, "PreTrainEncoder"),
            builtin=False,
            net_type=net_type,
        )

    def register_model(self, name: str, net_type: type) -> None:
        name_key = name.lower()
        self._add_spec(self._spec_for_type(name_key, net_type, None))

    def register_model_config(self, name: str, net_type: type, *, config: Optional[dict[str, Any]] = None) -> None:
        """Register ``name`` as a subclass of ``net_type`` whose class attribute ``config`` is the dict."""

        if not isinstance(net_type, type):
            raise RegistryError(f"register_model_config('{name}'): net_type must be a network class, got {net_type!r}")
        if config is not None and not isinstance(config, dict):
            raise RegistryError(
                f"register_model_config('{name}'): config must be a dict or None, got {type(config).__name__}"
            )

        name_key = name.lower()
        registered_type = type(name, (net_type,), {"config": config, "__module__": net_type.__module__})
        spec = self._spec_for_type(name_key, net_type, config)
        spec.net_type = registered_type
        self._add_spec(spec)

    def register_name_alias(self, alias_name: str, registered_name: str) -> None:
        alias_key = alias_name.lower()
        registered_name_key = registered_name.lower()
        if alias_key in self.specs:
            raise RegistryError(f"Alias '{alias_name}' collides with an existing registered model name")
        if alias_key in self.name_aliases:
            raise RegistryError(f"Alias '{alias_name}' is already registered")
        if registered_name_key in self.name_aliases:
            raise RegistryError(f"Alias names must target a canonical registered name, got alias '{registered_name}'")
        if registered_name_key not in self.specs:
            raise UnknownNameError("architecture", registered_name, self.specs.keys())

        self.name_aliases[alias_key] = registered_name_key

    def register_weights(self, name: str, weights_info: ModelMetadataType | dict[str, Any]) -> None:
        """Add a pretrained entry after validating it; a duplicate name warns and overwrites."""

        entry = validate_entry(name, weights_info, self.exists)
        if "task" not in entry:
            entry["task"] = str(self._get_spec(entry["net"]["network"]).task)

        self._ensure_pretrained()
        if name in self._pretrained:
            warnings.warn(f"Weights '{name}' are already registered and will be overwritten", UserWarning, stacklevel=3)

        self._pretrained[name] = entry

    # Lookup

    def _resolve_name(self, name: str) -> str:
        name_key = name.lower()
        return self.name_aliases.get(name_key, name_key)

    def _get_spec(self, name: str, task: Optional[Task] = None) -> ModelSpec:
        if not isinstance(name, str):
            raise RegistryError(f"architecture name must be a string, got {type(name).__name__}")

        spec = self.specs.get(self._resolve_name(name))
        if spec is None:
            pool = self.specs.keys() if task is None else self._names_for_task(task)
            raise UnknownNameError("architecture", name, pool)
        if task is not None and spec.task != task:
            raise UnknownNameError(
                f"{task} architecture", name, self._names_for_task(task), hint=f"'{spec.name}' is a {spec.task} network"
            )

        return spec

    def get_spec(self, name: str) -> ModelSpec:
        """The catalogue record of an architecture (public for the config and CLI layers)."""

        return self._get_spec(name)

    def _names_for_task(self, task: Task) -> list[str]:
        return [name for name, spec in self.specs.items() if spec.task == task]

    def get_model_class(self, name: str) -> type:
        return self._get_spec(name).resolve()

    def list_models(
        self,
        *,
        include_filter: Filter = None,
        task: Optional[Task | str] = None,
        net_type: Optional[type | tuple[type, ...]] = None,
        net_type_op: Literal["AND", "OR"] = "AND",
        exclude_filter: Filter = None,
    ) -> list[str]:
        specs = list(self.specs.values())
        if task is not None:
            task = _as_task(task)
            specs = [spec for spec in specs if spec.task == task]

        names = apply_filters([spec.name for spec in specs], include_filter, exclude_filter)
        if net_type is not None:
            types = net_type if isinstance(net_type, tuple) else (net_type,)
            if net_type_op not in ("AND", "OR"):
                raise RegistryError(f"Unknown op {net_type_op!r} (valid: 'AND', 'OR')")

            combine = all if net_type_op == "AND" else any
            names = [n for n in names if combine(issubclass(self.specs[n].resolve(), t) for t in types)]

        return names

    def exists(self, name: str, task: Optional[Task | str] = None, net_type: Optional[type] = None) -> bool:
        spec = self.specs.get(self._resolve_name(name))
        if spec is None:
            return False
        if task is not None and spec.task != _as_task(task):
            return False
        if net_type is not None:
            return issubclass(spec.resolve(), net_type)

        return True

    def _metadata_type_name(self, model: "BaseNetObjType") -> str:
        cls = model.__class__
        bases = cls.__bases__
        if len(bases) > 1 and bases[0].__name__ == "FSDPModule":
            return bases[1].__name__.lower()

        return cls.__name__.lower()

    def get_model_base_name(self, model: "BaseNetObjType") -> str:
        type_name = self._metadata_type_name(model)
        spec = self.specs.get(type_name)
        if spec is not None and spec.config is not None:
            return spec.class_name.lower()

        return type_name

    def get_registered_name(self, model: "BaseNetObjType") -> Optional[str]:
        type_name = self._metadata_type_name(model)
        spec = self.specs.get(type_name)
        if spec is not None and spec.config is not None:
            return type_name

        return None

    def get_default_size(self, model_name: str) -> tuple[int, int]:
        return self._get_spec(model_name).default_size

    # Pretrained entries

    @property
    def pretrained(self) -> dict[str, dict[str, Any]]:
        self._ensure_pretrained()
        return self._pretrained

    def missing_networks(self, model_name: str) -> list[str]:
        """The networks an entry needs that birder_exp cannot build yet (empty when it is loadable)."""

        entry = self.pretrained[model_name]
        needed = [entry["net"]["network"]] + [entry[k]["network"] for k in ("backbone", "encoder") if k in entry]
        return [n for n in needed if not self.exists(n)]

    def list_pretrained_models(
        self,
        include_filter: Filter = None,
        task: Optional[Task | str] = None,
        *,
        exclude_filter: Filter = None,
        include_unavailable: bool = False,
    ) -> list[str]:
        """Entries (group-sorted); by default only those whose networks birder_exp can build."""

        names = list(self.pretrained.keys())
        names = apply_filters(names, include_filter, exclude_filter)
        if task is not None:
            task = _as_task(task)
            names = [n for n in names if self._pretrained[n]["task"] == task]
        if include_unavailable is False:
            names = [n for n in names if len(self.missing_networks(n)) == 0]

        return group_sort(names)

    def pretrained_exists(self, model_name: str) -> bool:
        return model_name in self.pretrained

    def get_pretrained_metadata(self, model_name: str) -> ModelMetadataType:
        entry = self.pretrained.get(model_name)
        if entry is None:
            raise UnknownNameError("pretrained entry", model_name, self.pretrained.keys())

        return copy.deepcopy(entry)  # type: ignore[return-value]

    # Factories

    def net_factory(
        self,
        name: str,
        num_classes: int,
        input_channels: int = DEFAULT_NUM_CHANNELS,
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> "BaseNet":
        net_cls = self._get_spec(name, Task.IMAGE_CLASSIFICATION).resolve()
        return net_cls(input_channels, num_classes, config=config, size=size)  # type: ignore[no-any-return]

    def detection_net_factory(
        self,
        name: str,
        num_classes: int,
        backbone: "DetectorBackbone",
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
        export_mode: bool = False,
    ) -> "DetectionBaseNet":
        net_cls = self._get_spec(name, Task.OBJECT_DETECTION).resolve()
        return net_cls(  # type: ignore[no-any-return]
            num_classes, backbone, config=config, size=size, export_mode=export_mode
        )

    def mim_net_factory(
        self,
        name: str,
        encoder: "PreTrainEncoder",
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
        mask_ratio: Optional[float] = None,
        min_mask_size: int = 1,
    ) -> "MIMBaseNet":
        net_cls = self._get_spec(name, Task.MASKED_IMAGE_MODELING).resolve()
        return net_cls(  # type: ignore[no-any-return]
            encoder, config=config, size=size, mask_ratio=mask_ratio, min_mask_size=min_mask_size
        )

    def ssl_net_factory(
        self,
        name: str,
        backbone: "BaseNet",
        *,
        config: Optional[dict[str, Any]] = None,
        size: Optional[tuple[int, int]] = None,
    ) -> "SSLBaseNet":
        net_cls = self._get_spec(name, Task.SELF_SUPERVISED_LEARNING).resolve()
        return net_cls(backbone, config=config, size=size)  # type: ignore[no-any-return]


def _as_task(task: Task | str) -> Task:
    try:
        return Task(task)
    except ValueError:
        raise RegistryError(f"unknown task {task!r} (valid: {', '.join(Task)})") from None


def _is_subclass_named(cls: type, name: str) -> bool:
    return any(base.__name__ == name for base in cls.__mro__)


registry = ModelRegistry()
list_pretrained_models = registry.list_pretrained_models
