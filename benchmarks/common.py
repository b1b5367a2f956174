"""Shared helpers for the benchmarks: timing, MAC counting, machine facts, BENCHMARKS.md sections."""
from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def set_threads(threads: int) -> None:
    """Same intra-op thread count for torch (ORT sessions take it separately)."""
    torch.set_num_threads(threads)


def time_runs(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``runs`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


@torch.no_grad()
def count_macs(fn: Callable[[], object]) -> float:
    """Multiply-accumulates of conv / linear / matmul / bmm / SDPA in ``fn()``: FlopCounterMode FLOPs / 2.

    ``fn`` may run on meta tensors (no compute), which is how the SAM ViTs are counted.
    """
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() / 2


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def matmul_gflops(threads: int, n: int = 2048, runs: int = 10) -> float:
    """The machine's fp32 matmul rate with ``threads`` torch threads (median of ``runs``), GFLOP/s."""
    set_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    t = median(time_runs(lambda: a @ b, runs, warmup=2))
    return 2 * n ** 3 / t / 1e9


def _system_busy_s() -> float:
    """CPU-seconds all processes on this kernel have used so far (from /proc/stat; 0 where unavailable)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuContention:
    """Context manager measuring how many cores *other* processes used on average while it was open.

    ``others_cores`` = (system busy CPU-seconds - this process's CPU-seconds) / wall seconds. On a shared
    machine this is the honest indicator of whether a timing was disturbed (the load average lags).
    """

    def __enter__(self) -> "CpuContention":
        self._wall, self._own, self._sys = time.perf_counter(), time.process_time(), _system_busy_s()
        return self

    def __exit__(self, *exc) -> None:
        wall = max(time.perf_counter() - self._wall, 1e-9)
        own = time.process_time() - self._own
        self.others_cores = max(0.0, (_system_busy_s() - self._sys - own) / wall)
        self.own_cores = own / wall


def load_average() -> float:
    return os.getloadavg()[0]


def wait_for_quiet(max_load: float, timeout_s: float, poll_s: float = 30.0) -> float:
    """Wait until the 1-minute load average is <= ``max_load`` (or ``timeout_s`` passes); returns the load."""
    deadline = time.monotonic() + timeout_s
    load = load_average()
    while load > max_load and time.monotonic() < deadline:
        print(f"load average {load:.2f} > {max_load}; waiting {poll_s:.0f} s for a quieter machine", flush=True)
        time.sleep(poll_s)
        load = load_average()
    return load


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            return m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def machine_info(threads: int) -> dict:
    import onnxruntime as ort

    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpu": cpu_model(), "logical_cpus": os.cpu_count(),
            "threads": threads, "torch": torch.__version__, "onnxruntime": ort.__version__,
            "python": platform.python_version()}


def replace_section(path: str | Path, name: str, heading: str, body: str) -> None:
    """Replace the text between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in ``path``.

    When the markers are missing, append ``heading`` and the marked body; other text is left alone.
    """
    path = Path(path)
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text and text.index(begin) < text.index(end):
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + f"\n\n{heading}\n\n{block}\n"
    path.write_text(text if text.endswith("\n") else text + "\n")
