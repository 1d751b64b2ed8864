"""The package surface: lazy exports, so the command line answers --help without importing torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_cli_does_not_import_torch():
    code = "import sys, fastddpm, fastddpm.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_public_names_resolve():
    import fastddpm

    for name in fastddpm.__all__:
        assert getattr(fastddpm, name) is not None
    assert callable(fastddpm.load) and fastddpm.DDPMScheduler().config.num_train_timesteps == 1000
