"""``python -m fastddpm.cli`` (and ``torchrun -m fastddpm.cli``) runs the command line."""

import sys

from fastddpm.cli.main import main

sys.exit(main())
