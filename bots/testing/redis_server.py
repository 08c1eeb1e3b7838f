"""A throwaway Redis server for tests and benchmarks (``redis-server`` on a free port of 127.0.0.1,
nothing saved to disk), stopped at the end::

    with redis_server() as url:        # "redis://127.0.0.1:PORT/0"
        ...

In pytest the test kit's ``redis_url`` fixture gives each test a server of its own; without
``redis-server`` installed those tests skip (in CI, ``BOTS_REQUIRE_SERVERS=1``, they fail).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from bots.testing.servers import free_port, stop_process


@contextlib.contextmanager
def redis_server(program: str | None = None, *, ready_s: float = 30.0) -> Iterator[str]:
    """Start ``redis-server`` (``program``, else the one on PATH); yield its URL; stop it."""
    binary = program or shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bots-redis-") as folder:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", folder, "--protected-mode", "yes"]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            _wait_ready(proc, port, ready_s)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop_process(proc)


def _wait_ready(proc: subprocess.Popen[bytes], port: int, ready_s: float) -> None:
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"redis-server exited ({proc.returncode}) at start: {err.strip()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            if conn.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.05)
    raise TimeoutError(f"waited {ready_s:g}s for redis-server to answer PING on port {port}")
