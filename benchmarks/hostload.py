"""How busy the rest of the machine was during a measurement (shared by the benchmark scripts).

The host is shared and its speed moves within minutes, so every timed run records the CPU
time that *other* processes used while it ran: the machine's busy time from ``/proc/stat``
minus this process's (and its children's) CPU time, as a share of the machine
(``wall x CPUs``). A run above a threshold is marked disturbed and measured again. What the
machine is (processor, CPUs, load average) is ``_common.machine``'s.
"""

import os
import resource
import time

__all__ = ["busy_seconds", "own_seconds", "Meter", "DISTURBED"]

#: Others' share of the machine above which a measurement counts as disturbed.
DISTURBED = 0.10


def busy_seconds():
    """CPU seconds all processes have spent busy since boot (``/proc/stat``), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_seconds():
    """CPU seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


class Meter:
    """A block's wall and CPU time, and the share of the machine others took meanwhile
    (``others``, None where /proc/stat cannot be read); ``disturbed`` above :data:`DISTURBED`."""

    def __init__(self, threshold=DISTURBED):
        self.threshold = threshold

    def __enter__(self):
        self.b0, self.c0, self.t0 = busy_seconds(), own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        self.cpu = own_seconds() - self.c0
        b1 = busy_seconds()
        cores = os.cpu_count() or 1
        self.others = (None if b1 is None or self.b0 is None
                       else max(0.0, (b1 - self.b0) - self.cpu) / (self.wall * cores))

    @property
    def disturbed(self):
        return self.others is not None and self.others > self.threshold
