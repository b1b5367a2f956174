"""Run the application on a private local Ray cluster bound to 127.0.0.1 (tests, benchmarks, demos).

``address="local"`` always starts a new cluster, so a developer's (or a colleague's) running cluster
is never joined or disturbed. Shutting down stops Serve and that cluster.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass

from .config import ServeAppConfig


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    """``with LocalServer(cfg) as srv: requests.get(srv.url + "/healthz")``."""

    cfg: ServeAppConfig
    num_cpus: float = 2
    host: str = "127.0.0.1"
    port: int | None = None
    ready_timeout_s: float = 120.0
    app_name: str = "edgesam"

    def start(self) -> "LocalServer":
        import ray
        import requests
        from ray import serve

        from .app import build_app

        ray.init(address="local", num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
        self._start_proxy(serve)
        serve.run(build_app(self.cfg), name=self.app_name, route_prefix="/", blocking=False)
        deadline = time.monotonic() + self.ready_timeout_s
        while True:  # serve.run returns once replicas are up; also wait for the proxy route
            try:
                if requests.get(self.url + "/healthz", timeout=10).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Serve app not healthy at {self.url} after {self.ready_timeout_s} s")
            time.sleep(0.25)

    def _start_proxy(self, serve) -> None:
        """Pick the port only now (Ray's own processes take ports while starting); retry with a new port if it
        was taken, or if the proxy died on start (it fails health checks when the CPUs are saturated)."""
        fixed = self.port is not None
        for attempt in range(3):
            if not fixed:
                self.port = free_port(self.host)
            try:
                serve.start(http_options={"host": self.host, "port": self.port})
                return
            except Exception as e:  # RayTaskError "Failed to bind to address ...", ActorDiedError
                if (fixed and "bind" in str(e)) or attempt == 2:
                    self.stop()
                    raise
                serve.shutdown()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()

    def __enter__(self) -> "LocalServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def small_config(**sections: dict) -> ServeAppConfig:
    """A config for 2 shared CPU cores: img_size 256, one torch thread, 0.25 CPU per replica."""
    base: dict = {
        "model": {"img_size": 256, "threads": 1},
        "encoder": {"num_cpus": 0.25, "max_batch_size": 4, "batch_wait_timeout_s": 0.02},
        "decoder": {"num_cpus": 0.25, "max_batch_size": 8, "batch_wait_timeout_s": 0.02},
        "everything": {"num_cpus": 0.25, "generator": {"points_per_side": 4, "stability_score_thresh": 0.0}},
        "ingress": {"num_cpus": 0.25},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return ServeAppConfig.model_validate(base)
