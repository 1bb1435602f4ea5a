"""Warm-cache load of a ViT-L/14 pretrained entry: birder_exp vs the floor vs Birder.

The script writes a ``vit_l14_pn`` checkpoint (random weights, Birder's layout, about 1.2 GB) into a temporary
cache, registers it as a pretrained entry, loads it once to verify it, then times fresh processes:

- ours:  ``birder_exp.load_pretrained_model(entry)`` (cached, verified file: no hashing, no network)
- floor: meta build + ``torch.load(mmap=True, weights_only=True)`` + ``load_state_dict(assign=True)``
- birder: Birder 0.8.4's ``load_pretrained_model(entry, dst=file)`` on the same file, when importable

Each child imports its libraries and the ViT module first, then times the load call alone; it reports that time
and its peak RSS (``resource.getrusage``). Medians over ``--repeats`` (>= 5) processes per method, run
interleaved. Targets: ours <= 1.5x the floor's time, >= 10x faster than Birder, peak RSS within 10% of the
floor's. Needs the vit family; says so and exits when it is not built yet.

    PYTHONPATH=. python benchmarks/load_pretrained.py
"""

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO
from _common import importable

NETWORK = "vit_l14_pn"
ENTRY = "vit_l14_pn_bench"
NUM_CLASSES = 1000

_PRELUDE = """
import json, resource, sys, time
import torch
info = json.loads(sys.argv[1])
"""

_REPORT = """
print(json.dumps({"seconds": seconds, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

_OURS = (
    _PRELUDE
    + """
import birder_exp
import birder_exp.weights.loader
from birder_exp.model_registry import registry
registry.get_model_class(info["network"])  # The family module, imported as Birder imports all of its own
registry.register_weights(info["entry"], info["metadata"])
start = time.perf_counter()
(net, model_info) = birder_exp.load_pretrained_model(info["entry"], progress_bar=False)
seconds = time.perf_counter() - start
assert model_info.class_to_idx["class_0"] == 0 and not net.pos_embedding.is_meta
"""
    + _REPORT
)

_FLOOR = (
    _PRELUDE
    + """
from birder_exp.model_registry import registry
registry.get_model_class(info["network"])
start = time.perf_counter()
with torch.device("meta"):
    net = registry.net_factory(info["network"], info["num_classes"])
data = torch.load(info["path"], mmap=True, weights_only=True)
net.load_state_dict(data["state"], assign=True)
seconds = time.perf_counter() - start
"""
    + _REPORT
)

_BIRDER = (
    _PRELUDE
    + """
from birder.common import fs_ops
from birder.model_registry import registry
registry.register_weights(info["entry"], info["metadata"])
start = time.perf_counter()
(net, model_info) = fs_ops.load_pretrained_model(info["entry"], dst=info["path"], progress_bar=False)
seconds = time.perf_counter() - start
assert model_info.class_to_idx["class_0"] == 0
"""
    + _REPORT
)


def _write_checkpoint(folder: Path) -> Path:
    """A vit_l14_pn checkpoint with seeded random weights, written by birder_exp.save_checkpoint."""

    import torch

    from birder_exp.model_registry import registry
    from birder_exp.weights import save_checkpoint

    with torch.device("meta"):
        net = registry.net_factory(NETWORK, NUM_CLASSES)
    net.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in net.state_dict(keep_vars=True).values():
            if tensor.is_floating_point():
                tensor.normal_(0.0, 0.02, generator=g)
            else:
                tensor.zero_()
    path = folder / f"{ENTRY}.pt"
    class_to_idx = {f"class_{i}": i for i in range(NUM_CLASSES)}
    save_checkpoint(net, path, class_to_idx=class_to_idx, rgb_stats={"mean": [0.5] * 3, "std": [0.5] * 3})
    return path


def _run(code: str, info: dict[str, object], env: dict[str, str], cwd: Path) -> dict[str, float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-c", code, json.dumps(info)],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"child failed ({result.returncode}): {result.stderr.strip().splitlines()[-1:]}")

    out: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    out["process_seconds"] = wall
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per method (>= 5)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")

    from birder_exp.model_registry import registry

    if registry.exists(NETWORK) is False:
        print(f"load_pretrained: '{NETWORK}' cannot be built yet (the vit family has not landed); skipped")
        return 0

    folder = Path(tempfile.mkdtemp(prefix="birder_exp_load_bench_"))
    try:
        cache = folder / "cache"
        cache.mkdir()
        tic = time.perf_counter()
        path = _write_checkpoint(cache)
        with open(path, "rb") as handle:
            sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
        size_mib = round(path.stat().st_size / 1024**2, 1)
        print(f"wrote {path.name}: {size_mib} MiB in {time.perf_counter() - tic:.1f}s")

        metadata = {
            "url": "https://example.invalid/never-used",  # The cached, verified file is all a load needs
            "description": "ViT L14 benchmark checkpoint (random weights)",
            "resolution": [224, 224],
            "formats": {"pt": {"file_size": size_mib, "sha256": sha256}},
            "net": {"network": NETWORK, "tag": "bench"},
        }
        info = {
            "entry": ENTRY,
            "network": NETWORK,
            "num_classes": NUM_CLASSES,
            "path": str(path),
            "metadata": metadata,
        }
        env = {**os.environ, "PYTHONPATH": str(REPO), "BIRDER_EXP_CACHE": str(cache), "BIRDER_EXP_OFFLINE": "1"}
        methods = {"ours": _OURS, "floor": _FLOOR}
        if importable("birder") is True:
            methods["birder"] = _BIRDER
        else:
            print("birder is not importable: the Birder comparison is skipped")

        for code in methods.values():  # Warm-up: verifies our file once, fills the page cache
            _run(code, info, env, folder)

        results: dict[str, list[dict[str, float]]] = {name: [] for name in methods}
        for _ in range(args.repeats):
            for name, code in methods.items():
                results[name].append(_run(code, info, env, folder))

        def median(name: str, key: str) -> float:
            return statistics.median(r[key] for r in results[name])

        for name in methods:
            print(
                f"{name:>6}: load {median(name, 'seconds'):.3f}s (median of {args.repeats}), "
                f"peak RSS {median(name, 'max_rss_mib'):.0f} MiB, whole process {median(name, 'process_seconds'):.2f}s"
            )

        ours_t, floor_t = median("ours", "seconds"), median("floor", "seconds")
        ours_rss, floor_rss = median("ours", "max_rss_mib"), median("floor", "max_rss_mib")
        print(
            f"warm-cache vit_l14_pn load vs floor: birder_exp {ours_t:.3f}s, floor {floor_t:.3f}s, "
            f"ratio x{ours_t / floor_t:.2f} (target <= 1.5)"
        )
        print(
            f"warm-cache vit_l14_pn peak RSS vs floor: birder_exp {ours_rss:.0f} MiB, floor {floor_rss:.0f} MiB, "
            f"{100 * (ours_rss / floor_rss - 1):+.1f}% (target within 10%)"
        )
        if "birder" in methods:
            birder_t = median("birder", "seconds")
            print(
                f"warm-cache vit_l14_pn load vs Birder: birder_exp {ours_t:.3f}s, Birder {birder_t:.3f}s, "
                f"speed-up x{birder_t / ours_t:.1f} (target >= 10); Birder peak RSS "
                f"{median('birder', 'max_rss_mib'):.0f} MiB"
            )
    finally:
        if args.keep is False:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            print(f"kept {folder}")

    return 0


if __name__ == "__main__":
    sys.exit(main())
