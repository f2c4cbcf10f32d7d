"""CPU seconds of this process and everything it started (Flower, Ray, the actors),
sampled in a thread, so each round's CPU cost can be read off the rounds' wall-clock
boundaries. Wall time under other users' load depends on the share of the cores a
system gets; CPU seconds per round depend on it much less."""

from __future__ import annotations

import bisect
import os
import threading
import time

from fedlab.launch import descendants


class TreeCpu:
    """``with TreeCpu() as cpu: ...`` then ``cpu.between(t0, t1)`` (``time.time()`` stamps)."""

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._overhead = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._hz = os.sysconf("SC_CLK_TCK")

    def _tree_cpu(self) -> float:
        total = 0.0
        for pid in (os.getpid(), *descendants(os.getpid())):
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read().decode(errors="replace")
            except OSError:
                continue  # ended meanwhile: its time is in its parent's cutime/cstime
            fields = stat[stat.rfind(")") + 2:].split()
            total += sum(float(v) for v in fields[11:15]) / self._hz  # utime stime cutime cstime
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            own = time.thread_time()  # the sampler's own CPU is not the measured system's
            cpu = self._tree_cpu()
            self._overhead += time.thread_time() - own
            self.samples.append((time.time(), cpu - self._overhead))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, t: float) -> float | None:
        """CPU seconds at wall time ``t`` (linear between samples); None outside them."""
        ts = [x for x, _ in self.samples]
        if not ts or t < ts[0] or t > ts[-1]:
            return None
        i = max(1, bisect.bisect_left(ts, t))
        (t0, c0), (t1, c1) = self.samples[i - 1], self.samples[i] if i < len(ts) else \
            self.samples[i - 1]
        return c0 + (c1 - c0) * (t - t0) / (t1 - t0) if t1 > t0 else c1

    def between(self, start: float, end: float) -> float | None:
        a, b = self.at(start), self.at(end)
        return None if a is None or b is None else round(max(0.0, b - a), 3)
