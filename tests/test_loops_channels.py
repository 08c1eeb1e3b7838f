"""Bots never loop, on the real client libraries: two personas of one host in one Telegram group (Bot-to-Bot
Communication Mode) and in one Discord channel, each addressed by a keyword the other's reply contains,
stop after their budgets; a third-party bot is not answered by default; an allowed one gets at most the
budget, and a restart in the middle does not give it a fresh one."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import BaseMessage

from bots.adapters.discord import DiscordAdapter
from bots.adapters.telegram import TelegramAdapter
from bots.agent.persona import GroupPolicy, Persona
from bots.agent.retrieval import NoRetrieval
from bots.assembly import build_host
from bots.core.config import AppConfig, Secrets
from bots.core.host import Host
from bots.testing import FakeLLM
from bots.testing.discord_server import DiscordServer, patch_discord_py
from bots.testing.telegram_server import TelegramServer

WAIT_S = 20.0  # generous: the machine may be busy
KEEPER_TOKEN, FERRY_TOKEN = "111111:KEEPER-token_a", "222222:FERRY-token_b"

# Each persona is addressed by a word the other one's answer contains: a loop waiting to happen.
PERSONAS = {
    "keeper": Persona(
        name="Keeper",
        system_prompt="You are the Keeper.",
        group=GroupPolicy(reply="keywords", keywords=["lamp"]),
    ),
    "ferry": Persona(
        name="Ferryman",
        system_prompt="You are the Ferryman.",
        group=GroupPolicy(reply="keywords", keywords=["fog"]),
    ),
}
ANSWERS = {
    "Keeper": "Fog is coming in, so I trim the wick early.",
    "Ferryman": "I wait until the lamp shows.",
}


class PersonaLLM(FakeLLM):
    """Answers as whichever persona's prompt it is given (one model serves both bots)."""

    def _next(self, messages: list[BaseMessage]) -> str:
        self.prompts.append(list(messages))
        system = str(messages[0].content)
        return next(answer for name, answer in ANSWERS.items() if f"You are the {name}" in system)


@contextlib.asynccontextmanager
async def two_bots(adapters: dict[str, Any], data_dir: Path, **bot_options: Any) -> AsyncIterator[Host]:
    """A host with the keeper and the ferryman bots on ``adapters``, both allowed to answer bots."""
    config = AppConfig.model_validate(
        {
            "data_dir": data_dir,
            "llm": {"provider": "fake"},
            "bots": [{"name": name, "persona": name, **bot_options} for name in adapters],
        }
    )
    host = build_host(config, Secrets(), personas=PERSONAS, llm=PersonaLLM(), adapters=adapters,
                      plugin_classes=[], retriever=NoRetrieval(), scheduler=False)  # fmt: skip
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


# -- Telegram ------------------------------------------------------------------------------------
@pytest.fixture
async def tg() -> AsyncIterator[TelegramServer]:
    async with TelegramServer(token=KEEPER_TOKEN, username="keeper_bot", bot_to_bot=True) as server:
        server.add_bot(FERRY_TOKEN, "ferry_bot", "Ferryman", bot_to_bot=True)
        yield server


def tg_adapter(tg: TelegramServer, token: str, name: str, monkeypatch: pytest.MonkeyPatch) -> TelegramAdapter:
    monkeypatch.setenv(f"TG_{name.upper()}", token)
    settings = {"base_url": tg.base_url, "poll_timeout": 10, "token_env": f"TG_{name.upper()}"}
    adapter = TelegramAdapter.from_config(name, settings, Secrets())
    adapter.retry_initial_s = 0.05
    return adapter


async def settled(tg: TelegramServer, host: Host, update: Any = None) -> None:
    """``update`` (else every update so far) was taken by the keeper (else by its bots) and handled."""
    if update is None:
        await tg.wait_all_confirmed(WAIT_S)
    else:
        await tg.wait_confirmed(update, WAIT_S, bot=KEEPER_TOKEN)
    await host.drain(timeout=WAIT_S)


async def test_telegram_two_personas_stop_after_their_budgets(tg, tmp_path, monkeypatch):
    group = tg.group("Harbour")
    adapters = {"keeper": [tg_adapter(tg, KEEPER_TOKEN, "keeper", monkeypatch)],
                "ferry": [tg_adapter(tg, FERRY_TOKEN, "ferry", monkeypatch)]}  # fmt: skip
    async with two_bots(adapters, tmp_path, answer_bots=True, bot_turns=3) as host:
        tg.group_message(group, "alice", "How is the lamp tonight?")
        # the keeper answers alice and three of the ferryman's messages; the ferryman three of the keeper's
        await tg.wait_for(lambda: len(tg.all_sent) >= 7, WAIT_S, what="seven bot messages")
        last = tg.sent_by(KEEPER_TOKEN)[-1]
        await tg.wait_confirmed(last, WAIT_S, bot=FERRY_TOKEN)  # the ferryman heard the last one...
        await settled(tg, host)
        assert len(tg.sent_by(KEEPER_TOKEN)) == 4 and len(tg.sent_by(FERRY_TOKEN)) == 3  # ...and let it be
        stopped = "\n".join(host.control.status())
        assert "bot-to-bot loops stopped: 1" in stopped


async def test_telegram_other_bots_are_not_answered_unless_allowed_and_the_budget_survives_a_restart(
    tg, tmp_path, monkeypatch
):
    group = tg.group("Harbour")
    weather = tg.user("Weather", "weather_bot", is_bot=True)
    adapters = {"keeper": [tg_adapter(tg, KEEPER_TOKEN, "keeper", monkeypatch)]}
    async with two_bots(adapters, tmp_path / "a") as host:  # answer_bots defaults to false
        update = tg.group_message(group, weather, "@keeper_bot the lamp looks dim", mention_bot=True)
        await settled(tg, host, update)
        assert tg.sent_by(KEEPER_TOKEN) == []

    data = tmp_path / "b"
    allowed = {"answer_bots": ["weather_bot"], "bot_turns": 3}
    async with two_bots(
        {"keeper": [tg_adapter(tg, KEEPER_TOKEN, "keeper", monkeypatch)]}, data, **allowed
    ) as host:
        for i in range(2):
            await settled(tg, host, tg.group_message(group, weather, f"lamp report {i}"))
        assert len(tg.sent_by(KEEPER_TOKEN)) == 2
    # a restart in the middle of the exchange: the budget is not renewed
    async with two_bots(
        {"keeper": [tg_adapter(tg, KEEPER_TOKEN, "keeper", monkeypatch)]}, data, **allowed
    ) as host:
        for i in range(2, 5):
            await settled(tg, host, tg.group_message(group, weather, f"lamp report {i}"))
        assert len(tg.sent_by(KEEPER_TOKEN)) == 3
        await settled(tg, host, tg.group_message(group, "alice", "the lamp is lovely"))  # a person
        assert len(tg.sent_by(KEEPER_TOKEN)) == 4


async def test_telegram_an_anonymous_admin_is_a_person(tg, tmp_path, monkeypatch):
    group = tg.group("Harbour")
    adapters = {"keeper": [tg_adapter(tg, KEEPER_TOKEN, "keeper", monkeypatch)]}
    async with two_bots(adapters, tmp_path) as host:
        await settled(tg, host, tg.anonymous_admin_message(group, "is the lamp lit?"))
        assert len(tg.sent_by(KEEPER_TOKEN)) == 1


def watch_stops(host: Host, bot: str) -> asyncio.Event:
    """An event set when ``bot`` refuses a bot's message for its spent budget (state inside the host,
    which no emulator event announces)."""
    guard = host.bots[bot].pipeline.loops
    stopped, counted = asyncio.Event(), guard.bot_turn

    async def bot_turn(chat: str) -> bool:
        allowed = await counted(chat)
        if not allowed:
            stopped.set()
        return allowed

    guard.bot_turn = bot_turn  # type: ignore[method-assign]
    return stopped


async def waited(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), WAIT_S)
    except TimeoutError:
        raise AssertionError(f"waited {WAIT_S:g}s for {what}") from None


# -- Discord -------------------------------------------------------------------------------------
@pytest.fixture
async def dc() -> AsyncIterator[DiscordServer]:
    async with DiscordServer(token=KEEPER_TOKEN, bot_name="keeper") as server:
        server.add_bot(FERRY_TOKEN, "ferry")
        with patch_discord_py(server):
            yield server


def dc_adapter(token: str, name: str) -> DiscordAdapter:
    return DiscordAdapter(
        name, token=token, guild_ready_timeout=0.05, restart_delay=0.05, ready_timeout=WAIT_S
    )


async def test_discord_two_personas_stop_after_their_budgets(dc, tmp_path):
    adapters = {"keeper": [dc_adapter(KEEPER_TOKEN, "keeper")], "ferry": [dc_adapter(FERRY_TOKEN, "ferry")]}
    async with two_bots(adapters, tmp_path, answer_bots=True, bot_turns=2) as host:
        ferry_stopped = watch_stops(host, "ferry")
        await dc.guild_message(dc.general, dc.user("alice"), "How is the lamp tonight?")
        await dc.wait_for(lambda: len(dc.all_sent) >= 5, WAIT_S, what="five bot messages")
        # the keeper's last message reaches the ferryman, whose budget is spent: nothing follows
        await waited(ferry_stopped, "the ferryman to refuse the keeper's last message")
        await host.drain(timeout=WAIT_S)
        assert len(dc.sent_by(KEEPER_TOKEN)) == 3 and len(dc.sent_by(FERRY_TOKEN)) == 2


async def test_discord_a_third_party_bot_is_not_answered_by_default(dc, tmp_path):
    helper = dc.user("helperbot", bot=True)
    async with two_bots({"keeper": [dc_adapter(KEEPER_TOKEN, "keeper")]}, tmp_path) as host:
        await dc.guild_message(dc.general, helper, "the lamp is out", mention_bot=True)
        await dc.guild_message(dc.general, dc.user("alice"), "and the lamp?")  # a person, after it
        await dc.wait_for(lambda: len(dc.all_sent) >= 1, WAIT_S, what="the answer to alice")
        await host.drain(timeout=WAIT_S)
        [answer] = dc.sent_by(KEEPER_TOKEN)
        assert answer.content.startswith("Fog is coming in")
