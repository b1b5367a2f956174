"""What a pipeline run prints: its own lines, progress bars and a summary; Ray's logs go to files.

By default (``verbose=False``):

- the driver's ``ray`` loggers (``ray``, ``ray.data``, ``ray.train`` ...) keep writing to files
  (``<run>/logs/ray-driver.log`` and Ray's session logs) but print only errors on the terminal;
- Ray worker and actor output is not forwarded to the driver (``ray.init(log_to_driver=False)``): it
  stays in the session's ``logs/worker-*.out`` files, whose folder the run prints;
- Ray Data's own progress output is off: the pipelines draw one tqdm bar per dataset instead;
- the resolved config is written to ``<run>/config.yaml``, not printed.

``-v`` / ``--verbose`` (or ``EDGESAM_VERBOSE=1``) restores Ray's console output and prints the config.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from edgesam.progress import progress_bar

VERBOSE_ENV = "EDGESAM_VERBOSE"
_ACTIVE: "RunOutput | None" = None


def active_ray_init_kwargs() -> dict:
    """``ray.init`` keyword arguments of the active run's output policy (none without one)."""
    return _ACTIVE.ray_init_kwargs() if _ACTIVE is not None else {}


def after_ray_init() -> None:
    """Re-apply the active policy to loggers Ray set up during ``ray.init``."""
    if _ACTIVE is not None:
        _ACTIVE.quiet_ray()


def add_verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show Ray's own logs and worker output on the terminal and print the resolved config")


def is_verbose(flag: bool = False) -> bool:
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes")


def local_run_dir(storage_path: str, name: str, output_dir: str | None = None) -> Path:
    """Where a run's local files (config, logs, timings) go: ``output_dir``, else ``<storage>/<name>``;
    ``runs/<name>`` when the storage is remote (s3://...)."""
    if output_dir and "://" not in output_dir:
        return Path(output_dir)
    if "://" in storage_path:
        return Path("runs") / name
    return Path(storage_path) / name


def ray_session_logs() -> str | None:
    """The Ray session's log folder on this node (worker/actor output), if connected."""
    try:
        import ray

        return ray._private.worker.global_worker.node.get_logs_dir_path()  # no public API for this path
    except Exception:  # noqa: BLE001 - a remote client or an older Ray: say nothing rather than fail
        return None


@dataclass
class RunOutput:
    """One run's terminal output policy, stage timings and log locations."""

    run_dir: Path
    verbose: bool = False
    tag: str = "run"
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.log_dir = self.run_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.driver_log = self.log_dir / "ray-driver.log"
        self._t0 = time.time()

    # -- Ray -----------------------------------------------------------------------------------------
    def activate(self) -> "RunOutput":
        """Make this the policy ``pipelines.ray_init.init_ray`` applies (quiet loggers, ``log_to_driver``)."""
        global _ACTIVE
        _ACTIVE = self
        self.quiet_ray()
        return self

    def ray_init_kwargs(self) -> dict:
        return {} if self.verbose else {"log_to_driver": False}

    def quiet_ray(self) -> None:
        """Route the driver's Ray loggers to the run's log file; idempotent (call again after new imports)."""
        if self.verbose:
            return
        import ray  # noqa: F401 - configures the "ray" logger
        import ray.data  # configures "ray.data" (its own handlers)

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # our own bar per dataset (progress_bar below)
        ctx.print_on_execution_start = False
        file_handler = next((h for h in logging.getLogger("ray").handlers if getattr(h, "_edgesam", False)), None)
        if file_handler is None:
            file_handler = logging.FileHandler(self.driver_log)
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            file_handler._edgesam = True  # type: ignore[attr-defined]
            logging.getLogger("ray").addHandler(file_handler)
        for name in ["ray", *[n for n in logging.Logger.manager.loggerDict if n.startswith("ray.")]]:
            logger = logging.getLogger(name)
            for h in logger.handlers:
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    h.setLevel(logging.ERROR)
            if name != "ray" and not logger.propagate and file_handler not in logger.handlers:
                logger.addHandler(file_handler)

    # -- stages and files ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time a stage (kept in ``timings.json``)."""
        t = time.time()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.time() - t, 1)

    def write_config(self, text: str) -> Path:
        path = self.run_dir / "config.yaml"
        path.write_text(text)
        if self.verbose:
            print(text, flush=True)
        return path

    def say(self, message: str) -> None:
        """A line on the terminal that does not break a running progress bar."""
        from tqdm import tqdm

        tqdm.write(f"[{self.tag}] {message}", file=sys.stdout)
        sys.stdout.flush()

    def summary(self, outputs: dict[str, str], title: str = "finished") -> None:
        """The closing block: where everything went, the log files and the time per stage."""
        total = time.time() - self._t0
        self.timings["total"] = round(total, 1)
        (self.run_dir / "timings.json").write_text(json.dumps(self.timings, indent=2))
        print(f"[{self.tag}] {title} in {total:.0f} s", flush=True)
        rows = dict(outputs)
        rows["config"] = str((self.run_dir / "config.yaml").resolve())
        rows["timings"] = str((self.run_dir / "timings.json").resolve())
        rows["driver_log"] = str(self.driver_log.resolve())
        logs = ray_session_logs()
        if logs:
            rows["ray_logs"] = logs
        for k, v in rows.items():
            print(f"  {k:<14} {v}")
        stages = ", ".join(f"{k} {v:.0f}s" for k, v in self.timings.items() if k != "total")
        print(f"  {'time':<14} {stages}", flush=True)


def collect_rows(ds, desc: str, unit: str = "img", total: int | None = None, rate_of: str | None = None,
                 rate_unit: str = "") -> list[dict]:
    """Execute a Ray Dataset from the driver, counting its output rows on one bar; returns the rows.

    ``rate_of``: a numeric column whose sum per second of wall time the bar shows as ``rate_unit`` (e.g. the
    masks per image as ``masks/s``).
    """
    rows, amount, t0 = [], 0.0, time.time()
    with progress_bar(desc=desc, unit=unit, total=total) as bar:
        for row in ds.iter_rows():
            rows.append(dict(row))
            if rate_of:
                amount += float(row[rate_of])
                bar.set_postfix({rate_unit or rate_of: f"{amount / max(time.time() - t0, 1e-6):.1f}"}, refresh=False)
            bar.update(1)
    return rows


class ProgressCounter:
    """Units done (and an amount, e.g. masks) summed over many actors; runs as a zero-CPU Ray actor."""

    def __init__(self) -> None:
        self.n, self.amount = 0, 0.0

    def add(self, n: int, amount: float = 0.0) -> None:
        self.n += n
        self.amount += amount

    def read(self) -> tuple[int, float]:
        return self.n, self.amount


@contextlib.contextmanager
def counted_progress(desc: str, unit: str = "img", total: int | None = None, rate_unit: str = "") -> Iterator:
    """One bar for a Ray job whose output the driver never sees (e.g. a Ray Data write): yields a
    :class:`ProgressCounter` actor handle for the workers (``handle.add.remote(1, masks)``); a driver thread
    polls it twice a second. ``rate_unit``: the amount per second of wall time on the bar (e.g. ``masks/s``)."""
    import threading

    import ray

    counter = ray.remote(num_cpus=0)(ProgressCounter).remote()
    stop = threading.Event()
    t0 = time.time()

    def poll() -> None:
        with progress_bar(desc=desc, unit=unit, total=total) as bar:
            while True:
                done = stop.wait(0.5)
                n, amount = ray.get(counter.read.remote())
                if rate_unit:
                    bar.set_postfix({rate_unit: f"{amount / max(time.time() - t0, 1e-6):.1f}"}, refresh=False)
                bar.update(n - bar.n)
                if done:
                    return

    thread = threading.Thread(target=poll, name=f"{desc} progress", daemon=True)
    thread.start()
    try:
        yield counter
    finally:
        stop.set()
        thread.join(timeout=30)
        ray.kill(counter)
