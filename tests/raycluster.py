"""Real multi-node Ray clusters on one machine, for tests, isolated from every other Ray on it.

    from raycluster import NodeType, start_local_cluster   # tests/ is on sys.path under pytest

    # (a) a head plus fixed worker nodes (e.g. a 2-node Ray Train test)
    with start_local_cluster(head={"CPU": 1}, workers=[{"CPU": 1}]) as cluster:
        assert len(cluster.alive_nodes()) == 2          # the driver is connected (ray.init) inside

    # (b) an autoscaling cluster: Ray's fake node provider adds worker nodes on demand
    with start_local_cluster(head={"CPU": 1},
                             node_types={"teacher_node": NodeType({"CPU": 1, "teacher": 1}, 0, 2)}) as cluster:
        ...                                             # work that requests {"teacher": 1} scales it up

Why not ``ray.cluster_utils.AutoscalingCluster``: its ``start()``/``shutdown()`` run ``ray stop --force``,
which kills every Ray process on the machine (other tests run Ray concurrently), and in the Ray 2.60
wheel its base config (``fake_multi_node/example.yaml``) is not even shipped. So this module writes
the same fake-provider config itself and owns the processes:

- every node is a ``ray start --block`` subprocess in its own session (process group); the head gets
  its own ``--temp-dir``, so ``/tmp/ray/session_latest`` and ``/tmp/ray/ray_current_cluster`` of other
  clusters are never touched and a bare ``ray.init()`` elsewhere cannot attach to this cluster;
- every port is free-picked or OS-assigned (no 6379/8265/10001/52365 clashes with other clusters);
- the fake provider runs inside the head's autoscaler (``monitor.py``) and starts each worker node
  as ``ray._private.node.Node(head=False, spawn_reaper=False)``: raylet, agents and workers are
  children of the monitor, in the head's process group, without parent-death signals; Ray's worker
  processes (``ray::IDLE``, actors) lead process groups of their own. Every node is started with the
  environment variable ``EDGESAM_TEST_RAY_CLUSTER=<temp dir>``, which all of them inherit. Teardown SIGKILLs
  each process group, then every other process carrying that variable (or naming the temp dir), and
  verifies through /proc that none of them is left (Linux only).

The client's auth mode is matched: the nodes get ``RAY_AUTH_MODE`` equal to this process's current
mode (Ray 2.60 turns token auth on for a ``ray start`` that finds ``~/.ray/auth_token``, while a
``ray.init(address=...)`` client does not), and share the same token source.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

HEAD_NODE_TYPE = "ray.head.default"  # the name FakeMultiNodeProvider gives the head node type
MARKER_ENV = "EDGESAM_TEST_RAY_CLUSTER"  # set to the temp dir in every node's environment; all Ray children inherit it
DEFAULT_OBJECT_STORE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class NodeType:
    """An autoscaling worker node type: logical resources per node ("CPU", "GPU", custom) and node count bounds."""

    resources: Mapping[str, float]
    min_workers: int = 0
    max_workers: int = 1


def free_port() -> int:
    """A TCP port that was free a moment ago (tiny race with other processes; start retries cover it)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _ray_cli() -> list[str]:
    exe = Path(sys.executable).with_name("ray")
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "ray.scripts.scripts"]


def _auth_mode() -> str:
    """This process's Ray auth mode, "token" or "disabled" (what a ray.init(address=...) here will use)."""
    try:
        from ray._raylet import AuthenticationMode, get_authentication_mode
    except ImportError:  # Ray without token auth
        return "disabled"
    return "token" if get_authentication_mode() == AuthenticationMode.TOKEN else "disabled"


def fake_autoscaling_config(head: Mapping[str, float], node_types: Mapping[str, NodeType], gcs_address: str,
                            idle_timeout_minutes: float = 1.0, upscaling_speed: float = 1.0) -> dict:
    """Cluster-launcher config for Ray's FakeMultiNodeProvider (the fields of Ray's fake_multi_node/example.yaml).

    ``head``/``NodeType.resources`` are logical resources; an ``object_store_memory`` entry (bytes) sizes
    each fake node's object store. ``gcs_address`` is where the fake nodes join (the default is port 6379).
    """
    types: dict[str, dict] = {
        name: {"resources": dict(t.resources), "node_config": {}, "min_workers": t.min_workers,
               "max_workers": t.max_workers}
        for name, t in node_types.items()
    }
    types[HEAD_NODE_TYPE] = {"resources": dict(head), "node_config": {}, "max_workers": 0}
    return {
        "cluster_name": "fake_multinode",
        "max_workers": sum(t.max_workers for t in node_types.values()),
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": gcs_address},
        "available_node_types": types,
        "head_node_type": HEAD_NODE_TYPE,
        "auth": {},
        "upscaling_speed": upscaling_speed,
        "idle_timeout_minutes": idle_timeout_minutes,
        "docker": {},
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [],
    }


# ---- /proc helpers (Linux) -------------------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, pgid) of a process, or None if it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data.rsplit(")", 1)[1].split()  # comm may contain spaces and parentheses
    return fields[0], int(fields[2])


def _proc_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _proc_has_env(pid: int, entry: bytes) -> bool:
    try:
        return entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


def _live_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


# ---- the cluster ------------------------------------------------------------------------------------

@dataclass
class LocalCluster:
    """A running local cluster. ``address`` is the GCS address (``ray.init(address=...)``)."""

    temp_dir: Path
    address: str = ""
    autoscaling: bool = False
    connected: bool = False
    _popens: list[subprocess.Popen] = field(default_factory=list)
    _logs: list[Path] = field(default_factory=list)

    # -- inspection (needs the driver connected) --
    def alive_nodes(self) -> list[dict]:
        import ray

        return [n for n in ray.nodes() if n["Alive"]]

    def worker_nodes(self) -> list[dict]:
        """Alive nodes other than the head."""
        return [n for n in self.alive_nodes() if "node:__internal_head__" not in n["Resources"]]

    def head_node(self) -> dict:
        return next(n for n in self.alive_nodes() if "node:__internal_head__" in n["Resources"])

    def wait_for_nodes(self, count: int, timeout_s: float = 60.0) -> list[dict]:
        """Block until ``count`` nodes (head included) are alive; returns them."""
        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.alive_nodes()
            if len(nodes) >= count:
                return nodes
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(nodes)} of {count} Ray nodes alive after {timeout_s:.0f} s; "
                                   f"logs under {self.temp_dir}\n{self.log_tail()}")
            self._check_alive()
            time.sleep(0.5)

    # -- processes --
    def pgids(self) -> set[int]:
        return {p.pid for p in self._popens}  # each node was started as a session (and group) leader

    def pids(self) -> set[int]:
        """Live (non-zombie) processes of this cluster.

        Its process groups, plus any process that inherited this cluster's marker environment variable or
        names its temp dir: Ray's worker processes make themselves process-group leaders and rewrite their
        command line (``ray::IDLE``), so only the inherited environment identifies them.
        """
        mine = self.pgids()
        marker = str(self.temp_dir)
        env_entry = f"{MARKER_ENV}={marker}".encode()
        found = set()
        for pid in _live_pids():
            st = _proc_stat(pid)
            if st is None or st[0] == "Z":
                continue
            if st[1] in mine or marker in _proc_cmdline(pid) or _proc_has_env(pid, env_entry):
                found.add(pid)
        return found

    def log_tail(self, lines: int = 30) -> str:
        out = []
        for log in self._logs:
            if log.is_file():
                out.append(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def _check_alive(self) -> None:
        for p in self._popens:
            if p.poll() is not None:
                raise RuntimeError(f"`ray start` (pid {p.pid}) exited with {p.returncode}\n{self.log_tail()}")

    def shutdown(self, timeout_s: float = 20.0) -> None:
        """Disconnect, SIGKILL every process of this cluster (and only those), verify none is left."""
        if self.connected:
            import ray

            ray.shutdown()
            self.connected = False
        for pgid in self.pgids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while True:
            for p in self._popens:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=0.1)
            left = self.pids()
            if not left:
                return
            if time.monotonic() > deadline:
                raise RuntimeError("Ray processes survived teardown: "
                                   + "; ".join(f"{pid}: {_proc_cmdline(pid)[:120]}" for pid in sorted(left)))
            for pid in left:  # worker processes (their own process groups) and any other straggler
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)


def _start_node(cluster: LocalCluster, args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen:
    log = cluster.temp_dir / log_name
    cluster._logs.append(log)
    with open(log, "ab") as fh:
        proc = subprocess.Popen([*_ray_cli(), "start", "--block", *args], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    cluster._popens.append(proc)
    return proc


def _resource_args(resources: Mapping[str, float], object_store_bytes: int) -> list[str]:
    res = dict(resources)
    cpus, gpus = res.pop("CPU", 1), res.pop("GPU", 0)
    if not (float(cpus).is_integer() and float(gpus).is_integer()):
        raise ValueError(f"a node has whole CPUs and GPUs (`ray start --num-cpus/--num-gpus`), got {resources}")
    args = [f"--num-cpus={int(cpus)}", f"--num-gpus={int(gpus)}",
            f"--object-store-memory={int(res.pop('object_store_memory', object_store_bytes))}"]
    if res:
        args.append("--resources=" + json.dumps(res))
    return args


def _wait_for_head(cluster: LocalCluster, proc: subprocess.Popen, timeout_s: float) -> str | None:
    """The head's GCS address once `ray start` has written it into the temp dir; None if it died."""
    marker = cluster.temp_dir / "ray_current_cluster"  # removed before each start attempt
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if marker.is_file() and marker.read_text().strip():
            return marker.read_text().strip()
        time.sleep(0.25)
    raise TimeoutError(f"Ray head did not start within {timeout_s:.0f} s\n{cluster.log_tail()}")


@contextlib.contextmanager
def start_local_cluster(head: Mapping[str, float] | None = None, workers: Sequence[Mapping[str, float]] = (),
                        node_types: Mapping[str, NodeType] | None = None, *, idle_timeout_minutes: float = 1.0,
                        upscaling_speed: float = 1.0, object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES,
                        connect: bool = True, start_timeout_s: float = 120.0, env: Mapping[str, str] | None = None,
                        keep_temp_dir: bool = False) -> Iterator[LocalCluster]:
    """Start a head (``head`` resources, default ``{"CPU": 1}``) and fixed ``workers`` (one resource dict
    each), or, with ``node_types``, an autoscaling cluster whose worker nodes start from each type's
    ``min_workers``. With ``connect`` the calling process is the driver (``ray.init``) inside the block and
    the fixed workers have joined. Everything is killed on exit; the temp dir (logs) is kept on failure.
    """
    if not sys.platform.startswith("linux"):
        raise RuntimeError("start_local_cluster needs Linux (/proc) to own and verify its processes")
    if node_types and workers:
        raise ValueError("pass fixed `workers` or autoscaling `node_types`, not both")
    head = dict(head or {"CPU": 1})
    # Short path: Unix socket paths under <temp>/session_*/sockets must stay below ~107 bytes.
    cluster = LocalCluster(temp_dir=Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")), autoscaling=bool(node_types))
    base_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_FAKE_CLUSTER")}
    base_env.update({"RAY_AUTH_MODE": _auth_mode(), "RAY_USAGE_STATS_ENABLED": "0", **(env or {}),
                     MARKER_ENV: str(cluster.temp_dir)})
    ok = False
    try:
        for attempt in range(3):  # a free-picked port can be taken in between: retry with new ones
            port = free_port()
            (cluster.temp_dir / "ray_current_cluster").unlink(missing_ok=True)
            head_env = dict(base_env)
            args = [f"--port={port}", f"--temp-dir={cluster.temp_dir}", "--head", "--include-dashboard=false",
                    f"--ray-client-server-port={free_port()}", "--dashboard-agent-listen-port=0",
                    "--disable-usage-stats", *_resource_args(head, object_store_bytes)]
            if node_types:
                # Fake nodes get Ray's default object store (30 % of RAM) unless their type says otherwise.
                sized = {name: NodeType({"object_store_memory": object_store_bytes, **t.resources}, t.min_workers,
                                        t.max_workers) for name, t in node_types.items()}
                config = fake_autoscaling_config(head, sized, f"{_node_ip()}:{port}", idle_timeout_minutes,
                                                 upscaling_speed)
                cfg_path = cluster.temp_dir / "autoscaling.json"
                cfg_path.write_text(json.dumps(config, indent=1))
                args.append(f"--autoscaling-config={cfg_path}")
                # The provider refuses to run without RAY_FAKE_CLUSTER; 1 s autoscaler loop instead of 5 s.
                head_env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
            proc = _start_node(cluster, args, head_env, f"head-{attempt}.log")
            address = _wait_for_head(cluster, proc, start_timeout_s)
            if address:
                cluster.address = address
                break
            cluster._popens.remove(proc)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        else:
            raise RuntimeError(f"Ray head failed to start 3 times\n{cluster.log_tail()}")
        for i, res in enumerate(workers):
            _start_node(cluster, [f"--address={cluster.address}", "--dashboard-agent-listen-port=0",
                                  "--disable-usage-stats", *_resource_args(res, object_store_bytes)],
                        base_env, f"worker-{i}.log")
        if connect:
            import ray

            if ray.is_initialized():
                ray.shutdown()
            ray.init(address=cluster.address, logging_level="WARNING")
            cluster.connected = True
            expected = 1 + len(workers) + sum(t.min_workers for t in (node_types or {}).values())
            cluster.wait_for_nodes(expected, start_timeout_s)
        yield cluster
        ok = True
    finally:
        cluster.shutdown()
        if ok and not keep_temp_dir:
            shutil.rmtree(cluster.temp_dir, ignore_errors=True)
        elif not ok:
            print(f"[raycluster] logs kept in {cluster.temp_dir}", file=sys.stderr)


def _node_ip() -> str:
    """The address Ray picks for this machine (what the head advertises and fake nodes must dial)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()
