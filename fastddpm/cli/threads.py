"""How many CPU threads torch uses for a command, and how its idle OpenMP threads wait.

torch runs each CPU op on a team of OpenMP threads, and every op waits for the slowest thread of the team.
When other processes hold some of the cores, the team's threads there run only part of the time, and by
default GNU OpenMP's waiting threads busy-wait, burning the cores the late threads need. Measured on the
2-core CI machine, `fastddpm sample --num 32 --steps 10 --batch-size 8` (the README's note has the table):
with one busy process, 10.9 s on 2 threads against 0.93 s on 1; with the machine shared by several
builds and test runs (load average ~8), 49-53 s on 2 threads, 2.1-3.0 s on 1, and 4.8 s on 2 threads that
wait passively. Hence two things:

- the default thread count is the cores this process may run on (its affinity mask) less the processes
  running elsewhere on the machine right now, at least 1;
- OMP_WAIT_POLICY=PASSIVE (unless the user set a policy): a waiting thread sleeps at once, so load that
  arrives after the start costs a fraction, not a multiple.

--threads N, or OMP_NUM_THREADS, overrides the count.
"""

from __future__ import annotations

import os
import statistics
import time

_LOAD_SAMPLES = 5  # /proc/stat's procs_running is an instant count: the median of a few over ~40 ms
_LOAD_INTERVAL_S = 0.01


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: taskset, cgroups' cpusets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def running_elsewhere() -> int:
    """How many threads other than this one are running or ready to run on the machine now (0 if unknown).

    An instant count (procs_running in /proc/stat), not the load average: a minute-long average would still
    count the previous fastddpm run for a minute after it ended and halve the next one's threads.
    """
    counts = []
    for sample in range(_LOAD_SAMPLES):
        try:
            with open("/proc/stat") as stat:
                line = next(line for line in stat if line.startswith("procs_running"))
        except (OSError, StopIteration):
            return 0
        counts.append(int(line.split()[1]) - 1)  # this process is running while it reads
        if sample + 1 < _LOAD_SAMPLES:
            time.sleep(_LOAD_INTERVAL_S)
    return max(0, round(statistics.median(counts)))


def threads_for(allowed: int, online: int, busy_elsewhere: int) -> int:
    """The cores of the ``allowed`` ones that are likely free: at most the machine's ``online`` cores less
    those ``busy_elsewhere``, at least 1."""
    return max(1, min(allowed, online - busy_elsewhere))


def default_threads() -> int:
    """OMP_NUM_THREADS when it is set (its first entry), else the allowed cores that other work leaves free."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return threads_for(available_cores(), os.cpu_count() or 1, running_elsewhere())


def use_threads(requested: int | None) -> int:
    """Set torch's CPU thread count (``requested``, else default_threads()); returns it.

    Call before torch is first imported, so that its OpenMP runtime, which reads OMP_WAIT_POLICY once when it
    starts, sees PASSIVE (unless the user chose a policy).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    count = requested if requested is not None else default_threads()
    torch.set_num_threads(count)
    return count
