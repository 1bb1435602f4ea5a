"""User architectures and weight entries declared by installed packages.

A package lists callables under the ``birder_exp.plugins`` entry-point group, e.g. in its pyproject.toml::

    [project.entry-points."birder_exp.plugins"]
    my_nets = "my_package.birder:register"

Each one is called (no arguments) before Hydra composes, so what it registers appears as ``model=`` /
``pretrained=`` options. An entry point that names a module instead of a callable is only imported.
"""

from importlib.metadata import entry_points

from birder_exp.configs.errors import ConfigError

PLUGIN_GROUP = "birder_exp.plugins"
_loaded: set[str] = set()


def load_plugins() -> list[str]:
    """Load every plugin once per process; returns the names loaded by this call."""

    loaded = []
    for ep in entry_points(group=PLUGIN_GROUP):
        key = f"{ep.name}={ep.value}"
        if key in _loaded:
            continue

        try:
            obj = ep.load()
            if callable(obj):
                obj()
        except Exception as exc:
            raise ConfigError(f"plugin '{ep.name}' ({ep.value}) failed to load: {type(exc).__name__}: {exc}") from exc

        _loaded.add(key)
        loaded.append(ep.name)

    return loaded
