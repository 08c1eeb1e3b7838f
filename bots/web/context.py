"""What every part of the web app works with: the running host and its configuration."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bots.core.config import AppConfig, Secrets

if TYPE_CHECKING:
    from bots.core.audit import AuditLog
    from bots.core.host import Host
    from bots.core.storage import Database
    from bots.runtime import Runtime


@dataclass
class WebContext:
    """Shared by the OpenAI endpoint, ``/metrics`` and the console (``app.state.ctx``)."""

    host: Host
    config: AppConfig
    secrets: Secrets = field(default_factory=Secrets)
    extra: dict[str, Any] = field(default_factory=dict)  # parts may keep their own state here

    @property
    def database(self) -> Database:
        return self.host.db

    @property
    def audit(self) -> AuditLog:
        return self.host.audit

    @property
    def runtime(self) -> Runtime | None:
        """Personas, plugins and knowledge of the running bots (None for a host built without)."""
        return self.host.control.runtime
