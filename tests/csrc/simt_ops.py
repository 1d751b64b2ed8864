"""Builds and loads csrc/simt/simt_ops.cpp: the CUDA kernels compiled for the host through the SIMT emulation.

FASTDDPM_SIMT_SANITIZE=address|thread builds it under AddressSanitizer or ThreadSanitizer (its own build
folder), for a process that has the sanitizer's runtime preloaded (.ci/run does:
LD_PRELOAD=$(gcc -print-file-name=libasan.so), see .ci/simt_sanitize.sh). The build is cached in build/fastddpm_simt[_<sanitizer>]-<python>-<torch>/: ninja
recompiles only when a source changed (the first build takes about a minute).
"""

import os
import sys

import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
SANITIZERS = {
    "": ["-O2"],
    # -O1 keeps the reports' stack traces readable; no frame omission so that they are complete.
    "address": ["-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer"],
    "thread": ["-O1", "-g", "-fsanitize=thread"],
}
RUNTIMES = {"address": "libasan", "thread": "libtsan"}

_loaded: str | None = None


def sanitizer() -> str:
    value = os.environ.get("FASTDDPM_SIMT_SANITIZE", "")
    if value not in SANITIZERS:
        raise ValueError(f"FASTDDPM_SIMT_SANITIZE={value!r} is not one of '', 'address', 'thread'")
    return value


def _runtime_loaded(library: str) -> bool:
    with open("/proc/self/maps") as maps:
        return any(library in line for line in maps)


def load():
    """torch.ops.fastddpm_simt, built for this process's sanitizer setting."""
    global _loaded
    variant = sanitizer()
    if _loaded is None:
        if variant and not _runtime_loaded(RUNTIMES[variant]):
            raise RuntimeError(
                f"FASTDDPM_SIMT_SANITIZE={variant} needs the sanitizer runtime preloaded: "
                f"LD_PRELOAD=$(gcc -print-file-name={RUNTIMES[variant]}.so) python -m pytest -m simt"
            )
        name = "fastddpm_simt" + (f"_{variant}" if variant else "")
        # One folder per interpreter and torch: their headers and ABI differ.
        tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__.replace('+', '_')}"
        build = os.path.join(ROOT, "build", f"{name}-{tag}")
        os.makedirs(build, exist_ok=True)
        flags = SANITIZERS[variant]
        # The compiler and ninja run without the preloaded sanitizer runtime (slower, and noisy under it).
        preload = os.environ.pop("LD_PRELOAD", None)
        try:
            _build(name, build, flags)
        finally:
            if preload is not None:
                os.environ["LD_PRELOAD"] = preload
        _loaded = variant
    return torch.ops.fastddpm_simt


def _build(name: str, build: str, flags: list[str]) -> None:
    cpp_extension.load(
        name=name,
        sources=[os.path.join(CSRC, "simt", "simt_ops.cpp")],
        extra_include_paths=[CSRC],
        extra_cflags=flags + ["-Wno-unknown-pragmas"],
        extra_ldflags=[flag for flag in flags if flag.startswith("-fsanitize")],
        build_directory=build,
        is_python_module=False,
        verbose=False,
    )
