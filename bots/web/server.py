"""The web app served by uvicorn inside the host's event loop, as a host Service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from bots.core.config import AppConfig, ConfigError, Secrets
from bots.core.host import Host

log = logging.getLogger("bots.web")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """The host owns SIGINT/SIGTERM (``Host.serve_forever``); uvicorn must not take them."""
        yield


class WebServer:
    """A host Service: binds at start (a port in use stops the host with a clear error), serves
    once the channels are up, and stops gracefully after the events in flight were handled."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 8700, *, grace_s: float = 5.0
    ) -> None:
        self.app = app
        self.host = host
        self.port = port  # the bound port once started (port 0 picks a free one)
        self.grace_s = grace_s
        self._socket: socket.socket | None = None
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address in brackets
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"[web]: cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        self.port = sock.getsockname()[1]

    async def ready(self) -> None:
        config = uvicorn.Config(
            self.app,
            log_config=None,  # the host's logging; uvicorn's access log is off (no URLs, no headers)
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=self.grace_s,
        )
        self._server = _Server(config)
        assert self._socket is not None
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="web-server")
        while not self._server.started:
            if self._task.done():  # it failed to start: say why
                self._task.result()
                raise RuntimeError("the web server stopped while starting")
            await asyncio.sleep(0.01)
        log.info("web: serving on %s", self.url)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.grace_s + 5)
            except TimeoutError:
                log.warning("web: the server did not stop within %.0fs; cancelled", self.grace_s + 5)
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._socket is not None:
            self._socket.close()
        self._server = self._task = self._socket = None


def web_service(host: Host, config: AppConfig, secrets: Secrets | None = None) -> WebServer:
    """The web app for ``host`` as a Service, added to the host's services (``bots run``/``serve``)."""
    from bots.web.app import create_app
    from bots.web.context import WebContext

    app = create_app(WebContext(host, config, secrets or Secrets()))
    service = WebServer(app, config.web.host, config.web.port)
    host.services.append(service)
    return service
