"""Throughput of `bots worker` processes (1, 2, 4) and the latency the queue hop adds, against the
single-process `bots run` host in the same run.

Everything is real and local: the Telegram emulator, a throwaway Redis (and PostgreSQL with
``--postgres``; else every process shares one SQLite file), an OpenAI-compatible stub answering in
exactly ``--latency`` seconds (200 ms), `bots gateway` / `bots worker` / `bots run` subprocesses.

- **Throughput**: one gateway; 1 worker, then a 2nd, then two more (each step waits until the
  workers hold their shares of the shards), each step a burst of ``--messages`` mentions over
  ``--chats`` groups; messages per second from the first post to the last reply, and the ratio to
  1 worker. A worker handles ``--concurrency`` messages at once: with a 200 ms model, one worker
  can do at most concurrency / 0.2 s messages per second, so near-linear scaling is expected until
  the machine's cores run out (printed: CPU seconds per message of all processes).
- **Latency**: ``--trickle`` mentions at ``--trickle-rate`` per second (no queueing) over
  ``--chats`` groups through the split (1 gateway, 1 worker), then through `bots run`; post to
  reply p50 / p90 / p99, and the difference (the hop: inbox + Redis + worker + outbox + Redis +
  gateway). Each group gets far fewer than 20 messages a minute: the Telegram channel's rate
  limiter holds a group to Telegram's 20 a minute, and `bots run`'s typing indicators count too.

    .venv/bin/python bench/scale_bench.py [--postgres] [--messages 400] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bots.testing.crashsuite import LLM_KEY_ENV, percentile, question
from bots.testing.openai_stub import OpenAIStub
from bots.testing.redis_server import redis_server
from bots.testing.scalesuite import Proc, bot_token, token_env, write_scale_config
from bots.testing.telegram_server import TelegramServer

READY_S = 180.0
SETTLE_S = 600.0


class Bench:
    def __init__(self, args: argparse.Namespace, tg: TelegramServer, work: Path, env: dict[str, str]) -> None:
        self.args = args
        self.tg = tg
        self.work = work
        self.env = env
        self.rng = random.Random(1)
        self.users = [tg.user(f"Visitor{n}", f"visitor_{n:03d}") for n in range(8)]
        self.number = 0
        self.procs: list[Proc] = []

    async def start(self, args: list[str], log: str) -> Proc:
        proc = Proc(args, self.work, self.env, self.work / f"{log}.log")
        self.procs.append(proc)
        await proc.start()
        return proc

    async def until(self, ready: Any, what: str, limit: float = READY_S) -> None:
        deadline = time.monotonic() + limit
        while not (await ready() if asyncio.iscoroutinefunction(ready) else ready()):
            for proc in self.procs:
                if proc.exited():
                    raise RuntimeError(
                        f"{proc.log_path.stem} exited while waiting for {what}:\n{proc.tail()}"
                    )
            if time.monotonic() > deadline:
                raise TimeoutError(f"waited {limit:g}s for {what}")
            await asyncio.sleep(0.05)

    async def polling(self) -> None:
        before = len(self.tg.requests("getUpdates"))
        await self.until(lambda: len(self.tg.requests("getUpdates")) > before + 1, "the channel to poll")

    async def balanced(self, redis_url: str, names: set[str]) -> None:
        from redis.asyncio import Redis

        redis = Redis.from_url(redis_url, decode_responses=True)
        keys = [f"bots:lease:{n}" for n in range(self.args.shards)]

        async def ready() -> bool:
            owners = await redis.mget(keys)
            return None not in owners and set(owners) == names

        try:
            await self.until(ready, f"workers {sorted(names)} to hold every shard")
        finally:
            await redis.aclose()

    async def post(self, count: int, rate: float, chats: list[dict]) -> list[tuple[dict, float]]:
        """Post ``count`` mentions round-robin over ``chats`` at ``rate`` per second (0: at once)."""
        posted = []
        start = time.monotonic()
        for n in range(count):
            if rate:
                delay = start + n / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            self.number += 1
            chat = chats[n % len(chats)]
            text = question(self.rng, self.number)
            update = self.tg.group_message(chat, self.users[n % 8], text, mention_bot=True)
            posted.append((update["message"], time.monotonic()))
        return posted

    async def answered(self, posted: list[tuple[dict, float]]) -> list[float]:
        """Wait for a reply to each posted message; seconds from post to reply, per message."""
        wanted = {(m["chat"]["id"], m["message_id"]): at for m, at in posted}
        got: dict[tuple[int, int], float] = {}

        def done() -> bool:
            account = self.tg.account(None)
            for message, at in zip(account.sent, account.sent_at, strict=False):
                replied = message.get("reply_to_message")
                if replied:
                    key = (message["chat"]["id"], replied["message_id"])
                    if key in wanted and key not in got:
                        got[key] = at
            return len(got) == len(wanted)

        await self.until(done, f"replies to {len(wanted)} mentions", SETTLE_S)
        return [got[key] - at for key, at in wanted.items()]

    def cpu(self) -> float:
        return sum(p.cpu_s() for p in self.procs if not p.exited())


async def throughput(bench: Bench, redis_url: str, config: Path) -> list[tuple[int, float, float]]:
    rows = []
    await bench.start(["gateway", "--config", str(config), "--name", "gateway0"], "gateway0")
    await bench.polling()
    names: set[str] = set()
    for workers in (1, 2, 4):
        while len(names) < workers:
            name = f"worker{len(names)}"
            await bench.start(["worker", "--config", str(config), "--name", name], name)
            names.add(name)
        await bench.balanced(redis_url, names)
        rate, cpu = await burst(bench, f"{workers} worker(s)")
        rows.append((workers, rate, cpu))
    return rows


async def burst(bench: Bench, label: str) -> tuple[float, float]:
    """``--messages`` mentions at once over ``--chats`` new groups: messages per second from the
    first post to the last reply, and CPU seconds per message of all the processes."""
    args = bench.args
    chats = [bench.tg.group(f"Burst {label} {n}") for n in range(args.chats)]
    await bench.answered(await bench.post(args.chats, 0, chats))  # every process ran each path once
    cpu_before = bench.cpu()
    posted = await bench.post(args.messages, 0, chats)
    await bench.answered(posted)
    busy = max(bench.tg.account(None).sent_at) - posted[0][1]
    print(f"{label}: {args.messages / busy:.1f} msgs/s ({busy:.1f} s)", flush=True)
    return args.messages / busy, (bench.cpu() - cpu_before) / args.messages


async def trickle(bench: Bench, chats: list[dict]) -> list[float]:
    args = bench.args
    await bench.answered(await bench.post(8, 2.0, chats))  # warm-up: first calls of every path
    return await bench.answered(await bench.post(args.trickle, args.trickle_rate, chats))


async def stop_all(bench: Bench) -> None:
    await asyncio.gather(*(p.stop() for p in bench.procs))
    bench.procs.clear()


async def main(args: argparse.Namespace) -> None:
    cluster_cm: Any = contextlib.nullcontext()
    if args.postgres:
        from bots.testing.postgres import postgres_cluster

        cluster_cm = postgres_cluster()
    with redis_server() as redis_url, cluster_cm as cluster, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with (
            OpenAIStub(latency=(args.latency, args.latency)) as llm,
            TelegramServer(token=bot_token(0), username="keeper0_bot") as tg,
        ):
            results: dict[str, Any] = {}
            for phase in ("split", "single"):
                work = root / phase
                config = write_scale_config(
                    work, telegram_url=tg.base_url, llm_url=llm.base_url, redis_url=redis_url,
                    shards=args.shards, concurrency=args.concurrency, log_level="WARNING",
                )  # fmt: skip
                env = {
                    **os.environ,
                    "HF_HUB_OFFLINE": "1",
                    LLM_KEY_ENV: "sk-bench",
                    token_env(0): bot_token(0),
                }
                if cluster is not None:
                    env["BOTS_DATABASE_URL"] = cluster.new_database(phase)
                bench = Bench(args, tg, work, env)
                try:
                    if phase == "split":
                        results["rows"] = await throughput(bench, redis_url, config)
                        for proc in bench.procs[2:]:  # latency through 1 gateway and 1 worker
                            await proc.stop()
                        bench.procs[2:] = []
                        await bench.balanced(redis_url, {"worker0"})
                        chats = [tg.group(f"Trickle split {n}") for n in range(args.chats)]
                        results["split"] = await trickle(bench, chats)
                    else:
                        await bench.start(["run", "--config", str(config)], "run")
                        await bench.polling()
                        chats = [tg.group(f"Trickle single {n}") for n in range(args.chats)]
                        results["single"] = await trickle(bench, chats)
                        results["single_burst"] = await burst(bench, "single")
                finally:
                    await stop_all(bench)
                    if args.keep:
                        shutil.copytree(work, Path(args.keep) / phase, dirs_exist_ok=True)
    report(args, results)


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    db = "PostgreSQL" if args.postgres else "SQLite (one file, WAL)"
    print(f"\nmodel latency {args.latency * 1000:.0f} ms, worker concurrency {args.concurrency}, "
          f"{args.shards} shards, state store {db}, {os.cpu_count()} CPUs")  # fmt: skip
    base = results["rows"][0][1]
    print("workers  msgs/s  ratio to 1  CPU ms/msg (all processes)")
    for workers, rate, cpu in results["rows"]:
        print(f"{workers:>7}  {rate:6.1f}  {rate / base:10.2f}  {cpu * 1000:10.1f}")
    rate, cpu = results["single_burst"]
    print(f"bots run (one process, for reference): {rate:.1f} msgs/s, CPU {cpu * 1000:.1f} ms/msg")
    split, single = results["split"], results["single"]
    print(f"latency (post -> reply), {args.trickle} mentions at {args.trickle_rate:g}/s:")
    for name, values in (("bots run (one process)", single), ("gateway + worker", split)):
        p50, p90, p99 = (percentile(values, q) * 1000 for q in (50, 90, 99))
        print(f"  {name:<24} p50 {p50:6.0f} ms  p90 {p90:6.0f} ms  p99 {p99:6.0f} ms")
    added = [(percentile(split, q) - percentile(single, q)) * 1000 for q in (50, 90, 99)]
    p50, p90, p99 = added
    print(f"  added by the queue hop   p50 {p50:+6.0f} ms  p90 {p90:+6.0f} ms  p99 {p99:+6.0f} ms")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=400, help="mentions per throughput step")
    parser.add_argument("--chats", type=int, default=40, help="groups they are spread over")
    parser.add_argument("--concurrency", type=int, default=4, help="messages one worker handles at once")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.2, help="the model stub's answer time, s")
    parser.add_argument("--trickle", type=int, default=100, help="mentions for the latency comparison")
    parser.add_argument("--trickle-rate", type=float, default=4.0, help="their rate, per second")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL instead of SQLite")
    parser.add_argument("--keep", help="copy the processes' configs and logs to this folder")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
