"""Push 5,000 messages through the real host (durable inbox, pipeline, outbox, SQLite memory;
FakeLLM, FakeAdapter).

Prints throughput (msgs/s) and latency (p50/p99), overall and per kind of message, in three
parts: the durable hand-over (the sink commits the message to the inbox before the channel may
acknowledge it); what the pipeline adds from there to the last send, minus the time spent inside
the model call (``llm.ainvoke``, printed on its own as the baseline measured in the same run);
and the bookkeeping after the last send (outbox and inbox commits), which nobody waits for.
Throughput: one message at a time end to end, and a burst handed over 100 at a time (as a
Telegram getUpdates batch or Discord's concurrent dispatch does).
Targets on the 2-core dev box: >= 500 msgs/s in the burst and pipeline-added p99 <= 2 ms.

    .venv/bin/python bench/core_bench.py [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bots.assembly import build_host
from bots.core.config import AppConfig, Secrets
from bots.core.events import MessageEvent
from bots.testing import FakeAdapter, FakeLLM
from bots.testing.harness import TEST_PERSONA

# A group-chat mix: most lines are chatter the bot must ignore cheaply.
MIX = [("chatter", 0.6), ("mention", 0.2), ("command", 0.1), ("dm", 0.1)]
USERS, GROUPS = 200, 20


class TimedFakeLLM(FakeLLM):
    """FakeLLM that adds up the wall time spent in ``ainvoke`` (langchain included)."""

    spent_s: float = 0.0

    async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return await super().ainvoke(*args, **kwargs)
        finally:
            self.spent_s += time.perf_counter() - start


class TimedAdapter(FakeAdapter):
    """FakeAdapter that remembers when it last sent something."""

    last_send_at = 0.0

    async def send(self, outbound: Any) -> Any:
        self.last_send_at = time.perf_counter()
        return await super().send(outbound)


def make_events(adapter: FakeAdapter, count: int, seed: int = 7) -> list[tuple[str, MessageEvent]]:
    rng = random.Random(seed)
    kinds = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX], k=count)
    events = []
    for i, kind in enumerate(kinds):
        user, chat = f"user{rng.randrange(USERS)}", f"group{rng.randrange(GROUPS)}"
        text = f"message {i}: what about the fog over the harbour tonight?"
        if kind == "chatter":
            event = adapter.event(text, user=user, chat=chat)
        elif kind == "mention":
            event = adapter.event(text, user=user, chat=chat, mention=True)
        elif kind == "command":
            event = adapter.event("/ping", user=user, chat=chat)
        else:
            event = adapter.event(text, user=user)
        events.append((kind, event))
    return events


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(label: str, values: list[float]) -> str:
    ms = 1000.0
    return (
        f"  {label:<22} n={len(values):5d}  p50 {statistics.median(values) * ms:6.3f} ms"
        f"  p99 {pct(values, 0.99) * ms:6.3f} ms"
    )


async def run(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = AppConfig.model_validate(
            {
                "data_dir": Path(tmp),
                "llm": {"provider": "fake"},
                "rate_limits": {"per_user": "1000000/minute", "per_chat": "1000000/minute"},
                "bots": [{"name": "bench", "persona": "t"}],
            }
        )
        llm = TimedFakeLLM(default="The fog will lift by morning.")
        adapter = TimedAdapter()
        host = build_host(
            config, Secrets(), personas={"t": TEST_PERSONA}, llm=llm, adapters={"bench": [adapter]}
        )
        async with host:
            for _, event in make_events(adapter, 200, seed=1):  # warm up imports and SQLite
                await adapter.push(event)
            await host.drain()

            # Latency: one message at a time, from the adapter's hand-over to the last send.
            seen_sessions: set[str] = set()
            total: dict[str, list[float]] = {}
            added: dict[str, list[float]] = {}
            handover: list[float] = []
            bookkeeping: list[float] = []
            model: list[float] = []
            started = time.perf_counter()
            for kind, event in make_events(adapter, count):
                before_llm = llm.spent_s
                adapter.last_send_at = 0.0
                t0 = time.perf_counter()
                handled = await adapter._sink(event)  # type: ignore[misc]
                accepted = time.perf_counter()
                await handled
                done = time.perf_counter()
                sent_at = adapter.last_send_at or done
                handover.append(accepted - t0)
                bookkeeping.append(done - sent_at)
                elapsed = sent_at - accepted
                in_llm = llm.spent_s - before_llm
                if kind in ("mention", "dm"):
                    model.append(in_llm)
                    kind += " (new session)" if event.session_id not in seen_sessions else ""
                    seen_sessions.add(event.session_id)
                total.setdefault(kind, []).append(elapsed)
                added.setdefault(kind, []).append(elapsed - in_llm)
            sequential_s = time.perf_counter() - started

            # Throughput: everything pushed at once through the host's sink, then drained.
            burst = [event for _, event in make_events(adapter, count, seed=99)]
            started = time.perf_counter()
            for i in range(0, len(burst), 100):
                await asyncio.gather(*(adapter.push(event) for event in burst[i : i + 100]))
            await host.drain()
            burst_s = time.perf_counter() - started

    all_total = [v for values in total.values() for v in values]
    all_added = [v for values in added.values() for v in values]
    mix = ", ".join(f"{k} {int(w * 100)}%" for k, w in MIX)
    print(f"messages: {count} ({mix}; {USERS} users, {GROUPS} groups)")
    print(f"throughput: one at a time {count / sequential_s:,.0f} msgs/s, ", end="")
    print(f"burst {count / burst_s:,.0f} msgs/s")
    print("durable hand-over (the inbox commit before the channel may acknowledge):")
    print(line("hand-over", handover))
    print("baseline, the model call itself (FakeLLM.ainvoke through langchain):")
    print(line("model call", model))
    print("pipeline, accepted to last send:")
    print(line("all", all_total))
    print("added by the pipeline (that minus the model call):")
    print(line("all", all_added))
    for kind in sorted(added):
        print(line(kind, added[kind]))
    print("after the last send (outbox and inbox commits, not waited for by the user):")
    print(line("bookkeeping", bookkeeping))
    p99_ms = pct(all_added, 0.99) * 1000
    ok = count / burst_s >= 500 and p99_ms <= 2.0
    print(f"target (burst >= 500 msgs/s, pipeline-added p99 <= 2 ms): {'met' if ok else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    asyncio.run(run(parser.parse_args().messages))


if __name__ == "__main__":
    main()
