"""The command line, ``fastddpm sample | convert | info | bench``: the parser (main.py), one module per
subcommand, and what `sample` writes (sample_writer.py, manifest.py) across processes (sharding.py)."""

from fastddpm.cli.main import main

__all__ = ["main"]
