"""How busy the machine was while hwbench measured: the CPU time other processes took, the time
the hypervisor stole, and the load average, read from ``/proc`` (Linux; elsewhere nothing is
recorded and nothing is judged).

A window is two snapshots: all CPUs' busy and steal jiffies (``/proc/stat``) and this process's
own CPU time (``os.times``), around the measurement. Other processes' share is the machine's
busy CPU time less this process's, in cores, per wall second. A window is ``busy`` when others
took at least ``BUSY_CORES`` cores on average or the hypervisor stole at least ``BUSY_STEAL``
of the CPU time: latencies measured then are another machine's (issue 24: a quick profile taken
while another job used both cores measured 3x slower and became the machine's profile).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

BUSY_CORES = 0.5  # others' CPU time, in cores on average over the window
BUSY_STEAL = 0.10  # the share of all CPU time the hypervisor stole


@dataclass(frozen=True)
class Snapshot:
    wall_s: float
    busy_s: float  # all CPUs: user + nice + system + irq + softirq, seconds
    steal_s: float
    total_s: float  # all CPUs, every state, seconds
    own_s: float  # this process's user + system CPU time
    cpus: int


def read_proc_stat(path: str = "/proc/stat") -> list[int] | None:
    """The aggregate ``cpu`` line's jiffies (user, nice, system, idle, iowait, irq, softirq,
    steal, ...), or None where there is no such file."""
    try:
        with open(path, encoding="ascii") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    return [int(v) for v in first[1:]]


def snapshot(read: Callable[[], list[int] | None] = read_proc_stat,
             clock: Callable[[], float] = time.monotonic,
             own: Callable[[], float] | None = None) -> Snapshot | None:
    """Now, or None where ``/proc/stat`` cannot be read."""
    j = read()
    if j is None or len(j) < 8:
        return None
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = j[:8]
    t = os.times()
    return Snapshot(wall_s=clock(), busy_s=(user + nice + system + irq + softirq) / hz,
                    steal_s=steal / hz, total_s=sum(j[:8]) / hz,
                    own_s=own() if own else t.user + t.system, cpus=os.cpu_count() or 1)


def window(a: Snapshot | None, b: Snapshot | None) -> dict | None:
    """What happened between snapshots ``a`` and ``b``: ``others_cores`` (other processes' CPU
    time per wall second, in cores), ``steal_share``, the 1-minute load average at the end, and
    ``busy``; None without both snapshots."""
    if a is None or b is None or b.wall_s <= a.wall_s:
        return None
    wall = b.wall_s - a.wall_s
    others = max(0.0, (b.busy_s - a.busy_s) - (b.own_s - a.own_s)) / wall
    total = b.total_s - a.total_s
    steal = (b.steal_s - a.steal_s) / total if total > 0 else 0.0
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = None
    busy = others >= BUSY_CORES or steal >= BUSY_STEAL
    return {"wall_s": wall, "others_cores": others, "steal_share": steal, "loadavg_1m": load1,
            "cpus": b.cpus, "busy": busy,
            "rule": f"busy: other processes took >= {BUSY_CORES:g} cores on average, or the "
                    f"hypervisor stole >= {BUSY_STEAL:.0%} of the CPU time"}


def describe(load: dict | None) -> str:
    """One line on a busy window ('' when it was not busy or not recorded)."""
    if not load or not load.get("busy"):
        return ""
    return (f"the machine was busy while this was measured: other processes took "
            f"{load['others_cores']:.2f} cores on average, steal {load['steal_share']:.0%} "
            "(its latencies are not this machine's alone)")
