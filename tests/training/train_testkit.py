"""Helpers of the training tests: a tiny network (as plugin source), image folders, the CLI in a subprocess,
and a loopback HTTP server for weights."""

import functools
import http.server
import os
import random
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[2]

# A small convolutional network honouring birder_exp's BaseNet contract; shipped to subprocesses as a plugin
# package (entry point group birder_exp.plugins), and imported in-process from the same source.
TINY_NET_SOURCE = textwrap.dedent(
    '''
    """A tiny network registered through the birder_exp.plugins entry point."""

    import torch
    from torch import nn

    from birder_exp.net.base import BaseNet


    class TinyTrainNet(BaseNet):
        default_size = (16, 16)

        def __init__(self, input_channels, num_classes, *, config=None, size=None):
            super().__init__(input_channels, num_classes, config=config, size=size)
            width = int((self.config or {}).get("width", 8))
            self.stem = nn.Sequential(
                nn.Conv2d(input_channels, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU()
            )
            self.features = nn.Sequential(
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU()
            )
            self.embedding_size = 2 * width
            self.classifier = self.create_classifier()

        def forward_features(self, x):
            return self.features(self.stem(x))

        def embedding_from_features(self, x):
            return x.mean(dim=(2, 3))


    def register():
        from birder_exp.model_registry import registry

        registry.register_model_config("tiny_train_net", TinyTrainNet, config={"width": 8})
        registry.register_model_config("tiny_train_net_wide", TinyTrainNet, config={"width": 12})
    '''
)
PLUGIN_MODULE = "birder_exp_tinynet"


def write_plugin(folder: Path) -> Path:
    """A plugin package plus its dist-info (entry point), importable with ``folder`` on sys.path."""

    package = folder / PLUGIN_MODULE
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(TINY_NET_SOURCE, encoding="utf-8")
    dist = folder / f"{PLUGIN_MODULE}-0.1.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: birder-exp-tinynet\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text(
        f"[birder_exp.plugins]\ntinynet = {PLUGIN_MODULE}:register\n", encoding="utf-8"
    )
    return folder


def write_image_folder(
    root: Path, classes: int = 3, per_class: int = 8, size: int = 16, layout: str = "flat", seed: int = 0
) -> Path:
    """Random-colour PNGs whose class is their dominant channel: learnable, tiny, deterministic."""

    from PIL import Image

    rng = random.Random(seed)
    splits = {"": per_class} if layout == "flat" else {"train": per_class, "val": 3, "test": 3}
    for split, count in splits.items():
        for label in range(classes):
            folder = root / split / f"class_{label}" if split else root / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                colour = [rng.randint(0, 80) for _ in range(3)]
                colour[label % 3] = rng.randint(170, 255)
                Image.new("RGB", (size, size), tuple(colour)).save(folder / f"{index}.png")

    return root


def cli_env(extra_path: Optional[Path] = None, **env: str) -> dict[str, str]:
    full = dict(os.environ)
    paths = [str(REPO)] + ([str(extra_path)] if extra_path is not None else [])
    if full.get("PYTHONPATH"):
        paths.append(full["PYTHONPATH"])
    full["PYTHONPATH"] = os.pathsep.join(paths)
    full["HYDRA_FULL_ERROR"] = "0"
    full.update(env)
    return full


def run_cli(
    args: list[str], cwd: Path, extra_path: Optional[Path] = None, timeout: float = 300, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "birder_exp.train", *args],
        check=False,
        cwd=cwd,
        env=cli_env(extra_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip() != ""]
    return lines[-1] if len(lines) > 0 else ""


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve ``folder`` over HTTP on 127.0.0.1 (an ephemeral port); yields the base URL."""

    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
