"""Public plugin API. Third-party and built-in plugins import from here (and core event types)."""

from bots.core.events import ChannelKind, ChannelRef, MessageEvent, Outbound, UserRef
from bots.core.permissions import Role
from bots.core.routing import Invocation
from bots.plugins.api import NoConfig, Plugin, PluginContext, command, on_message

__all__ = [
    "ChannelKind",
    "ChannelRef",
    "Invocation",
    "MessageEvent",
    "NoConfig",
    "Outbound",
    "Plugin",
    "PluginContext",
    "Role",
    "UserRef",
    "command",
    "on_message",
]
