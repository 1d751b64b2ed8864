"""How many CPU threads torch uses for a command, and how its idle OpenMP threads wait.

torch runs each CPU op on a team of OpenMP threads. Between ops, GNU OpenMP's threads busy-wait for a while
before they sleep; when another process holds one of the cores, the team's thread there runs only part of
the time, every op waits for it, and the other threads burn their core spinning meanwhile. With one busy
process on the 2-core CI machine, `fastddpm sample --num 32 --steps 10 --batch-size 8` took 10.9 s instead
of 0.46 s (0.93 s with OMP_NUM_THREADS=1). OMP_WAIT_POLICY=PASSIVE makes a waiting thread sleep at once:
it keeps the loaded case near the one-thread time while an idle machine still gets every core (the
measurements are in the README's note and in tests/cli/test_threads.py's docstring).
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its affinity mask: taskset, cgroups' cpusets), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity (macOS)
        return os.cpu_count() or 1


def default_threads() -> int:
    """OMP_NUM_THREADS when it is set (its first entry), else the cores this process may run on."""
    text = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if text.isdigit() and int(text) > 0:
        return int(text)
    return available_cores()


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
