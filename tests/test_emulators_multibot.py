"""Several bots on one emulator: the Telegram Bot API fake and the Discord gateway + REST fake serve
more than one token, and each bot hears the others the way the platform delivers them. Driven
through the real client libraries (our adapters on python-telegram-bot and discord.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from telegram import Bot
from telegram.error import Forbidden

from bots.adapters.discord import DiscordAdapter
from bots.adapters.telegram import TelegramAdapter
from bots.core.config import Secrets
from bots.core.events import ChannelKind, ChannelRef, MessageEvent, Outbound
from bots.testing.discord_server import DiscordServer, patch_discord_py
from bots.testing.telegram_server import GROUP_ANONYMOUS_BOT, TelegramServer

WAIT_S = 10.0  # generous: the machine may be busy


class Inbox:
    """A sink for one adapter; :meth:`next` waits for its next event and names what it waited for."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._events: asyncio.Queue[MessageEvent] = asyncio.Queue()

    async def __call__(self, event: MessageEvent) -> None:
        self._events.put_nowait(event)

    async def next(self, what: str, timeout: float = WAIT_S) -> MessageEvent:
        try:
            return await asyncio.wait_for(self._events.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name} got no event within {timeout:g}s: waited for {what}") from None

    def empty(self) -> bool:
        return self._events.empty()


@contextlib.asynccontextmanager
async def running(*adapters: Any) -> AsyncIterator[list[Inbox]]:
    """Start each adapter with its own Inbox; stop them all at the end."""
    inboxes, started = [], []
    try:
        for adapter in adapters:
            inbox = Inbox(adapter.name)
            await adapter.start(inbox)
            started.append(adapter)
            inboxes.append(inbox)
        yield inboxes
    finally:
        for adapter in reversed(started):
            await adapter.stop()


# -- Telegram ------------------------------------------------------------------------------------
KEEPER = "111111:KEEPER-token_a"
SAILOR = "222222:SAILOR-token_b"
PILOT = "333333:PILOT-token_c"


@pytest.fixture
async def tg() -> AsyncIterator[TelegramServer]:
    async with TelegramServer(token=KEEPER, username="keeper_bot", first_name="Keeper") as server:
        yield server


@pytest.fixture
def tg_adapter(tg: TelegramServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(token: str, name: str, **options: Any) -> TelegramAdapter:
        env = f"TG_TOKEN_{name.upper()}"
        monkeypatch.setenv(env, token)
        settings = {"base_url": tg.base_url, "poll_timeout": 10, "token_env": env, **options}
        adapter = TelegramAdapter.from_config(name, settings, Secrets())
        adapter.retry_initial_s = 0.05
        return adapter

    return make


def group_ref(chat: dict[str, Any]) -> ChannelRef:
    return ChannelRef("telegram", str(chat["id"]), ChannelKind.GROUP, chat["title"])


async def test_telegram_each_token_is_its_own_bot(tg, tg_adapter, caplog):
    sailor = tg.add_bot(SAILOR, "sailor_bot", "Sailor")
    assert sailor == {"id": 222222, "is_bot": True, "first_name": "Sailor", "username": "sailor_bot"}
    assert tg.bots == [tg.bot, sailor] and tg.account("@sailor_bot").token == SAILOR
    with pytest.raises(ValueError, match="served already"):
        tg.add_bot("222222:OTHER-secret", "another_bot")
    keeper_adapter, sailor_adapter = tg_adapter(KEEPER, "keeper"), tg_adapter(SAILOR, "sailor")
    async with running(keeper_adapter, sailor_adapter) as (keeper, sailor_in):
        assert (keeper_adapter.self_id, keeper_adapter.self_name) == ("111111", "keeper_bot")
        assert (sailor_adapter.self_id, sailor_adapter.self_name) == ("222222", "sailor_bot")

        to_sailor = tg.private_message("alice", "hello sailor", bot=sailor)
        event = await sailor_in.next("alice's DM to sailor_bot")
        assert (event.text, event.self_id) == ("hello sailor", "222222")
        await tg.wait_confirmed(to_sailor, bot=sailor)
        assert tg.delivered_to(to_sailor) == [sailor] and not tg.is_confirmed(to_sailor)  # not keeper's
        to_keeper = tg.private_message("alice", "hello keeper")
        assert (await keeper.next("alice's DM to keeper_bot")).text == "hello keeper"
        await tg.wait_confirmed(to_keeper)

        await sailor_adapter.send(Outbound(event.channel, "ahoy"))
        reply = await tg.next_sent(bot=sailor)
        assert reply["from"] == sailor and reply["text"] == "ahoy"
        assert tg.sent == [] and tg.sent_by(sailor) == [reply] and tg.all_sent == [reply]
        assert [name for name, _ in tg.account(sailor).calls].count("sendMessage") == 1

        # a bot may write only to users who wrote to it
        bob = tg.private_message("bob", "hi sailor", bot=sailor)
        bob_chat = await sailor_in.next("bob's DM to sailor_bot")
        with pytest.raises(Forbidden, match="can't initiate conversation"):
            await keeper_adapter.send(Outbound(bob_chat.channel, "hi bob, keeper here"))
        assert tg.delivered_to(bob) == [sailor]
    # two long polls on one server: neither took over the other's getUpdates
    assert "terminated by other getUpdates" not in caplog.text
    async with aiohttp.ClientSession() as http, http.get(f"{tg.base_url}/bot444:UNKNOWN/getMe") as response:
        assert response.status == 401


async def test_telegram_group_messages_reach_member_bots_under_their_privacy_mode(tg, tg_adapter):
    sailor = tg.add_bot(SAILOR, "sailor_bot", privacy_mode=True)
    harbour = tg.group("Harbour")  # every served bot is a member
    study = tg.group("Keeper's study", bots=[tg.bot])
    assert tg.members(harbour) == [tg.bot, sailor] and tg.members(study) == [tg.bot]
    async with running(tg_adapter(KEEPER, "keeper"), tg_adapter(SAILOR, "sailor")) as (keeper, sailor_in):
        chatter = tg.group_message(harbour, "alice", "nice weather")
        asked = tg.group_message(harbour, "alice", "what say you?", mention_bot=sailor)
        for_keeper = tg.command("alice", "ping", chat=harbour, to=tg.bot)  # /ping@keeper_bot
        plain = tg.command("alice", "ping", chat=harbour)  # /ping: every bot's command
        assert tg.delivered_to(chatter) == [tg.bot]  # sailor_bot is in privacy mode
        assert tg.delivered_to(asked) == tg.delivered_to(plain) == [tg.bot, sailor]
        assert tg.delivered_to(for_keeper) == [tg.bot]
        assert asked["message"]["text"] == "@sailor_bot what say you?"
        for update in (chatter, asked, for_keeper, plain):
            event = await keeper.next(f"update {update['update_id']} at keeper_bot")
            assert event.message_id == str(update["message"]["message_id"])
        seen = await sailor_in.next("the mention of sailor_bot")
        assert seen.mentions_me and seen.channel.id == str(harbour["id"])
        assert (await sailor_in.next("the unaddressed /ping at sailor_bot")).text == "/ping"

        # a group it is not in: no updates, and sendMessage is refused
        hidden = tg.group_message(study, "bob", "psst", mention_bot=sailor)
        assert tg.delivered_to(hidden) == [tg.bot] and tg.update_for(hidden, bot=sailor) is None
        assert (await keeper.next("the message in keeper_bot's study")).text.endswith("psst")
        async with Bot(SAILOR, base_url=f"{tg.base_url}/bot") as bot:
            assert not bot.can_read_all_group_messages  # getMe answers for this token
            with pytest.raises(Forbidden, match="not a member of the supergroup chat"):
                await bot.send_message(study["id"], "let me in")
            tg.join(study, sailor)
            await bot.send_message(study["id"], "thanks")
        tg.leave(harbour, tg.bot)
        left = tg.group_message(harbour, "alice", "@keeper_bot @sailor_bot anyone?")
        assert tg.delivered_to(left) == [sailor]
        assert (await sailor_in.next("the mention after keeper_bot left")).text.endswith("anyone?")
        await tg.wait_all_confirmed(WAIT_S)
        assert keeper.empty() and sailor_in.empty()


async def test_telegram_bot_to_bot_mode_delivers_other_bots_messages(tg, tg_adapter):
    sailor = tg.add_bot(SAILOR, "sailor_bot", bot_to_bot=True)
    pilot = tg.add_bot(PILOT, "pilot_bot", privacy_mode=True, bot_to_bot=True)
    harbour = tg.group("Harbour")
    keeper_adapter, sailor_adapter, pilot_adapter = (
        tg_adapter(KEEPER, "keeper"), tg_adapter(SAILOR, "sailor"), tg_adapter(PILOT, "pilot"),
    )  # fmt: skip
    async with running(keeper_adapter, sailor_adapter, pilot_adapter) as (keeper, sailor_in, pilot_in):
        await keeper_adapter.send(Outbound(group_ref(harbour), "the lamp is lit"))
        lit = await tg.next_sent()
        # sailor_bot (mode on, privacy off) hears it; pilot_bot is in privacy mode; never the sender
        assert tg.delivered_to(lit) == [sailor]
        event = await sailor_in.next("keeper_bot's message at sailor_bot")
        assert event.author.is_bot and event.author.id == "111111" and event.text == "the lamp is lit"
        assert event.raw["message"]["from"] == tg.bot

        await keeper_adapter.send(Outbound(group_ref(harbour), "@pilot_bot bring her in"))
        called = await tg.next_sent()
        assert called["entities"] == [{"type": "mention", "offset": 0, "length": 10}]
        assert tg.delivered_to(called) == [sailor, pilot]
        assert (await pilot_in.next("the mention of pilot_bot")).mentions_me
        await sailor_in.next("keeper_bot's mention of pilot_bot at sailor_bot")

        # keeper_bot has the mode off: bots' messages never reach it, even addressed ones
        await pilot_adapter.send(
            Outbound(group_ref(harbour), "@keeper_bot aye", reply_to=str(called["message_id"]))
        )
        aye = await tg.next_sent(bot=pilot)
        assert tg.delivered_to(aye) == [sailor]
        await sailor_in.next("pilot_bot's answer at sailor_bot")
        # a reply to pilot_bot's own message passes its privacy mode
        await sailor_adapter.send(Outbound(group_ref(harbour), "well done", reply_to=str(aye["message_id"])))
        done = await tg.next_sent(bot=sailor)
        assert tg.delivered_to(done) == [pilot]
        assert (await pilot_in.next("sailor_bot's reply at pilot_bot")).replies_to_me

        tg.bot_to_bot = True  # the default bot's switch
        await sailor_adapter.send(Outbound(group_ref(harbour), "fair winds"))
        winds = await tg.next_sent(bot=sailor)
        assert tg.delivered_to(winds) == [tg.bot]
        assert (await keeper.next("sailor_bot's message at keeper_bot")).author.id == "222222"
        await tg.wait_confirmed(winds)  # a sent Message works too: the update that carried it
        await tg.wait_all_confirmed(WAIT_S)
        assert [m["from"]["username"] for m in tg.all_sent] == [
            "keeper_bot", "keeper_bot", "pilot_bot", "sailor_bot", "sailor_bot"
        ]  # fmt: skip
        assert len(tg.sent_by(pilot)) == 1 and keeper.empty() and pilot_in.empty() and sailor_in.empty()


async def test_telegram_third_party_bots_and_anonymous_admins(tg, tg_adapter):
    sailor = tg.add_bot(SAILOR, "sailor_bot", bot_to_bot=True)
    harbour = tg.group("Harbour")
    weather = tg.user("Weather", "weather_bot", is_bot=True)
    assert weather["is_bot"] and tg.user("otherbot", is_bot=True)["username"] == "otherbot"
    async with running(tg_adapter(KEEPER, "keeper"), tg_adapter(SAILOR, "sailor")) as (keeper, sailor_in):
        forecast = tg.group_message(harbour, weather, "rain at noon", mention_bot=True)
        assert tg.delivered_to(forecast) == [sailor]  # keeper_bot is not in bot-to-bot mode
        event = await sailor_in.next("weather_bot's forecast at sailor_bot")
        assert event.author.is_bot and event.author.id == str(weather["id"])

        hush = tg.anonymous_admin_message(harbour, "quiet please", signature="Harbourmaster")
        message = hush["message"]
        assert message["from"] == GROUP_ANONYMOUS_BOT and message["from"]["id"] == 1087968824
        assert (
            message["sender_chat"]["id"] == harbour["id"] and message["author_signature"] == "Harbourmaster"
        )
        assert tg.delivered_to(hush) == [tg.bot, sailor]  # a person speaks: every member bot hears
        for inbox in (keeper, sailor_in):
            raw = (await inbox.next(f"the anonymous admin at {inbox.name}")).raw["message"]
            assert raw["from"]["username"] == "GroupAnonymousBot" and raw["sender_chat"] == harbour
        # the same, spelled out
        again = tg.group_message(harbour, GROUP_ANONYMOUS_BOT, "thank you")
        assert again["message"]["sender_chat"] == harbour and tg.delivered_to(again) == [tg.bot, sailor]
        # a served bot may be the sender of a user-side message too: it never hears itself
        echo = tg.group_message(harbour, sailor, "testing, testing")
        assert tg.delivered_to(echo) == [] and "update_id" not in echo


async def test_telegram_one_bot_on_a_webhook_another_polling(tg, tg_adapter, monkeypatch):
    monkeypatch.setenv("TELEGRAM_WEBHOOK_SECRET", "keeper-secret_1")
    sailor = tg.add_bot(SAILOR, "sailor_bot")
    harbour = tg.group("Harbour")
    hooked = tg_adapter(KEEPER, "keeper", mode="webhook", port=0, path="/keeper")
    async with running(hooked, tg_adapter(SAILOR, "sailor")) as (keeper, sailor_in):
        assert tg.webhook is not None and tg.account(sailor).webhook is None
        said = tg.group_message(harbour, "alice", "good evening")
        assert (await keeper.next("the message via keeper_bot's webhook")).text == "good evening"
        assert (await sailor_in.next("the message via sailor_bot's getUpdates")).text == "good evening"
        await tg.wait_confirmed(said)
        await tg.wait_confirmed(said, bot=sailor)
        assert tg.webhook_deliveries == [(said["update_id"], 200)]
        assert tg.account(sailor).webhook_deliveries == [] and tg.requests("getUpdates", bot=sailor)


# -- Discord -------------------------------------------------------------------------------------
DC_KEEPER = "MTIz.keeper.token-a"
DC_SAILOR = "MTIz.sailor.token-b"


@pytest.fixture
async def dc() -> AsyncIterator[DiscordServer]:
    async with DiscordServer(token=DC_KEEPER, bot_name="keeper") as server:
        with patch_discord_py(server):  # one patch serves every client in the process
            yield server


def dc_adapter(token: str, name: str) -> DiscordAdapter:
    return DiscordAdapter(
        name, token=token, guild_ready_timeout=0.05, restart_delay=0.05, ready_timeout=WAIT_S
    )


async def test_discord_each_token_logs_in_as_its_own_bot(dc):
    sailor = dc.add_bot(DC_SAILOR, "sailor", global_name="Sailor")
    assert sailor.bot and dc.bots == [dc.bot, sailor] and dc.account("sailor").token == DC_SAILOR
    keeper_adapter, sailor_adapter = dc_adapter(DC_KEEPER, "keeper"), dc_adapter(DC_SAILOR, "sailor")
    async with running(keeper_adapter, sailor_adapter) as (keeper, sailor_in):
        assert (keeper_adapter.self_id, keeper_adapter.self_name) == (dc.bot.id, "keeper")
        assert (sailor_adapter.self_id, sailor_adapter.self_name) == (sailor.id, "sailor")
        await dc.wait_identified(bot=sailor)
        assert dc.identify_count == 1 and dc.account(sailor).identify_count == 1
        assert {"GET /users/@me", "GET /oauth2/applications/@me"} <= set(dc.account(sailor).requests)
        assert sailor_adapter.client is not None
        assert sailor_adapter.client.application_id == int(sailor.id)
        guild = sailor_adapter.client.get_guild(int(dc.guild.id))
        assert guild is not None and guild.me.id == int(sailor.id)
        role = guild.get_role(int(dc.bot_role_id))  # the other bot's managed role is in the server
        assert role is not None and role.tags is not None and role.tags.bot_id == int(dc.bot.id)

        dm = await dc.dm(dc.alice, "hello sailor", bot=sailor)
        event = await sailor_in.next("alice's DM to sailor")
        assert event.channel.kind is ChannelKind.DM and event.message_id == dm["id"]
        assert dc.dm_channels == {} and dc.account(sailor).dm_channels[dc.alice.id].id == dm["channel_id"]
        with pytest.raises(discord.Forbidden):  # another bot's DM channel
            await keeper_adapter.send(Outbound(event.channel, "psst"))
        await dc.dm(dc.alice, "hello keeper")
        assert (await keeper.next("alice's DM to keeper")).text == "hello keeper"  # and nothing before
    unknown = {"Authorization": "Bot nobody"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{dc.base_url}/api/v10/users/@me", headers=unknown) as r,
    ):
        assert r.status == 401


async def test_discord_messages_reach_every_bot_but_their_author(dc):
    sailor = dc.add_bot(DC_SAILOR, "sailor")
    keeper_adapter, sailor_adapter = dc_adapter(DC_KEEPER, "keeper"), dc_adapter(DC_SAILOR, "sailor")
    async with running(keeper_adapter, sailor_adapter) as (keeper, sailor_in):
        asked = await dc.guild_message(dc.general, dc.alice, "what news?", mention_bot=sailor)
        at_keeper = await keeper.next("alice's message at keeper")
        at_sailor = await sailor_in.next("alice's message at sailor")
        assert at_keeper.message_id == at_sailor.message_id == asked["id"]
        assert at_sailor.mentions_me and not at_keeper.mentions_me

        await sailor_adapter.send(Outbound(at_sailor.channel, "fair winds", reply_to=at_sailor.message_id))
        posted = await dc.next_sent(bot=sailor)
        assert posted.author_id == sailor.id and posted.message["author"]["bot"] is True
        assert dc.sent == [] and dc.sent_by(sailor) == [posted] and dc.all_sent == [posted]
        heard = await keeper.next("sailor's reply at keeper")
        assert heard.author.is_bot and heard.author.id == sailor.id and heard.message_id == posted.id
        assert heard.text == "fair winds" and heard.reply_to is not None
        assert heard.reply_to.message_id == asked["id"]
        assert posted.id in dc.account(sailor).seq_by_message  # Discord echoes a bot's own post to it

        await keeper_adapter.send(Outbound(heard.channel, "and to you", reply_to=heard.message_id))
        answer = await dc.next_sent()
        back = await sailor_in.next("keeper's reply at sailor")
        assert back.author.id == dc.bot.id and back.replies_to_me and back.message_id == answer.id
        assert [s.author_id for s in dc.all_sent] == [sailor.id, dc.bot.id]

        await dc.guild_message(dc.general, dc.bob, "sentinel")  # events arrive in order: nothing between
        assert (await keeper.next("bob's sentinel at keeper")).text == "sentinel"
        assert (await sailor_in.next("bob's sentinel at sailor")).text == "sentinel"


async def test_discord_without_echo_a_bot_never_gets_its_own_post():
    async with DiscordServer(token=DC_KEEPER, echo_own_messages=False) as dc:
        sailor = dc.add_bot(DC_SAILOR, "sailor")
        keeper_adapter, sailor_adapter = dc_adapter(DC_KEEPER, "keeper"), dc_adapter(DC_SAILOR, "sailor")
        with patch_discord_py(dc):
            async with running(keeper_adapter, sailor_adapter) as (keeper, _):
                general = ChannelRef("discord", dc.general.id, ChannelKind.GROUP, "general")
                await sailor_adapter.send(Outbound(general, "anyone about?"))
                posted = await dc.next_sent(bot=sailor)
                assert (await keeper.next("sailor's post at keeper")).message_id == posted.id
                assert posted.id in dc.seq_by_message and posted.id not in dc.account(sailor).seq_by_message


async def test_discord_third_party_bots_and_mentions_in_bot_posts(dc):
    sailor = dc.add_bot(DC_SAILOR, "sailor")
    helper = dc.user("helperbot", bot=True)  # a bot nobody here serves
    keeper_adapter, sailor_adapter = dc_adapter(DC_KEEPER, "keeper"), dc_adapter(DC_SAILOR, "sailor")
    async with running(keeper_adapter, sailor_adapter) as (keeper, sailor_in):
        text = f"{dc.bot.mention} {sailor.mention} ping"
        said = await dc.guild_message(dc.thread, helper, text, mentions=[dc.bot, sailor])
        assert said["author"]["bot"] is True
        for inbox in (keeper, sailor_in):
            event = await inbox.next(f"helperbot's message at {inbox.name}")
            assert event.author.is_bot and event.author.id == helper.id and event.mentions_me
            assert event.channel.kind is ChannelKind.THREAD

        # a REST post without allowed_mentions pings (and mentions) whoever its content names
        async with aiohttp.ClientSession() as http:
            url = f"{dc.base_url}/api/v10/channels/{dc.general.id}/messages"
            body = {"content": f"{dc.bot.mention} over to you"}
            async with http.post(url, json=body, headers={"Authorization": f"Bot {DC_SAILOR}"}) as r:
                assert r.status == 200 and (await r.json())["author"]["id"] == sailor.id
        pinged = await keeper.next("sailor's raw post at keeper")
        assert pinged.mentions_me and pinged.text == "@keeper over to you"
        # our adapter posts with allowed_mentions none: Discord then mentions nobody, as here
        general = ChannelRef("discord", dc.general.id, ChannelKind.GROUP, "general")
        await sailor_adapter.send(Outbound(general, f"{dc.bot.mention} quietly"))
        quiet = await keeper.next("sailor's adapter post at keeper")
        assert not quiet.mentions_me and quiet.text == f"<@{dc.bot.id}> quietly"
        assert [s.pinged_users for s in dc.sent_by(sailor)] == [[dc.bot.id], []]
