"""The CLI's own error type, in a module of its own so that every copy of the CLI module (``python -m`` imports it
twice) raises and catches the same class."""


class UsageError(Exception):
    """An ordinary mistake of the user: reported in one line, exit status 2."""
