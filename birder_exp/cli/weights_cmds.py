"""``download`` and ``verify``: fetch pretrained entries into the cache and re-hash them on demand.

Neither imports torch (the weights' download layer does not need it).
"""

import argparse
import sys
from typing import Any

from birder_exp.model_registry.entries import FORMATS


def _fail(command: str, message: str) -> int:
    print(f"birder-exp {command}: {message}", file=sys.stderr)
    return 2


def cmd_download(args: argparse.Namespace) -> int:
    from birder_exp.weights.download import download_weights
    from birder_exp.weights.errors import WeightsError

    if args.dst is not None and len(args.names) > 1:
        return _fail("download", f"--dst names one file; got {len(args.names)} entries")

    for name in args.names:
        try:
            path = download_weights(name, dst=args.dst, file_format=args.format, progress_bar=args.no_progress is False)
        except WeightsError as exc:
            return _fail("download", str(exc))
        print(path)

    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from birder_exp.model_registry import registry
    from birder_exp.weights.download import cached_entries
    from birder_exp.weights.download import verify_weights
    from birder_exp.weights.errors import WeightsError

    if len(args.names) == 0:
        targets = [(e, f) for e, f in cached_entries() if args.format is None or f == args.format]
        if len(targets) == 0:
            print("nothing cached to verify")
            return 0
    else:
        targets = []
        for name in args.names:
            formats = list(registry.get_pretrained_metadata(name)["formats"])
            targets.extend((name, f) for f in formats if args.format is None or f == args.format)
            if args.format is not None and args.format not in formats:
                return _fail("verify", f"entry '{name}' has no '{args.format}' file (available: {', '.join(formats)})")

    failed = 0
    for entry, file_format in targets:
        try:
            result = verify_weights(entry, file_format=file_format)
        except WeightsError as exc:
            return _fail("verify", str(exc))
        print(result.line())
        if result.status == "mismatch" or (result.status == "missing" and len(args.names) > 0):
            failed += 1

    return 1 if failed > 0 else 0


def add_commands(subparsers: Any) -> None:
    download = subparsers.add_parser("download", help="fetch pretrained entries into the cache and verify them")
    download.add_argument("names", nargs="+", metavar="NAME", help="pretrained entry name(s)")
    download.add_argument("--format", default="pt", choices=FORMATS, help="file format (default: pt)")
    download.add_argument("--dst", default=None, help="file path to download to instead of the cache")
    download.add_argument("--no-progress", action="store_true", help="no progress bar")
    download.set_defaults(handler=cmd_download)

    verify = subparsers.add_parser("verify", help="re-hash cached pretrained files against their entries")
    verify.add_argument("names", nargs="*", metavar="NAME", help="entries to check (default: everything cached)")
    verify.add_argument("--format", default=None, choices=FORMATS, help="only this format")
    verify.set_defaults(handler=cmd_verify)
