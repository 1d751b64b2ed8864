"""backend_ext.cuda_attention_speed_gate: the CUDA attention kernel serves "auto" only where it was measured
faster than SDPA. The timing itself needs a GPU; here it is replaced by fixed numbers, CPU tensors stand in
for CUDA ones, and what is checked is the decision, its cache and the closed gate during capture."""

import pytest
import torch

from fastddpm.ops import backend_ext


@pytest.fixture(autouse=True)
def fresh_verdicts(monkeypatch):
    monkeypatch.setattr(backend_ext, "_cuda_attention_verdicts", {})


def qkv(length=64):
    return (torch.zeros(1, 1, length, 32) for _ in range(3))


def timings(monkeypatch, ext_s, sdpa_s):
    calls = []

    def measure(q, k, v, scale):
        calls.append(tuple(q.shape))
        return ext_s, sdpa_s

    monkeypatch.setattr(backend_ext, "_measure_attention", measure)
    return calls


def test_slower_kernel_is_refused_with_the_numbers(monkeypatch):
    timings(monkeypatch, ext_s=300e-6, sdpa_s=100e-6)
    reason = backend_ext.cuda_attention_speed_gate(*qkv(), None)
    assert reason and "SDPA measured faster" in reason and "100 us vs 300 us" in reason


def test_a_tie_is_refused_and_a_clear_win_served(monkeypatch):
    timings(monkeypatch, ext_s=100e-6, sdpa_s=104e-6)  # within the 5% margin
    assert backend_ext.cuda_attention_speed_gate(*qkv(64), None)
    timings(monkeypatch, ext_s=100e-6, sdpa_s=150e-6)
    assert backend_ext.cuda_attention_speed_gate(*qkv(128), None) is None


def test_each_shape_is_measured_once(monkeypatch):
    calls = timings(monkeypatch, ext_s=100e-6, sdpa_s=150e-6)
    for _ in range(3):
        assert backend_ext.cuda_attention_speed_gate(*qkv(64), None) is None
    backend_ext.cuda_attention_speed_gate(*qkv(128), None)
    assert calls == [(1, 1, 64, 32), (1, 1, 128, 32)]


def test_a_kernel_error_during_timing_closes_the_gate(monkeypatch):
    def broken(q, k, v, scale):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(backend_ext, "_measure_attention", broken)
    reason = backend_ext.cuda_attention_speed_gate(*qkv(), None)
    assert reason and "illegal memory access" in reason


def test_no_measurement_while_compiling_and_the_gate_stays_closed(monkeypatch):
    calls = timings(monkeypatch, ext_s=100e-6, sdpa_s=150e-6)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert "not yet measured" in backend_ext.cuda_attention_speed_gate(*qkv(), None)
    assert calls == []
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert backend_ext.cuda_attention_speed_gate(*qkv(), None) is None  # measured once eager
