"""Every `model=` option composes into the typed ModelConfig and builds on the meta device.

Each option is loaded from the ConfigStore and merged into the schema exactly as Hydra does when composing;
a full Hydra compose (defaults list, command-line override, typed primary config) runs for one option of
every family, so the suite stays within its time budget with 1,000+ options.
"""

from collections.abc import Iterator

import pytest
import torch
from hydra import compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from birder_exp.configs import ModelConfig
from birder_exp.configs import register_configs
from birder_exp.configs.store import model_options
from birder_exp.model_registry import Task
from birder_exp.model_registry import registry
from birder_exp.training.build import build_network
from birder_exp.training.build import resolve_size

OPTIONS = list(model_options())
FAMILY_FIRST = list({registry.get_spec(name).family: name for name in reversed(OPTIONS)}.values())


@pytest.fixture(scope="module")
def composer() -> Iterator[None]:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="birder_exp.conf", version_base="1.3"):
        yield


def _companion(task: str) -> dict[str, str]:
    """Detection / MIM / SSL options need a backbone or encoder: the first suitable classification network."""

    classifiers = registry.list_models(task=Task.IMAGE_CLASSIFICATION)
    if task == Task.OBJECT_DETECTION:
        return {"backbone": next(n for n in classifiers if registry.get_spec(n).detector_backbone)}
    if task == Task.MASKED_IMAGE_MODELING:
        return {"encoder": next(n for n in classifiers if registry.get_spec(n).pretrain_encoder)}
    if task == Task.SELF_SUPERVISED_LEARNING:
        return {"backbone": classifiers[0]}

    return {}


@pytest.mark.parametrize("name", FAMILY_FIRST)
def test_hydra_composes_one_option_per_family(composer: None, name: str) -> None:
    task = str(registry.get_spec(name).task)
    extra = [f"model.{key}={value}" for key, value in _companion(task).items()]
    cfg = compose(config_name="train", overrides=[f"model={name}", *extra])
    assert cfg.model.name == name and cfg.model.task == task
    assert OmegaConf.get_type(cfg.model) is ModelConfig


@pytest.fixture(scope="module")
def store() -> ConfigStore:
    register_configs()
    return ConfigStore.instance()


@pytest.mark.parametrize("name", OPTIONS)
def test_option_is_typed_and_builds_on_meta(store: ConfigStore, name: str) -> None:
    node = store.load(f"model/{name}.yaml").node
    model = OmegaConf.merge(OmegaConf.structured(ModelConfig), node, _companion(str(registry.get_spec(name).task)))
    assert model.name == name
    plain = OmegaConf.to_container(model)
    assert isinstance(plain, dict)
    net = build_network(plain, 10, resolve_size(plain), device="meta")
    params = list(net.parameters())
    assert len(params) > 0 and all(p.device == torch.device("meta") for p in params)
