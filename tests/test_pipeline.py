"""Routing, permissions, dedupe, rate limits, mute/ban, listeners and error isolation."""

from __future__ import annotations

import logging

from fixtures.prose import varied_text

from bots.core.events import ChannelKind, ChannelRef, MessageEvent, UserRef
from bots.core.permissions import NOT_ALLOWED
from bots.plugins import Invocation, Plugin, Role, command, on_message
from bots.testing import FakeAdapter, FakeLLM


class AdminPlugin(Plugin):
    name = "admin-test"

    @command("secret", permission=Role.OPERATOR, help="operators only")
    async def secret(self, inv: Invocation) -> None:
        await inv.reply("the secret")

    @command("boom")
    async def boom(self, inv: Invocation) -> None:
        raise RuntimeError("broken command")


class Recorder(Plugin):
    name = "recorder"
    seen: list[str]

    async def setup(self) -> None:
        self.seen = []

    @on_message(priority=10)
    async def record(self, inv: Invocation) -> bool:
        self.seen.append(inv.text)
        return inv.text == "swallow"  # stop propagation for this one message


async def test_command_in_dm_and_group(harness):
    h = await harness()
    assert [o.text for o in await h.ask("/ping")] == ["pong"]
    group_reply = await h.ask("/ping", chat="g1")
    assert [o.text for o in group_reply] == ["pong"]
    assert group_reply[0].reply_to is not None  # answers in groups thread to the trigger
    assert [o.text for o in await h.ask("/ping@Bot", chat="g1")] == ["pong"]
    assert [o.text for o in await h.ask("ping", chat="g1", mention=True)] == ["pong"]
    assert h.llm.prompts == []  # commands never reach the model


async def test_agent_fallback_only_when_addressed(harness):
    h = await harness(llm=FakeLLM(default="hello from the persona"))
    assert await h.ask("just chatting among ourselves", chat="g1") == []
    assert h.llm.prompts == []
    dm = await h.ask("hi")
    assert [o.text for o in dm] == ["hello from the persona"]
    assert dm[0].reply_to is None
    event = await h.push("what do you think?", chat="g1", mention=True)
    await h.drain()
    mention = h.adapter.take_sent()
    assert mention[0].reply_to == event.message_id
    assert "@Bot" not in h.llm.last_prompt[-1].content  # own mention stripped from the prompt
    assert len(await h.ask("and you?", chat="g1", reply_to_bot=True)) == 1
    assert len(h.llm.prompts) == 3


async def test_keyword_and_always_policies(harness):
    from bots.agent.persona import Persona

    keyword_persona = Persona(
        name="K", system_prompt="You are K.", group={"reply": "keywords", "keywords": ["Keeper"]}
    )
    h = await harness(persona=keyword_persona)
    assert len(await h.ask("hey keeper, fog tonight?", chat="g1")) == 1
    assert await h.ask("nothing to see here", chat="g1") == []

    always = Persona(name="A", system_prompt="You are A.", group={"reply": "always"})
    h2 = await harness(persona=always, data_dir=h.config.data_dir.parent / "var2")
    assert len(await h2.ask("anything at all", chat="g1")) == 1


async def test_unknown_command(harness):
    h = await harness()
    reply = await h.ask("/nosuch")
    assert reply[0].text == "Unknown command /nosuch. Try /help."
    assert await h.ask("/nosuch", chat="g1") == []  # may belong to another bot in the group
    assert h.llm.prompts == []


async def test_permission_refusal_and_spoofed_name(harness):
    h = await harness(plugins=["basics", AdminPlugin], roles={"operators": ["fake:op1"]})
    assert [o.text for o in await h.ask("/secret", user="u1")] == [NOT_ALLOWED]
    # a display name is never a credential
    spoof = await h.ask("/secret", user="u2", user_name="op1")
    assert [o.text for o in spoof] == [NOT_ALLOWED]
    assert [o.text for o in await h.ask("/secret", user="op1")] == ["the secret"]
    help_member = (await h.ask("/help", user="u1"))[0].text
    help_operator = (await h.ask("/help", user="op1"))[0].text
    assert "/secret" not in help_member and "/secret" in help_operator


async def test_dedupe_repeated_platform_message_id(harness):
    h = await harness()
    first = await h.ask("hello", message_id="same-id")
    again = await h.ask("hello", message_id="same-id")
    assert len(first) == 1 and again == []
    assert len(h.llm.prompts) == 1
    # the same id in another chat is another message
    assert len(await h.ask("hello", message_id="same-id", chat="g2", mention=True)) == 1


async def test_rate_limit_per_user(harness):
    h = await harness(
        rate_limits={"per_user": "2/minute", "per_chat": "100/minute"},
        roles={"operators": ["fake:op"]},
    )
    assert len(await h.ask("one")) == 1
    assert len(await h.ask("two")) == 1
    busy = await h.ask("three")
    assert [o.text for o in busy] == [h.host.bots["testbot"].pipeline.settings.busy_reply]
    assert await h.ask("four") == []  # told once per window, then silent
    assert len(h.llm.prompts) == 2
    assert len(await h.ask("hi", user="u2")) == 1  # other users are not affected
    for _ in range(4):
        assert len(await h.ask("op talk", user="op")) == 1  # operators are not throttled


async def test_rate_limit_per_chat_and_chatter_is_free(harness):
    h = await harness(rate_limits={"per_user": "100/minute", "per_chat": "2/minute"})
    for _ in range(5):
        await h.ask("idle chatter", chat="g1")  # not addressed: costs nothing
    assert len(await h.ask("q1", chat="g1", user="a", mention=True)) == 1
    assert len(await h.ask("q2", chat="g1", user="b", mention=True)) == 1
    assert [o.text for o in await h.ask("q3", chat="g1", user="c", mention=True)] == [
        h.host.bots["testbot"].pipeline.settings.busy_reply
    ]


async def test_mute_ban_and_own_messages(harness):
    h = await harness(muted=["fake:quiet"], roles={"banned": ["fake:troll"]})
    assert await h.ask("/ping", chat="quiet") == []
    assert await h.ask("hello", user="troll") == []
    assert await h.ask("/ping", user="troll") == []
    assert await h.ask("echo of myself", user="bot") == []  # author is the bot itself
    assert h.llm.prompts == []
    assert [o.text for o in await h.ask("/ping", chat="loud")] == ["pong"]


async def test_listener_priority_and_stop_propagation(harness):
    h = await harness(plugins=["basics", Recorder])
    recorder = next(p for p in _plugins(h) if isinstance(p, Recorder))
    assert await h.ask("swallow") == []  # the listener stopped it before the agent
    assert len(await h.ask("pass on")) == 1
    assert recorder.seen == ["swallow", "pass on"]


async def test_one_bad_event_never_stops_the_host(harness, caplog):
    class Exploding(Plugin):
        name = "exploding"

        @on_message(priority=1)
        async def explode(self, inv: Invocation) -> None:
            if "explode" in inv.text:
                raise ValueError("listener bug")

    h = await harness(plugins=["basics", AdminPlugin, Exploding])
    caplog.set_level(logging.ERROR)
    event = await h.push("explode please")
    await h.drain()
    assert len(h.adapter.take_sent()) == 1  # the agent still answered
    assert event.id in caplog.text and "listener bug" in caplog.text

    assert next(o.text for o in await h.ask("/boom")).startswith("That command failed")

    broken = MessageEvent(
        platform="fake",
        message_id="bad-1",
        author=UserRef("fake", "u1"),
        channel=ChannelRef("fake", "dm-u1", ChannelKind.DM),
        text=None,  # type: ignore[arg-type]  # a malformed event from a buggy adapter
    )
    await h.push(broken)
    await h.drain()
    assert "fake:dm-u1:bad-1" in caplog.text
    assert [o.text for o in await h.ask("/ping")] == ["pong"]


async def test_long_replies_are_split_for_the_channel(harness):
    from bots.testing import FakeAdapter

    long_answer = varied_text(1_100)
    h = await harness(adapter=FakeAdapter(max_length=120), llm=FakeLLM(default=long_answer))
    parts = await h.ask("tell me everything", chat="g1", mention=True)
    assert len(parts) > 5
    assert all(len(p.text) <= 120 for p in parts)
    assert parts[0].reply_to is not None and all(p.reply_to is None for p in parts[1:])
    assert " ".join(p.text for p in parts) == long_answer


async def test_streaming_channel_gets_sentences_without_disclaimers(harness):
    from bots.testing import FakeAdapter

    llm = FakeLLM(default="As an AI language model, I have no boat. The fog is thick tonight. Stay warm.")
    h = await harness(adapter=FakeAdapter(streaming=True), llm=llm)
    [reply] = await h.ask("how is the weather?")
    assert reply.text.strip() == "The fog is thick tonight. Stay warm."


def _plugins(h):
    return [slot.instance for slot in h.host.control.runtime.bots["testbot"].slots]


async def test_commands_for_other_bots_are_left_alone(harness):
    h = await harness()
    assert await h.ask("/ping@OtherBot", chat="g1") == []
    assert [o.text for o in await h.ask("/ping@bot", chat="g1")] == ["pong"]  # names match case-blind


async def test_unknown_command_is_quiet_in_groups_even_with_the_always_policy(harness):
    from bots.agent.persona import Persona

    h = await harness(persona=Persona(name="A", system_prompt="You are A.", group={"reply": "always"}))
    assert await h.ask("/weather", chat="g1") == []
    assert h.llm.prompts == []  # nor is it sent to the model
    [unknown] = await h.ask("/weather", chat="g1", mention=True)
    assert unknown.text.startswith("Unknown command")


async def test_a_full_chat_is_told_once_not_once_per_member(harness):
    h = await harness(rate_limits={"per_user": "100/minute", "per_chat": "1/minute"})
    assert len(await h.ask("q", chat="g1", user="a", mention=True)) == 1
    notices = [o for user in "bcdef" for o in await h.ask("q", chat="g1", user=user, mention=True)]
    assert [o.text for o in notices] == [h.host.bots["testbot"].pipeline.settings.busy_reply]


async def test_oversized_messages_are_cut_before_anything_sees_them(harness):
    h = await harness(memory={"max_input_chars": 50})
    await h.ask("x" * 10_000)
    assert len(h.llm.last_prompt[-1].content) == 50


async def test_daily_message_quota_refuses_politely_then_resets(harness):
    from datetime import date, timedelta

    h = await harness(rate_limits={"messages_per_day": 2}, roles={"operators": ["fake:op"]})
    quotas = h.host.bots["testbot"].pipeline.quotas
    day = date(2026, 11, 26)
    quotas.today = lambda: day
    assert len(await h.ask("one")) == 1 and len(await h.ask("two")) == 1
    assert [o.text for o in await h.ask("three")] == [h.host.bots["testbot"].pipeline.settings.quota_reply]
    assert await h.ask("four") == []  # told once
    assert [o.text for o in await h.ask("/ping")] == ["pong"]  # commands are not the model
    assert len(await h.ask("chat", user="op")) == 1  # operators have no quota
    day = day + timedelta(days=1)
    assert len(await h.ask("a new day")) == 1
    assert len(h.llm.prompts) == 4


async def test_daily_token_quota(harness):
    h = await harness(rate_limits={"tokens_per_day": 50}, llm=FakeLLM(default="word " * 40))
    assert len(await h.ask("hello")) == 1  # spends more than 50 tokens (prompt and answer)
    [refusal] = await h.ask("again")
    assert refusal.text == h.host.bots["testbot"].pipeline.settings.quota_reply
    assert len(await h.ask("hi", user="someone-else")) == 1  # quotas are per user


async def test_daily_quotas_survive_a_restart(harness, tmp_path):
    limits = {"messages_per_day": 2}
    first = await harness(data_dir=tmp_path / "var", rate_limits=limits)
    assert len(await first.ask("one")) == len(await first.ask("two")) == 1
    await first.host.stop()
    again = await harness(data_dir=tmp_path / "var", rate_limits=limits, adapter=FakeAdapter())
    quota_reply = again.host.bots["testbot"].pipeline.settings.quota_reply
    assert [o.text for o in await again.ask("three")] == [quota_reply]
