"""Scale suite: ``bots gateway`` and ``bots worker`` subprocesses on the Telegram emulator, Redis and
the state store, with an OpenAI-compatible stub as the model.

Several bots (one Telegram token each) run on ``gateways`` gateway processes (each holds its share of
the bots, ``--bot``) and ``workers`` worker processes; users post ``messages`` mentions round-robin
over ``chats`` groups (each group has one of the bots). ``kill_worker_after`` kills one worker with
SIGKILL once that many replies were sent (it is not restarted: the others take its shards over). At
the end the driver waits until every mention is answered (or the work is idle), stops everything
with SIGTERM and counts with :func:`bots.testing.crashsuite.tally`::

    result = await run_scale(ScalePlan(messages=200, chats=8), tmp_path, redis_url=url)
    print(result.line())

``database_url`` (a ``postgresql+asyncpg://`` URL) puts every process on PostgreSQL; without it they
share one SQLite file (WAL). The answer latency of every mention (post to reply, as the emulator saw
it) is kept for the benchmark (:mod:`bench.scale_bench`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bots.testing.crashsuite import LLM_KEY_ENV, Reply, Trigger, question, tally
from bots.testing.openai_stub import OpenAIStub

DATABASE_URL_ENV = "BOTS_DATABASE_URL"
POLL_S = 0.25


@dataclass(frozen=True)
class ScalePlan:
    messages: int = 200
    chats: int = 8
    bots: int = 2  # one Telegram token each; gateway n holds bots n, n + gateways, ...
    gateways: int = 2
    workers: int = 3
    rate: float = 100.0  # mentions per second the users post
    latency: tuple[float, float] = (0.05, 0.15)  # the model's answer time (uniform), seconds
    seed: int = 1
    shards: int = 16
    lease_s: float = 2.0
    concurrency: int = 32  # messages one worker handles at once
    kill_worker_after: int | None = None  # replies sent when one worker gets SIGKILL (None: never)
    settle_s: float = 300.0  # overall limit for every mention to be answered
    ready_s: float = 120.0  # limit for the processes to start
    log_level: str = "WARNING"  # the processes' (INFO logs every model call: CPU on a small box)


@dataclass
class ScaleResult:
    plan: ScalePlan
    sent: int
    answered: int
    lost: int
    duplicated: int
    order_violations: int
    unthreaded: int
    killed: int
    wall_s: float
    busy_s: float  # from the first mention posted to the last reply
    model_requests: int
    latencies_s: list[float] = field(default_factory=list)  # post -> first reply, per mention
    logs: list[Path] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per process while posting
    taken_over: int = 0  # entries a worker claimed from one that died (from the workers' logs)

    def line(self) -> str:
        p = self.plan
        return (
            f"scale gateways={p.gateways} workers={p.workers} bots={p.bots} messages={p.messages} "
            f"chats={p.chats} killed={self.killed} sent={self.sent} answered={self.answered} "
            f"lost={self.lost} "
            f"duplicated={self.duplicated} order_violations={self.order_violations} "
            f"unthreaded={self.unthreaded} model_requests={self.model_requests} taken_over={self.taken_over} "
            f"wall={self.wall_s:.1f}s"
        )


def bot_token(n: int) -> str:
    return f"{700100 + n}:SCALE-suite_token_{n}"


def token_env(n: int) -> str:
    return f"SCALE_BOT_{n}_TOKEN"


def bot_name(n: int) -> str:
    return f"keeper{n}"


def write_scale_config(
    folder: Path,
    *,
    telegram_url: str,
    llm_url: str,
    redis_url: str,
    bots: int = 1,
    shards: int = 16,
    lease_s: float = 2.0,
    concurrency: int = 32,
    log_level: str = "INFO",
) -> Path:
    """A config for ``bots`` bots (``keeper0``...; token in ``SCALE_BOT_<n>_TOKEN``) answering every
    mention with the model's words, with a ``[scale]`` section for Redis at ``redis_url``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "personas").mkdir(exist_ok=True)
    (folder / "personas" / "soak.yaml").write_text(
        "name: Keeper\nlanguage: en\n"
        "system_prompt: You are the keeper of an old lighthouse. You answer visitors briefly.\n"
        "answer_mode: generate\ncitations: false\n",
        encoding="utf-8",
    )
    bot_tables = "".join(
        f"""
[[bots]]
name = "{bot_name(n)}"
persona = "soak"
plugins = ["basics"]

[[bots.channels]]
type = "telegram"
name = "tg"
base_url = "{telegram_url}"
token_env = "{token_env(n)}"
poll_timeout = 2
"""
        for n in range(bots)
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
model = "scale-stub"
base_url = "{llm_url}"
api_key_env = "{LLM_KEY_ENV}"
fluent_languages = ["en"]
max_retries = 1

[rate_limits]
per_user = "1000000/minute"
per_chat = "1000000/minute"

[scale]
redis_url = "{redis_url}"
shards = {shards}
lease_s = {lease_s}
concurrency = {concurrency}
{bot_tables}""",
        encoding="utf-8",
    )
    return config


class Proc:
    """One ``bots gateway`` / ``bots worker`` subprocess, its output in ``log_path``."""

    def __init__(self, args: Sequence[str], cwd: Path, env: dict[str, str], log_path: Path) -> None:
        self.args = [sys.executable, "-m", "bots", *args]
        self.cwd = cwd
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.args, cwd=self.cwd, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )

    def exited(self) -> bool:
        return self.proc is None or self.proc.returncode is not None

    def cpu_s(self) -> float:
        """CPU seconds the process used so far (0 when it is gone)."""
        import psutil

        try:
            times = psutil.Process(self.proc.pid).cpu_times() if self.proc else None
        except psutil.Error:
            return 0.0
        return times.user + times.system if times else 0.0

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


async def run_scale(
    plan: ScalePlan,
    workdir: Path,
    *,
    redis_url: str,
    database_url: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> ScaleResult:
    """Run ``plan`` in ``workdir`` (config, SQLite file when no ``database_url``, and logs go there)."""
    from bots.testing.telegram_server import TelegramServer

    say = progress or (lambda _text: None)
    started = time.monotonic()
    async with contextlib.AsyncExitStack() as stack:
        llm = await stack.enter_async_context(OpenAIStub(latency=plan.latency, seed=plan.seed))
        tg = await stack.enter_async_context(TelegramServer(token=bot_token(0), username="keeper0_bot"))
        accounts = [tg.account(None)] + [
            tg.account(tg.add_bot(bot_token(n), f"keeper{n}_bot", privacy_mode=True))
            for n in range(1, plan.bots)
        ]
        tg.privacy_mode = True  # each bot sees the mentions of itself only
        config = write_scale_config(
            workdir,
            telegram_url=tg.base_url,
            llm_url=llm.base_url,
            redis_url=redis_url,
            bots=plan.bots,
            shards=plan.shards,
            lease_s=plan.lease_s,
            concurrency=plan.concurrency,
            log_level=plan.log_level,
        )
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "200",
            LLM_KEY_ENV: "sk-scale-suite",
            **{token_env(n): bot_token(n) for n in range(plan.bots)},
        }
        if database_url:
            env[DATABASE_URL_ENV] = database_url
        gateways = [
            Proc(
                ["gateway", "--config", str(config), "--name", f"gateway{g}",
                 *(arg for n in range(g, plan.bots, plan.gateways) for arg in ("--bot", bot_name(n)))],
                workdir, env, workdir / f"gateway{g}.log",
            )
            for g in range(plan.gateways)
        ]  # fmt: skip
        workers = [
            Proc(
                ["worker", "--config", str(config), "--name", f"worker{w}"],
                workdir,
                env,
                workdir / f"worker{w}.log",
            )
            for w in range(plan.workers)
        ]
        everyone = [*gateways, *workers]
        for proc in everyone:
            stack.push_async_callback(proc.kill)  # whatever happens, nothing outlives the driver
        driver = _Driver(plan, tg, accounts, gateways, workers, say)
        await gateways[0].start()  # the first start creates the tables: alone
        await driver.wait_polling(gateways[0])
        await asyncio.gather(*(proc.start() for proc in [*gateways[1:], *workers]))
        for proc in gateways[1:]:
            await driver.wait_polling(proc)
        await driver.wait_balanced(redis_url)
        say(
            f"{plan.gateways} gateway(s), {plan.workers} worker(s) up after {time.monotonic() - started:.1f}s"
        )
        cpu_before = {proc.log_path.stem: proc.cpu_s() for proc in everyone}
        result = await driver.run()
        result.cpu_s = {
            proc.log_path.stem: round(proc.cpu_s() - cpu_before[proc.log_path.stem], 2) for proc in everyone
        }
        stopping = time.monotonic()
        await asyncio.gather(*(proc.stop() for proc in everyone))
        say(f"stopped in {time.monotonic() - stopping:.1f}s")
        result.model_requests = llm.count
        result.taken_over = sum(_taken_over(proc.log_path) for proc in workers)
        result.logs = [p.log_path for p in everyone]
    result.wall_s = time.monotonic() - started
    return result


class _Driver:
    def __init__(
        self,
        plan: ScalePlan,
        tg: Any,
        accounts: list[Any],
        gateways: list[Proc],
        workers: list[Proc],
        say: Callable[[str], None],
    ) -> None:
        import random

        self.plan = plan
        self.tg = tg
        self.accounts = accounts
        self.gateways = gateways
        self.workers = workers
        self.say = say
        self.rng = random.Random(plan.seed)
        self.groups = [
            tg.group(f"Harbour {n + 1}", bots=[accounts[n % plan.bots].user]) for n in range(plan.chats)
        ]
        self.users = [tg.user(f"Visitor{n}", f"visitor_{n:03d}") for n in range(8)]
        self.triggers: list[Trigger] = []
        self.posted_at: dict[tuple[str, str], float] = {}
        self.killed = 0

    def replies(self) -> list[Reply]:
        return [
            Reply(
                str(m["chat"]["id"]),
                str(m["reply_to_message"]["message_id"]) if "reply_to_message" in m else None,
                m.get("text", ""),
            )
            for m in self.tg.all_sent
        ]

    async def wait_polling(self, gateway: Proc) -> None:
        """Until the gateway polls Telegram for each of its bots."""
        names = [arg for prev, arg in zip(gateway.args, gateway.args[1:], strict=False) if prev == "--bot"]
        wanted = [self.accounts[int(n.removeprefix("keeper"))] for n in names]
        what = f"{gateway.log_path.stem} to poll Telegram for {', '.join(names)} (log: {gateway.log_path})"
        await self._until(lambda: all(self.tg.requests("getUpdates", bot=a) for a in wanted), what, [gateway])

    async def wait_balanced(self, redis_url: str) -> None:
        """Until every worker holds shards and every shard is held (the workers took their shares)."""
        from redis.asyncio import Redis

        from bots.scale.bus import Keys

        redis = Redis.from_url(redis_url, decode_responses=True)
        names = {f"worker{w}" for w in range(self.plan.workers)}
        owners: list[str | None] = []

        async def balanced() -> bool:
            nonlocal owners
            owners = await redis.mget([Keys().lease(n) for n in range(self.plan.shards)])
            return None not in owners and set(owners) == names

        try:
            what = f"every worker to hold its share of the {self.plan.shards} shards"
            await self._until(balanced, what, self.workers)
        finally:
            await redis.aclose()

    async def _until(self, ready: Callable[[], Any], what: str, procs: list[Proc]) -> None:
        deadline = time.monotonic() + self.plan.ready_s
        while not (await ready() if asyncio.iscoroutinefunction(ready) else ready()):
            for proc in procs:
                if proc.exited():
                    raise RuntimeError(
                        f"{proc.log_path.stem} exited while waiting for {what}:\n{proc.tail()}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {self.plan.ready_s:g}s for {what}")
            await asyncio.sleep(POLL_S)

    async def run(self) -> ScaleResult:
        plan = self.plan
        first_post = time.monotonic()
        sender = asyncio.create_task(self._send_all())
        try:
            if plan.kill_worker_after is not None:
                what = f"{plan.kill_worker_after} replies before the kill"
                await self._until_or_fail(
                    lambda: len(self.tg.all_sent) >= plan.kill_worker_after, what, sender
                )
                victim = self.workers[0]
                await victim.kill()
                self.killed += 1
                self.say(f"killed {victim.log_path.stem} after {len(self.tg.all_sent)} replies")
            await sender
            await self._until_or_fail(
                self._all_answered, "every mention to be answered", sender, self.plan.settle_s
            )
            await asyncio.sleep(1.0)  # a late duplicate would show up now
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        last_reply = time.monotonic()
        counts = tally(self.triggers, {(t.chat, t.message_id) for t in self.triggers}, self.replies())
        return ScaleResult(
            plan=plan,
            sent=len(self.triggers),
            answered=counts.answered,
            lost=counts.lost,
            duplicated=counts.duplicated,
            order_violations=counts.order_violations,
            unthreaded=counts.unthreaded,
            killed=self.killed,
            wall_s=0.0,
            busy_s=last_reply - first_post,
            model_requests=0,
            latencies_s=self._latencies(),
        )

    def _all_answered(self) -> bool:
        answered = {(r.chat, r.reply_to) for r in self.replies() if r.reply_to}
        return len(self.triggers) == self.plan.messages and all(
            (t.chat, t.message_id) in answered for t in self.triggers
        )

    def _latencies(self) -> list[float]:
        """Seconds from each mention's post to its first reply (as the emulator got them)."""
        first: dict[tuple[str, str], float] = {}
        for account in self.accounts:
            for message, at in zip(account.sent, account.sent_at, strict=False):
                replied = message.get("reply_to_message")
                if replied:
                    first.setdefault((str(message["chat"]["id"]), str(replied["message_id"])), at)
        return [first[key] - posted for key, posted in self.posted_at.items() if key in first]

    async def _until_or_fail(
        self, ready: Callable[[], bool], what: str, sender: asyncio.Task[None], limit: float | None = None
    ) -> None:
        deadline = time.monotonic() + (limit or self.plan.settle_s)
        alive = [p for p in [*self.gateways, *self.workers] if not p.exited()]
        while not ready():
            if sender.done() and sender.exception() is not None:
                sender.result()
            for proc in alive:
                if proc.exited() and proc not in self.workers[: self.killed]:
                    raise RuntimeError(f"{proc.log_path.stem} exited by itself:\n{proc.tail()}")
            if time.monotonic() > deadline:
                answered = len({(r.chat, r.reply_to) for r in self.replies() if r.reply_to})
                raise TimeoutError(
                    f"waited {limit or self.plan.settle_s:g}s for {what} ({len(self.triggers)} posted, "
                    f"{answered} answered; logs in {self.gateways[0].log_path.parent})"
                )
            await asyncio.sleep(POLL_S)

    async def _send_all(self) -> None:
        plan = self.plan
        start = time.monotonic()
        for number in range(plan.messages):
            delay = start + number / plan.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            chat = number % plan.chats
            group = self.groups[chat]
            account = self.accounts[chat % plan.bots]
            user = self.users[self.rng.randrange(len(self.users))]
            update = self.tg.group_message(group, user, question(self.rng, number), mention_bot=account.user)
            message = update["message"]
            trigger = Trigger(str(group["id"]), str(message["message_id"]), ordinal=number)
            self.triggers.append(trigger)
            self.posted_at[(trigger.chat, trigger.message_id)] = time.monotonic()


_TAKEN_OVER = re.compile(r"taken over with (\d+) pending entries")


def _taken_over(log: Path) -> int:
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(int(n) for n in _TAKEN_OVER.findall(" ".join(text.split())))
