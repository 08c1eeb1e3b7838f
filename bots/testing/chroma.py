"""A throwaway Chroma server (``chroma run``, the CLI the chromadb package installs) for tests.

``with chroma_server(tmp_path / "chroma") as url:`` starts it on a free port of 127.0.0.1 with its
data in that folder, waits for its heartbeat, yields ``http://127.0.0.1:PORT``, and stops it.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bots.testing.servers import free_port, stop_process


def find_chroma() -> str | None:
    """The ``chroma`` program: beside this Python (a venv), else on PATH."""
    beside = Path(sys.executable).parent / "chroma"
    return str(beside) if beside.is_file() else shutil.which("chroma")


@contextlib.contextmanager
def chroma_server(path: Path, program: str | None = None, *, timeout: float = 60.0) -> Iterator[str]:
    program = program or find_chroma()
    if program is None:
        raise FileNotFoundError("the chroma program is not installed (pip install chromadb)")
    port = free_port()
    log = path.with_name(path.name + ".log")
    with log.open("wb") as out:
        server = subprocess.Popen(
            [program, "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/heartbeat", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"chroma run did not answer on {url} within {timeout:g}s:\n"
                        + log.read_text(errors="replace")[-2000:]
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        stop_process(server)
