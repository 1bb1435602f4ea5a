"""Helpers of the runs tests: tiny architectures and weight entries shipped as a birder_exp plugin, a tiny image
folder, the CLIs in subprocesses, and readers of what runs leave on disk."""

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any
from typing import Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PLUGIN_MODULE = "birder_exp_runs_tiny"
WEIGHTS_VARIABLE = "BIRDER_EXP_RUNS_TINY_WEIGHTS"  # A folder of <network>-<tag>.pt files: one entry each
URL_VARIABLE = "BIRDER_EXP_RUNS_TINY_URL"  # Where those entries download from (default: the folder itself)

# Registered by the plugin: two working architectures (a glob sweep), one that cannot be built (a failing job),
# and, when WEIGHTS_VARIABLE names a folder of checkpoints, one weight entry per file there.
PLUGIN_SOURCE = textwrap.dedent(
    '''
    """Tiny networks and weight entries for birder_exp's runs tests."""

    import hashlib
    import os
    from pathlib import Path

    from torch import nn

    from birder_exp.net.base import BaseNet


    class RunsTinyNet(BaseNet):
        default_size = (16, 16)

        def __init__(self, input_channels, num_classes, *, config=None, size=None):
            super().__init__(input_channels, num_classes, config=config, size=size)
            width = int(self.config["width"])
            if width <= 0:
                raise ValueError(f"width must be positive, got {width}")
            self.stem = nn.Sequential(
                nn.Conv2d(input_channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()
            )
            self.body = nn.Sequential(
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()
            )
            self.embedding_size = 2 * width
            self.classifier = self.create_classifier()

        def forward_features(self, x):
            return self.body(self.stem(x))

        def embedding_from_features(self, x):
            return x.mean(dim=(2, 3))


    def register():
        from birder_exp.model_registry import registry

        registry.register_model_config("runs_tiny_a", RunsTinyNet, config={"width": 4})
        registry.register_model_config("runs_tiny_b", RunsTinyNet, config={"width": 6})
        registry.register_model_config("runs_tiny_broken", RunsTinyNet, config={"width": 0})
        folder = os.environ.get("BIRDER_EXP_RUNS_TINY_WEIGHTS")
        if not folder:
            return
        url = os.environ.get("BIRDER_EXP_RUNS_TINY_URL") or Path(folder).absolute().as_uri()
        for path in sorted(Path(folder).glob("*.pt")):
            data = path.read_bytes()
            network = path.stem.split("-", 1)[0]
            registry.register_weights(
                path.stem,
                {
                    "url": url,
                    "description": f"runs test entry {path.stem}",
                    "resolution": (16, 16),
                    "formats": {"pt": {"file_size": len(data) / 2**20, "sha256": hashlib.sha256(data).hexdigest()}},
                    "net": {"network": network, "tag": path.stem.split("-", 1)[1]},
                },
            )
    '''
)


def write_plugin(folder: Path) -> Path:
    """The plugin package and its dist-info (entry point), importable with ``folder`` on sys.path."""

    package = folder / PLUGIN_MODULE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
    dist = folder / f"{PLUGIN_MODULE}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: birder-exp-runs-tiny\nVersion: 0.1\n", "utf-8")
    (dist / "entry_points.txt").write_text(f"[birder_exp.plugins]\nruns_tiny = {PLUGIN_MODULE}:register\n", "utf-8")
    return folder


def write_image_folder(root: Path, classes: int = 3, train: int = 12, evaluation: int = 3, size: int = 16) -> Path:
    """train/ val/ test/ of random-colour PNGs whose class is their dominant channel (learnable, deterministic)."""

    from PIL import Image

    rng = random.Random(0)
    for split, count in (("train", train), ("val", evaluation), ("test", evaluation)):
        for label in range(classes):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                colour = [rng.randint(0, 80) for _ in range(3)]
                colour[label % 3] = rng.randint(170, 255)
                Image.new("RGB", (size, size), tuple(colour)).save(folder / f"{index}.png")

    return root


def tiny_args(data: Path, *extra: str, epochs: int = 1) -> list[str]:
    """A complete, fast training config on the tiny folder (CPU, no progress bar, CSV metrics)."""

    return [
        "data=imagefolder",
        f"data.root={data}",
        "data.size=[16,16]",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.verify_images=false",
        "trainer=cpu",
        f"trainer.max_epochs={epochs}",
        "trainer.log_every_n_steps=1",
        "+trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false",
        "callbacks=none",
        "lr_scheduler=constant",
        *extra,
    ]


def cli_env(plugin: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(REPO), str(plugin), str(HERE)]  # HERE: runs_pause for the resume tests
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["HYDRA_FULL_ERROR"] = "0"
    env["OMP_NUM_THREADS"] = "1"
    for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED"):
        env.pop(name, None)
    env.update(extra)
    return env


def train(
    args: list[str], cwd: Path, plugin: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "birder_exp.train", *args],
        cwd=cwd,
        env=cli_env(plugin, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def birder_exp_cli(
    args: list[str], cwd: Path, plugin: Path, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "birder_exp.cli.main", *args],
        cwd=cwd,
        env=cli_env(plugin, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def explain(done: subprocess.CompletedProcess[str]) -> str:
    return f"exit {done.returncode}\n--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-6000:]}"


def run_dirs(cwd: Path) -> list[Path]:
    """Single-run directories under cwd/outputs (not sweeps), oldest first."""

    found = [p.parent for p in (cwd / "outputs").glob("*/*/run.json")]
    return sorted(found, key=lambda p: p.stat().st_mtime_ns)


def sweep_dirs(cwd: Path) -> list[Path]:
    return sorted(p.parent for p in (cwd / "outputs" / "multirun").glob("*/*/multirun.yaml"))


def record(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))


def metric_rows(run_dir: Path) -> str:
    return (run_dir / "csv" / "metrics.csv").read_text(encoding="utf-8")


def final_digest(run_dir: Path) -> Optional[str]:
    return record(run_dir).get("final_weights_sha256")


def plugin_module() -> Any:
    """The plugin's source as an importable module in this process (to build networks for weight files)."""

    import types

    module = sys.modules.get(PLUGIN_MODULE)
    if module is None:
        module = types.ModuleType(PLUGIN_MODULE)
        exec(compile(PLUGIN_SOURCE, f"<{PLUGIN_MODULE}>", "exec"), module.__dict__)
        sys.modules[PLUGIN_MODULE] = module

    return module


def write_entry(folder: Path, name: str, width: int = 4, seed: int = 0) -> Path:
    """A weights file ``<folder>/<name>.pt`` (``name`` is ``<network>-<tag>``) for the plugin to register."""

    import torch

    from birder_exp.weights import save_checkpoint

    torch.manual_seed(seed)
    net = plugin_module().RunsTinyNet(3, 5, config={"width": width}, size=(16, 16))
    folder.mkdir(parents=True, exist_ok=True)
    return save_checkpoint(
        net,
        folder / f"{name}.pt",
        class_to_idx={f"c{i}": i for i in range(5)},
        rgb_stats={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    )


class CountingServer:
    """Serves a folder over HTTP on 127.0.0.1 and counts the GET requests per path."""

    def __init__(self, folder: Path) -> None:
        import functools
        import http.server
        import threading

        counts: dict[str, int] = {}
        self.counts = counts

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                counts[self.path] = counts.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                return

        handler = functools.partial(Handler, directory=str(folder))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
