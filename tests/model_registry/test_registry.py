import warnings

import pytest
import torch
from tiny_family import TinyBackbone
from tiny_family import TinyNet

from birder_exp.model_registry import InvalidWeightsEntryError
from birder_exp.model_registry import ModelRegistry
from birder_exp.model_registry import RegistryError
from birder_exp.model_registry import Task
from birder_exp.model_registry import UnknownNameError
from birder_exp.model_registry import group_sort
from birder_exp.model_registry import registry

pytestmark = pytest.mark.usefixtures("clean_registry")

SHA = "ab" * 32


def _register_tiny() -> None:
    registry.register_model_config("tiny_a", TinyNet, config={"width": 4})
    registry.register_model_config("Tiny_B", TinyNet, config={"width": 8})
    registry.register_model_config("tiny_det", TinyBackbone, config={"width": 6})


def _entry(network: str = "tiny_a", **overrides: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "url": "http://127.0.0.1:1/models",
        "description": "tiny test weights",
        "resolution": (32, 32),
        "formats": {"pt": {"file_size": 0.1, "sha256": SHA}},
        "net": {"network": network, "tag": "t"},
    }
    entry.update(overrides)
    return entry


def test_task_values() -> None:
    assert [str(t) for t in Task] == [
        "image_classification",
        "object_detection",
        "masked_image_modeling",
        "self_supervised_learning",
    ]


def test_register_model_config_lists_builds_and_names() -> None:
    _register_tiny()
    assert registry.list_models(include_filter="tiny_*") == ["tiny_a", "tiny_b", "tiny_det"]
    assert registry.exists("TINY_A") and registry.exists("tiny_b")
    net = registry.net_factory("tiny_b", num_classes=5)
    assert isinstance(net, TinyNet)
    assert type(net).__name__ == "Tiny_B"
    assert net.config == {"width": 8}
    assert net(torch.zeros(2, 3, 8, 8)).shape == (2, 5)
    assert registry.get_model_base_name(net) == "tinynet"
    assert registry.get_registered_name(net) == "tiny_b"
    assert registry.get_default_size("tiny_a") == (224, 224)


def test_caller_config_updates_a_copy() -> None:
    _register_tiny()
    net = registry.net_factory("tiny_a", num_classes=3, config={"width": 16}, size=(64, 32))
    assert net.embedding_size == 16 and net.size == (64, 32)
    assert registry.get_spec("tiny_a").config == {"width": 4}
    assert registry.net_factory("tiny_a", num_classes=3).embedding_size == 4


def test_register_model_without_config() -> None:
    registry.register_model("plain_tiny", TinyNet)
    assert registry.exists("plain_tiny")
    spec = registry.get_spec("plain_tiny")
    assert spec.config is None and spec.task == Task.IMAGE_CLASSIFICATION
    assert registry.get_registered_name(TinyNet(3, 2, config={"width": 2})) is None


def test_list_filters_globs_exclude_task_and_types() -> None:
    _register_tiny()
    assert registry.list_models(include_filter=["tiny_a", "*_det"]) == ["tiny_a", "tiny_det"]
    assert registry.list_models(include_filter="tiny_*", exclude_filter="*det") == ["tiny_a", "tiny_b"]
    assert registry.list_models(include_filter="tiny_*", exclude_filter=["*_a", "*_b"]) == ["tiny_det"]
    assert registry.list_models(include_filter="tiny_*", task=Task.OBJECT_DETECTION) == []
    assert registry.list_models(include_filter="tiny_*", task="image_classification") == [
        "tiny_a",
        "tiny_b",
        "tiny_det",
    ]
    from birder_exp.net.base import DetectorBackbone

    assert registry.list_models(include_filter="tiny_*", net_type=DetectorBackbone) == ["tiny_det"]
    assert registry.list_models(include_filter="tiny_*", net_type=(TinyNet, DetectorBackbone), net_type_op="OR") == [
        "tiny_a",
        "tiny_b",
        "tiny_det",
    ]
    assert registry.exists("tiny_det", net_type=DetectorBackbone)
    assert not registry.exists("tiny_a", net_type=DetectorBackbone)
    assert not registry.exists("tiny_a", task=Task.OBJECT_DETECTION)


def test_bad_task_and_op_are_one_line() -> None:
    with pytest.raises(RegistryError, match=r"unknown task 'detection' \(valid: image_classification"):
        registry.list_models(task="detection")
    _register_tiny()
    with pytest.raises(RegistryError, match="Unknown op 'XOR'"):
        registry.list_models(net_type=TinyNet, net_type_op="XOR")  # type: ignore[arg-type]


def test_duplicate_registration_warns_and_overwrites() -> None:
    _register_tiny()
    with pytest.warns(UserWarning, match="'tiny_a' is already registered"):
        registry.register_model_config("tiny_a", TinyNet, config={"width": 12})
    assert registry.net_factory("tiny_a", 2).embedding_size == 12


def test_unknown_architecture_names_closest() -> None:
    _register_tiny()
    with pytest.raises(UnknownNameError) as info:
        registry.net_factory("tiny_c", num_classes=2)
    message = str(info.value)
    assert message.startswith("unknown architecture 'tiny_c'; closest: ")
    assert "tiny_a" in message and "tiny_b" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError):
        registry.get_default_size("no_such_net_anywhere")


def test_factory_of_the_wrong_task_says_which_task() -> None:
    _register_tiny()
    with pytest.raises(UnknownNameError, match="'tiny_a' is a image_classification network"):
        registry.detection_net_factory("tiny_a", 2, backbone=None)  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="masked_image_modeling architecture"):
        registry.mim_net_factory("tiny_a", encoder=None)  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="self_supervised_learning architecture"):
        registry.ssl_net_factory("tiny_a", backbone=None)  # type: ignore[arg-type]


def test_register_model_config_rejects_non_networks() -> None:
    with pytest.raises(RegistryError, match="has no valid 'task'"):
        registry.register_model_config("bad_net", dict, config={})
    with pytest.raises(RegistryError, match="net_type must be a network class"):
        registry.register_model_config("bad_net", "TinyNet", config={})  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match="config must be a dict or None"):
        registry.register_model_config("bad_net", TinyNet, config=[1, 2])  # type: ignore[arg-type]


def test_aliases() -> None:
    _register_tiny()
    registry.register_name_alias("tiny_alias", "tiny_a")
    assert registry.exists("tiny_alias")
    assert "tiny_alias" not in registry.list_models()
    assert registry.net_factory("Tiny_Alias", 2).embedding_size == 4
    with pytest.raises(RegistryError, match="collides with an existing registered model name"):
        registry.register_name_alias("tiny_b", "tiny_a")
    with pytest.raises(RegistryError, match="already registered"):
        registry.register_name_alias("tiny_alias", "tiny_b")
    with pytest.raises(RegistryError, match="must target a canonical registered name"):
        registry.register_name_alias("tiny_alias2", "tiny_alias")
    with pytest.raises(UnknownNameError, match="unknown architecture 'tiny_zzz'"):
        registry.register_name_alias("tiny_alias3", "tiny_zzz")
    with pytest.raises(RegistryError, match="reserved by a name alias"):
        registry.register_model_config("tiny_alias", TinyNet, config={"width": 1})


def test_register_weights_and_metadata() -> None:
    _register_tiny()
    registry.register_weights("tiny_a_t", _entry())
    assert registry.pretrained_exists("tiny_a_t")
    meta = registry.get_pretrained_metadata("tiny_a_t")
    assert meta["task"] == "image_classification"
    assert meta["resolution"] == (32, 32)
    meta["description"] = "changed"  # A copy: the registry keeps its own
    assert registry.get_pretrained_metadata("tiny_a_t")["description"] == "tiny test weights"
    assert registry.list_pretrained_models("tiny_*") == ["tiny_a_t"]
    assert registry.list_pretrained_models("tiny_*", task=Task.OBJECT_DETECTION) == []
    with pytest.warns(UserWarning, match="already registered"):
        registry.register_weights("tiny_a_t", _entry(description="second"))
    assert registry.get_pretrained_metadata("tiny_a_t")["description"] == "second"


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("../evil", {}, "name '../evil' is invalid: use only letters, digits"),
        ("a/b", {}, "name 'a/b' is invalid"),
        ("ok", {"resolution": (32,)}, "resolution must be two positive ints"),
        ("ok", {"resolution": (32, -1)}, "resolution must be two positive ints"),
        ("ok", {"resolution": "224"}, "resolution must be two positive ints"),
        ("ok", {"formats": {}}, "formats must be a non-empty dict"),
        ("ok", {"formats": {"onnx": {"file_size": 1.0, "sha256": SHA}}}, "formats.onnx is not a known format"),
        ("ok", {"formats": {"pt": {"file_size": 0, "sha256": SHA}}}, "formats.pt.file_size must be a number > 0"),
        ("ok", {"formats": {"pt": {"file_size": 1.0, "sha256": "abc"}}}, "formats.pt.sha256 must be 64 hex"),
        ("ok", {"formats": {"pt": {"file_size": 1.0}}}, "formats.pt.sha256 must be 64 hex"),
        ("ok", {"net": {"network": "tiny_zz"}}, "net.network 'tiny_zz' is not a registered architecture"),
        ("ok", {"net": "tiny_a"}, "net must be a dict"),
        ("ok", {"backbone": {"network": "nope"}}, "backbone.network 'nope' is not a registered"),
        ("ok", {"encoder": {"tag": "x"}}, "encoder.network must be a non-empty string"),
        ("ok", {"description": 3}, "description must be a string"),
        ("ok", {"url": ""}, "url must be a non-empty string"),
    ],
)
def test_register_weights_validation(name: str, overrides: dict[str, object], message: str) -> None:
    _register_tiny()
    with pytest.raises(InvalidWeightsEntryError, match=message.replace(".", r"\.").replace("(", r"\(")):
        registry.register_weights(name, _entry(**overrides))
    assert not registry.pretrained_exists(name)


@pytest.mark.parametrize("missing", ["description", "resolution", "formats", "net"])
def test_register_weights_missing_keys(missing: str) -> None:
    _register_tiny()
    entry = _entry()
    del entry[missing]
    with pytest.raises(InvalidWeightsEntryError, match=f"{missing} is missing"):
        registry.register_weights("tiny_missing", entry)


def test_unknown_entry_names_closest() -> None:
    with pytest.raises(UnknownNameError, match="unknown pretrained entry 'vit_l14_pn_bioclip-v3'; closest: ") as info:
        registry.get_pretrained_metadata("vit_l14_pn_bioclip-v3")
    assert "vit_l14_pn_bioclip-v2" in str(info.value)


def test_builtin_catalogue_entries() -> None:
    everything = registry.list_pretrained_models(include_unavailable=True)
    assert len(everything) == 221
    meta = registry.get_pretrained_metadata("vit_l14_pn_bioclip-v2")
    assert meta["task"] == "image_classification"
    assert meta["resolution"] == (224, 224)
    assert list(meta["formats"]) == ["pt"]
    assert meta["formats"]["pt"]["sha256"].startswith("301a3255")
    det = registry.list_pretrained_models(task=Task.OBJECT_DETECTION, include_unavailable=True)
    assert len(det) == 5
    # Only entries whose networks exist are listed by default
    for name in registry.list_pretrained_models():
        assert registry.missing_networks(name) == []


def test_group_sort_is_stable_within_groups() -> None:
    assert group_sort(["vit_b", "convnext_a", "vit_a", "convnext_b"]) == ["convnext_a", "convnext_b", "vit_b", "vit_a"]


def test_fresh_registry_keeps_registrations_made_before_first_use() -> None:
    fresh = ModelRegistry()
    fresh.register_model_config("tiny_early", TinyNet, config={"width": 2})
    assert fresh.exists("tiny_early")
    assert len(fresh.list_pretrained_models(include_unavailable=True)) == 221
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fresh.list_models()
