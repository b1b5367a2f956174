"""A training progress bar on the driver, fed by rank 0 of a Ray Train run.

With ``log_to_driver=False`` (pipelines/run_output.py) a tqdm bar inside a Ray Train worker would only
reach the worker's log file, and Ray Train's reporting goes to its controller actor, not the driver.
So rank 0 pushes one small event per step to a ``ProgressBoard`` actor (0 CPUs, fire-and-forget), and
the driver drains it every half second into a tqdm bar that shows loss and images/s::

    board = progress_board()                       # driver, once per run
    with TrainBar(board, "step1 encoder_kd", total=steps):
        trainer.fit()                              # train_loop_config carries ``board``
    push(board, step=i, loss=..., images=...)      # rank 0, each step (board may be None)
"""
from __future__ import annotations

import threading
import time
from typing import Any

_BOARD = None


def _board_class():
    import ray

    @ray.remote(num_cpus=0, max_restarts=0)
    class ProgressBoard:
        """Holds the events rank 0 pushed since the driver last drained them."""

        def __init__(self) -> None:
            self.events: list[dict] = []

        def push(self, event: dict) -> None:
            self.events.append(event)

        def drain(self) -> list[dict]:
            out, self.events = self.events, []
            return out

    return ProgressBoard


def progress_board():
    """The run's board actor (created on first use, one per driver process)."""
    global _BOARD
    if _BOARD is None:
        _BOARD = _board_class().remote()
    return _BOARD


def push(board: Any, **event: Any) -> None:
    """Worker side: send one event (``step``, ``loss``, ``images``; or ``msg``); never blocks."""
    if board is not None:
        board.push.remote({"t": time.time(), **event})


class TrainBar:
    """Driver side: a tqdm bar for one step, updated from the board while ``trainer.fit()`` runs."""

    def __init__(self, board: Any, desc: str, total: int, start: int = 0) -> None:
        self.board, self.desc, self.total, self.start = board, desc, total, start
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "TrainBar":
        from edgesam.progress import progress_bar

        self.bar = progress_bar(desc=self.desc, total=self.total, initial=self.start, unit="step")
        if self.board is None:
            return self
        self._thread = threading.Thread(target=self._poll, name="edgesam-train-bar", daemon=True)
        self._thread.start()
        return self

    def _apply(self, events: list[dict]) -> None:
        for ev in events:
            if "msg" in ev:
                self.bar.write(f"  {ev['msg']}")
                continue
            step = int(ev.get("step", self.bar.n))
            last_t = getattr(self, "_last_t", None)
            if last_t is not None and ev["t"] > last_t and ev.get("images"):
                self._ips = ev["images"] / (ev["t"] - last_t)
            self._last_t = ev["t"]
            post = {"loss": f"{ev['loss']:.4f}"} if "loss" in ev else {}
            if getattr(self, "_ips", None):
                post["img/s"] = f"{self._ips:.2f}"
            if ev.get("phase"):
                post["phase"] = ev["phase"]
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(max(0, step - self.bar.n))

    def _poll(self) -> None:
        import ray

        while not self._stop.is_set():
            try:
                self._apply(ray.get(self.board.drain.remote(), timeout=30))
            except Exception:  # noqa: BLE001 - the bar is cosmetic: never break training over it
                pass
            self._stop.wait(0.5)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is None:
            self.bar.close()
            return
        self._thread.join(timeout=35)
        try:
            import ray

            self._apply(ray.get(self.board.drain.remote(), timeout=10))
        except Exception:  # noqa: BLE001
            pass
        self.bar.close()
