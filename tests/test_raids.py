"""Join floods: past ``joins_per_chat`` a chat is in raid mode; raiders are neither greeted nor answered."""

from __future__ import annotations

import dataclasses
import time

from bots.adapters.telegram import TelegramAdapter
from bots.core.config import Secrets
from bots.core.events import Joined
from bots.plugins import Invocation, Plugin, on_message
from bots.testing import FakeAdapter
from bots.testing.telegram_server import TelegramServer


class Greeter(Plugin):
    name = "greeter"

    @on_message()
    async def greet(self, inv: Invocation) -> bool:
        if inv.event.joined:
            await inv.reply("welcome, " + ", ".join(j.name for j in inv.event.joined))
            return True
        return False


def join(adapter: FakeAdapter, user: str, chat: str = "g1"):
    event = adapter.event("", user=user, chat=chat)
    return dataclasses.replace(event, segments=(Joined(user, user.title()),))


async def test_a_join_flood_turns_on_raid_mode(harness):
    h = await harness(plugins=["basics", Greeter], rate_limits={"joins_per_chat": "3/minute"})
    for user in ("ann", "ben", "cat"):
        assert [o.text for o in await h.ask(join(h.adapter, user))] == [f"welcome, {user.title()}"]
    for user in ("bot1", "bot2", "bot3"):  # the fourth join in a minute starts the raid
        assert await h.ask(join(h.adapter, user)) == []
    assert await h.ask("buy cheap followers", user="bot2", chat="g1", mention=True) == []
    assert len(await h.ask("what about the fog?", user="ann", chat="g1", mention=True)) == 1
    assert len(await h.ask("hello", user="dan", chat="g2", mention=True)) == 1  # other chats carry on
    assert h.host.bots["testbot"].pipeline.raids.in_raid("fake:g1")


def test_raid_mode_ends():
    from bots.core.raid import RaidGuard

    now = [1000.0]
    guard = RaidGuard("2/minute", minutes=5, clock=lambda: now[0])
    assert not guard.on_joins("c", ["a", "b"])
    assert guard.on_joins("c", ["x"]) and guard.is_raider("c", "x") and not guard.is_raider("c", "a")
    now[0] += 5 * 60 + 1
    assert not guard.in_raid("c") and not guard.is_raider("c", "x")


async def test_telegram_new_members_are_joins(harness, monkeypatch):
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "123:TEST")
    async with TelegramServer(token="123:TEST") as tg:
        adapter = TelegramAdapter.from_config("tg", {"base_url": tg.base_url, "poll_timeout": 5}, Secrets())
        await harness(adapter=adapter, plugins=["basics", Greeter])
        group, newcomer = tg.group("Readers"), tg.user("Lin", "lin")
        message = {"message_id": 7, "date": int(time.time()), "chat": group, "from": newcomer}
        tg.push_raw({"message": message | {"new_chat_members": [newcomer]}})
        assert (await tg.next_sent())["text"] == "welcome, Lin"
