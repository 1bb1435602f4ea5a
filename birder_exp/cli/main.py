"""``birder-exp``: one sub-command module per room; each adds its parsers with ``add_commands``.

Starts without importing torch: command modules import heavy pieces inside their handlers.
"""

import argparse
import importlib
import sys
from typing import Optional

from birder_exp.model_registry import RegistryError
from birder_exp.version import __version__

COMMAND_MODULES = [
    "birder_exp.cli.registry_cmds",
    "birder_exp.cli.weights_cmds",
    "birder_exp.cli.rerun_cmds",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="birder-exp", description="birder_exp model registry and experiment tools")
    parser.add_argument("--version", action="version", version=f"birder_exp {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(subparsers)

    return parser


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.handler(args)
    except (RegistryError, KeyError, ValueError, FileNotFoundError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and len(exc.args) == 1 else str(exc)
        print(f"birder-exp {args.command}: {message}", file=sys.stderr)
        return 2

    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
