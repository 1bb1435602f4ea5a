"""``models``, ``pretrained`` and ``show``: read the registry, print rich tables or JSON; never import torch."""

import argparse
import json
from typing import Any

from birder_exp.model_registry import Task
from birder_exp.model_registry import UnknownNameError
from birder_exp.model_registry import registry


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=list))


def _console() -> Any:
    from rich.console import Console

    return Console()


def _table(title: str, columns: list[str]) -> Any:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)

    return table


def _fmt_size(size: Any) -> str:
    return f"{size[0]}x{size[1]}"


def cmd_models(args: argparse.Namespace) -> int:
    names = registry.list_models(task=args.task, include_filter=args.filter, exclude_filter=args.exclude)
    if args.json is True:
        _print_json([registry.get_spec(n).describe() for n in names])
        return 0

    table = _table(f"{len(names)} architectures", ["name", "task", "family", "size"])
    for name in names:
        spec = registry.get_spec(name)
        table.add_row(name, str(spec.task), spec.family, _fmt_size(spec.default_size))
    _console().print(table)

    return 0


def cmd_pretrained(args: argparse.Namespace) -> int:
    names = registry.list_pretrained_models(
        args.filter, args.task, exclude_filter=args.exclude, include_unavailable=args.all
    )
    if args.json is True:
        out = []
        for name in names:
            meta = dict(registry.get_pretrained_metadata(name))
            meta["name"] = name
            meta["loadable"] = len(registry.missing_networks(name)) == 0
            out.append(meta)
        _print_json(out)
        return 0

    table = _table(f"{len(names)} pretrained entries", ["name", "network", "task", "resolution", "formats", "MiB"])
    for name in names:
        entry: dict[str, Any] = dict(registry.get_pretrained_metadata(name))
        missing = registry.missing_networks(name)
        network = entry["net"]["network"]
        if len(missing) > 0:
            network = f"{network} [red](not yet loadable)"
        sizes = {f: round(info["file_size"], 1) for f, info in entry["formats"].items()}
        table.add_row(
            name,
            network,
            str(entry["task"]),
            _fmt_size(entry["resolution"]),
            ", ".join(sizes),
            ", ".join(str(s) for s in sizes.values()),
        )
    _console().print(table)

    return 0


def cmd_show(args: argparse.Namespace) -> int:
    name: str = args.name
    if registry.pretrained_exists(name):
        meta = dict(registry.get_pretrained_metadata(name))
        meta["loadable"] = len(registry.missing_networks(name)) == 0
        data: dict[str, Any] = {"kind": "pretrained entry", "name": name, **meta}
    elif registry.exists(name):
        spec = registry.get_spec(name)
        data = {"kind": "architecture", **spec.describe()}
        aliased = registry.name_aliases.get(name.lower())
        if aliased is not None:
            data["alias_of"] = aliased
        data["pretrained"] = [
            e for e in registry.list_pretrained_models() if registry.pretrained[e]["net"]["network"] == spec.name
        ]
    else:
        raise UnknownNameError("architecture or pretrained entry", name, [*registry.specs, *registry.pretrained])

    if args.json is True:
        _print_json(data)
        return 0

    from rich.pretty import Pretty

    table = _table(f"{data['kind']}: {name}", ["field", "value"])
    for key, value in data.items():
        if key in ("kind", "name"):
            continue
        table.add_row(key, Pretty(value) if isinstance(value, (dict, list, tuple)) else str(value))
    _console().print(table)

    return 0


def _add_listing_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=[str(t) for t in Task], help="only this task")
    parser.add_argument("--filter", nargs="+", metavar="GLOB", help="keep names matching any of these globs")
    parser.add_argument("--exclude", nargs="+", metavar="GLOB", help="drop names matching any of these globs")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def add_commands(subparsers: Any) -> None:
    models = subparsers.add_parser("models", help="list architectures")
    _add_listing_options(models)
    models.set_defaults(handler=cmd_models)

    pretrained = subparsers.add_parser("pretrained", help="list pretrained entries")
    _add_listing_options(pretrained)
    pretrained.add_argument("--all", action="store_true", help="also entries whose networks are not built yet")
    pretrained.set_defaults(handler=cmd_pretrained)

    show = subparsers.add_parser("show", help="an architecture's config or an entry's metadata")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(handler=cmd_show)
