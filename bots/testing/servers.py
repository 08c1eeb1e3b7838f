"""Finding the system servers some tests need (PostgreSQL, Redis, Chromium).

On a developer box without them those tests skip; in CI (`BOTS_REQUIRE_SERVERS=1`, set by
`.ci/run`, which installs them) a missing server fails the test instead, so CI never goes green by
skipping what it was meant to run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ENV = "BOTS_REQUIRE_SERVERS"


def servers_required() -> bool:
    return os.environ.get(REQUIRE_ENV, "") not in ("", "0")


def require_program(name: str, *candidates: str) -> str:
    """The path of program `name` (on PATH or at one of `candidates`), else skip (fail in CI)."""
    found = shutil.which(name) or next((c for c in candidates if Path(c).is_file()), None)
    if found:
        return found
    why = f"{name} is not installed (Debian: see .ci/run)"
    if servers_required():
        pytest.fail(f"{why}; {REQUIRE_ENV} is set, so this test must run", pytrace=False)
    pytest.skip(why)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any], wait_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``wait_s``."""
    proc.terminate()
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
