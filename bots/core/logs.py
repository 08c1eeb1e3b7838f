"""Logging set-up with a filter that redacts every secret the process has read."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

REDACTED = "***"


class RedactSecrets(logging.Filter):
    """Replaces known secret values in log records (message and arguments) with ``***``."""

    def __init__(self, secrets: Callable[[], Iterable[str]]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = [s for s in self._secrets() if len(s) >= 4]
        if not secrets:
            return True

        def redact(text: str) -> str:
            for secret in secrets:
                text = text.replace(secret, REDACTED)
            return text

        message = record.getMessage()
        if any(s in message for s in secrets):
            record.msg, record.args = redact(message), None
        if record.exc_info:  # tracebacks carry URLs and arguments: format them now, redacted
            record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_FORMATTER = logging.Formatter()


def setup_logging(level: str, secrets: Callable[[], Iterable[str]] = tuple) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(
        console=Console(stderr=True), show_path=False, markup=False, log_time_format="%H:%M:%S"
    )
    handler.addFilter(RedactSecrets(secrets))
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "aiosqlite", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
