"""The config layer: typed schemas, the generated ``model`` / ``pretrained`` groups, plugins.

Nothing here imports torch, so ``--cfg job``, ``--help`` and shell completion stay fast.
"""

from birder_exp.configs.errors import ConfigError
from birder_exp.configs.plugins import PLUGIN_GROUP
from birder_exp.configs.plugins import load_plugins
from birder_exp.configs.schema import ModelConfig
from birder_exp.configs.schema import ModuleConfig
from birder_exp.configs.schema import PretrainedConfig
from birder_exp.configs.schema import TrainConfig
from birder_exp.configs.store import register_configs

__all__ = [
    "PLUGIN_GROUP",
    "ConfigError",
    "ModelConfig",
    "ModuleConfig",
    "PretrainedConfig",
    "TrainConfig",
    "load_plugins",
    "register_configs",
]
