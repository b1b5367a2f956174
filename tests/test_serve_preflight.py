"""The Serve defaults fit a 2-core machine; a config that cannot be placed fails up front with a clear message.

``test_readme_serve_command_answers_healthz`` runs the README's command, ``serve run serve.app:edgesam``,
verbatim as a subprocess against a fresh private 2-CPU Ray head (``ray start --head --num-cpus=2``) and
waits for ``/healthz``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.serve")

from serve.config import ServeAppConfig, load_serve_config  # noqa: E402
from serve.preflight import InsufficientResourcesError, check_resources, resource_asks, shortfall  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))


def test_default_config_fits_one_and_two_cpus():
    cfg = load_serve_config()  # configs/serve.yaml: what `serve run serve.app:edgesam` deploys
    asks = resource_asks(cfg)
    total = sum(a["CPU"] for a in asks.values())
    assert set(asks) == {"encoder", "decoder", "everything", "ingress"}
    assert 0 < total <= 1.0 and all(a["GPU"] == 0 for a in asks.values())
    check_resources(cfg, available={"CPU": 2.0, "GPU": 0.0})
    check_resources(cfg, available={"CPU": 1.0})
    # The class defaults (a YAML that leaves num_cpus out) fit as well.
    assert sum(a["CPU"] for a in resource_asks(ServeAppConfig()).values()) <= 1.0


def test_oversized_config_fails_with_the_numbers_and_the_fix():
    cfg = ServeAppConfig.model_validate({"encoder": {"num_cpus": 1, "num_replicas": 2}, "decoder": {"num_cpus": 1},
                                         "everything": {"num_cpus": 1}, "ingress": {"num_cpus": 0.5}})
    assert sum(a["CPU"] for a in resource_asks(cfg).values()) == pytest.approx(4.5)
    with pytest.raises(InsufficientResourcesError) as err:
        check_resources(cfg, available={"CPU": 2.0, "GPU": 0.0})
    msg = str(err.value)
    assert "4.5 CPU" in msg and "2 CPU in total" in msg and "encoder 2 x 1" in msg
    assert "num_cpus" in msg and "configs/serve.yaml" in msg and "EDGESAM_SERVE_PREFLIGHT=0" in msg


def test_gpu_asks_and_autoscaling_minimums():
    cfg = ServeAppConfig.model_validate({
        "encoder": {"num_gpus": 0.5, "autoscaling": {"min_replicas": 0, "max_replicas": 8}},
        "decoder": {"num_gpus": 0.5, "autoscaling": {"min_replicas": 2, "initial_replicas": 3, "max_replicas": 8}}})
    asks = resource_asks(cfg)
    assert asks["encoder"]["replicas"] == 1 and asks["decoder"]["replicas"] == 3  # >= 1 so a request can run
    assert shortfall(asks, {"CPU": 8, "GPU": 2}) is None
    assert "2 GPU (encoder 1 x 0.5, decoder 3 x 0.5) but the Ray cluster has 1 GPU" in shortfall(asks, {"CPU": 8, "GPU": 1})
    cpu_only = shortfall(asks, {"CPU": 0.5})  # GPUs unknown (no cluster reachable): only CPUs are checked
    assert "1.35 CPU" in cpu_only and "GPU (" not in cpu_only


def test_skip_switch(monkeypatch):
    cfg = ServeAppConfig.model_validate({"encoder": {"num_cpus": 64}})
    monkeypatch.setenv("EDGESAM_SERVE_PREFLIGHT", "0")
    check_resources(cfg, available={"CPU": 2})


def _get(url: str, timeout: float = 5.0) -> tuple[int, dict]:
    import requests

    r = requests.get(url, timeout=timeout)
    return r.status_code, (r.json() if r.headers.get("content-type", "").startswith("application/json") else {})


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(900)
def test_readme_serve_command_answers_healthz(tmp_path):
    """`serve run serve.app:edgesam` (README) with the default config on a 2-CPU cluster answers /healthz."""
    pytest.importorskip("requests")
    from raycluster import free_port, start_local_cluster

    port = free_port()
    with start_local_cluster(head={"CPU": 2}, connect=False) as cluster:
        env = {k: v for k, v in os.environ.items() if k != "EDGESAM_SERVE_CONFIG"}
        env.update(RAY_ADDRESS=cluster.address, PYTHONPATH=str(REPO))
        # Serve's HTTP port (8000 by default) may be another cluster's on this shared machine, and `serve run
        # IMPORT_PATH` has no port flag: start Serve's proxy on a free port first; `serve run` then joins it.
        subprocess.run(["serve", "start", f"--http-port={port}"], cwd=REPO, env=env, check=True, timeout=240,
                       capture_output=True)
        log = tmp_path / "serve_run.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen(["serve", "run", "serve.app:edgesam"], cwd=REPO, env=env, stdout=fh,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 780
            status, body = 0, {}
            while time.monotonic() < deadline:
                assert proc.poll() is None, f"serve run exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
                try:
                    status, body = _get(f"http://127.0.0.1:{port}/healthz")
                except Exception:  # noqa: BLE001 - not listening yet
                    status = 0
                if status == 200:
                    break
                time.sleep(2)
            assert status == 200, f"/healthz never answered 200 (last {status}):\n{log.read_text()[-4000:]}"
            assert body["status"] == "ok" and body["img_size"] == 1024 and body["weights"] == "random"
        finally:
            os.killpg(proc.pid, signal.SIGINT)  # serve run shuts the app down on Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(300)
def test_serve_run_refuses_a_config_that_cannot_fit(tmp_path):
    """The same command with 4.5 CPUs asked on a 2-CPU cluster exits at once, naming the fix."""
    from raycluster import start_local_cluster

    big = tmp_path / "big.yaml"
    big.write_text("encoder: {num_cpus: 2}\ndecoder: {num_cpus: 1}\neverything: {num_cpus: 1}\ningress: {num_cpus: 0.5}\n")
    with start_local_cluster(head={"CPU": 2}, connect=False) as cluster:
        env = dict(os.environ, RAY_ADDRESS=cluster.address, PYTHONPATH=str(REPO), EDGESAM_SERVE_CONFIG=str(big))
        out = subprocess.run(["serve", "run", "serve.app:edgesam"], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=240)
    assert out.returncode != 0
    assert "4.5 CPU" in out.stderr + out.stdout and "2 CPU in total" in out.stderr + out.stdout
