"""torchsde is an optional extra (pip install fastddpm[sde]): only dpm-sde's noise="torch" (diffusers'
Brownian tree) needs it. With torchsde hidden (a meta-path finder installed by a sitecustomize.py that the
subprocesses find first on PYTHONPATH), the package, the CLI and every other sampler work, dpm-sde works
with Philox noise, and dpm-sde with noise="torch" is refused in one line (the CLI: exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BLOCKER = """
import sys

class HideTorchsde:
    def find_spec(self, name, path=None, target=None):
        if name == "torchsde" or name.startswith("torchsde."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None

sys.meta_path.insert(0, HideTorchsde())
"""
MESSAGE = (
    "sampler dpm-sde with noise='torch' draws diffusers' Brownian-tree noise, which needs torchsde: "
    "pip install fastddpm[sde] (noise='philox' does not need it)"
)


@pytest.fixture(scope="module")
def hidden_env(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("hide_torchsde")
    (folder / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(folder), str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600
    )


def test_the_python_api_without_torchsde(hidden_env):
    code = f"""
import sys
try:
    import torchsde
    raise SystemExit("the blocker did not hide torchsde")
except ImportError:
    pass
import fastddpm
from fastddpm.schedulers import samplers
from fastddpm.schedulers.brownian_noise import MissingTorchsde
assert "dpm-sde" in samplers.karras_names()  # imports every scheduler module
pipe = fastddpm.load(None)
run = dict(batch_size=2, num_inference_steps=4, seed=1, output_type="pt", progress=False)
for name in samplers.NAMES:
    if name != "dpm-sde":
        assert pipe(sampler=name, **run).images.isfinite().all(), name
assert pipe(sampler="dpm-sde", noise="philox", **run).images.isfinite().all()
scheduler = fastddpm.DPMSolverSDEScheduler()
try:
    pipe(sampler="dpm-sde", **run)
    raise SystemExit("dpm-sde with noise='torch' ran without torchsde")
except MissingTorchsde as error:
    assert isinstance(error, ImportError) and isinstance(error, ValueError)
    assert str(error) == {MESSAGE!r}, str(error)
assert "torchsde" not in sys.modules
print("ok")
"""
    done = run(hidden_env, "-c", code)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_the_cli_without_torchsde(hidden_env, tmp_path):
    done = run(hidden_env, "-m", "fastddpm.cli", "--help")
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "samples"
    args = ["sample", "--sampler", "dpm-sde", "--num", "2", "--steps", "3", "--out", str(out)]
    done = run(hidden_env, "-m", "fastddpm.cli", *args)  # the CLI samples with Philox noise
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(out.glob("*.png"))) == 2
    done = run(hidden_env, "-m", "fastddpm.cli", "bench", "--sampler", "dpm-sde", "--steps", "2",
               "--batch-size", "1", "--repeats", "1")  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"fastddpm bench: {MESSAGE}"], done.stderr[-2000:]
