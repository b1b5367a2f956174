"""``edgesam serve``: run the Serve application with a typed config, like ``serve run serve.app:edgesam``.

    edgesam serve                                     # configs/serve.yaml on a local Ray cluster
    edgesam serve --config serve model.checkpoint=s3://bucket/student.pt --port 8000

``serve run serve.app:edgesam`` keeps working; it reads ``$EDGESAM_SERVE_CONFIG`` instead of flags.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgesam.config import add_config_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="HTTP bind address (0.0.0.0 to serve the network)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--address", default=None, help="Ray cluster address (default: a live local one, else new)")
    add_config_args(parser)
    args = parser.parse_args(argv)

    from serve.config import load_serve_config

    try:
        cfg = load_serve_config(args.config, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"[serve] ERROR: bad configuration: {exc}", file=sys.stderr)
        return 2

    from ray import serve

    from pipelines.ray_init import init_ray
    from serve.app import build_app

    init_ray(args.address)
    from serve.preflight import InsufficientResourcesError, check_resources

    try:
        check_resources(cfg)
    except InsufficientResourcesError as exc:
        print(f"[serve] ERROR: {exc}", file=sys.stderr)
        return 2
    serve.start(http_options={"host": args.host, "port": args.port})
    print(f"[serve] starting on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    try:
        serve.run(build_app(cfg), blocking=True)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
