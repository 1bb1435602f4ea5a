"""Another process fetching or loading one entry: the weights tests' stand-in for a second worker.

``download`` mode never imports torch (the entry's network is registered as a plain stand-in class, which is all
entry validation looks at), so many of these start quickly; ``load`` mode registers the real tiny networks and
loads the entry. Prints ``ready`` once registered; with ``--go FILE`` it then waits for FILE before starting.
"""

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["download", "load"])
    parser.add_argument("name")
    parser.add_argument("info", help="the entry's metadata as JSON")
    parser.add_argument("--go", default=None)
    parser.add_argument("--max-file-bytes", type=int, default=None, help="simulate a full disk")
    args = parser.parse_args()

    if args.max_file_bytes is not None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.max_file_bytes, resource.RLIM_INFINITY))

    from birder_exp.model_registry import registry

    info = json.loads(args.info)
    if args.mode == "load":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from tiny_weights_nets import register_tiny_networks

        register_tiny_networks(registry)
    else:

        class NetworkStandIn:
            task = "image_classification"

        registry.register_model(info["net"]["network"], NetworkStandIn)

    registry.register_weights(args.name, info)
    print("ready", flush=True)
    if args.go is not None:
        while Path(args.go).exists() is False:
            time.sleep(0.005)

    try:
        if args.mode == "load":
            import birder_exp

            (net, _) = birder_exp.load_pretrained_model(args.name, progress_bar=False, inference=True)
            print("sum", float(sum(p.double().sum() for p in net.parameters())))
        else:
            from birder_exp.weights import download_weights

            path = download_weights(args.name, progress_bar=False)
            print("path", path)
            print("sha256", hashlib.sha256(path.read_bytes()).hexdigest())
            print("torch imported", "torch" in sys.modules)
    except Exception as exc:
        print(f"ERROR {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3

    return 0


if __name__ == "__main__":
    sys.exit(main())
