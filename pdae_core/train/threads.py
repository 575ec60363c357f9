"""How many CPU threads torch uses: a default that does not collapse when the CPU is shared.

On a 2-core machine, two trainings with 2 torch threads each run 3.4x slower per step than one
alone, and slower than with 1 thread each (``benchmarks/threads.py``): OpenMP's threads spin
while they wait, and spinning threads fight over the cores. ``threads="auto"`` therefore takes
the cores that are idle when the command starts (measured from ``/proc/stat`` over a quarter of
a second), at least 1 and at most the CPUs this process may use (its affinity and its cgroup's
CPU quota). Alone it uses every core; next to another busy process it takes what is left.
"""

from __future__ import annotations

import math
import os
import resource
import time

import torch

AUTO = "auto"


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs, from the first line of /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return values[3] + values[4], sum(values)


def idle_cpus(window_s: float = 0.25) -> float | None:
    """How many of the machine's CPUs were idle over the next ``window_s`` seconds (None where
    /proc/stat cannot be read)."""
    a = _cpu_times()
    if a is None:
        return None
    time.sleep(window_s)
    b = _cpu_times()
    if b is None or b[1] <= a[1]:
        return None
    return (b[0] - a[0]) / (b[1] - a[1]) * (os.cpu_count() or 1)


def auto_threads() -> int:
    """The ``"auto"`` thread count: the idle cores (rounded), between 1 and :func:`usable_cpus`."""
    n = usable_cpus()
    if n <= 1:
        return 1
    idle = idle_cpus()
    if idle is None:
        return n
    return int(min(n, max(1, math.floor(idle + 0.5))))


def set_threads(threads: int | str | None = AUTO) -> int:
    """Set torch's CPU threads (``torch.set_num_threads``): a number, or ``"auto"`` (see the module);
    None leaves torch's own default. Returns the number in use."""
    if threads is None:
        return torch.get_num_threads()
    if isinstance(threads, str):
        if threads.strip().lower() != AUTO:
            raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}")
        n = auto_threads()
    else:
        n = int(threads)
        if n < 1:
            raise ValueError(f"threads must be a positive integer or 'auto', got {threads!r}")
    torch.set_num_threads(n)
    return n


def _own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class ThreadGovernor:
    """Keeps the thread count right while a long job runs: every ``every_s`` seconds it measures how
    many CPUs *other* processes kept busy (all busy time in ``/proc/stat`` minus this process's own
    CPU time) and sets torch's threads to the CPUs left, at least 1. A job started alone drops to
    one thread when a second job starts, and goes back up when it ends. ``check`` is cheap (two
    small reads); call it often."""

    def __init__(self, every_s: float = 5.0):
        self.every_s = float(every_s)
        self.usable = usable_cpus()
        self._t0 = time.monotonic()
        #: (seconds since the start, threads): the count at the start, then each change
        self.changes: list[tuple[float, int]] = [(0.0, torch.get_num_threads())]
        self._mark()

    def _mark(self) -> None:
        self._last = (time.monotonic(), _cpu_times(), _own_cpu_seconds())

    def check(self) -> int:
        """Re-measure when ``every_s`` has passed since the last measurement; returns the threads in use."""
        now = time.monotonic()
        t, cpu, own = self._last
        if now - t < self.every_s or self.usable <= 1:
            return torch.get_num_threads()
        cpu_now, own_now = _cpu_times(), _own_cpu_seconds()
        self._last = (now, cpu_now, own_now)
        if cpu is None or cpu_now is None or cpu_now[1] <= cpu[1]:
            return torch.get_num_threads()
        n_cpu = os.cpu_count() or 1
        busy_all = (1.0 - (cpu_now[0] - cpu[0]) / (cpu_now[1] - cpu[1])) * n_cpu  # CPUs busy, all processes
        others = max(0.0, busy_all - (own_now - own) / (now - t))
        want = int(min(self.usable, max(1, math.floor(self.usable - others + 0.5))))
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
            self.changes.append((round(now - self._t0, 1), want))
        return want
