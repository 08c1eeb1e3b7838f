"""`bots run` with a console channel stops cleanly on SIGINT and SIGTERM, even while the console
waits for input on a stdin that stays open (it used to die with "Fatal Python error:
_enter_buffered_busy", rc 134, from a thread blocked reading sys.stdin)."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.configs import write_bot_config

from bots.core import logs

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

BOTS = Path(sys.executable).parent / "bots"
PROMPT = b"you> "


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout: float, what: str) -> bytes:
    """Everything ``proc`` wrote until ``marker`` appeared (its stdout stays a pipe we read raw)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(
                f"waited {timeout}s for {what} ({marker!r}); got:\n{seen.decode(errors='replace')}"
            )
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            if proc.poll() is not None:
                raise AssertionError(
                    f"exited (rc {proc.returncode}) before {what}:\n{seen.decode()}"
                ) from None
            time.sleep(0.05)
            continue
        seen += chunk
    return seen


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_run_with_a_console_stops_cleanly_on_a_signal(tmp_path, sig):
    config = write_bot_config(tmp_path, '[[bots.channels]]\ntype = "console"\n')
    proc = subprocess.Popen(
        [str(BOTS), "run", "--config", str(config)],
        cwd=tmp_path,
        stdin=subprocess.PIPE,  # kept open: the console is waiting for a line when the signal comes
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    try:
        output = _read_until(proc, PROMPT, 120, "the console's first prompt")
        assert proc.stdin is not None
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        output += _read_until(proc, PROMPT, 60, "the prompt after the reply to 'hello'")
        proc.send_signal(sig)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"`bots run` still running 60s after {sig.name}") from None
        os.set_blocking(proc.stdout.fileno(), True)  # type: ignore[union-attr]
        output += proc.stdout.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    text = output.decode(errors="replace")
    assert proc.returncode == 0, text  # the host handles both signals: a clean stop, as the README says
    assert "Fatal Python error" not in text and "Traceback" not in text, text
    assert proc.stdin is not None and not proc.stdin.closed  # it stopped without end of input


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_line_moves_the_console_prompt_below_it():
    terminal = _Terminal()
    emitted: list[str] = []

    def emit(record: logging.LogRecord) -> None:
        terminal.write(f"[{record.getMessage()}]\n")
        emitted.append(record.getMessage())

    around = logs._around_prompt(emit)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "scheduler started", None, None)
    logs.show_prompt("you> ", terminal)
    try:
        around(record)
    finally:
        logs.clear_prompt()
    around(record)
    assert terminal.getvalue() == "you> \n[scheduler started]\nyou> [scheduler started]\n"
    assert emitted == ["scheduler started"] * 2


def test_a_prompt_off_a_terminal_leaves_log_lines_alone():
    piped = io.StringIO()
    logs.show_prompt("you> ", piped)
    try:
        logs._around_prompt(lambda record: piped.write("[log]\n"))(
            logging.LogRecord("t", logging.INFO, __file__, 1, "x", None, None)
        )
    finally:
        logs.clear_prompt()
    assert piped.getvalue() == "you> [log]\n"
