"""The generated model / pretrained groups, the typed schema and the command-line checks (no torch needed)."""

import copy
from collections.abc import Iterator

import pytest
from hydra import compose
from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig

from birder_exp.configs import ConfigError
from birder_exp.configs import register_configs
from birder_exp.configs.overrides import check_overrides
from birder_exp.configs.store import PlainNode
from birder_exp.configs.store import group_options
from birder_exp.configs.store import help_groups
from birder_exp.configs.store import model_options
from birder_exp.model_registry import registry


@pytest.fixture
def hydra_conf() -> Iterator[None]:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="birder_exp.conf", version_base="1.3"):
        yield


def _compose(*overrides: str) -> DictConfig:
    return compose(config_name="train", overrides=list(overrides))


def test_model_group_is_the_registry() -> None:
    register_configs()
    expected = set(registry.list_models()) | set(registry.name_aliases)
    assert set(group_options("model")) == expected
    assert set(group_options("pretrained")) == set(registry.list_pretrained_models())


def test_options_are_plain_nodes_shared_on_deepcopy() -> None:
    register_configs()
    store = ConfigStore.instance()
    name = registry.list_models()[0]
    node = store.repo["model"][f"{name}.yaml"]
    assert isinstance(node, PlainNode)
    assert copy.deepcopy(node) is node  # Hydra copies the store per compose: options must cost nothing
    loaded = store.load(f"model/{name}.yaml")
    loaded.node.name = "changed"
    assert store.load(f"model/{name}.yaml").node.name == name  # Each load is a fresh config


def test_registered_user_architecture_becomes_an_option(clean_registry: None) -> None:
    spec = registry.get_spec(registry.list_models()[0])
    registry.register_model_config("my_custom_net_c9", spec.resolve(), config={"drop_path_rate": 0.2})
    registry.register_name_alias("my_alias_c9", "my_custom_net_c9")
    register_configs()
    assert "my_custom_net_c9" in group_options("model")
    assert model_options()["my_alias_c9"]["name"] == "my_alias_c9"


def test_default_config_composes_typed(hydra_conf: None) -> None:
    cfg = _compose()
    assert cfg.model.name == "resnet_v1_18" and cfg.data.kind == "digits" and cfg.pretrained is None
    assert cfg.model.size is None and list(cfg.data.size) == [32, 32]
    assert cfg.optimizer.name == "adamw" and cfg.lr_scheduler.name == "cosine"
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    with pytest.raises(ConfigCompositionException):
        _compose("data.batchsize=3")  # Typed schema: a misspelt key fails at compose time
    with pytest.raises(ConfigCompositionException):
        _compose("module.label_smoothing=lots")


def test_pretrained_option_selects_network_and_resolution(hydra_conf: None) -> None:
    entry = registry.list_pretrained_models()[0]
    meta = registry.get_pretrained_metadata(entry)
    cfg = _compose(f"pretrained={entry}")
    assert cfg.model.name == meta["net"]["network"]
    assert list(cfg.model.size) == list(meta["resolution"])
    assert cfg.pretrained.name == entry and cfg.pretrained.file_format in meta["formats"]


@pytest.mark.parametrize(
    "group", ["optimizer", "lr_scheduler", "trainer", "callbacks", "logger", "data", "debug", "experiment"]
)
def test_every_hand_written_option_composes(hydra_conf: None, group: str) -> None:
    from birder_exp.configs.store import _conf_groups

    for option in _conf_groups()[group]:
        cfg = _compose(f"{group}={option}", "data.root=/somewhere")
        assert cfg.model.name in group_options("model") and cfg.trainer.max_epochs >= 1


def test_unknown_model_answers_with_close_matches() -> None:
    register_configs()
    name = registry.list_models()[0]
    with pytest.raises(ConfigError, match=rf"unknown model '{name}x'; closest: {name}") as info:
        check_overrides([f"model={name}x"])
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_unknown_pretrained_and_sweeps_are_checked() -> None:
    register_configs()
    entry = registry.list_pretrained_models()[0]
    with pytest.raises(ConfigError, match=f"unknown pretrained '{entry}-typo'; closest: {entry}"):
        check_overrides([f"pretrained={entry}-typo"])
    good = registry.list_models()[:2]
    with pytest.raises(ConfigError, match="unknown model 'nope_net'"):
        check_overrides(["-m", f"model={good[0]},nope_net,{good[1]}"])
    with pytest.raises(ConfigError, match=r"model=glob\(zzz_\*\) matches no option"):
        check_overrides(["-m", "model=glob(zzz_*)"])

    check_overrides(["-m", f"model={good[0]},{good[1]}", "optimizer.lr=1e-3,3e-4"])
    check_overrides(["-m", "model=glob(*)", "--cfg", "job"])
    check_overrides(["pretrained=null", "data.root=/x"])


def test_model_contradicting_pretrained_is_refused() -> None:
    register_configs()
    entry = registry.list_pretrained_models()[0]
    network = registry.get_pretrained_metadata(entry)["net"]["network"]
    other = next(name for name in registry.list_models() if name != network)
    with pytest.raises(ConfigError, match=f"model={other} contradicts pretrained={entry}, whose network is"):
        check_overrides([f"model={other}", f"pretrained={entry}"])

    check_overrides([f"model={network}", f"pretrained={entry}"])


def test_help_summarises_the_generated_groups() -> None:
    register_configs()
    text = help_groups()
    assert "  optimizer: adamw, lamb, sgd" in text
    assert f"  model: {len(group_options('model'))} architectures" in text
    assert len(text) < 2000  # Not every architecture name
