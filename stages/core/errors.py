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
