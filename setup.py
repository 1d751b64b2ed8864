"""Builds fastddpm and its extension fastddpm._C.

The extension's C++ CPU kernels are always built; its CUDA kernels when torch has CUDA, nvcc is found and
either a GPU is visible or TORCH_CUDA_ARCH_LIST names the architectures to build for (FASTDDPM_CUDA=0/1
overrides). Without torch at build time, or with FASTDDPM_NO_EXT=1, the package installs without the
extension and runs on its Triton and torch backends. Objects are kept under build/ (one folder per build
configuration), so a reinstall recompiles only what changed.
"""

import glob
import hashlib
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
        # FASTDDPM_CUDA=1 forces the CUDA kernels (CI: a CUDA compile error must fail the build).
        return override == "1"
    import torch

    if torch.version.cuda is None:
        _warn("torch has no CUDA: building the CPU kernels only")
        return False
    # Compiling the CUDA kernels for sm_80 and sm_90 took most of an 8.5-minute first install on a 2-core
    # machine without a GPU, for kernels that machine cannot run.
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        _warn(
            "no GPU visible: building the CPU kernels only "
            "(FASTDDPM_CUDA=1 or TORCH_CUDA_ARCH_LIST=... builds the CUDA kernels too)"
        )
        return False
    if (
        cpp_extension.CUDA_HOME is None
        or shutil.which(os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")) is None
    ):
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
            if os.path.isdir(candidate) and candidate not in dirs:
                dirs.append(candidate)
    return dirs


# The instruction sets the CPU kernels can be compiled for, widest first: (name, /proc/cpuinfo flags needed,
# compiler flags). The flags are torch's own for its AVX512 and AVX2 kernels.
_CPU_VECTOR_SETS = (
    (
        "avx512",
        {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"},
        ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-DCPU_CAPABILITY_AVX512"],
    ),
    ("avx2", {"avx2", "fma", "f16c"}, ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"]),
)


def _cpu_vector_flags() -> list[str]:
    """The widest vector instruction set of the build machine for the CPU kernels' at::vec code.

    at::vec uses 512- or 256-bit registers only when CPU_CAPABILITY_AVX512 / _AVX2 is defined and the compiler
    may emit those instructions; otherwise Vectorized<float> is a plain array. Measured on the 2-core CI
    machine (single thread, group_norm + SiLU at (1, 128, 32, 32)): the AVX2 build took 203 us where torch's
    AVX-512 kernels took 131 us. The extension is built where it runs (pip install from source), so the
    build machine's flags are the ones that matter; FASTDDPM_CPU_VEC=avx512|avx2|none overrides (none: a
    portable binary). fastddpm._C.cpu_capability records the choice, and backend_ext refuses the CPU kernels
    on a machine that lacks it. Only CPU_CAPABILITY_<SET>, not CPU_CAPABILITY: the vec headers then live in
    their own inline namespace instead of sharing torch's at::vec::AVX2 / AVX512 symbols.
    """
    wanted = os.environ.get("FASTDDPM_CPU_VEC", "").strip().lower()
    if wanted == "none":
        return []
    for name, _, flags in _CPU_VECTOR_SETS:
        if wanted == name:
            return flags
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu_flags = set(
                next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
            )
    except OSError:
        cpu_flags = set()
    for _, needed, flags in _CPU_VECTOR_SETS:
        if needed <= cpu_flags:
            return flags
    return []


def _set_cuda_home() -> None:
    """Point CUDA_HOME at a real toolkit folder before torch guesses it.

    torch takes the folder above the first `nvcc` on PATH; where that nvcc is a wrapper script (this
    machine's /usr/local/bin/nvcc execs /usr/local/cuda-13.0/bin/nvcc) the guess is /usr/local, which has
    no lib64/libcudart, and the link fails. A toolkit folder with both bin/nvcc and lib64 wins.
    """
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    for candidate in ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True):
        if os.path.isfile(os.path.join(candidate, "bin", "nvcc")) and os.path.isdir(
            os.path.join(candidate, "lib64")
        ):
            os.environ["CUDA_HOME"] = candidate
            return


def _extensions():
    if os.environ.get("FASTDDPM_NO_EXT") == "1":
        return [], {}
    _set_cuda_home()
    try:
        from torch.utils import cpp_extension
    except ImportError:
        _warn("torch is not importable at build time: installing without the extension")
        return [], {}
    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not cpp_sources:
        return [], {}
    os.environ.setdefault("MAX_JOBS", _max_jobs_from_memory())
    # No -std flag: torch.utils.cpp_extension adds the standard torch's headers need (C++20 for torch 2.14;
    # an explicit -std=c++17 after it breaks the build).
    # -fopenmp: at::parallel_for is a header template that runs serially unless _OPENMP is defined
    # (torch's pip wheels use OpenMP; measured: the CPU group_norm ran on one of 2 cores without it).
    # -g0 drops the -g that Python's build flags add: smaller objects, faster compiles.
    # The false positives gcc 12 prints for its own AVX-512 intrinsics and torch's clang pragmas.
    quiet = ["-Wno-unknown-pragmas", "-Wno-maybe-uninitialized"]
    cxx_flags = ["-O3", "-g0", "-fopenmp"] + quiet + _cpu_vector_flags()
    link_flags = ["-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    # Headers and this file: a change to them rebuilds the library (setuptools compares only these dates).
    depends = sorted(glob.glob(os.path.join("csrc", "*.h")) + glob.glob(os.path.join("csrc", "*.cuh")))
    depends.append("setup.py")
    with_cuda = _cuda_wanted(cpp_extension)
    if with_cuda:
        import torch

        if not torch.cuda.is_available():  # with a GPU, torch compiles for the visible GPUs' architectures
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        sources = cpp_sources + sorted(glob.glob(os.path.join("csrc", "*.cu")))
        extension = cpp_extension.CUDAExtension(
            "fastddpm._C",
            sources,
            depends=depends,
            include_dirs=include_dirs + _nvidia_include_dirs(),
            define_macros=[("FASTDDPM_WITH_CUDA", "1")],
            extra_link_args=link_flags,
            extra_compile_args={
                "cxx": cxx_flags,
                # No --use_fast_math: the kernels must match reference.py at float32 tolerances (1e-5), and
                # the approximate exp/division it enables are not needed for bandwidth-bound kernels.
                # -lineinfo lets compute-sanitizer name source lines.
                "nvcc": ["-O3", "-lineinfo"],
            },
        )
    else:
        extension = cpp_extension.CppExtension(
            "fastddpm._C",
            cpp_sources,
            depends=depends,
            include_dirs=include_dirs,
            extra_link_args=link_flags,
            extra_compile_args={"cxx": cxx_flags},
        )
    configuration = [with_cuda, os.environ.get("TORCH_CUDA_ARCH_LIST"), cxx_flags, sys.version]
    configuration.append(__import__("torch").__version__)
    tag = ("cuda" if with_cuda else "cpu") + "-" + hashlib.sha1(repr(configuration).encode()).hexdigest()[:10]
    return [extension], {"build_ext": _kept_build_ext(cpp_extension, tag)}


def _kept_build_ext(cpp_extension, tag: str):
    """torch's BuildExtension (ninja), with its objects in build/temp-<tag> instead of a temporary folder.

    `pip install -e .` hands build_ext a new temporary build_temp and build_lib on every install
    (setuptools' editable_wheel), so each reinstall recompiled every file. Fixed folders, one per build
    configuration (CUDA or not, architectures, flags, Python, torch), let ninja recompile only what changed,
    and setuptools skips the link when the library is newer than its sources, headers and setup.py.
    """
    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class KeptBuildExtension(base):
        def finalize_options(self):
            super().finalize_options()
            self.build_temp = os.path.join(ROOT, "build", f"temp-{tag}")
            # Editable installs and build_ext --inplace copy the library into fastddpm/ from build_lib; a
            # wheel build keeps build's own build_lib, which install copies from.
            if self.inplace:
                self.build_lib = os.path.join(ROOT, "build", f"lib-{tag}")

    return KeptBuildExtension


ext_modules, cmdclass = _extensions()

setup(
    packages=find_packages(include=["fastddpm", "fastddpm.*"]) + ["fastddpm.kernels"],
    package_dir={"fastddpm.kernels": "kernels"},
    package_data={"fastddpm": ["default_model/*", "default_model/**/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
