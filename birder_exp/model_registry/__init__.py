"""Architectures and pretrained entries by name, by task, by glob; importing this never imports torch."""

from birder_exp.model_registry.entries import ModelMetadataType
from birder_exp.model_registry.errors import InvalidWeightsEntryError
from birder_exp.model_registry.errors import RegistryError
from birder_exp.model_registry.errors import UnknownNameError
from birder_exp.model_registry.registry import ModelRegistry
from birder_exp.model_registry.registry import ModelSpec
from birder_exp.model_registry.registry import group_sort
from birder_exp.model_registry.registry import list_pretrained_models
from birder_exp.model_registry.registry import registry
from birder_exp.model_registry.task import Task

__all__ = [
    "InvalidWeightsEntryError",
    "ModelMetadataType",
    "ModelRegistry",
    "ModelSpec",
    "RegistryError",
    "Task",
    "UnknownNameError",
    "group_sort",
    "list_pretrained_models",
    "registry",
]
