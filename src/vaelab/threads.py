"""How many threads torch computes with, on a CPU that other jobs may share.

torch's default is one intra-op thread per core, and its OpenMP (libgomp) threads spin for
~300,000 iterations while they wait for each other. When another process keeps one of those
cores busy, every parallel region waits for the thread that shares its core with it, while the
others spin away their time slices: a small MLP step then runs 10-40x slower than on one thread.
Two things keep training fast on a busy and on a quiet machine:

- with ``threads: auto`` (the default), :class:`ThreadPolicy` gives this process the usable
  cores (affinity and cgroup quota) divided by the training processes on the node, less the
  cores other processes kept busy, and re-checks that every ``every_n_seconds`` of training,
  so a job starting or stopping next to the run is followed (one core busy: one thread);
- the entry points set ``GOMP_SPINCOUNT=10000`` before torch loads (unless the user set it or
  ``OMP_WAIT_POLICY``): waiting threads spin a few microseconds, then sleep. On a quiet 2-core
  CPU that is as fast as the default spin (``OMP_WAIT_POLICY=PASSIVE`` gives up nearly all of
  the second thread's gain there); when a neighbour appears it bounds the loss until the next
  re-check.

An explicit ``threads: N`` or a user's ``OMP_NUM_THREADS`` fixes the count and turns the
re-checks off. :func:`choose_threads` and the /proc readers are plain functions, so tests feed
them fake numbers.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from vaelab.errors import UserError

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
START_SAMPLE_SECONDS = 0.25  # how long the first decision watches the machine


# -- the decision ---------------------------------------------------------------------
def choose_threads(cpus: int, procs_on_node: int, busy_elsewhere: float) -> int:
    """Intra-op threads for one of ``procs_on_node`` processes sharing ``cpus`` usable cores
    while other processes keep ``busy_elsewhere`` cores busy: the fair share of the cores,
    capped by the share of the cores left free (rounded, at least one)."""
    procs = max(1, procs_on_node)
    share = max(1, cpus // procs)
    free = max(0.0, cpus - busy_elsewhere)
    return max(1, min(share, math.floor(free / procs + 0.5)))


# -- what the machine tells us ---------------------------------------------------------
def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cpu_max.read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, math.ceil(int(quota) / int(period))))


def busy_jiffies(stat_text: str, cpus: set[int]) -> int:
    """Non-idle clock ticks of ``cpus`` since boot, from the text of /proc/stat."""
    total = 0
    for line in stat_text.splitlines():
        name, *fields = line.split()
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, fields[:8])
        total += user + nice + system + irq + softirq + steal  # guest time is inside user
    return total


@dataclass
class CpuSample:
    """A point in time: busy seconds of our cores (all processes) and of this process."""

    wall: float
    busy: float
    own: float


def sample_cpu(cpus: set[int], stat: Path = PROC_STAT) -> CpuSample:
    ticks = os.sysconf("SC_CLK_TCK")
    return CpuSample(time.monotonic(), busy_jiffies(stat.read_text(), cpus) / ticks, time.process_time())


def busy_elsewhere(before: CpuSample, after: CpuSample, procs_on_node: int) -> float:
    """Cores kept busy between two samples by processes other than this run's.

    The other processes of this run (DDP ranks on the node) are assumed to use as much as this
    one, so they do not count as load from elsewhere.
    """
    wall = after.wall - before.wall
    if wall <= 0:
        return 0.0
    ours = (after.own - before.own) * max(1, procs_on_node)
    return max(0.0, (after.busy - before.busy - ours) / wall)


# -- the setting ------------------------------------------------------------------------
def fixed_threads(setting, environ=os.environ) -> tuple[int | None, str]:
    """(threads, why) when the count is fixed by the config or OMP_NUM_THREADS; (None, "") for auto."""
    if setting != "auto":
        if isinstance(setting, bool) or not isinstance(setting, int) or setting < 1:
            raise UserError(
                f"threads={setting!r} is not valid: use auto (follow the cores free on this machine) "
                "or a whole number > 0 of torch threads per process, e.g. threads=2."
            )
        return setting, f"threads={setting}"
    env = environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env), f"OMP_NUM_THREADS={env}"
    return None, ""


def wait_policy(environ=os.environ) -> str:
    """How waiting OpenMP threads behave, for the log line."""
    keys = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    return ", ".join(f"{k}={environ[k]}" for k in keys if k in environ) or "OpenMP's default spin"


def set_threads(
    fixed: tuple[int | None, str], procs_on_node: int = 1, every_n_seconds: float | None = None
) -> tuple[str, CpuSample | None]:
    """Set torch's threads once: ``fixed`` (from :func:`fixed_threads`) or auto; (the line to log,
    the sample the auto decision ended on)."""
    fixed, reason = fixed
    if fixed is not None:
        torch.set_num_threads(fixed)
        return f"torch threads: {fixed} ({reason}; {wait_policy()})", None
    cpus = usable_cpu_set()
    before = sample_cpu(cpus)
    time.sleep(START_SAMPLE_SECONDS)
    after = sample_cpu(cpus)
    elsewhere = busy_elsewhere(before, after, procs_on_node)
    n = choose_threads(len(cpus), procs_on_node, elsewhere)
    torch.set_num_threads(n)
    again = f"re-checked every {every_n_seconds:g} s" if every_n_seconds else "set once"
    return (
        f"torch threads: {n} (auto: {len(cpus)} usable CPUs, {procs_on_node} process(es) of this run on "
        f"the node, {elsewhere:.1f} CPUs busy elsewhere; {again}; {wait_policy()})",
        after,
    )


def set_threads_once(setting) -> None:
    """For one-shot work (src/eval.py): decide once at start, and say so."""
    log.info(set_threads(fixed_threads(setting))[0])


def usable_cpu_set() -> set[int]:
    return set(sorted(os.sched_getaffinity(0))[: usable_cpus()])


class ThreadPolicy(L.Callback):
    """Sets torch's intra-op threads at setup and, with ``threads: auto``, every
    ``every_n_seconds`` of training; one log line at start and one per change."""

    def __init__(self, threads="auto", every_n_seconds: float = 5.0):
        # read now, at config time: a bad value fails before the run starts, and OMP_NUM_THREADS is
        # still the user's (Lightning's DDP sets it to cores // processes when it starts a run)
        self.fixed = fixed_threads(threads)
        self.every_n_seconds = every_n_seconds
        self.procs, self.started = 1, False
        self.last: CpuSample | None = None  # where the next re-check's window starts (auto only)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.started:
            return  # the test after fit keeps what training found
        self.started = True
        self.procs = max(1, trainer.num_devices)  # processes of this run on this node
        message, self.last = set_threads(self.fixed, self.procs, self.every_n_seconds)
        if trainer.is_global_zero:
            log.info(message)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.last is None or time.monotonic() - self.last.wall < self.every_n_seconds:
            return
        cpus = usable_cpu_set()
        now = sample_cpu(cpus)
        elsewhere = busy_elsewhere(self.last, now, self.procs)
        self.last, old = now, torch.get_num_threads()
        n = choose_threads(len(cpus), self.procs, elsewhere)
        if n != old:
            torch.set_num_threads(n)
            if trainer.is_global_zero:
                log.info("torch threads: %d -> %d (%.1f CPUs busy elsewhere)", old, n, elsewhere)
