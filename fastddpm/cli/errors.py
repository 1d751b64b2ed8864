"""The error type of the command line, shared by the parser (main.py) and the subcommand modules."""


class CliError(Exception):
    """Bad input: the message is the one line the user sees, and the exit status is 2."""
