"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class KbenchError(Exception):
    """A problem with the user's input (a file, a key, a name or a value), stated in one line."""
