"""Claim: importing the registry and listing architectures and entries takes <= 0.3 s in a fresh process,
>= 10x faster than Birder's (which imports torch and every family to register them)."""

import sys

from _common import importable
from _common import process_time
from _common import report

OURS = "from birder_exp.model_registry import registry\nregistry.list_models(); registry.list_pretrained_models()\n"
BIRDER = "from birder.model_registry import registry\nregistry.list_models(); registry.list_pretrained_models()\n"
BASELINE = "pass\n"


def main() -> None:
    repeats = 7
    interpreter = process_time(BASELINE, repeats=repeats)
    ours = process_time(OURS, repeats=repeats)
    birder = process_time(BIRDER, repeats=repeats) if importable("birder") else None
    report("registry startup (import + list_models + list_pretrained_models, fresh process)", ours, "birder", birder)
    print(f"  (bare interpreter start: {interpreter:.4f}s; target <= 0.3s: {'met' if ours <= 0.3 else 'MISSED'})")


if __name__ == "__main__":
    sys.exit(main())
