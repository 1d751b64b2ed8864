"""Builds fastddpm and its extension fastddpm._C.

The extension's C++ CPU kernels are always built; its CUDA kernels when torch has CUDA and nvcc is found
(FASTDDPM_CUDA=0/1 overrides). Without torch at build time, or with FASTDDPM_NO_EXT=1, the package
installs without the extension and runs on its Triton and torch backends.
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _warn(message: str) -> None:
    print(f"fastddpm setup: {message}", file=sys.stderr)


def _cuda_wanted(cpp_extension) -> bool:
    override = os.environ.get("FASTDDPM_CUDA")
    if override is not None:
        return override == "1"
    import torch

    if torch.version.cuda is None:
        _warn("torch has no CUDA: building the CPU kernels only")
        return False
    if cpp_extension.CUDA_HOME is None or shutil.which(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) is None:
        _warn("nvcc not found (set CUDA_HOME): building the CPU kernels only")
        return False
    return True


def _max_jobs_from_memory() -> str:
    # nvcc on a .cu file with torch headers peaks near 2 GB; leave the rest of the machine alone.
    try:
        with open("/proc/meminfo") as meminfo:
            free_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemAvailable"))
        return str(max(1, min(os.cpu_count() or 1, free_kb // (2 * 1024 * 1024))))
    except (OSError, StopIteration):
        return "1"


def _nvidia_include_dirs() -> list[str]:
    # torch's CUDA headers include cuSPARSE/cuBLAS headers that ship in the pip package nvidia/cu13/include.
    dirs = []
    for path in sys.path:
        for candidate in glob.glob(os.path.join(path, "nvidia", "cu1*", "include")):
            if os.path.isdir(candidate):
                dirs.append(candidate)
    return dirs


def _extensions():
    if os.environ.get("FASTDDPM_NO_EXT") == "1":
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:
        _warn("torch is not importable at build time: installing without the extension")
        return [], {}
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not cpp_sources:
        return [], {}
    os.environ.setdefault("MAX_JOBS", _max_jobs_from_memory())
    cxx_flags = ["-O3", "-std=c++17"]
    if _cuda_wanted(cpp_extension):
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources = cpp_sources + sorted(glob.glob(os.path.join("csrc", "*.cu")))
        extension = cpp_extension.CUDAExtension(
            "fastddpm._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")] + _nvidia_include_dirs(),
            define_macros=[("FASTDDPM_WITH_CUDA", "1")],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"],
            },
        )
    else:
        extension = cpp_extension.CppExtension(
            "fastddpm._C",
            cpp_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            extra_compile_args={"cxx": cxx_flags},
        )
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=True)
    return [extension], {"build_ext": build_ext}


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["fastddpm", "fastddpm.*"]) + ["fastddpm.kernels"],
    package_dir={"fastddpm.kernels": "kernels"},
    package_data={"fastddpm": ["default_model/*", "default_model/**/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
