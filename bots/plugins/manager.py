"""Plugin discovery (entry-point group ``bots.plugins`` and plugin folders) and loading per bot."""

from __future__ import annotations

import importlib.util
import inspect
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType

from pydantic import ValidationError

from bots.core.config import ConfigError, describe_validation_error
from bots.core.control import HostControl
from bots.core.events import Outbound, SentRef
from bots.core.routing import CommandEntry, Dispatch, ListenerEntry
from bots.core.storage import Database, KeyValueStore
from bots.plugins.api import (
    COMMAND_TAG,
    LISTENER_TAG,
    CommandSpec,
    ListenerSpec,
    Plugin,
    PluginContext,
)

log = logging.getLogger("bots.plugins")

ENTRY_POINT_GROUP = "bots.plugins"


def discover(plugin_dirs: Iterable[Path] = ()) -> dict[str, type[Plugin]]:
    """Every plugin class found, by name. A plugin that fails to import is logged and skipped."""
    found: dict[str, type[Plugin]] = {}

    def add(cls: type[Plugin], origin: str) -> None:
        name = cls.plugin_name()
        if name in found:
            if found[name] is not cls:
                log.debug("plugin %s from %s shadowed by an earlier one", name, origin)
            return
        found[name] = cls

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception:
            log.exception("plugin entry point %s (%s) failed to load", ep.name, ep.value)
            continue
        if isinstance(cls, type) and issubclass(cls, Plugin):
            add(cls, f"entry point {ep.name}")
        else:
            log.error("entry point %s does not name a Plugin subclass", ep.name)

    for folder in plugin_dirs:
        for path in sorted(folder.glob("*")) if folder.is_dir() else []:
            if path.name.startswith(("_", ".")) or not _is_module(path):
                continue
            try:
                module = _import_path(path)
            except Exception:
                log.exception("plugin file %s failed to import", path)
                continue
            for cls in _plugin_classes(module):
                add(cls, str(path))
    return found


def _is_module(path: Path) -> bool:
    return (path.suffix == ".py" and path.is_file()) or (path / "__init__.py").is_file()


def _import_path(path: Path) -> ModuleType:
    target = path / "__init__.py" if path.is_dir() else path
    module_name = f"bots_local_plugins.{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, target)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


def _plugin_classes(module: ModuleType) -> list[type[Plugin]]:
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Plugin)
        and obj is not Plugin
        and obj.__module__ == module.__name__
    ]


def load_plugins(
    classes: Iterable[type[Plugin]],
    *,
    bot: str,
    dispatch: Dispatch,
    db: Database,
    configs: dict[str, dict],
    sender: Callable[[Outbound], Awaitable[list[SentRef]]],
    command_prefix: str = "/",
    control: HostControl | None = None,
) -> list[Plugin]:
    """Instantiate plugins for one bot and register their commands and listeners."""
    plugins = []
    for cls in classes:
        name = cls.plugin_name()
        try:
            config = cls.Config.model_validate(configs.get(name, {}))
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(f"[plugins.{name}]", exc)) from None
        ctx = PluginContext(
            bot=bot,
            plugin=name,
            storage=KeyValueStore(db, f"{bot}/{name}"),
            config=config,
            sender=sender,
            dispatch=dispatch,
            command_prefix=command_prefix,
            control=control,
        )
        plugin = cls(ctx)
        try:
            register(plugin, dispatch)
        except ValueError as exc:  # two plugins claim one command name
            raise ConfigError(f"bot {bot}: {exc}; disable one of them in bots.plugins") from None
        plugins.append(plugin)
    return plugins


def register(plugin: Plugin, dispatch: Dispatch) -> None:
    name = plugin.plugin_name()
    for _, method in inspect.getmembers(plugin, inspect.iscoroutinefunction):
        spec = getattr(method, COMMAND_TAG, None)
        if isinstance(spec, CommandSpec):
            dispatch.add_command(
                CommandEntry(
                    name=spec.name,
                    handler=method,
                    plugin=name,
                    permission=spec.permission,
                    help=spec.help,
                    usage=spec.usage,
                    aliases=spec.aliases,
                    dm_only=plugin.dm_only(spec),
                )
            )
        listener = getattr(method, LISTENER_TAG, None)
        if isinstance(listener, ListenerSpec):
            dispatch.add_listener(
                ListenerEntry(
                    handler=method,
                    plugin=name,
                    priority=listener.priority,
                    addressed_only=listener.addressed_only,
                )
            )
