"""The one error type users see for bad configuration or missing data."""


class ConfigError(ValueError):
    """A configuration value (or the data it points at) cannot work.

    The message names the offending key, its value, and how to fix it; the CLI prints it on one
    line and exits with code 2 before anything is trained or written.
    """

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, shortened: for error messages, never tracebacks."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
