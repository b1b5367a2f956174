"""Resource preflight of the Serve application: refuse to deploy what the cluster can never place.

Ray Serve queues a replica whose ``num_cpus``/``num_gpus`` no node can give, and only logs a warning
every 30 s; ``/healthz`` then never answers. ``check_resources(cfg)`` (called by ``build_app``) sums
what the deployments ask at start (``num_replicas``, or the autoscaler's initial/minimum count, at
least one) and compares it with the cluster's total CPUs and GPUs:

- connected to Ray (``edgesam serve``, ``serve deploy``, tests): ``ray.cluster_resources()``;
- not yet connected (``serve run`` imports the app before ``ray.init``): a cluster named by
  ``RAY_ADDRESS`` or running locally is asked briefly (connect, read, disconnect); with none, ``serve
  run`` will start a local Ray with this machine's CPUs, so those are the budget.

An autoscaling cluster can grow past its current total: set ``EDGESAM_SERVE_PREFLIGHT=0`` there.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from .config import DeploymentSection, ServeAppConfig

SKIP_ENV = "EDGESAM_SERVE_PREFLIGHT"
DEPLOYMENTS = ("encoder", "decoder", "everything", "ingress")  # ServeAppConfig sections that are deployments


class InsufficientResourcesError(RuntimeError):
    """The deployments ask for more CPUs/GPUs than the cluster has in total."""


def replicas_at_start(section: DeploymentSection) -> int:
    """Replicas Serve starts (and needs placed before the app is healthy): at least one."""
    if section.autoscaling:
        auto = section.autoscaling
        return max(1, int(auto.get("initial_replicas") or auto.get("min_replicas") or 0))
    return section.num_replicas


def resource_asks(cfg: ServeAppConfig) -> dict[str, dict[str, float]]:
    """{section: {"replicas", "CPU", "GPU"}} with CPU/GPU summed over the section's starting replicas."""
    out = {}
    for name in DEPLOYMENTS:
        section: DeploymentSection = getattr(cfg, name)
        n = replicas_at_start(section)
        out[name] = {"replicas": n, "CPU": n * section.num_cpus, "GPU": n * section.num_gpus}
    return out


def shortfall(asks: Mapping[str, Mapping[str, float]], available: Mapping[str, float]) -> str | None:
    """A message naming every resource the asks exceed (None when they fit).

    ``available`` holds cluster totals; a resource missing from it is not checked (unknown).
    """
    problems = []
    for res in ("CPU", "GPU"):
        if res not in available:
            continue
        need = sum(a[res] for a in asks.values())
        have = float(available[res])
        if need > have + 1e-9:
            parts = ", ".join(f"{name} {a['replicas']:g} x {a[res] / a['replicas']:g}"
                              for name, a in asks.items() if a[res] > 0)
            problems.append(f"{need:g} {res} ({parts}) but the Ray cluster has {have:g} {res} in total")
    if not problems:
        return None
    return ("the Serve deployments cannot all be placed, so /healthz would never answer: they ask for "
            + "; and ".join(problems) + ". Lower <deployment>.num_cpus / num_gpus (fractions are fine) or "
            "num_replicas in configs/serve.yaml (or the file named by $EDGESAM_SERVE_CONFIG, or "
            "`edgesam serve encoder.num_cpus=0.25 ...`), or add nodes. On an autoscaling cluster set "
            f"{SKIP_ENV}=0 to skip this check.")


def _address_to_probe() -> str | None:
    """The cluster ``serve run``'s ``ray.init()`` would join: $RAY_ADDRESS, else a live local one."""
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"]
    from pipelines.ray_init import _listening

    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    if current.is_file() and _listening(current.read_text()):
        return current.read_text().strip()
    return None


def _local_cpus() -> float:
    """CPUs a fresh local ``ray.init()`` would detect (cgroup-aware where Ray's helper is available)."""
    try:
        from ray._private.utils import get_num_cpus

        return float(get_num_cpus())
    except Exception:  # noqa: BLE001 - a private helper: fall back to the affinity mask
        return float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def cluster_totals() -> dict[str, Any]:
    """Total CPU/GPU of the cluster the app will run on (see the module docstring for how it is found)."""
    import ray

    if not ray.is_initialized():
        address = _address_to_probe()
        if address is None:
            return {"CPU": _local_cpus()}  # GPUs unknown without Ray: not checked
        ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        try:
            return {"GPU": 0.0, **ray.cluster_resources()}
        finally:
            ray.shutdown()
    return {"GPU": 0.0, **ray.cluster_resources()}  # a cluster without GPUs has no "GPU" key


def check_resources(cfg: ServeAppConfig, available: Mapping[str, float] | None = None) -> None:
    """Raise ``InsufficientResourcesError`` when the deployments cannot all be placed at once."""
    if os.environ.get(SKIP_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    totals = cluster_totals() if available is None else available
    message = shortfall(resource_asks(cfg), totals)
    if message:
        raise InsufficientResourcesError(message)
