"""Logging set-up with a filter that redacts every secret the process has read."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import TextIO

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


class _Prompt:
    """The input prompt a console shows on a terminal while it waits for a line (none: ``out`` is None)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.text = ""
        self.out: TextIO | None = None


_PROMPT = _Prompt()


def show_prompt(text: str, out: TextIO) -> None:
    """Write ``text`` (no newline) as the prompt of a console waiting for input. Until
    :func:`clear_prompt`, a log line first ends the prompt's line and then shows the prompt again,
    so log output never runs into what the user types (on a terminal; elsewhere nothing changes)."""
    with _PROMPT.lock:
        out.write(text)
        out.flush()
        if _isatty(out):
            _PROMPT.text, _PROMPT.out = text, out


def clear_prompt() -> None:
    with _PROMPT.lock:
        _PROMPT.text, _PROMPT.out = "", None


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # no such method, or closed
        return False


def _around_prompt(emit: Callable[[logging.LogRecord], None]) -> Callable[[logging.LogRecord], None]:
    """``emit`` that moves a console's pending prompt below the log line it writes."""

    def emit_around(record: logging.LogRecord) -> None:
        with _PROMPT.lock:
            out, text = _PROMPT.out, _PROMPT.text
            if out is None:
                emit(record)
                return
            out.write("\n")
            out.flush()
            emit(record)
            out.write(text)
            out.flush()

    return emit_around


def setup_logging(level: str, secrets: Callable[[], Iterable[str]] = tuple) -> None:
    from rich.console import Console
    from rich.logging import RichHandler

    handler = RichHandler(
        console=Console(stderr=True), show_path=False, markup=False, log_time_format="%H:%M:%S"
    )
    handler.addFilter(RedactSecrets(secrets))
    handler.emit = _around_prompt(handler.emit)  # type: ignore[method-assign]
    logging.basicConfig(level=level.upper(), format="%(name)s: %(message)s", handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "aiosqlite", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
