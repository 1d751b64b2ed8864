"""Collects end-to-end measurements, pairs fastddpm with each diffusers baseline measured in the same run,
and writes bench/results/<machine>-<date>.json. Only measured numbers are written."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

RESULTS: list[dict] = []
PARITY: list[dict] = []  # fastddpm fp32 images against diffusers fp32 ones, same generator
INTERLEAVED: list[dict] = []  # speed-ups timed round by round alternately (test_interleaved_speedup_...)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def record(**row) -> None:
    RESULTS.append(row)


def record_parity(**row) -> None:
    PARITY.append(row)


def record_interleaved(**row) -> None:
    INTERLEAVED.append(row)


def machine_name() -> str:
    if torch.cuda.is_available():
        return re.sub(r"[^A-Za-z0-9]+", "-", torch.cuda.get_device_name()).strip("-").lower()
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1] for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = torch.get_num_threads()
    return f"cpu-{cores}t-" + re.sub(r"[^A-Za-z0-9]+", "-", cpu).strip("-").lower()


def _versions() -> dict:
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("triton", "diffusers", "fastddpm"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:
            versions[name] = None
    return versions


def _commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[1]
        head = subprocess.check_output(["git", "-C", str(root), "rev-parse", "HEAD"], text=True).strip()
        changed = subprocess.check_output(
            ["git", "-C", str(root), "status", "--porcelain", "-uno"], text=True
        )
        return head + ("+uncommitted-changes" if changed.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def ratios() -> list[dict]:
    """fastddpm's speed-up over each diffusers baseline of the same model, device, batch and steps."""
    out = []
    for ours in (r for r in RESULTS if r["impl"] == "fastddpm"):
        for base in RESULTS:
            same = all(base[k] == ours[k] for k in ("model", "device", "batch", "steps"))
            if same and base["impl"] != "fastddpm":
                out.append(
                    {
                        "model": ours["model"],
                        "device": ours["device"],
                        "batch": ours["batch"],
                        "fastddpm": ours["variant"],
                        "baseline": base["variant"],
                        "speedup": base["ms_per_step"] / ours["ms_per_step"],
                    }
                )
    return out


def write_results() -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    tag = os.environ.get("FASTDDPM_BENCH_TAG", "").strip()  # a partial run keeps the day's main file
    path = RESULTS_DIR / (f"{machine_name()}-{today}" + (f"-{tag}" if tag else "") + ".json")
    document = {
        "machine": machine_name(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
        "date": today,
        "versions": _versions(),
        "commit": _commit(),
        "results": RESULTS,
        "ratios": ratios(),
        "parity_fp32_images": PARITY,
        "interleaved_speedups": INTERLEAVED,
    }
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def format_table() -> str:
    lines = [
        f"{'model':<10} {'device':<6} {'batch':>5} {'variant':<28} {'ms/step':>9} {'img/s*':>9} {'peak MiB':>9}",
    ]
    for r in RESULTS:
        peak = "-" if r.get("peak_mib") is None else f"{r['peak_mib']:.0f}"
        lines.append(
            f"{r['model']:<10} {r['device']:<6} {r['batch']:>5} {r['variant']:<28} "
            f"{r['ms_per_step']:>9.2f} {r['images_per_s_1000_steps']:>9.3g} {peak:>9}"
        )
    lines.append("* images/s for 1000-step sampling, from the measured ms/step")
    for q in ratios():
        lines.append(
            f"  {q['model']} {q['device']} b{q['batch']}: {q['fastddpm']} vs {q['baseline']}: {q['speedup']:.2f}x"
        )
    for q in INTERLEAVED:
        lines.append(
            f"  {q['model']} {q['device']} b{q['batch']}: {q['fastddpm']} vs {q['baseline']}, interleaved "
            f"{q['rounds']} rounds: {q['fastddpm_ms_per_step']:.1f} vs {q['baseline_ms_per_step']:.1f} ms/step, "
            f"{q['speedup']:.2f}x"
        )
    for p in PARITY:
        lines.append(
            f"  {p['model']} {p['device']} b{p['batch']}: fastddpm-fp32 images vs diffusers-fp32 "
            f"(same generator, {p['steps']} steps): max |diff| {p['max_abs_diff']:.2e}"
        )
    return "\n".join(lines)
