"""Crash, soak and order suite: the real ``bots run`` host under load, killed with SIGKILL and restarted.

The driver (this process) runs a channel emulator (Telegram or Discord) and an OpenAI-compatible stub
(:class:`~bots.testing.openai_stub.OpenAIStub`, latency varying per request), writes a config for one
bot in a work folder and runs the host as a subprocess (``python -m bots run --config ...``). Users
post ``messages`` group mentions spread round-robin over ``chats`` at ``rate`` per second; meanwhile
the host is killed ``kills`` times (SIGKILL, a seeded random time after that run's first reply, so
that it dies amid work) and started again. At the end the driver waits (a generous overall limit)
until every acknowledged message is answered or the host is idle (nothing waiting on the platform,
no unfinished work in its database, no API call for a few seconds), stops the host with SIGTERM and
counts::

    result = await run_soak(SoakPlan(messages=120, chats=6, kills=2, seed=1), tmp_path)
    print(result.line())   # telegram seed=1 ... sent=120 acknowledged=120 answered=120 lost=0 ...

What the counts mean (:func:`tally`):

- *sent*: mentions the users posted; *chatter*: other group messages (flood mode), not expected to
  be answered.
- *acknowledged*: mentions the platform knows the host took: Telegram, updates confirmed by a later
  ``getUpdates`` offset; Discord (which has no acknowledgement), mentions recorded in the host's
  inbox. A mention posted to Discord while the host is down never reaches it (Discord does not
  replay events to a new session): sent, not acknowledged, not lost.
- *answered*: mentions with at least one reply; a reply is a bot message that threads to its trigger
  (Telegram ``reply_to_message``, Discord ``message_reference``); the later parts of a long answer,
  which do not, are traced by their text to the stub's answer and its question (:func:`thread_parts`).
- *lost*: acknowledged mentions without any reply.
- *duplicated*: extra copies: a reply part (same trigger, same text) delivered again. The stub answers
  a question with the same words every time, so a regenerated answer counts as a copy too; different
  texts to one trigger are the parts of one long answer.
- *order violations*: per chat, replies (first copies only) whose trigger was posted before the
  trigger of a reply already delivered to that chat. Replies 1,3,2 are one violation (2 came after
  3's); 1,1b,2,2b is none (parts); the parts of two answers interleaved (1,2,1b,2b) are one (1b).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from bots.testing.openai_stub import OpenAIStub

log = logging.getLogger("bots.testing.crashsuite")

ChannelName = Literal["telegram", "discord"]
TELEGRAM_TOKEN = "424242:CRASH-suite_token"
DISCORD_TOKEN = "MTIz.crash-suite.token"
LLM_KEY_ENV = "CRASHSUITE_LLM_KEY"
LOOP_LAG_ENV = "BOTS_LOOP_LAG_LOG"  # where `bots run` appends its event-loop lag samples (if it can)
QUIET_S = 3.0  # with no unfinished work in its database, a host this long without an API call is idle
QUIET_BLIND_S = 10.0  # the same when its database cannot be read
POLL_S = 0.25  # how often the end conditions are looked at

_TOPICS = ["the lamp", "the tide", "the storm", "the ferry", "the gulls", "the harbour", "the bell",
           "the cliff path", "the night watch", "the fog horn", "the old map", "the lighthouse"]  # fmt: skip
_ASKS = ["What do you remember about", "How did you look after", "Tell me a story about",
         "What did the keeper say about", "Why do sailors talk about", "When did you last see"]  # fmt: skip


@dataclass(frozen=True)
class SoakPlan:
    """One run of the suite; every random choice derives from ``seed``."""

    messages: int = 120  # mentions the users post
    chats: int = 6  # group chats they are spread over (round-robin)
    rate: float = 40.0  # messages per second the users post (mentions and chatter)
    kills: int = 0  # SIGKILLs, each followed by a restart
    seed: int = 1
    channel: ChannelName = "telegram"
    latency: tuple[float, float] = (0.1, 0.3)  # the model's answer time, seconds (uniform)
    answer_chars: int = 0  # >4096 (Telegram) / >2000 (Discord): answers split into parts
    kill_after: tuple[float, float] = (0.5, 4.0)  # seconds after a run's first reply until its kill
    post_while_down: bool = True  # users go on posting while the host is down (False: they wait)
    chatter: int = 0  # extra group messages that do not address the bot (a flood), spread evenly
    settle_s: float = 600.0  # overall limit for the end: every acknowledged mention answered, or idle
    ready_s: float = 120.0  # limit for one start of the host (imports, database, platform login)
    sample_rss: bool = False  # sample the host's RSS (psutil) every 0.5 s
    warmup_share: float = 0.2  # RSS and loop lag count from when this share of messages was posted


@dataclass(frozen=True)
class Trigger:
    """A mention a user posted: ``ordinal`` is its place in the users' send order (all chats)."""

    chat: str
    message_id: str
    ordinal: int


@dataclass(frozen=True)
class Reply:
    """A message the bot posted to ``chat``, threaded to ``reply_to`` (a trigger's message id)."""

    chat: str
    reply_to: str | None
    text: str
    at: float | None = None  # time.monotonic() when the platform got it (where the emulator says)


@dataclass(frozen=True)
class Tally:
    answered: int
    lost: int
    duplicated: int
    order_violations: int
    unthreaded: int  # bot messages that thread to no trigger (busy notices, strays)
    duplicates: tuple[tuple[Reply, Reply], ...] = ()  # (the copy the platform got first, again)


@dataclass
class SoakResult:
    plan: SoakPlan
    sent: int
    acknowledged: int
    answered: int
    lost: int
    duplicated: int
    order_violations: int
    kills: int
    wall_s: float
    chatter: int = 0
    unthreaded: int = 0
    model_requests: int = 0
    idle_end: bool = False  # the end came by idleness, not by every acknowledged mention answered
    rss_mib: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MiB)
    rss_warm_mib: float | None = None
    rss_end_mib: float | None = None
    loop_lag_ms: list[float] = field(default_factory=list)  # samples after warm-up (empty: no hook)
    # for each duplicate: how long before the kill it was resent after its first copy arrived
    # (the window in which a part the platform took still had no "sent" mark on disk)
    duplicate_lead_ms: list[float] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)  # each one, for a closer look
    log_path: Path | None = None

    def line(self) -> str:
        """One comparable line: the plan's key numbers, then the counts."""
        p = self.plan
        return (
            f"{p.channel} seed={p.seed} messages={p.messages} chats={p.chats} kills={self.kills} "
            f"sent={self.sent} acknowledged={self.acknowledged} answered={self.answered} lost={self.lost} "
            f"duplicated={self.duplicated} order_violations={self.order_violations} "
            f"wall={self.wall_s:.1f}s{self._lead()}"
        )

    def _lead(self) -> str:
        lead = self.duplicate_lead_ms
        if not lead:
            return ""
        return (
            f" duplicates_sent_before_kill_ms=p50:{percentile(lead, 50):.0f},"
            f"min:{min(lead):.0f},max:{max(lead):.0f}"
        )

    def flood_line(self) -> str:
        """RSS growth after warm-up and loop lag p95 (``n/a`` where not measured)."""
        growth = (
            f"{self.rss_end_mib - self.rss_warm_mib:+.1f}MiB"
            if self.rss_end_mib is not None and self.rss_warm_mib is not None
            else "n/a"
        )
        warm = f"{self.rss_warm_mib:.1f}MiB" if self.rss_warm_mib is not None else "n/a"
        end = f"{self.rss_end_mib:.1f}MiB" if self.rss_end_mib is not None else "n/a"
        peak = f"{max(m for _, m in self.rss_mib):.1f}MiB" if self.rss_mib else "n/a"
        lag = (
            f"p95={percentile(self.loop_lag_ms, 95):.0f}ms max={max(self.loop_lag_ms):.0f}ms "
            f"samples={len(self.loop_lag_ms)}"
            if self.loop_lag_ms
            else f"n/a (bots run did not write {LOOP_LAG_ENV})"
        )
        return (
            f"{self.plan.channel} flood messages={self.sent + self.chatter} mentions={self.sent} "
            f"rss_warm={warm} rss_end={end} rss_growth={growth} rss_peak={peak} loop_lag {lag}"
        )


_VISIT = re.compile(r"visit (\d+)\?")  # the number in every question (see `question`)
_SENTENCE_START = re.compile(r"(?:^|(?<=[.!?] ))(?=\S)")
_PART_KEY = 120  # characters from a sentence start that tell the answers apart


def thread_parts(
    replies: Sequence[Reply], answers: dict[str, str], by_number: dict[int, Trigger]
) -> list[Reply]:
    """``replies`` with the trigger of every later part filled in. Only the first part of a long
    answer threads to its message; the others are traced by their text to the answer that holds them
    (``answers``: the stub's answer -> the user message it answered) and so to the question asked."""
    starts: dict[tuple[str, str], Trigger] = {}
    for answer, asked in answers.items():
        found = _VISIT.search(asked)
        trigger = by_number.get(int(found.group(1))) if found else None
        if trigger is not None:
            for start in _SENTENCE_START.finditer(answer):
                starts[(trigger.chat, answer[start.start() : start.start() + _PART_KEY])] = trigger
    threaded = []
    for reply in replies:
        trigger = None if reply.reply_to else starts.get((reply.chat, reply.text.strip()[:_PART_KEY]))
        threaded.append(replace(reply, reply_to=trigger.message_id) if trigger else reply)
    return threaded


def lead_before_kills(duplicates: Sequence[tuple[Reply, Reply]], kills: Sequence[float]) -> list[float]:
    """For each duplicate with times: milliseconds from its first copy's arrival to the kill
    nearest to it (of those before the second copy). Negative: the first copy reached the
    platform after the kill was sent, still in flight from the dying process."""
    lead = []
    for first, again in duplicates:
        if first.at is None or again.at is None:
            continue
        before = [k for k in kills if k <= again.at]
        if before:
            nearest = min(before, key=lambda k: abs(k - first.at))  # type: ignore[operator]
            lead.append((nearest - first.at) * 1000)
    return lead


def describe_duplicates(
    duplicates: Sequence[tuple[Reply, Reply]], kills: Sequence[float], t0: float
) -> list[dict[str, Any]]:
    """Each duplicate: its chat, trigger and text, when both copies arrived and the kills between
    (seconds since the driver started; a first copy may arrive just after the kill that caused
    it, still in flight from the dying process, hence the second before it counts)."""

    def since(at: float | None) -> float | None:
        return None if at is None else round(at - t0, 3)

    return [
        {
            "chat": first.chat,
            "reply_to": first.reply_to,
            "text": first.text[:100],
            "first_at": since(first.at),
            "again_at": since(again.at),
            "kills_between": [since(k) for k in kills if (first.at or 0) - 1 <= k <= (again.at or 0)],
        }
        for first, again in duplicates
    ]


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(pct / 100 * len(ordered))))
    return ordered[rank - 1]


def tally(triggers: Sequence[Trigger], acknowledged: set[tuple[str, str]], replies: Sequence[Reply]) -> Tally:
    """Count answered, lost, duplicated and out-of-order replies (see the module docstring).
    ``acknowledged``: (chat, message id) of triggers; ``replies``: in the order the platform got them."""
    by_id = {(t.chat, t.message_id): t for t in triggers}
    delivered: dict[tuple[str, str, str], Reply] = {}
    duplicates: list[tuple[Reply, Reply]] = []
    answered: set[tuple[str, str]] = set()
    latest: dict[str, int] = {}  # chat -> the latest trigger answered there so far
    duplicated = violations = unthreaded = 0
    for reply in replies:
        trigger = by_id.get((reply.chat, reply.reply_to or ""))
        if trigger is None:
            unthreaded += 1
            continue
        part = (trigger.chat, trigger.message_id, reply.text)
        if part in delivered:
            duplicated += 1
            duplicates.append((delivered[part], reply))
            continue
        delivered[part] = reply
        answered.add((trigger.chat, trigger.message_id))
        if trigger.ordinal < latest.get(trigger.chat, -1):
            violations += 1
        latest[trigger.chat] = max(latest.get(trigger.chat, -1), trigger.ordinal)
    lost = sum(
        1
        for t in triggers
        if (t.chat, t.message_id) in acknowledged and (t.chat, t.message_id) not in answered
    )
    return Tally(len(answered), lost, duplicated, violations, unthreaded, tuple(duplicates))


# -- the platforms ------------------------------------------------------------------------------
class Platform(Protocol):
    """What the driver needs of a channel emulator."""

    name: ChannelName
    env: dict[str, str]  # the host's token variables

    def channel_toml(self) -> str: ...
    def setup_chats(self, count: int) -> None: ...
    async def post(self, chat: int, user: int, text: str, *, mention: bool) -> Trigger | None: ...
    def logins(self) -> int: ...  # how many times a host started talking to the platform
    def api_calls(self) -> int: ...  # messages and typing indicators the bot sent so far
    def waiting(self) -> bool: ...  # updates the platform holds for the host, not yet taken
    def acknowledged(self, triggers: Sequence[Trigger], db: Path) -> set[tuple[str, str]]: ...
    def replies(self) -> list[Reply]: ...
    async def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None: ...


class TelegramPlatform:
    name: ChannelName = "telegram"

    def __init__(self, server: Any) -> None:
        self.server = server  # a started TelegramServer
        self.env = {"TELEGRAM_BOT_TOKEN": server.token}
        self._chats: list[dict[str, Any]] = []
        self._users: list[dict[str, Any]] = []
        self._updates: dict[str, dict[str, Any]] = {}  # "chat/message" -> its Update

    def channel_toml(self) -> str:
        return f'type = "telegram"\nname = "tg"\nbase_url = "{self.server.base_url}"\npoll_timeout = 10\n'

    def setup_chats(self, count: int) -> None:
        self._chats = [self.server.group(f"Harbour {n + 1}") for n in range(count)]
        self._users = [self.server.user(f"Visitor{n}", f"visitor_{n:03d}") for n in range(8)]

    async def post(self, chat: int, user: int, text: str, *, mention: bool) -> Trigger | None:
        group = self._chats[chat]
        update = self.server.group_message(
            group, self._users[user % len(self._users)], text, mention_bot=mention
        )
        if not mention:
            return None
        message = update["message"]
        key = f"{group['id']}/{message['message_id']}"
        self._updates[key] = update
        return Trigger(str(group["id"]), str(message["message_id"]), ordinal=len(self._updates))

    def logins(self) -> int:
        return len(self.server.requests("getUpdates"))

    def api_calls(self) -> int:
        return len(self.server.sent) + len(self.server.chat_actions)

    def waiting(self) -> bool:
        return bool(self.server.default.pending)

    def acknowledged(self, triggers: Sequence[Trigger], db: Path) -> set[tuple[str, str]]:
        return {
            (t.chat, t.message_id)
            for t in triggers
            if self.server.is_confirmed(self._updates[f"{t.chat}/{t.message_id}"])
        }

    def replies(self) -> list[Reply]:
        return [
            Reply(
                str(m["chat"]["id"]),
                str(m["reply_to_message"]["message_id"]) if "reply_to_message" in m else None,
                m.get("text", ""),
                at,
            )
            for m, at in zip(self.server.sent, self.server.default.sent_at, strict=False)
        ]

    async def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        await self.server.wait_for(ready, timeout, what=what)


class DiscordPlatform:
    name: ChannelName = "discord"

    def __init__(self, server: Any) -> None:
        self.server = server  # a started DiscordServer
        self.env = {"DISCORD_BOT_TOKEN": server.token}
        self._channels: list[Any] = []
        self._users: list[Any] = []
        self._ordinal = 0

    def channel_toml(self) -> str:
        options = "".join(f'{key} = "{value}"\n' for key, value in self.server.channel_options().items())
        return f'type = "discord"\nname = "dc"\nready_timeout = 60\n{options}'

    def setup_chats(self, count: int) -> None:
        from bots.testing.discord_server import TEXT, Channel

        guild = self.server.guild
        self._channels = list(guild.channels[:count])
        while len(self._channels) < count:
            channel = Channel(self.server.snowflake(), f"harbour-{len(self._channels) + 1}", TEXT, guild.id)
            guild.channels.append(channel)
            self._channels.append(channel)
        self._users = [self.server.user(f"visitor_{n:03d}", global_name=f"Visitor {n}") for n in range(8)]

    async def post(self, chat: int, user: int, text: str, *, mention: bool) -> Trigger | None:
        channel = self._channels[chat]
        author = self._users[user % len(self._users)]
        message = await self.server.guild_message(channel, author, text, mention_bot=mention)
        if not mention:
            return None
        self._ordinal += 1
        return Trigger(channel.id, str(message["id"]), self._ordinal)

    def logins(self) -> int:
        return int(self.server.identify_count) + int(self.server.resume_count)

    def api_calls(self) -> int:
        return len(self.server.sent) + len(self.server.typing_calls)

    def waiting(self) -> bool:
        return False  # Discord holds nothing for a bot: what a dead connection missed is gone

    def acknowledged(self, triggers: Sequence[Trigger], db: Path) -> set[tuple[str, str]]:
        """Discord has no acknowledgement: a mention counts once the host's inbox recorded it."""
        recorded = _inbox_event_ids(db)
        return {(t.chat, t.message_id) for t in triggers if f"discord:{t.chat}:{t.message_id}" in recorded}

    def replies(self) -> list[Reply]:
        return [Reply(s.channel_id, s.reply_to, s.content) for s in self.server.sent]

    async def wait_for(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        await self.server.wait_for(ready, timeout, what=what)


# -- the host subprocess -----------------------------------------------------------------------
class HostProcess:
    """``bots run`` as a subprocess; its output is appended to ``log_path`` (one header per start)."""

    def __init__(self, command: Sequence[str], config: Path, env: dict[str, str], log_path: Path) -> None:
        self.command = [*command, "run", "--config", str(config)]
        self.env = env
        self.cwd = config.parent  # not the caller's folder: its .env is not the host's business
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as out:
            out.write(f"\n=== start {self.starts} at {time.strftime('%H:%M:%S')} ===\n".encode())
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, cwd=self.cwd, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def exited(self) -> bool:
        return self.proc is None or self.proc.returncode is not None

    async def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a clean stop), SIGKILL when it is not gone within ``timeout`` seconds."""
        if self.proc is None or self.proc.returncode is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            log.warning("the host did not stop within %gs of SIGTERM; killed", timeout)
            await self.kill()
            return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def write_config(
    folder: Path, platform: Platform, llm_url: str, *, answer_chars: int = 0, log_level: str = "INFO"
) -> Path:
    """The host's config: one bot ("soak") answering every mention with the model's words."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "personas").mkdir(exist_ok=True)
    (folder / "personas" / "soak.yaml").write_text(
        "name: Keeper\n"
        "language: en\n"
        "system_prompt: You are the keeper of an old lighthouse. You answer visitors briefly.\n"
        "answer_mode: generate\n"
        "citations: false\n",
        encoding="utf-8",
    )
    config = folder / "bots.toml"
    config.write_text(
        f"""data_dir = "var"
personas_dir = "personas"
knowledge_dir = "knowledge"
plugin_dirs = []
log_level = "{log_level}"

[llm]
provider = "openai"
model = "soak-stub"
base_url = "{llm_url}"
api_key_env = "{LLM_KEY_ENV}"
fluent_languages = ["en"]
max_answer_chars = {max(4000, answer_chars * 2)}
max_retries = 1

[rate_limits]
per_user = "1000000/minute"
per_chat = "1000000/minute"

[[bots]]
name = "soak"
persona = "soak"
plugins = ["basics"]

[[bots.channels]]
{platform.channel_toml()}""",
        encoding="utf-8",
    )
    return config


def database_path(config: Path) -> Path:
    return config.parent / "var" / "bots.db"


def _query(db: Path, sql: str) -> list[tuple[Any, ...]] | None:
    """Rows of a read-only query on the host's SQLite file; None when it cannot be read."""
    if not db.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)) as conn:
            return conn.execute(sql).fetchall()
    except sqlite3.Error:
        return None


def _inbox_event_ids(db: Path) -> set[str]:
    rows = _query(db, "SELECT event_id FROM inbox")
    return {str(row[0]) for row in rows or ()}


def unfinished_work(db: Path) -> int | None:
    """Inbox messages not finished plus outbox parts not sent; None when the database (or its
    schema) cannot be read."""
    inbox = _query(db, "SELECT count(*) FROM inbox WHERE state = 'accepted'")
    outbox = _query(db, "SELECT count(*) FROM outbox WHERE state = 'pending'")
    if inbox is None or outbox is None:
        return None
    return int(inbox[0][0]) + int(outbox[0][0])


# -- the driver ---------------------------------------------------------------------------------
def question(rng: random.Random, number: int) -> str:
    return f"{rng.choice(_ASKS)} {rng.choice(_TOPICS)}, visit {number}?"


def chatter_line(rng: random.Random, number: int) -> str:
    return f"I walked past {rng.choice(_TOPICS)} this morning, note {number}."


async def run_soak(
    plan: SoakPlan,
    workdir: Path,
    *,
    host_command: Sequence[str] = (sys.executable, "-m", "bots"),
    host_env: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> SoakResult:
    """Run ``plan`` in ``workdir`` (created; the host's config, data and log go there)."""
    say = progress or (lambda _text: None)
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        llm = await stack.enter_async_context(
            OpenAIStub(latency=plan.latency, seed=plan.seed, answer_chars=plan.answer_chars)
        )
        platform = await _platform(plan.channel, stack)
        platform.setup_chats(plan.chats)
        config = write_config(workdir, platform, llm.base_url, answer_chars=plan.answer_chars)
        lag_log = workdir / "loop-lag.jsonl"
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",  # log lines unwrapped
            LLM_KEY_ENV: "sk-crash-suite",
            LOOP_LAG_ENV: str(lag_log),
            **platform.env,
            **(host_env or {}),
        }
        host = HostProcess(host_command, config, env, workdir / "host.log")
        driver = _Driver(plan, platform, llm, host, database_path(config), say)
        stack.push_async_callback(host.kill)  # whatever happens, no host outlives the driver
        result = await driver.run()
        result.model_requests = llm.count
    result.wall_s = time.monotonic() - started
    result.log_path = host.log_path
    result.loop_lag_ms = _loop_lag_after(lag_log, driver.warm_at_wall)
    return result


async def _platform(channel: ChannelName, stack: contextlib.AsyncExitStack) -> Platform:
    if channel == "telegram":
        from bots.testing.telegram_server import TelegramServer

        return TelegramPlatform(await stack.enter_async_context(TelegramServer(token=TELEGRAM_TOKEN)))
    from bots.testing.discord_server import DiscordServer

    return DiscordPlatform(await stack.enter_async_context(DiscordServer(token=DISCORD_TOKEN)))


class _Driver:
    def __init__(
        self,
        plan: SoakPlan,
        platform: Platform,
        llm: OpenAIStub,
        host: HostProcess,
        db: Path,
        say: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.platform = platform
        self.llm = llm
        self.host = host
        self.db = db
        self.say = say
        self.rng = random.Random(plan.seed)  # the users' messages
        self.kill_rng = random.Random(f"{plan.seed}-kills")  # the kill moments
        self.up = asyncio.Event()  # the host is running (set once it reached the platform)
        self.replies_at_start = 0  # replies the bot had sent when the current run started
        self.triggers: list[Trigger] = []
        self.by_number: dict[int, Trigger] = {}  # the number in a mention's question -> the mention
        self.posted = 0
        self.kills = 0
        self.kill_times: list[float] = []  # time.monotonic() of each SIGKILL
        self.warm_at_wall: float | None = None  # time.time() when warm-up ended
        self.rss: list[tuple[float, float]] = []
        self.rss_warm: float | None = None
        self._t0 = time.monotonic()

    async def run(self) -> SoakResult:
        plan = self.plan
        await self._start_host()
        sampler = asyncio.create_task(self._sample_rss()) if plan.sample_rss else None
        sender = asyncio.create_task(self._send_all())
        try:
            for _ in range(plan.kills):
                await self._wait_answering(sender)
                await self._sleep_or_fail(self.kill_rng.uniform(*plan.kill_after), sender)
                self.up.clear()
                self.kill_times.append(time.monotonic())
                await self.host.kill()
                self.kills += 1
                self.say(
                    f"kill {self.kills}: {self.posted} posted, {len(self.platform.replies())} sent by the bot"
                )
                await self._start_host()
            await sender
            idle = await self._settle()
            rss_end = self.rss[-1][1] if self.rss else None
        finally:
            for task in (sender, sampler):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        await self.host.stop()
        acknowledged = self.platform.acknowledged(self.triggers, self.db)
        replies = thread_parts(self.platform.replies(), self.llm.answers, self.by_number)
        counts = tally(self.triggers, acknowledged, replies)
        return SoakResult(
            plan=plan,
            sent=len(self.triggers),
            acknowledged=len(acknowledged),
            answered=counts.answered,
            lost=counts.lost,
            duplicated=counts.duplicated,
            order_violations=counts.order_violations,
            kills=self.kills,
            wall_s=0.0,
            chatter=self.posted - len(self.triggers),
            unthreaded=counts.unthreaded,
            idle_end=idle,
            rss_mib=self.rss,
            rss_warm_mib=self.rss_warm,
            rss_end_mib=rss_end,
            duplicate_lead_ms=lead_before_kills(counts.duplicates, self.kill_times),
            duplicates=describe_duplicates(counts.duplicates, self.kill_times, self._t0),
        )

    async def _start_host(self) -> None:
        before = self.platform.logins()
        await self.host.start()
        what = (
            f"start {self.host.starts} of the host to reach {self.platform.name} (log: {self.host.log_path})"
        )
        deadline = time.monotonic() + self.plan.ready_s
        while self.platform.logins() <= before:
            if self.host.exited():
                raise RuntimeError(f"the host exited during {what}:\n{self.host.log_tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.plan.ready_s:g}s for {what}")
            with contextlib.suppress(TimeoutError):
                await self.platform.wait_for(lambda: self.platform.logins() > before, POLL_S, what)
        self.replies_at_start = len(self.platform.replies())
        self.up.set()

    async def _wait_answering(self, sender: asyncio.Task[None]) -> None:
        """Until the current run sent its first reply, so that its kill lands amid work (a fresh
        process takes a while before it answers); at once when nothing is left to answer."""
        what = f"run {self.host.starts} of the host to send a reply (log: {self.host.log_path})"
        deadline = time.monotonic() + self.plan.ready_s
        while len(self.platform.replies()) <= self.replies_at_start:
            if sender.done() and not self.platform.waiting():
                acknowledged = self.platform.acknowledged(self.triggers, self.db)
                if tally(self.triggers, acknowledged, self.platform.replies()).lost == 0:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.plan.ready_s:g}s for {what}")
            await self._sleep_or_fail(POLL_S, sender)

    async def _sleep_or_fail(self, seconds: float, sender: asyncio.Task[None]) -> None:
        """Sleep, surfacing a failed sender or a host that died by itself."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(left, POLL_S))
            if sender.done() and sender.exception() is not None:
                sender.result()
            if self.host.exited():
                raise RuntimeError(f"the host exited by itself:\n{self.host.log_tail()}")

    async def _send_all(self) -> None:
        """Post the mentions (and chatter) at the plan's rate, on a fixed schedule."""
        plan = self.plan
        total = plan.messages + plan.chatter
        start = time.monotonic()
        for number in range(total):
            delay = start + number / plan.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if not plan.post_while_down and not self.up.is_set():
                paused = time.monotonic()
                await self.up.wait()
                start += time.monotonic() - paused  # the schedule resumes where it stopped
            # the mentions spread evenly among the chatter; each kind round-robin over the chats
            is_mention = (number * plan.messages) // total != ((number + 1) * plan.messages) // total
            user = self.rng.randrange(8)
            if is_mention:
                chat, text = len(self.triggers) % plan.chats, question(self.rng, number)
            else:
                chat, text = (self.posted - len(self.triggers)) % plan.chats, chatter_line(self.rng, number)
            trigger = await self.platform.post(chat, user, text, mention=is_mention)
            if trigger is not None:
                self.triggers.append(trigger)
                self.by_number[number] = trigger
            self.posted += 1
            if self.warm_at_wall is None and self.posted >= plan.warmup_share * total:
                self.warm_at_wall = time.time()
                self.rss_warm = self.rss[-1][1] if self.rss else None

    async def _settle(self) -> bool:
        """Wait until every acknowledged mention is answered, or the host is idle; True for idle."""
        deadline = time.monotonic() + self.plan.settle_s
        last_calls, last_change = self.platform.api_calls(), time.monotonic()
        while True:
            if self.host.exited():
                raise RuntimeError(f"the host exited by itself:\n{self.host.log_tail()}")
            calls = self.platform.api_calls()
            if calls != last_calls:
                last_calls, last_change = calls, time.monotonic()
            if not self.platform.waiting():
                acknowledged = self.platform.acknowledged(self.triggers, self.db)
                counts = tally(self.triggers, acknowledged, self.platform.replies())
                if counts.lost == 0 and len(acknowledged) == len(self.triggers):
                    return False
                work = await asyncio.to_thread(unfinished_work, self.db)
                quiet = time.monotonic() - last_change
                if (work == 0 and quiet >= QUIET_S) or (work is None and quiet >= QUIET_BLIND_S):
                    return True
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"waited {self.plan.settle_s:g}s for every acknowledged mention to be answered or the "
                    f"host to be idle (log: {self.host.log_path})"
                )
            await asyncio.sleep(POLL_S)

    async def _sample_rss(self) -> None:
        import psutil

        while True:
            pid = self.host.pid
            if pid is not None and not self.host.exited():
                with contextlib.suppress(psutil.Error):
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                    self.rss.append((time.monotonic() - self._t0, rss))
            await asyncio.sleep(0.5)


def _loop_lag_after(path: Path, since: float | None) -> list[float]:
    """Lag samples (ms) the host wrote to ``path`` after ``since`` (``time.time()``)."""
    samples: list[float] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return samples
    for line in lines:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            record = json.loads(line)
            if since is None or float(record["t"]) >= since:
                samples.extend(float(x) for x in record["lag_ms"])
    return samples
