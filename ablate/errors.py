"""User-facing errors.

An ``AblateError`` is something the user can fix (a bad field, a missing file). The CLI prints
its message as one line and exits with status 2, without a traceback; anything else is a bug
and keeps its traceback.
"""


class AblateError(Exception):
    """A problem with the user's input, reported as one line: where, what, what is allowed."""


class DataError(AblateError):
    """Bad corpus input: a file, row or field that cannot be ingested."""


def show(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: a message must stay one short line whatever
    the input holds (a YAML alias bomb expands to a gigabyte when printed in full)."""
    if isinstance(value, (list, tuple, dict, set)) and len(value) > 8:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
