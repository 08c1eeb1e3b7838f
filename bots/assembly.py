"""Wiring from config: the only place that knows every part (used by the CLI and the test kit)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from langchain_core.language_models import BaseChatModel

from bots.agent.agent import Agent
from bots.agent.memory import ConversationMemory
from bots.agent.persona import Persona, PersonaLibrary
from bots.agent.providers import build_llm
from bots.agent.retrieval import NoRetrieval, Retriever
from bots.agent.tokens import token_counter
from bots.core.adapter import Adapter, AdapterFactory
from bots.core.config import AppConfig, BotConfig, ChannelConfig, ConfigError, LLMConfig, Secrets
from bots.core.host import Bot, Host
from bots.core.loops import LoopGuard
from bots.core.permissions import Permissions
from bots.core.pipeline import Pipeline, PipelineSettings
from bots.core.quota import Quotas, QuotaStore
from bots.core.routing import Dispatch
from bots.core.storage import Database
from bots.knowledge.factory import build_knowledge
from bots.plugins.api import Plugin
from bots.plugins.jobs import PersonaView, Source
from bots.plugins.manager import discover, load_plugins
from bots.runtime import LiveBot, PluginSlot, Runtime
from bots.scheduler.service import BotParts, RetrieveFn, SchedulerService

if TYPE_CHECKING:
    from bots.knowledge.store import KnowledgeBase

ADAPTER_GROUP = "bots.adapters"


def build_adapter(bot: str, channel: ChannelConfig, secrets: Secrets) -> Adapter:
    matches = entry_points(group=ADAPTER_GROUP, name=channel.type)
    if not matches:
        known = ", ".join(sorted(ep.name for ep in entry_points(group=ADAPTER_GROUP)))
        raise ConfigError(
            f"bots.{bot}.channels: unknown channel type {channel.type!r} (installed: {known}); "
            "channel types come with the extras, e.g. pip install 'persona-bots[telegram]'"
        )
    adapter_cls: AdapterFactory = next(iter(matches)).load()
    return adapter_cls.from_config(channel.name or channel.type, channel.options, secrets)


def build_retriever(config: AppConfig, secrets: Secrets) -> Retriever:
    from bots.agent.grounding import KnowledgeRetriever

    settings = config.knowledge
    kb = build_knowledge(config, secrets)
    return KnowledgeRetriever(kb, k=settings.top_k, min_similarity=settings.min_similarity)


def llm_config_for(config: AppConfig, bot: BotConfig, persona: Persona) -> LLMConfig:
    base = bot.llm or config.llm
    overrides = persona.model.model_dump(exclude_none=True)
    return base.model_copy(update=overrides)


def select_plugins(config: AppConfig, bot: BotConfig) -> list[type[Plugin]]:
    found = discover(config.plugin_dirs)
    stray = sorted(set(config.plugins) - set(found))
    if stray:
        raise ConfigError(f"[plugins.{stray[0]}]: no plugin of that name (found: {', '.join(sorted(found))})")
    if bot.plugins is None:
        return list(found.values())
    unknown = [name for name in bot.plugins if name not in found]
    if unknown:
        raise ConfigError(
            f"bots.{bot.name}.plugins: unknown plugin(s) {', '.join(unknown)} "
            f"(found: {', '.join(sorted(found)) or 'none'})"
        )
    return [found[name] for name in bot.plugins]


def build_host(
    config: AppConfig,
    secrets: Secrets,
    *,
    db: Database | None = None,
    personas: dict[str, Persona] | None = None,
    llm: BaseChatModel | None = None,
    adapters: dict[str, Sequence[Adapter]] | None = None,
    plugin_classes: Sequence[type[Plugin]] | None = None,
    retriever: Retriever | None = None,
    scheduler: bool = True,
) -> Host:
    """Build a host for every bot in ``config``. Keyword arguments replace parts (for tests);
    ``scheduler=False`` for hosts that must not post on schedules (``bots chat``)."""
    roles = config.roles
    permissions = Permissions(roles.owners, roles.operators, roles.banned, config.identities)
    host = Host(
        db or Database.for_config(config, secrets),
        permissions=permissions,
        muted=set(config.muted),
        secrets=lambda: secrets.handed_out,
    )
    host.history.keep = timedelta(days=config.history.keep_days)
    library = PersonaLibrary(config.personas_dir)
    job_parts: list[BotParts] = []
    shared: dict[str, Retriever | None] = {"retriever": retriever}
    runtime = Runtime(
        host.db, library, knowledge=lambda: _knowledge_base(config, secrets, shared["retriever"])
    )
    for bot_cfg in config.bots:
        persona = (personas or {}).get(bot_cfg.persona) or library.get(bot_cfg.persona)
        collections = persona.knowledge if bot_cfg.knowledge is None else bot_cfg.knowledge
        if collections and retriever is None:
            retriever = shared["retriever"] = build_retriever(config, secrets)  # one per host
        llm_cfg = llm_config_for(config, bot_cfg, persona)
        memory = ConversationMemory(host.db, bot_cfg.name, writes=host.writes)
        bot_llm = llm or build_llm(llm_cfg, secrets)
        agent = Agent(
            bot=bot_cfg.name,
            persona=persona,
            llm=bot_llm,
            memory=memory,
            retriever=retriever if collections else None,
            collections=collections,
            history_tokens=config.memory.history_tokens,
            prompt_tokens=llm_cfg.context_tokens - llm_cfg.max_tokens,
            timeout_s=llm_cfg.timeout_s,
            max_retries=llm_cfg.max_retries,
            protected_ids=[*roles.owners, *roles.operators],
            fluent_languages=_fluent(llm_cfg, bot_llm),
            max_answer_chars=llm_cfg.max_answer_chars,
            gate_stats=host.gate_stats,
            model_stats=host.metrics.model(bot_cfg.name),
        )
        settings = PipelineSettings(
            bot=bot_cfg.name,
            command_prefix=bot_cfg.command_prefix,
            reply_policy=persona.group.reply,
            keywords=[*persona.group.keywords, *bot_cfg.keywords],
            group_scope=config.memory.group_scope,
            muted=host.muted,
            busy_reply=persona.busy_text,
            quota_reply=persona.quota_text,
            per_user_limit=config.rate_limits.per_user,
            per_chat_limit=config.rate_limits.per_chat,
            joins_per_chat=config.rate_limits.joins_per_chat,
            raid_minutes=config.rate_limits.raid_minutes,
            max_input_chars=config.memory.max_input_chars,
            answer_bots=bot_cfg.answer_bots,
            own_accounts=host.own_accounts,
        )
        dispatch = Dispatch()
        quotas = Quotas(
            config.rate_limits.messages_per_day,
            config.rate_limits.tokens_per_day,
            store=QuotaStore(host.db, host.writes, bot_cfg.name),
        )
        if quotas.tokens_per_day:  # else nothing needs the prompt's tokens counted
            agent.on_tokens = quotas.charge_tokens
        pipeline = Pipeline(
            settings,
            dispatch,
            permissions,
            responder=agent,
            audit=host.audit,
            quotas=quotas,
            outbox=host.outbox,
            history=host.history if config.history.enabled else None,
            loops=LoopGuard(
                host.db, bot_cfg.name, budget=bot_cfg.bot_turns, cooldown_s=bot_cfg.bot_cooldown_s
            ),
            metrics=host.metrics,
        )

        async def send(outbound, _bot=bot_cfg.name):
            return await host.send(_bot, outbound)

        classes = plugin_classes if plugin_classes is not None else select_plugins(config, bot_cfg)
        plugin_context = {
            "bot": bot_cfg.name,
            "db": host.db,
            "configs": config.plugins,
            "sender": send,
            "command_prefix": bot_cfg.command_prefix,
            "control": host.control,
        }
        plugins = load_plugins(classes, dispatch=dispatch, **plugin_context)
        slots = [PluginSlot(plugin) for plugin in plugins]
        bot_adapters = (adapters or {}).get(bot_cfg.name)
        if bot_adapters is None:
            bot_adapters = [build_adapter(bot_cfg.name, ch, secrets) for ch in bot_cfg.channels]
        host.add_bot(
            Bot(
                name=bot_cfg.name,
                pipeline=pipeline,
                adapters=list(bot_adapters),
                lifecycle=[
                    (memory.start, memory.close),
                    (quotas.load, _nothing),
                    *((slot.setup, slot.teardown) for slot in slots),
                    (partial(runtime.restore, bot_cfg.name), _nothing),
                ],
            )
        )
        disabled: set[str] = set()
        parts = BotParts(
            name=bot_cfg.name,
            persona=persona_view(persona),
            llm=bot_llm,
            context_tokens=llm_cfg.context_tokens,
            count_tokens=token_counter(bot_llm),  # the model's own tokenizer when it has one
            retrieve=_sources(retriever, collections) if retriever and collections else None,
            plugins=plugins,
            schedules=bot_cfg.schedules,
            disabled=disabled,
        )
        job_parts.append(parts)
        runtime.add(
            LiveBot(
                name=bot_cfg.name,
                persona_id=bot_cfg.persona,
                agent=agent,
                pipeline=pipeline,
                dispatch=dispatch,
                bot_keywords=list(bot_cfg.keywords),
                collections_follow_persona=bot_cfg.knowledge is None,
                slots=slots,
                load_plugin=partial(_fresh_plugin, plugin_context),
                plugin_instances=plugins,
                on_persona=partial(_set_job_persona, parts, agent),
                disabled=disabled,
                make_retriever=partial(_shared_retriever, shared, config, secrets),
            )
        )
    host.control.runtime = runtime
    if scheduler:
        service = SchedulerService(host, config.scheduler, job_parts)
        host.services.append(service)
        host.control.scheduling = service
    return host


def _fluent(config: LLMConfig, llm: BaseChatModel) -> list[str] | None:
    """The languages the model writes well: configured, else what the model says of itself (the
    bundled SmolLM2: English only), else all (None)."""
    if config.fluent_languages is not None:
        return list(config.fluent_languages)
    return getattr(llm, "fluent_languages", None)


def _fresh_plugin(context: dict[str, Any], cls: type[Plugin]) -> Plugin:
    """A new instance of ``cls`` with the bot's plugin context, not registered anywhere yet."""
    return load_plugins([cls], dispatch=Dispatch(), **context)[0]


def _set_job_persona(parts: BotParts, agent: Agent, persona: Persona) -> None:
    parts.persona = persona_view(persona)
    knows = agent.collections and not isinstance(agent.retriever, NoRetrieval)
    parts.retrieve = _sources(agent.retriever, agent.collections) if knows else None


def _shared_retriever(shared: dict[str, Retriever | None], config: AppConfig, secrets: Secrets) -> Retriever:
    """The host's one retriever, built when the first bot needs it."""
    if shared["retriever"] is None:
        shared["retriever"] = build_retriever(config, secrets)
    return shared["retriever"]


def _knowledge_base(config: AppConfig, secrets: Secrets, retriever: Retriever | None) -> KnowledgeBase:
    """The retriever's knowledge base when there is one, else a new one (for /kb)."""
    kb = getattr(retriever, "kb", None)
    return kb if kb is not None else build_knowledge(config, secrets)


async def _nothing() -> None:
    """A lifecycle step with nothing to undo."""


def persona_view(persona: Persona) -> PersonaView:
    return PersonaView(
        name=persona.name,
        system_prompt=persona.system_prompt,
        style=list(persona.style),
        language=persona.language,
        opening_lines=list(persona.opening_lines),
        closing_lines=list(persona.closing_lines),
    )


def _sources(retriever: Retriever, collections: list[str]) -> RetrieveFn:
    async def retrieve(query: str, k: int) -> list[Source]:
        passages = await retriever.retrieve(query, collections)
        return [Source(p.text, p.source, p.location) for p in passages if p.kind == "fact"][:k]

    return retrieve
