"""One error type for everything a user can get wrong.

The CLI turns a HarnessError into a single `error: ...` line and exit code 2, so every message must
stand alone: name the file or entry at fault and say what to do about it.
"""


class HarnessError(Exception):
    """A user-facing failure with a one-line, actionable message."""
