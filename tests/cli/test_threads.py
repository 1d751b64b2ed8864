"""The CLI's CPU thread count: --threads, else OMP_NUM_THREADS, else the allowed cores that other work leaves
free. Why (measured on the 2-core machine, other processes competing): fastddpm/cli/threads.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fastddpm.cli import threads
from tests.cli.test_cli import REPO_ROOT

PRINT_THREADS = (
    "import os, torch; from fastddpm.cli.threads import use_threads; n = use_threads(None); "
    "print(n, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])"
)


def test_a_fresh_process_sets_torch_threads_and_passive_waits():
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    environment["PYTHONPATH"] = REPO_ROOT + os.pathsep + environment.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-c", PRINT_THREADS],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
        check=True,
    )
    chosen, torch_threads, policy = result.stdout.split()
    assert (
        chosen == torch_threads and 1 <= int(chosen) <= len(os.sched_getaffinity(0)) and policy == "PASSIVE"
    )


def test_the_cores_other_work_keeps_busy_are_left_to_it():
    assert threads.threads_for(allowed=2, online=2, busy_elsewhere=0) == 2
    assert (
        threads.threads_for(allowed=2, online=2, busy_elsewhere=1) == 1
    )  # one busy loop on a 2-core machine
    assert threads.threads_for(allowed=2, online=2, busy_elsewhere=8) == 1  # never fewer than one
    # A container allowed 4 of a host's 64 cores, 40 of them busy: its 4 are still likely free.
    assert threads.threads_for(allowed=4, online=64, busy_elsewhere=40) == 4
    assert threads.threads_for(allowed=16, online=16, busy_elsewhere=3) == 13


def test_running_elsewhere_counts_busy_processes():
    if not os.path.exists("/proc/stat"):
        pytest.skip("needs /proc/stat (Linux)")
    assert threads.running_elsewhere() >= 0
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        time.sleep(0.5)  # past the interpreters' start-up
        # Two spinning processes are running whatever else the machine does; the instant count sees them.
        assert threads.running_elsewhere() >= 2
    finally:
        for process in busy:
            process.kill()
            process.wait()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_default_follows_the_affinity_mask_and_the_load(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "running_elsewhere", lambda: 0)
    cores = os.sched_getaffinity(0)
    assert threads.default_threads() == min(len(cores), os.cpu_count())
    os.sched_setaffinity(0, {min(cores)})  # what `taskset -c K` does
    try:
        assert threads.default_threads() == 1
    finally:
        os.sched_setaffinity(0, cores)
    monkeypatch.setattr(threads, "running_elsewhere", lambda: os.cpu_count() - 1)
    assert threads.default_threads() == 1


def test_omp_num_threads_and_a_chosen_wait_policy_are_kept(monkeypatch):
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    before = torch.get_num_threads()
    try:
        assert threads.use_threads(None) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    monkeypatch.setattr(threads, "running_elsewhere", lambda: 0)
    assert threads.default_threads() == len(os.sched_getaffinity(0))


def test_threads_option_sets_torch_threads(monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert threads.use_threads(2) == 2 and torch.get_num_threads() == 2
        assert threads.use_threads(None) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
