"""Checks on the command line's ``model=`` / ``pretrained=`` choices, before Hydra composes anything.

Hydra answers an unknown option with the list of every option in the group (1,000+ names); this answers with
one line and the closest names, and refuses a ``model=`` that contradicts the chosen ``pretrained=`` entry.
"""

from collections.abc import Sequence
from typing import Any
from typing import Optional

from birder_exp.configs.errors import ConfigError
from birder_exp.configs.store import group_options
from birder_exp.model_registry import registry
from birder_exp.model_registry.errors import closest

CHECKED_GROUPS = ("model", "pretrained")
_LISTING_HINT = {"model": "birder-exp models", "pretrained": "birder-exp pretrained"}


def _parse(argv: Sequence[str]) -> list[Any]:
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser

    args, _unknown = get_args_parser().parse_known_args(list(argv))
    return OverridesParser.create().parse_overrides(overrides=args.overrides)  # type: ignore[no-any-return]


def _choices(override: Any, options: list[str]) -> list[str]:
    """The option names an override asks for (a sweep's every element; a glob's matches)."""

    from hydra.core.override_parser.types import Glob

    value = override.value()
    if isinstance(value, Glob):
        matched = value.filter(options)
        if len(matched) == 0:
            raise ConfigError(
                f"{override.key_or_group}={override.input_line.split('=', 1)[1]} matches no option "
                f"(list them: {_LISTING_HINT[override.key_or_group]})"
            )
        return list(matched)
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    if value is None:
        return []

    return [str(value)]


def unknown_option_message(group: str, name: str, options: Sequence[str]) -> str:
    suggestions = closest(name, options)
    hint = f"; closest: {', '.join(suggestions)}" if len(suggestions) > 0 else ""
    return f"unknown {group} '{name}'{hint} (list them: {_LISTING_HINT[group]})"


def check_overrides(argv: Sequence[str]) -> None:
    """Raise ConfigError (one line) for an unknown model / pretrained choice or a contradicting pair."""

    try:
        overrides = _parse(argv)
    except Exception:
        return  # Malformed command lines are Hydra's to report

    chosen: dict[str, Optional[list[str]]] = {}
    for override in overrides:
        group = override.key_or_group
        if group not in CHECKED_GROUPS or override.package is not None or override.is_delete():
            continue

        options = group_options(group)
        names = _choices(override, options)
        known = set(options)
        for name in names:
            if name not in known:
                raise ConfigError(unknown_option_message(group, name, options))
        chosen[group] = names

    models = chosen.get("model")
    entries = chosen.get("pretrained")
    if models is not None and entries is not None and len(models) == 1 and len(entries) == 1:
        check_model_matches_entry(models[0], entries[0])


def check_model_matches_entry(model: str, entry: str) -> None:
    network = registry.get_pretrained_metadata(entry)["net"]["network"].lower()
    resolved = registry.name_aliases.get(model.lower(), model.lower())
    if resolved != registry.name_aliases.get(network, network):
        raise ConfigError(
            f"model={model} contradicts pretrained={entry}, whose network is '{network}' "
            f"(drop model=, or choose model={network})"
        )
