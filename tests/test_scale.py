"""The gateway/worker split over Redis Streams (issue 19 item 2): the codec, leases, and gateways and
workers in this process on the Telegram emulator, a real Redis and the OpenAI-compatible stub.
The subprocess test (2 gateways, 3 workers, a worker killed with SIGKILL) is in test_scale_suite.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from redis.asyncio import Redis

from bots.core.config import AppConfig, ChannelConfig, ConfigError, Secrets, load_config
from bots.core.events import ChannelKind, ChannelRef, Mention, MessageEvent, Outbound, ReplyTo, UserRef
from bots.scale.bus import WORKERS_GROUP, Keys, shard_of
from bots.scale.codec import (
    HandOver,
    Inbound,
    MalformedEntry,
    decode_hand_over,
    decode_inbound,
    encode_hand_over,
    encode_inbound,
)
from bots.scale.lease import Leases
from bots.scale_assembly import build_gateway, build_worker
from bots.testing.crashsuite import LLM_KEY_ENV, question
from bots.testing.openai_stub import OpenAIStub
from bots.testing.scalesuite import bot_token, token_env, write_scale_config
from bots.testing.telegram_server import TelegramServer

WAIT_S = 30.0  # generous limits: these wait on conditions, never on the clock


def sample_event() -> MessageEvent:
    return MessageEvent(
        platform="telegram",
        message_id="42",
        author=UserRef("telegram", "7", name="Ann", username="ann"),
        channel=ChannelRef("telegram", "-100", ChannelKind.GROUP, name="Harbour"),
        text="@keeper_bot 灯塔还亮吗?",
        self_id="700100",
        self_name="keeper_bot",
        segments=(Mention("700100", "keeper_bot"), ReplyTo("41", "700100")),
        to_me=False,
        timestamp=datetime(2026, 12, 3, 12, 0, tzinfo=UTC),
    )


# -- the codec --------------------------------------------------------------------------------------
def test_inbound_entries_round_trip():
    entry = Inbound("keeper", "tg", sample_event(), again=True, accepted_at=datetime(2026, 12, 3, tzinfo=UTC))
    back = decode_inbound(encode_inbound(entry))
    assert back == entry
    assert back.event.mentions_me and back.event.replies_to_me


def test_hand_overs_round_trip():
    target = ChannelRef("telegram", "-100", ChannelKind.GROUP)
    key = HandOver("key", "keeper", "tg", target, key="keeper|telegram:-100:42|0")
    assert decode_hand_over(encode_hand_over(key)) == key
    post = HandOver("post", "keeper", "tg", target, outbound=Outbound(target, "hi", "42", "markdown", "k#0"))
    assert decode_hand_over(encode_hand_over(post)) == post


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({}, "no field"),
        ({"m": "{not json"}, "not JSON"),
        ({"m": "[1, 2]"}, "not a JSON object"),
        ({"m": json.dumps({"v": 2, "bot": "keeper"})}, "version 2"),
        ({"m": json.dumps({"v": 1, "bot": "keeper", "channel": "tg"})}, "not an inbound message"),
        ({"m": json.dumps({"v": 1, "bot": "", "channel": "tg", "event": {}})}, "not an inbound message"),
    ],
)
def test_malformed_inbound_entries_are_refused_with_a_reason(fields, why):
    with pytest.raises(MalformedEntry, match=why):
        decode_inbound(fields)


def test_a_hand_over_of_an_unknown_kind_is_refused():
    fields = {"m": json.dumps({"v": 1, "kind": "teleport", "bot": "b", "channel": "c", "target": {}})}
    with pytest.raises(MalformedEntry):
        decode_hand_over(fields)


def test_a_chat_always_maps_to_the_same_shard_and_chats_spread_over_all():
    chat = ("keeper", "tg", "telegram:-100")
    assert shard_of(chat, 16) == shard_of(tuple(chat), 16) == 7  # crc32: the same in every process
    assert len({shard_of(("keeper", "tg", f"telegram:{n}"), 16) for n in range(200)}) == 16


# -- leases -----------------------------------------------------------------------------------------
async def test_a_lease_is_held_by_one_worker_and_taken_over_when_it_lapses(redis_url):
    redis = Redis.from_url(redis_url, decode_responses=True)
    try:
        keys = Keys("t")
        first, second = Leases(redis, keys, "w1", 60_000), Leases(redis, keys, "w2", 60_000)
        assert await first.acquire(3)
        assert not await second.acquire(3)
        await redis.pexpire(keys.lease(3), 5_000)  # as if most of the ttl had passed
        assert await first.renew([3]) == set()  # still its own: renewed to the whole ttl
        assert await redis.pttl(keys.lease(3)) > 30_000  # (no timing: a busy box cannot lapse it)
        assert not await second.acquire(3)
        first.ttl_ms = 200
        assert await first.renew([3]) == set()  # then w1 stops renewing
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while not await second.acquire(3):  # w1 stopped renewing: the lease lapses
            assert asyncio.get_running_loop().time() < deadline, "waited for w1's lease to lapse"
            await asyncio.sleep(0.05)
        assert await first.renew([3]) == {3}  # w1 learns it lost the shard
        await first.release(3)  # and cannot free what is not its own
        assert await second.owners(4) == [None, None, None, "w2"]
        await second.release(3)
        assert await second.owners(4) == [None, None, None, None]
    finally:
        await redis.aclose()


# -- gateways and workers in this process --------------------------------------------------------------
@dataclass
class Scene:
    tg: TelegramServer
    llm: OpenAIStub
    config: AppConfig
    redis: Redis
    group: dict
    users: list[dict]

    def secrets(self) -> Secrets:
        return Secrets()

    def post(self, number: int, group: dict | None = None) -> dict:
        text = question(__import__("random").Random(number), number)
        return self.tg.group_message(group or self.group, self.users[number % 3], text, mention_bot=True)

    def replies_to(self, update: dict) -> list[dict]:
        wanted = update["message"]["message_id"]
        return [
            m
            for m in self.tg.sent
            if m.get("reply_to_message", {}).get("message_id") == wanted
            and m["chat"]["id"] == update["message"]["chat"]["id"]
        ]


@pytest.fixture
async def scene(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Scene]:
    monkeypatch.setenv(token_env(0), bot_token(0))
    monkeypatch.setenv(LLM_KEY_ENV, "sk-test")
    async with OpenAIStub(latency=(0.0, 0.02)) as llm, TelegramServer(token=bot_token(0)) as tg:
        path = write_scale_config(
            tmp_path, telegram_url=tg.base_url, llm_url=llm.base_url, redis_url=redis_url, shards=4, lease_s=3
        )
        redis = Redis.from_url(redis_url, decode_responses=True)
        try:
            users = [tg.user(f"Visitor{n}", f"visitor_{n}") for n in range(3)]
            yield Scene(tg, llm, load_config(path), redis, tg.group("Harbour"), users)
        finally:
            await redis.aclose()


async def test_messages_go_through_gateway_and_worker_answered_once_in_order(scene):
    gateway = build_gateway(scene.config, scene.secrets(), name="g")
    worker = build_worker(scene.config, scene.secrets(), name="w")
    other = scene.tg.group("Pier")
    async with gateway, worker:
        updates = [scene.post(n, scene.group if n % 2 else other) for n in range(12)]
        await scene.tg.wait_sent(12, timeout=WAIT_S)
        await scene.tg.wait_all_confirmed(timeout=WAIT_S)
    for update in updates:
        assert len(scene.replies_to(update)) == 1
    for chat in (scene.group, other):
        answered = [
            m["reply_to_message"]["message_id"] for m in scene.tg.sent if m["chat"]["id"] == chat["id"]
        ]
        assert answered == sorted(answered)  # each chat's replies in the order of its messages
    assert scene.llm.count == 12
    assert gateway.published == 12 and worker.handled == 12
    assert await scene.redis.xlen(Keys().inbound(0)) == 0  # finished entries are dropped


async def test_a_pending_entry_redelivered_to_another_worker_is_answered_once(scene):
    """A worker read two messages and died: one answered and recorded, one not begun. Whoever
    takes the shard next claims both; the answered one is not asked or sent again."""
    gateway = build_gateway(scene.config, scene.secrets(), name="g")
    async with gateway:
        first = build_worker(scene.config, scene.secrets(), name="w1")
        async with first:
            answered = scene.post(1)
            await scene.tg.wait_sent(1, timeout=WAIT_S)
        event_id = f"telegram:{scene.group['id']}:{answered['message']['message_id']}"
        assert await first.host.outbox.recorded(f"keeper0|{event_id}|0")
        # the same entries again, read by a worker that then died ("ghost"): pending, never acknowledged
        chat = ("keeper0", "tg", f"telegram:{scene.group['id']}")
        stream = Keys().inbound(shard_of(chat, 4))
        replay = Inbound("keeper0", "tg", _event_of(scene, answered))
        await scene.redis.xadd(stream, encode_inbound(replay))
        unanswered = scene.tg.group_message(
            scene.group, scene.users[2], "Is the lamp lit, visit 2?", mention_bot=True
        )
        await scene.tg.wait_all_confirmed(timeout=WAIT_S)  # published: nobody reads the shard now
        await scene.redis.xreadgroup(WORKERS_GROUP, "ghost", {stream: ">"})
        assert (await scene.redis.xpending(stream, WORKERS_GROUP))["pending"] == 2
        second = build_worker(scene.config, scene.secrets(), name="w2")
        async with second:
            await scene.tg.wait_for(lambda: len(scene.replies_to(unanswered)) == 1, WAIT_S, what="the reply")
            await _until(lambda: second.claimed == 2 and second.handled == 2, "w2 to handle both claimed")
    assert len(scene.replies_to(answered)) == 1  # not sent again
    assert len(scene.replies_to(unanswered)) == 1
    assert scene.llm.count == 2  # the recorded answer was not asked for again
    assert (await scene.redis.xpending(stream, WORKERS_GROUP))["pending"] == 0


async def test_a_dead_workers_shards_are_taken_over_and_everything_answered_once(scene):
    gateway = build_gateway(scene.config, scene.secrets(), name="g")
    async with gateway:
        doomed = build_worker(scene.config, scene.secrets(), name="doomed")
        await doomed.start()
        assert len(doomed.owned) == 4  # alone: every shard
        scene.llm.latency = (5.0, 5.0)  # it reads and is stuck in the model when it dies
        stuck = [scene.post(n) for n in range(3)]
        await _until(lambda: scene.llm.count >= 1, "the doomed worker to ask the model")
        _crash(doomed)  # no clean stop: leases and entries stay as they are
        scene.llm.latency = (0.0, 0.02)
        survivor = build_worker(scene.config, scene.secrets(), name="survivor")
        async with survivor:
            later = scene.post(10)
            await scene.tg.wait_for(
                lambda: all(len(scene.replies_to(u)) >= 1 for u in [*stuck, later]),
                WAIT_S,
                what="every reply",
            )
            assert len(survivor.owned) == 4
            assert survivor.claimed >= 1  # what the doomed worker had read
        await _close_crashed(doomed)
    for update in [*stuck, later]:
        assert len(scene.replies_to(update)) == 1
    answered = [m["reply_to_message"]["message_id"] for m in scene.tg.sent]
    assert answered == sorted(answered)


async def test_a_malformed_entry_is_moved_aside_and_the_worker_goes_on(scene, caplog):
    gateway = build_gateway(scene.config, scene.secrets(), name="g")
    worker = build_worker(scene.config, scene.secrets(), name="w")
    async with gateway, worker:
        await scene.redis.xadd(Keys().inbound(1), {"m": "{broken"})
        await scene.redis.xadd(Keys().inbound(2), {"m": json.dumps({"v": 1, "bot": "nobody", "channel": "tg",
                                                                    "event": {}})})  # fmt: skip
        update = scene.post(5)
        await scene.tg.wait_for(lambda: len(scene.replies_to(update)) == 1, WAIT_S, what="the reply")
        await _until(lambda: scene.redis.xlen(Keys().dead), "both bad entries in the dead-letter stream", 2)
    dead = await scene.redis.xrange(Keys().dead)
    assert {d[1]["from"] for d in dead} == {Keys().inbound(1), Keys().inbound(2)}
    assert "refused" in caplog.text


# -- helpers ------------------------------------------------------------------------------------------
def _event_of(scene: Scene, update: dict) -> MessageEvent:
    message = update["message"]
    bot = scene.tg.bot
    return MessageEvent(
        platform="telegram",
        message_id=str(message["message_id"]),
        author=UserRef("telegram", str(message["from"]["id"]), name=message["from"]["first_name"]),
        channel=ChannelRef("telegram", str(message["chat"]["id"]), ChannelKind.GROUP),
        text=message["text"],
        self_id=str(bot["id"]),
        self_name=bot["username"],
        segments=(Mention(str(bot["id"]), bot["username"]),),
    )


async def _until(ready, what: str, expected: object = True) -> None:
    """Wait until ``ready()`` (or what it returns when awaited) equals ``expected``."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        value = ready()
        if inspect.isawaitable(value):
            value = await value
        if value == expected:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"waited {WAIT_S:g}s for {what} (last: {value!r})")
        await asyncio.sleep(0.05)


def _crash(worker) -> None:
    """As kill -9 would leave it: nothing released, nothing acknowledged, nothing more done."""
    worker._running = False
    for task in [*worker._tasks, *worker._jobs]:
        task.cancel()


async def _close_crashed(worker) -> None:
    with contextlib.suppress(Exception):
        await asyncio.gather(*worker._tasks, *worker._jobs, return_exceptions=True)
        await worker.host.stop()
        await worker.bus.close()


async def test_a_worker_that_loses_a_lease_drops_the_shards_work_and_it_is_answered_once(scene):
    """Another process holds the lease now (the worker froze past it): the worker drops that
    shard's work at once; when the lease is free again the shard's new owner answers it all once."""
    gateway = build_gateway(scene.config, scene.secrets(), name="g")
    async with gateway:
        worker = build_worker(scene.config, scene.secrets(), name="w")
        async with worker:
            scene.llm.latency = (1.0, 1.0)
            updates = [scene.post(n) for n in range(4)]  # one chat: handled one at a time
            await _until(lambda: scene.llm.count >= 1, "the first message to reach the model")
            shard = shard_of(("keeper0", "tg", f"telegram:{scene.group['id']}"), 4)
            await scene.redis.set(Keys().lease(shard), "thief", px=2500)  # taken while w looks away
            await _until(lambda: shard not in worker.owned, "w to see the lease gone")
            scene.llm.latency = (0.0, 0.02)
            await scene.tg.wait_for(
                lambda: all(scene.replies_to(u) for u in updates),
                WAIT_S,
                what="every reply once the lease lapsed",
            )
            assert shard in worker.owned  # it took the shard back when the thief's lease lapsed
    for update in updates:
        assert len(scene.replies_to(update)) == 1
    answered = [m["reply_to_message"]["message_id"] for m in scene.tg.sent]
    assert answered == sorted(answered)


async def test_processes_that_disagree_on_the_shard_count_are_refused(redis_url):
    from bots.scale.bus import Bus, ScaleMismatch

    first = Bus(Redis.from_url(redis_url, decode_responses=True), Keys("t"), 16)
    other = Bus(Redis.from_url(redis_url, decode_responses=True), Keys("t"), 8)
    try:
        await first.check_shards()
        await first.check_shards()  # the same count again is fine
        with pytest.raises(ScaleMismatch, match="shards = 16"):
            await other.check_shards()
    finally:
        await first.close()
        await other.close()


def test_a_worker_without_redis_stops_with_a_clear_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bots.cli import app
    from bots.testing.servers import free_port

    monkeypatch.setenv(LLM_KEY_ENV, "sk-test")
    config = write_scale_config(
        tmp_path,
        telegram_url="http://127.0.0.1:9",
        llm_url="http://127.0.0.1:9/v1",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",  # nothing listens there
    )
    result = CliRunner().invoke(app, ["worker", "--config", str(config)])
    assert result.exit_code == 1, result.output
    assert "error" in result.output and "Traceback" not in result.output


def test_a_gateway_refuses_an_openai_channel_it_could_not_serve(tmp_path):
    """The web app serves openai channels, and a gateway runs none: holding one would answer
    nobody."""
    config = load_config(
        write_scale_config(
            tmp_path,
            telegram_url="http://127.0.0.1:9",
            llm_url="http://127.0.0.1:9/v1",
            redis_url="redis://x",
        )
    )
    config.bots[0].channels.append(ChannelConfig(type="openai", name="api"))
    with pytest.raises(ConfigError, match="channel api \\(openai\\) is served by the web app"):
        build_gateway(config, Secrets(), name="g")


async def test_entries_dropped_before_they_ran_leave_their_chat_usable(scene):
    """A lost shard's jobs are cancelled, some before they ever ran: their chat's turns must still
    pass on, or that chat would wait forever once the shard comes back."""
    worker = build_worker(scene.config, scene.secrets(), name="w")
    async with worker:
        update = scene.post(1)
        item = Inbound("keeper0", "tg", _event_of(scene, update))
        number = shard_of(("keeper0", "tg", item.event.channel.canonical), 4)
        shard = worker.owned[number]
        worker._schedule(shard, "1-1", item, replay=False)
        worker._schedule(shard, "1-2", item, replay=False)
        for job in list(shard.jobs):
            job.cancel()  # before either ran, as _lose does to a shard's queued work
        await asyncio.gather(*shard.jobs, return_exceptions=True)
        await _until(lambda: worker.host.order.busy_chats, "the chat's queue to be free again", 0)


async def test_a_recorded_reply_is_handed_over_once_redis_answers_again(tmp_path):
    """Redis unreachable when a worker hands a recorded reply over (a restart, a blip past the
    client's own retries): the hand-over waits for Redis instead of failing. Failing, the pipeline
    logged it and the worker marked the message finished and acknowledged it: a reply recorded
    and never sent."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from bots.core.groupcommit import GroupCommit
    from bots.core.storage import Database
    from bots.scale.remote import HandOverOutbox
    from bots.testing.fakes import FakeAdapter

    handed: list[HandOver] = []
    failures = [RedisConnectionError("Connection refused"), RedisConnectionError("Connection reset")]

    async def hand_over(item: HandOver) -> None:
        if failures:
            raise failures.pop(0)
        handed.append(item)

    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    await db.start()
    writes = GroupCommit(db)
    await writes.start()
    try:
        outbox = HandOverOutbox(db, writes, hand_over)
        target = sample_event().channel
        await outbox.deliver("keeper", FakeAdapter("tg"), Outbound(target, "灯塔还亮着。"), "keeper|e1|0")
        assert failures == [] and [item.key for item in handed] == ["keeper|e1|0"]
        assert await outbox.recorded("keeper|e1|0")
    finally:
        await writes.close()
        await db.close()


async def _record_unsent(scene: Scene, text: str) -> None:
    """A reply to the scene's group recorded in the outbox (pending), as a worker records one."""
    from bots.core.groupcommit import GroupCommit
    from bots.core.outbox import Outbox
    from bots.core.storage import Database
    from bots.testing.fakes import FakeAdapter

    db = Database.for_config(scene.config, scene.secrets())
    await db.start()
    writes = GroupCommit(db)
    await writes.start()
    try:
        target = ChannelRef("telegram", str(scene.group["id"]), ChannelKind.GROUP)
        await Outbox(db, writes).record(
            "keeper0", FakeAdapter("tg"), Outbound(target, text), f"keeper0|{text}|0"
        )
    finally:
        await writes.close()
        await db.close()


async def test_a_gateway_sends_what_an_earlier_run_left_unsent_once_its_channel_started(scene):
    """A reply recorded (pending) when the gateway stopped: the next start sends it, once. It is
    sent after the channel started: sent before, the channel refused it and the reply was given up."""
    await _record_unsent(scene, "灯塔还亮着。")
    async with build_gateway(scene.config, scene.secrets(), name="g"):
        await scene.tg.wait_for(lambda: len(scene.tg.sent) >= 1, WAIT_S, what="the left reply")
        await _until(lambda: scene.tg.sent[0]["text"], "the left reply's text", "灯塔还亮着。")
    assert len(scene.tg.sent) == 1


async def test_a_redis_that_lost_its_data_is_picked_up_again(scene):
    """Redis restarted without persistence (FLUSHALL here): streams, consumer groups, leases and
    channel descriptions are gone. Workers take their shards again; the gateway makes its
    outbound group again, describes its channels again, and sends a recorded reply whose
    hand-over went with the data, so replies flow as before (the gateway read NOGROUP forever)."""
    lost = "雾里先听号角。"
    gateway = build_gateway(scene.config, scene.secrets(), name="g")
    worker = build_worker(scene.config, scene.secrets(), name="w")
    async with gateway, worker:
        before = scene.post(1)
        await scene.tg.wait_for(lambda: len(scene.replies_to(before)) == 1, WAIT_S, what="the first reply")
        await _record_unsent(scene, lost)  # its hand-over was in the stream Redis lost
        scene.llm.latency = (3.0, 3.0)
        asked = scene.post(3)  # the worker is writing its reply when its entry is lost
        await _until(lambda: scene.llm.count >= 2, "the worker to ask the model")
        await scene.redis.flushall()
        scene.llm.latency = (0.0, 0.02)
        after = scene.post(2)
        await scene.tg.wait_for(lambda: len(scene.replies_to(after)) == 1, WAIT_S, what="the reply after")
        await scene.tg.wait_for(
            lambda: any(m["text"] == lost for m in scene.tg.sent), WAIT_S, what="the lost hand-over's reply"
        )
        await _until(lambda: scene.redis.hlen(Keys().channels), "the channel described again", 1)
        await scene.tg.wait_for(lambda: scene.replies_to(asked), WAIT_S, what="the lost entry's reply")
    for update in (before, asked, after):
        assert len(scene.replies_to(update)) == 1
    assert [m["text"] for m in scene.tg.sent].count(lost) == 1
