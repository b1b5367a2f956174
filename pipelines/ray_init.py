"""Connecting a pipeline driver to Ray.

``ray.init()`` without an address joins the cluster named in ``/tmp/ray/ray_current_cluster``; when
that cluster died uncleanly the driver retries its GCS for minutes. We check the address first and
start a fresh local cluster when nothing listens there.
"""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path


def _listening(address: str, timeout: float = 1.0) -> bool:
    host, _, port = address.strip().rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def init_ray(address: str | None = None, **kwargs) -> None:
    """Join ``address`` (or RAY_ADDRESS, or a live local cluster), else start a local one."""
    import ray

    if ray.is_initialized():
        return
    if address is None and not os.environ.get("RAY_ADDRESS"):
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        live = current.is_file() and _listening(current.read_text())
        address = "auto" if live else "local"
        if not live and current.is_file():
            print(f"[ray] {current} names a cluster that is not running; starting a local one", flush=True)
    from pipelines.run_output import active_ray_init_kwargs, after_ray_init

    ray.init(address=address, ignore_reinit_error=True, **{**active_ray_init_kwargs(), **kwargs})
    after_ray_init()
