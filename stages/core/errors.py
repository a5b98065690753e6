"""The one exception type a user can cause.

Anything raised as `SaviError` is printed by the CLI as a single `Error: ...` line (exit 1). Its message says
what went wrong and what to do next. Every other exception is a bug: the CLI prints one `Error: unexpected ...`
line that names a log file holding its traceback.
"""


class SaviError(Exception):
    def __init__(self, message: str):
        if not message:
            raise ValueError("SaviError needs a message")
        super().__init__(message)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type when it has none), for a one-line error."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:limit]
