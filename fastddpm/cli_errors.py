"""The error type of the command line, in its own module so that ``python -m fastddpm.cli`` (where cli.py
runs as ``__main__``, a second copy of the module) and the subcommand modules share one class."""


class CliError(Exception):
    """Bad input: the message is the one line the user sees, and the exit status is 2."""
