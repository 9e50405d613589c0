"""User-facing errors.

An ``AblateError`` is something the user can fix (a bad field, a missing file). The CLI prints
its message as one line and exits with status 2, without a traceback; anything else is a bug
and keeps its traceback.
"""


class AblateError(Exception):
    """A problem with the user's input, reported as one line: where, what, what is allowed."""


class DataError(AblateError):
    """Bad corpus input: a file, row or field that cannot be ingested."""
