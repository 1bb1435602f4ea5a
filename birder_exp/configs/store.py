"""The ``model`` and ``pretrained`` config groups, generated from the registry at start-up.

With 1,000+ architectures the usual ``ConfigStore.store`` is too slow twice over: it builds a DictConfig per
option when storing (about 1 s for the catalogue), and Hydra deep-copies the whole store on every compose
(``CachingConfigRepository`` copies its sources). So each option is kept as a plain, immutable dict inside a
``PlainNode``, which builds its DictConfig only when Hydra loads that one option and deep-copies as itself.
The options are untyped; they take their types from ``TrainConfig`` (``train_schema``) when merged.
"""

import copy
import os
import secrets
from collections.abc import Callable
from importlib import resources
from typing import Any
from typing import Optional

from hydra.core.config_store import ConfigNode
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig
from omegaconf import OmegaConf

from birder_exp.configs.schema import TrainConfig
from birder_exp.model_registry import registry

PROVIDER = "birder_exp"
SCHEMA_NAME = "train_schema"
# hydra/sweeper=birder_exp (birder_exp.runs.sweeper): Hydra's basic sweeper composing each job once
SWEEPER_NODE: dict[str, Any] = {
    "_target_": "hydra_plugins.birder_exp_sweeper.birder_exp_sweeper.BirderSweeper",  # runs.sweeper.SWEEPER_CLASS
    "max_batch_size": None,
    "params": None,
    # Processes composing a batch: null = one per CPU (up to 8) for 8+ jobs, 1 = this process only
    "compose_workers": None,
}
GENERATED_GROUPS = ("model", "pretrained")
# Per CLI invocation: the run directory's unique suffix, and the working directory it started in
_invocation: dict[str, Optional[str]] = {"run_id": secrets.token_hex(3), "cwd": None}


def new_run_id() -> str:
    """Start an invocation: a fresh run-directory suffix (each ``main()`` call gets its own, even within one
    second) and the working directory that ``paths.root_dir`` means (``${birder_exp.cwd:}``)."""

    _invocation["run_id"] = secrets.token_hex(3)
    _invocation["cwd"] = os.getcwd()
    return str(_invocation["run_id"])


def _cwd() -> str:
    # Hydra's ${hydra:runtime.cwd} cannot be used here: the sweep directory resolves before HydraConfig is set
    return _invocation["cwd"] or os.getcwd()


class PlainNode(ConfigNode):
    """A ConfigStore entry whose DictConfig is made on load from a payload (a plain dict or a dataclass)."""

    def __init__(self, name: str, payload: Any, group: Optional[str] = None, package: Optional[str] = None) -> None:
        # ConfigNode's own __init__ would store a built node; this one defers it.
        self.name = name if name.endswith(".yaml") else f"{name}.yaml"
        self.group = group
        self.package = package
        self.provider = PROVIDER
        self._payload = payload
        self._node: Optional[DictConfig] = None

    @property  # type: ignore[override]
    def node(self) -> DictConfig:
        if self._node is not None:
            return self._node

        return OmegaConf.structured(self._payload)  # type: ignore[no-any-return]

    @node.setter
    def node(self, value: DictConfig) -> None:
        self._node = value

    @property
    def payload(self) -> Any:
        return self._payload

    def __deepcopy__(self, memo: dict[int, Any]) -> "PlainNode":
        if self._node is None:
            return self  # The payload is never mutated: sharing it is a copy

        clone = copy.copy(self)
        clone._node = copy.deepcopy(self._node, memo)
        return clone


def model_options() -> dict[str, dict[str, Any]]:
    """One plain node per architecture and per alias, in the registry's order."""

    options: dict[str, dict[str, Any]] = {}
    for name in registry.list_models():
        spec = registry.get_spec(name)
        options[name] = {"name": name, "task": str(spec.task)}  # size: data.size, else the default
    for alias, target in registry.name_aliases.items():
        if alias not in options and target in options:
            options[alias] = {**options[target], "name": alias}

    return options


def pretrained_options() -> dict[str, dict[str, Any]]:
    """One node per loadable entry: it picks the entry's network as the model and sets its resolution."""

    options: dict[str, dict[str, Any]] = {}
    for name in registry.list_pretrained_models():
        entry = registry.pretrained[name]
        network = entry["net"]["network"].lower()
        resolution = [int(v) for v in entry["resolution"]]
        formats = list(entry["formats"].keys())
        file_format = "pt" if "pt" in formats else formats[0]
        backbone = entry["backbone"]["network"] if "backbone" in entry else None
        encoder = entry["encoder"]["network"] if "encoder" in entry else None
        model: dict[str, Any] = {"size": resolution}
        if backbone is not None:
            model["backbone"] = backbone
        if encoder is not None:
            model["encoder"] = encoder

        options[name] = {
            "defaults": [{"override /model": network}, "_self_"],
            "pretrained": {
                "name": name,
                "network": network,
                "task": entry["task"],
                "tag": entry["net"].get("tag"),
                "resolution": resolution,
                "backbone": backbone,
                "encoder": encoder,
                "file_format": file_format,
            },
            "model": model,
        }

    return options


def _replace_group(store: ConfigStore, group: str, nodes: dict[str, PlainNode]) -> None:
    store.repo[group] = {node.name: node for node in nodes.values()}


def register_configs() -> None:
    """(Re)build the generated groups from the registry as it is now; cheap enough to call on every start."""

    store = ConfigStore.instance()
    store.repo[f"{SCHEMA_NAME}.yaml"] = PlainNode(SCHEMA_NAME, TrainConfig)
    _replace_group(store, "model", {n: PlainNode(n, p, group="model") for n, p in model_options().items()})
    _replace_group(
        store,
        "pretrained",
        {n: PlainNode(n, p, group="pretrained", package="_global_") for n, p in pretrained_options().items()},
    )
    store.store(group="hydra/sweeper", name="birder_exp", node=SWEEPER_NODE, provider=PROVIDER)
    register_resolvers()


def group_options(group: str) -> list[str]:
    """The options of a generated group (names as typed after ``group=``)."""

    nodes = ConfigStore.instance().repo.get(group, {})
    return sorted(name[: -len(".yaml")] for name in nodes)


def _conf_groups() -> dict[str, list[str]]:
    """The hand-written groups shipped in birder_exp.conf and their options."""

    groups: dict[str, list[str]] = {}
    root = resources.files("birder_exp.conf")
    for item in sorted(root.iterdir(), key=lambda p: p.name):
        if item.is_dir() and not item.name.startswith(("_", ".")) and item.name != "hydra":
            names = sorted(p.name[: -len(".yaml")] for p in item.iterdir() if p.name.endswith(".yaml"))
            if len(names) > 0:
                groups[item.name] = names

    return groups


def help_groups() -> str:
    """The group list for ``--help``: hand-written groups in full, generated ones summarised."""

    lines = []
    for group, names in _conf_groups().items():
        lines.append(f"  {group}: {', '.join(names)}")

    models = group_options("model")
    entries = group_options("pretrained")
    lines.append(f"  model: {len(models)} architectures, e.g. {', '.join(models[:3])} (list: birder-exp models)")
    lines.append(
        f"  pretrained: {len(entries)} weight entries, e.g. {', '.join(entries[:2])} (list: birder-exp pretrained)"
    )
    return "\n".join(lines)


def _register(name: str, fn: Callable[..., Any]) -> None:
    if not OmegaConf.has_resolver(name):
        OmegaConf.register_new_resolver(name, fn)


def register_resolvers() -> None:
    _register("birder_exp.run_id", lambda: _invocation["run_id"])
    _register("birder_exp.cwd", _cwd)
    _register("birder_exp.help_groups", help_groups)
