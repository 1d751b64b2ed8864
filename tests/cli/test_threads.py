"""The CLI's CPU thread count: --threads, else OMP_NUM_THREADS, else the cores this process may run on.

Why a default matters (measured on the 2-core machine, other processes competing): see fastddpm/cli/threads.py.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli.test_cli import REPO_ROOT

PRINT_THREADS = (
    "import os, torch; from fastddpm.cli.threads import use_threads; n = use_threads(None); "
    "print(n, torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'])"
)


def test_a_fresh_process_uses_every_core_it_may_run_on_and_passive_waits():
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
    cores = len(os.sched_getaffinity(0))
    assert result.stdout.split() == [str(cores), str(cores), "PASSIVE"]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity (Linux)")
def test_default_follows_a_narrower_affinity_mask(monkeypatch):
    from fastddpm.cli.threads import default_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})  # what `taskset -c K` does
    try:
        assert default_threads() == 1
    finally:
        os.sched_setaffinity(0, cores)
    assert default_threads() == len(cores)


def test_omp_num_threads_and_a_chosen_wait_policy_are_kept(monkeypatch):
    import torch

    from fastddpm.cli.threads import use_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    before = torch.get_num_threads()
    try:
        assert use_threads(None) == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    from fastddpm.cli.threads import default_threads

    assert default_threads() == len(os.sched_getaffinity(0))


def test_threads_option_sets_torch_threads(monkeypatch):
    import torch

    from fastddpm.cli.threads import use_threads

    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert use_threads(2) == 2 and torch.get_num_threads() == 2
        assert use_threads(None) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
