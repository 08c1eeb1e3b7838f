"""The host's web app: one ASGI app served inside the running host (``[web]`` in bots.toml).

It is wiring, like :mod:`bots.cli` and :mod:`bots.assembly`: it may import every layer, and no
layer below imports it. Parts: the OpenAI-compatible chat channel (:mod:`bots.adapters.openai_compat`
translates; the app mounts its routes), Prometheus ``/metrics`` (:mod:`bots.web.metrics`) and the
operators' console (:mod:`bots.web.console`).
"""

from bots.web.app import create_app
from bots.web.context import WebContext
from bots.web.server import WebServer, web_service

__all__ = ["WebContext", "WebServer", "create_app", "web_service"]
