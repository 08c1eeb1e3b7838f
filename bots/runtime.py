"""Changing a running bot from chat: its persona, its plugins, its knowledge (the admin plugin's
``/persona``, ``/plugins`` and ``/kb`` commands reach this through ``ctx.host.runtime``).

Choices made here survive a restart: the persona in use and the disabled plugins are kept in the
database and applied again when the bot starts.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bots.agent.agent import Agent
from bots.agent.persona import Persona, PersonaLibrary
from bots.agent.retrieval import NoRetrieval, Retriever
from bots.core.config import ConfigError
from bots.core.pipeline import Pipeline
from bots.core.routing import Dispatch
from bots.core.storage import Database, KeyValueStore
from bots.plugins.api import Plugin
from bots.plugins.manager import register

if TYPE_CHECKING:
    from bots.knowledge.store import KnowledgeBase

log = logging.getLogger("bots.runtime")

PROTECTED_PLUGINS = frozenset({"admin"})  # disabling these would lock the operators out


class PluginSlot:
    """One loaded plugin; a reload puts a new instance in the same slot (and lifecycle)."""

    def __init__(self, instance: Plugin) -> None:
        self.instance = instance

    @property
    def name(self) -> str:
        return self.instance.plugin_name()

    async def setup(self) -> None:
        await self.instance.setup()

    async def teardown(self) -> None:
        await self.instance.teardown()


@dataclass
class LiveBot:
    """The parts of one running bot that operators may change."""

    name: str
    persona_id: str
    agent: Agent
    pipeline: Pipeline
    dispatch: Dispatch
    bot_keywords: list[str]
    collections_follow_persona: bool  # the bot's config names no collections of its own
    slots: list[PluginSlot]
    load_plugin: Callable[[type[Plugin]], Plugin]  # a new instance with this bot's context
    plugin_instances: list[Plugin]  # the list the scheduler reads (kept in step with the slots)
    on_persona: Callable[[Persona], None] | None = None  # tells the scheduler's jobs
    disabled: set[str] = field(default_factory=set)  # shared with the scheduler's view of the bot
    make_retriever: Callable[[], Retriever] | None = None  # for a persona that brings knowledge


class Runtime:
    def __init__(
        self,
        db: Database,
        library: PersonaLibrary,
        knowledge: Callable[[], KnowledgeBase] | None = None,
    ) -> None:
        self._state = KeyValueStore(db, "runtime")
        self.library = library
        self._knowledge = knowledge
        self._kb: KnowledgeBase | None = None
        self._ingesting = asyncio.Lock()
        self.bots: dict[str, LiveBot] = {}

    def add(self, live: LiveBot) -> None:
        self.bots[live.name] = live

    def _bot(self, bot: str) -> LiveBot:
        if bot not in self.bots:
            raise LookupError(f"no bot {bot!r}")
        return self.bots[bot]

    async def restore(self, bot: str) -> None:
        """At start: the persona an operator chose and the plugins they disabled."""
        live = self._bot(bot)
        chosen = await self._state.get(f"persona:{bot}")
        if chosen and chosen != live.persona_id:
            try:
                self._apply(live, self.library.get(chosen), chosen)
                log.info("bot %s: speaking as persona %s (chosen by an operator)", bot, chosen)
            except ConfigError as exc:
                log.error("bot %s: the persona chosen by an operator cannot be used: %s", bot, exc)
        for name in await self._state.get(f"disabled:{bot}", []):
            if any(slot.name == name for slot in live.slots):
                live.dispatch.remove_plugin(name)
                live.disabled.add(name)

    # -- persona -------------------------------------------------------------------------------
    def persona_show(self, bot: str) -> str:
        """What the persona is, without its system prompt (never echoed, not even to operators)."""
        live = self._bot(bot)
        p = live.agent.persona
        others = [i for i in self.library.ids() if i != live.persona_id]
        return "\n".join(
            [
                f"{p.name} ({live.persona_id}): {p.description or 'no description'}",
                f"language {p.language}; group replies: {p.group.reply}"
                + (f" (keywords: {', '.join(p.group.keywords)})" if p.group.keywords else ""),
                f"knowledge: {', '.join(live.agent.collections) or 'none'}; citations "
                f"{'on' if p.citations else 'off'}; quote check {p.quote_check}",
                f"{len(p.style)} style rules, {len(p.examples)} example dialogues, "
                f"{len(p.opening_lines)} opening / {len(p.closing_lines)} closing lines",
                f"other personas: {', '.join(others) or 'none'}",
            ]
        )

    async def persona_use(self, bot: str, persona_id: str) -> str:
        live = self._bot(bot)
        persona = self.library.get(persona_id)  # ConfigError names the problem
        self._apply(live, persona, persona_id)
        await self._state.set(f"persona:{bot}", persona_id)
        return f"{bot} now speaks as {persona.name} ({persona_id})"

    async def persona_reload(self, bot: str) -> str:
        live = self._bot(bot)
        persona = self.library.get(live.persona_id)
        self._apply(live, persona, live.persona_id)
        return f"{bot}: persona {live.persona_id} reloaded from {self.library.path(live.persona_id)}"

    def _apply(self, live: LiveBot, persona: Persona, persona_id: str) -> None:
        collections = persona.knowledge if live.collections_follow_persona else None
        live.agent.use_persona(persona, collections)
        if live.agent.collections and isinstance(live.agent.retriever, NoRetrieval) and live.make_retriever:
            live.agent.retriever = live.make_retriever()  # the bot had no knowledge until now
        live.pipeline.use_persona_settings(
            reply_policy=persona.group.reply,
            keywords=[*persona.group.keywords, *live.bot_keywords],
            busy_reply=persona.busy_text,
            quota_reply=persona.quota_text,
        )
        if live.on_persona is not None:
            live.on_persona(persona)
        live.persona_id = persona_id

    # -- plugins -------------------------------------------------------------------------------
    def plugins(self, bot: str) -> list[str]:
        live = self._bot(bot)
        return [f"{slot.name}{' (disabled)' if slot.name in live.disabled else ''}" for slot in live.slots]

    def _slot(self, live: LiveBot, name: str) -> PluginSlot:
        for slot in live.slots:
            if slot.name == name:
                return slot
        raise LookupError(f"no plugin {name!r} (loaded: {', '.join(s.name for s in live.slots)})")

    async def plugin_disable(self, bot: str, name: str) -> str:
        live = self._bot(bot)
        self._slot(live, name)
        if name in PROTECTED_PLUGINS:
            raise ValueError(f"{name} cannot be disabled from chat (edit bots.plugins in the config)")
        live.dispatch.remove_plugin(name)
        live.disabled.add(name)
        await self._state.set(f"disabled:{bot}", sorted(live.disabled))
        return f"{name}: disabled (its commands, listeners and scheduled jobs are off)"

    async def plugin_enable(self, bot: str, name: str) -> str:
        live = self._bot(bot)
        slot = self._slot(live, name)
        if name in live.disabled:
            register(slot.instance, live.dispatch)
            live.disabled.discard(name)
            await self._state.set(f"disabled:{bot}", sorted(live.disabled))
        return f"{name}: enabled"

    async def plugin_reload(self, bot: str, name: str) -> str:
        """Import the plugin's module again and replace the instance; on any failure the old one
        stays in service."""
        live = self._bot(bot)
        slot = self._slot(live, name)
        old = slot.instance
        cls = type(old)
        try:
            module = importlib.reload(sys.modules[cls.__module__])
            fresh = live.load_plugin(getattr(module, cls.__name__))
        except Exception as exc:
            log.exception("plugin %s: reload failed; the loaded version stays", name)
            raise ValueError(
                f"{name}: reload failed ({type(exc).__name__}: {exc}); the old version runs on"
            ) from None
        await old.teardown()
        live.dispatch.remove_plugin(name)
        try:
            await fresh.setup()
            if name not in live.disabled:
                register(fresh, live.dispatch)
        except Exception as exc:
            log.exception("plugin %s: the reloaded version failed to start; the old one is back", name)
            live.dispatch.remove_plugin(name)
            await old.setup()
            if name not in live.disabled:
                register(old, live.dispatch)
            raise ValueError(
                f"{name}: the new version failed to start ({type(exc).__name__}: {exc})"
            ) from None
        slot.instance = fresh
        live.plugin_instances[:] = [s.instance for s in live.slots]
        return f"{name}: reloaded from {getattr(module, '__file__', cls.__module__)}"

    # -- knowledge -----------------------------------------------------------------------------
    def _kb_for(self) -> KnowledgeBase:
        if self._knowledge is None:
            raise ValueError(
                "this host has no knowledge support installed (pip install 'persona-bots[knowledge]')"
            )
        if self._kb is None:
            self._kb = self._knowledge()
        return self._kb

    def collections(self, bot: str) -> list[str]:
        return list(self._bot(bot).agent.collections)

    def kb_details(self, bot: str) -> list[dict[str, Any]]:
        """Each collection the bot uses, as :meth:`KnowledgeBase.stats` describes it."""
        live = self._bot(bot)
        if not live.agent.collections:
            return []
        kb = self._kb_for()
        return [kb.stats(name) for name in live.agent.collections]

    def kb_stats(self, bot: str) -> list[str]:
        details = self.kb_details(bot)
        if not details:
            return [f"{bot} uses no knowledge collections"]
        lines = []
        for info in details:
            name = info["collection"]
            if info["indexed"]:
                lines.append(
                    f"{name}: {info['chunks']} chunks from {info['indexed_files']}/{info['files']} files"
                )
            else:
                lines.append(f"{name}: {info['files']} files, not indexed (/kb ingest {name})")
        return lines

    def _collection_of(self, bot: str, collection: str) -> None:
        live = self._bot(bot)
        if collection not in live.agent.collections:
            known = ", ".join(live.agent.collections) or "none"
            raise LookupError(f"{bot} does not use a collection {collection!r} (it uses: {known})")

    def kb_upload(self, bot: str, collection: str, filename: str, data: bytes, max_bytes: int) -> str:
        """Put an uploaded file into one of the bot's collections, through the loaders' guards
        (:func:`bots.knowledge.uploads.accept_upload`); ingest it with :meth:`kb_ingest`."""
        from bots.knowledge.uploads import accept_upload

        self._collection_of(bot, collection)
        path = accept_upload(self._kb_for().collection(collection), filename, data, max_bytes=max_bytes)
        return path.name

    async def kb_search(
        self, bot: str, collection: str, query: str, k: int = 5, method: str = "fused"
    ) -> list[Any]:
        """The best ``k`` hits of one of the bot's collections (as ``bots search`` finds them)."""
        self._collection_of(bot, collection)
        kb = self._kb_for()
        return await asyncio.to_thread(kb.search, [collection], query, k, method)  # type: ignore[arg-type]

    async def kb_ingest(
        self, bot: str, collection: str, progress: Callable[[str, int], None] | None = None
    ) -> str:
        """Index the collection's new and changed files; ``progress`` is called from the ingest's
        thread as :meth:`KnowledgeBase.ingest` reports ("files" / "chunks", how many more)."""
        self._collection_of(bot, collection)
        if self._ingesting.locked():
            raise ValueError("an ingest is already running; try again when it is done")
        kb = self._kb_for()
        async with self._ingesting:
            report = await asyncio.to_thread(kb.ingest, collection, progress=progress)
        errors = f"; {len(report.errors)} file(s) failed (see the log)" if report.errors else ""
        return (
            f"{collection}: {len(report.added)} added, {len(report.changed)} changed, "
            f"{len(report.removed)} removed, {report.unchanged} unchanged; "
            f"{report.chunks_added} chunks in {report.seconds:.1f}s{errors}"
        )
