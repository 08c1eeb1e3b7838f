"""Wiring of ``bots gateway`` and ``bots worker`` from the config (beside :mod:`bots.assembly`)."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from langchain_core.language_models import BaseChatModel
from redis.asyncio import Redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from bots.assembly import build_adapter, build_host
from bots.core.adapter import Adapter
from bots.core.config import AppConfig, ConfigError, Secrets
from bots.core.storage import Database
from bots.scale.bus import Bus, Keys
from bots.scale.gateway import Gateway
from bots.scale.remote import HandOverOutbox, RemoteChannel
from bots.scale.worker import Worker

REDIS_URL_ENV = "BOTS_REDIS_URL"  # a whole URL, password included (env or .env only)


def redis_client(config: AppConfig, secrets: Secrets) -> Redis:
    """The Redis of ``[scale]`` (``$BOTS_REDIS_URL`` wins); short network failures are retried."""
    from_env = secrets.get(REDIS_URL_ENV)
    url = from_env.get_secret_value() if from_env is not None else config.scale.redis_url
    return Redis.from_url(
        url,
        decode_responses=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=5),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        health_check_interval=30,
    )


def bus_for(config: AppConfig, secrets: Secrets) -> Bus:
    return Bus(redis_client(config, secrets), Keys(config.scale.prefix), config.scale.shards)


def process_name(role: str) -> str:
    return f"{role}-{socket.gethostname()}-{os.getpid()}"


def build_gateway(
    config: AppConfig,
    secrets: Secrets,
    *,
    bots: Sequence[str] = (),
    name: str | None = None,
    adapters: dict[str, Sequence[Adapter]] | None = None,
) -> Gateway:
    """A gateway for the channels of ``bots`` (all bots when empty); ``adapters`` replace the
    configured channels (tests)."""
    known = [b.name for b in config.bots]
    unknown = [b for b in bots if b not in known]
    if unknown:
        raise ConfigError(f"--bot {unknown[0]}: no such bot in the config (bots: {', '.join(known)})")
    held: dict[str, list[Adapter]] = {}
    for bot in config.bots:
        if bots and bot.name not in bots:
            continue
        given = (adapters or {}).get(bot.name)
        served = [ch.name or ch.type for ch in bot.channels if ch.type == "openai"]
        if given is None and served:
            raise ConfigError(
                f"bot {bot.name}: channel {served[0]} (openai) is served by the web app, which a "
                "gateway does not run: serve it with bots run ([web] enabled) or bots serve"
            )
        held[bot.name] = (
            list(given)
            if given is not None
            else [build_adapter(bot.name, ch, secrets) for ch in bot.channels]
        )
    return Gateway(
        Database.for_config(config, secrets),
        bus_for(config, secrets),
        held,
        name=name or process_name("gateway"),
    )


def build_worker(
    config: AppConfig,
    secrets: Secrets,
    *,
    name: str | None = None,
    scheduler: bool = False,
    llm: BaseChatModel | None = None,
) -> Worker:
    """A worker for every bot of the config. ``scheduler``: this worker also runs the scheduled
    posts (give that to one worker); ``llm`` replaces the configured model (tests)."""
    bus = bus_for(config, secrets)
    channels = {
        bot.name: [RemoteChannel(bot.name, ch.name or ch.type, bus.hand_over) for ch in bot.channels]
        for bot in config.bots
    }
    host = build_host(config, secrets, adapters=channels, scheduler=scheduler, llm=llm)
    outbox = HandOverOutbox(host.db, host.writes, bus.hand_over)  # replies go to the gateways
    host.outbox = outbox
    for bot in host.bots.values():
        bot.pipeline.outbox = outbox
    settings = config.scale
    return Worker(
        host,
        bus,
        [c for group in channels.values() for c in group],
        name=name or process_name("worker"),
        concurrency=settings.concurrency,
        lease_s=settings.lease_s,
    )
