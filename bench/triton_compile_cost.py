"""Count the Triton kernel specialisations the GPU tier launches, and time their cold compile for sm_90.

No GPU is needed. Each stage of bench/gpu_check.sh's GPU tier (`pytest -m gpu` over the same paths) runs
in a child process in which
- torch believes CUDA is there (``torch.cuda.is_available()`` and the few other torch.cuda calls the tests
  make are stood in), so the kernels are defined compiled, not interpreted, and no GPU test skips;
- every test runs under a FakeTensorMode, so its "cuda" tensors carry shapes, dtypes, strides and storage
  offsets but no memory (a 50-million-element input costs nothing);
- the Triton launch (``JITFunction.run``) is replaced by a recorder: it binds the arguments with Triton's
  own binder for an sm_90 target (the same function the JIT uses on a GPU: dtypes, ints equal to 1 as
  constexprs, divisibility by 16 of ints and of data pointers, whose fake addresses keep the storage
  offset) and records the specialisation instead of launching;
- the CUDA graph calls are stood in and tests/tolerances.assert_close does nothing (the outputs are fake),
  so a test body goes on to its next launch. Whatever else reads tensor values ends that test early; the
  JSON lists those tests and how many launches each recorded before it ended.
The parent then compiles every distinct specialisation once with ``triton.compile`` for
GPUTarget("cuda", 90, 32) into an empty Triton cache, one after another (as the tests compile them on the
device), and writes counts and seconds per stage: a specialisation compiles in the first stage that launches
it; later stages (separate processes on the device too) load it from Triton's disk cache.

`batch_size="auto"` (tests/engine) reads CUDA memory: the stand-ins report 141 GiB free and nothing allocated,
so it comes out at MAX_AUTO_BATCH, as it will for the tiny test U-Net on an H200.

Run from the repository root (one job, several minutes on 2 cores; results in bench/results/triton-compile-*):
    python bench/triton_compile_cost.py [--out FILE] [--count-only]
With the device image's versions (Python 3.12, torch 2.11, Triton 3.6; bench/gpu_check.sh's header):
    /tmp/venv312/bin/python bench/triton_compile_cost.py
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The pytest paths of bench/gpu_check.sh's GPU-test stages (keep in step with it).
STAGES = {
    "kernels": ["tests/kernels", "tests/ops", "tests/csrc"],
    "graphed-loop": ["tests/engine"],
    "pipeline": [
        "tests",
        "--ignore=tests/kernels",
        "--ignore=tests/ops",
        "--ignore=tests/csrc",
        "--ignore=tests/engine",
    ],
}
FREE_GIB = 141  # what the stood-in torch.cuda.mem_get_info reports (an H200's memory)


# ----------------------------------------------------------------------------------- child: one stage


def _stand_in_cuda() -> None:
    """The torch.cuda calls the GPU tests and fastddpm make, answered without a device."""
    import torch

    class _Device(contextlib.nullcontext):
        def __init__(self, device=None):
            super().__init__()

    stand_ins = dict(
        is_available=lambda: True,
        device_count=lambda: 1,
        current_device=lambda: 0,
        device=_Device,
        synchronize=lambda *a, **k: None,
        empty_cache=lambda: None,
        reset_peak_memory_stats=lambda *a, **k: None,
        max_memory_allocated=lambda *a, **k: 0,
        memory_allocated=lambda *a, **k: 0,
        mem_get_info=lambda *a, **k: (FREE_GIB * 2**30, FREE_GIB * 2**30),
        is_current_stream_capturing=lambda: False,
        get_device_capability=lambda *a, **k: (9, 0),
    )
    for name, value in stand_ins.items():
        setattr(torch.cuda, name, value)
    from torch._subclasses import fake_tensor

    if hasattr(fake_tensor, "init_gpu_context"):  # torch 2.11 allocates on the device when CUDA "is there"
        fake_tensor.init_gpu_context = lambda device: None


SHADOW_LIMIT = 1 << 16  # elements: host-side tables (schedules, counters) are mirrored on the CPU, images not


def cuda_only_fake_mode():
    """A FakeTensorMode that fakes CUDA tensors only. An op on real CPU tensors alone runs for real, and a
    small CUDA tensor copied from the CPU (a schedule, a step counter, a weight) keeps a real CPU "shadow"
    that ops whose inputs are all shadowed keep up to date: reading it back (.cpu(), .item(), .tolist(), as
    fastddpm's plan building does once per plan) gives the values the GPU would hold. Tensors made on the
    device (empty, arange, noise) and everything computed from them have no shadow, so neither has what a
    kernel writes (the launchers allocate every output with torch.empty*; the recorder runs no kernel)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
    from torch.utils._pytree import tree_leaves, tree_map
    from torch.utils.weak import WeakIdKeyDictionary

    aten = torch.ops.aten

    def is_cuda(value) -> bool:
        return isinstance(value, torch.device | str) and torch.device(value).type == "cuda"

    def _is_cpu(value) -> bool:
        return isinstance(value, torch.device | str) and torch.device(value).type == "cpu"

    class CudaOnlyFakeTensorMode(FakeTensorMode):
        # FakeTensorMode moves small constants to the device when torch.cuda.is_available() (stood in)
        avoid_device_init = property(lambda self: True)

        def __init__(self):
            super().__init__(allow_non_fake_inputs=True)
            self.shadows = WeakIdKeyDictionary()

        def _real(self, value):
            if isinstance(value, FakeTensor):
                return self.shadows[value]
            return torch.device("cpu") if is_cuda(value) else value

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            leaves = tree_leaves((args, kwargs))
            fakes = [leaf for leaf in leaves if isinstance(leaf, FakeTensor)]
            with unset_fake_temporarily():
                if not fakes and not any(is_cuda(leaf) for leaf in leaves):
                    return func(*args, **kwargs)
                shadowed = all(fake in self.shadows for fake in fakes)
                mirror = None
                copies_from_host = func in (aten._to_copy.default, aten.lift_fresh.default) and not fakes
                if (fakes or copies_from_host) and shadowed and all(f.numel() <= SHADOW_LIMIT for f in fakes):
                    try:
                        mirror = func(*tree_map(self._real, args), **tree_map(self._real, kwargs))
                    except Exception:
                        mirror = None
                if mirror is not None and (
                    func is aten._local_scalar_dense.default
                    or (func is aten._to_copy.default and fakes and _is_cpu(kwargs.get("device")))
                ):
                    return mirror  # a value read back on the host, or a CPU copy: the real one
            out = super().__torch_dispatch__(func, types, args, kwargs)
            if mirror is not None:
                for fake, real in zip(tree_leaves(out), tree_leaves(mirror), strict=False):
                    if isinstance(fake, FakeTensor) and isinstance(real, torch.Tensor):
                        if real.numel() <= SHADOW_LIMIT:
                            self.shadows[fake] = real
            else:  # what this op wrote is no longer known
                for index, argument in enumerate(func._schema.arguments):
                    if argument.alias_info is not None and argument.alias_info.is_write:
                        value = args[index] if index < len(args) else kwargs.get(argument.name)
                        if isinstance(value, FakeTensor):
                            self.shadows.pop(value, None)
            return out

    return CudaOnlyFakeTensorMode()


class Recorder:
    """A pytest plugin: runs each test under one FakeTensorMode and records its Triton launches."""

    def __init__(self):
        import torch
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend

        self.fake = cuda_only_fake_mode()
        self.backend = make_backend(GPUTarget("cuda", 90, 32))
        self.binders = {}
        self.launches = []  # one entry per distinct specialisation, in launch order
        self.seen = {}
        self.current = None
        self.tests = {}
        self._torch = torch

    def record(self, fn, args, kwargs):
        from triton.runtime import jit

        if fn not in self.binders:
            self.binders[fn] = jit.create_function_from_signature(fn.signature, fn.params, self.backend)
        kwargs = dict(kwargs)
        kwargs["debug"] = kwargs.get("debug", fn.debug) or jit.knobs.runtime.debug
        kwargs["instrumentation_mode"] = jit.knobs.compilation.instrumentation_mode
        bound, specialization, options = self.binders[fn](*args, **kwargs)
        _, signature, constexprs, attrs = fn._pack_args(self.backend, kwargs, bound, specialization, options)
        launch_options = {k: v for k, v in kwargs.items() if k not in bound}
        spec = dict(
            kernel=f"{fn.module}.{fn.fn.__name__}",
            signature=signature,
            constexprs=[[list(path), value] for path, value in sorted(constexprs.items())],
            attrs=[[list(path), value] for path, value in sorted(attrs.items())],
            options=launch_options,
        )
        key = json.dumps(spec, sort_keys=True, default=str)
        entry = self.tests.setdefault(self.current, dict(launches=0, new=0))
        entry["launches"] += 1
        if key not in self.seen:
            self.seen[key] = spec
            spec["first_test"] = self.current
            self.launches.append(spec)
            entry["new"] += 1

    def patch(self) -> None:
        from triton.runtime.jit import JITFunction

        recorder = self

        def run(self, *args, grid, warmup, **kwargs):
            with recorder._unfaked():
                recorder.record(self, args, kwargs)

        JITFunction.run = run
        from fastddpm.engine import cuda_graph

        cuda_graph.GraphCalls.side_stream = lambda self: contextlib.nullcontext()
        cuda_graph.GraphCalls.capture = lambda self, step: step  # the "replay" runs the step's launches
        cuda_graph.GraphCalls.synchronize = lambda self: None
        import tests.tolerances

        tests.tolerances.assert_close = lambda *a, **k: None
        self._torch.equal = lambda *a, **k: True  # the tests' bit-exact assertions (fastddpm never calls it)
        # Module.to swaps a fake parameter's tensor in place, which FakeTensorMode's weak references
        # refuse; put the converted parameters and buffers in their place instead.
        torch = self._torch

        def _apply(module, fn, recurse=True):
            if recurse:
                for child in module.children():
                    child._apply(fn)
            with torch.no_grad():
                for name, param in module._parameters.items():
                    if param is not None:
                        module._parameters[name] = torch.nn.Parameter(fn(param), param.requires_grad)
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = fn(buffer)
            return module

        torch.nn.Module._apply = _apply

    def _unfaked(self):
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        return unset_fake_temporarily()

    # pytest hooks
    def pytest_collection_modifyitems(self, items):
        for item in items:  # test modules bound assert_close by name
            module = getattr(item, "module", None)
            if module is not None and hasattr(module, "assert_close"):
                module.assert_close = lambda *a, **k: None

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current = item.nodeid
        self.tests.setdefault(item.nodeid, dict(launches=0, new=0))
        with self.fake:
            yield
        self.current = None

    def pytest_runtest_logreport(self, report):
        if report.when == "call" and report.failed:
            self.tests[report.nodeid]["ended_early"] = report.longrepr.reprcrash.message[:160]
        if report.skipped and report.when in ("setup", "call"):
            self.tests[report.nodeid]["skipped"] = str(report.longrepr[-1])[:160]


def record_stage(stage: str, out: str, compile_them: bool) -> int:
    sys.path.insert(0, ROOT)
    _stand_in_cuda()
    recorder = Recorder()
    recorder.patch()
    args = ["-m", "gpu", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *STAGES[stage]]
    code = pytest.main(args, plugins=[recorder])
    if compile_them:  # in launch order, into the Triton cache the earlier stages filled (as on the device)
        for spec in recorder.launches:
            spec["compile_seconds"] = compile_one(spec)
    with open(out, "w") as f:
        json.dump(
            dict(stage=stage, pytest_exit=int(code), launches=recorder.launches, tests=recorder.tests), f
        )
    return 0


def compile_one(spec: dict) -> float:
    """Seconds of triton.compile of one recorded specialisation for sm_90 (a cache hit if compiled before)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend

    target = GPUTarget("cuda", 90, 32)
    module, name = spec["kernel"].rsplit(".", 1)
    fn = getattr(importlib.import_module(module), name)
    constexprs = {tuple(path): value for path, value in spec["constexprs"]}
    attrs = {tuple(path): value for path, value in spec["attrs"]}
    options = make_backend(target).parse_options(spec["options"]).__dict__
    start = time.perf_counter()
    triton.compile(ASTSource(fn, spec["signature"], constexprs, attrs), target=target, options=options)
    return round(time.perf_counter() - start, 3)


def _key(spec: dict) -> str:
    return json.dumps(
        {k: spec[k] for k in ("kernel", "signature", "constexprs", "attrs", "options")}, sort_keys=True
    )


def _short(spec: dict) -> str:
    """kernel(argument types, D: divisible by 16; constexprs; launch options)"""
    attrs = {path[0]: value for path, value in spec["attrs"]}
    constexprs = {path[0]: value for path, value in spec["constexprs"]}
    parts = []
    for index, (name, kind) in enumerate(spec["signature"].items()):
        if kind == "constexpr":
            parts.append(f"{name}={constexprs.get(index)}")
        else:
            parts.append(f"{kind}{'D' if attrs.get(index) else ''}")
    options = ",".join(
        f"{k}={v}" for k, v in sorted(spec["options"].items()) if k not in ("debug", "instrumentation_mode")
    )
    return f"{spec['kernel'].rsplit('.', 1)[1]}({' '.join(parts)}; {options})"


def measure(compile_them: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "FASTDDPM_BACKEND")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    work = tempfile.mkdtemp(prefix="triton_compile_cost_")
    env["TRITON_CACHE_DIR"] = os.path.join(work, "cache")  # empty: the first stage compiles cold
    stages, seen = [], set()
    for stage in STAGES:
        record = os.path.join(work, f"{stage}.json")
        start = time.perf_counter()
        command = [
            sys.executable,
            os.path.abspath(__file__),
            "--record-stage",
            stage,
            "--record-file",
            record,
        ]
        subprocess.run(command + (["--compile"] if compile_them else []), cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        with open(record) as f:
            result = json.load(f)
        tests, launches = result["tests"], result["launches"]
        new = [spec for spec in launches if _key(spec) not in seen]
        loaded = [spec for spec in launches if _key(spec) in seen]
        seen.update(_key(spec) for spec in launches)
        per_kernel = {}
        for spec in new:
            row = per_kernel.setdefault(spec["kernel"].rsplit(".", 1)[1], dict(count=0, compile_seconds=0.0))
            row["count"] += 1
            row["compile_seconds"] = round(row["compile_seconds"] + spec.get("compile_seconds", 0.0), 2)
        seconds = [spec.get("compile_seconds", 0.0) for spec in new]
        stages.append(
            dict(
                stage=stage,
                pytest_paths=STAGES[stage],
                gpu_tests=len(tests),
                launches=sum(t["launches"] for t in tests.values()),
                specialisations=len(launches),
                compiled_cold=len(new),
                compile_seconds=round(sum(seconds), 1) if compile_them else None,
                slowest_compile_seconds=max(seconds, default=0.0) if compile_them else None,
                loaded_from_earlier_stages=len(loaded),
                load_seconds=round(sum(s.get("compile_seconds", 0.0) for s in loaded), 2)
                if compile_them
                else None,
                per_kernel=per_kernel,
                tests_ended_early={k: v["ended_early"] for k, v in tests.items() if "ended_early" in v},
                tests_skipped=sum("skipped" in v for v in tests.values()),
                stage_seconds_here=round(time.perf_counter() - start, 1),
                compiled=[[_short(spec), spec.get("compile_seconds")] for spec in new],
            )
        )
    total = sum(stage["compile_seconds"] or 0.0 for stage in stages)
    return dict(specialisations=len(seen), compile_seconds=round(total, 1) if compile_them else None,
                stages=stages)  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="JSON file (default: only the summary lines)")
    parser.add_argument("--count-only", action="store_true", help="count, do not compile")
    parser.add_argument("--record-stage", help=argparse.SUPPRESS)
    parser.add_argument("--record-file", help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.record_stage:
        return record_stage(args.record_stage, args.record_file, args.compile)

    command = "python bench/triton_compile_cost.py"
    report = dict(
        what="Triton specialisations the GPU tier (pytest -m gpu, in bench/gpu_check.sh's stages) launches, and "
        "their compile for sm_90 on this CPU: each stage in its own process, one compile after another, into a "
        "Triton cache that starts empty and that later stages share (as on the device)",
        command=command + (" --count-only" if args.count_only else ""),
        cpu=_cpu_name(),
        cores=os.cpu_count(),
        python=platform.python_version(),
        versions=_versions(),
        **measure(not args.count_only),
    )
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(report, indent=1) + "\n")
    for stage in report["stages"]:
        print(
            f"{stage['stage']}: {stage['gpu_tests']} GPU tests, {stage['launches']} launches, "
            f"{stage['specialisations']} specialisations, {stage['compiled_cold']} compiled cold in "
            f"{stage['compile_seconds']} s (slowest {stage['slowest_compile_seconds']} s), "
            f"{stage['loaded_from_earlier_stages']} from the cache in {stage['load_seconds']} s"
        )
    print(f"all stages: {report['specialisations']} specialisations, {report['compile_seconds']} s")
    return 0


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor()


def _versions() -> dict:
    import torch
    import triton

    return dict(torch=torch.__version__, triton=triton.__version__)


if __name__ == "__main__":
    sys.exit(main())
