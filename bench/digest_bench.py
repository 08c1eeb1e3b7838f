"""Digest over 10,000 stored group messages: the summarisation plumbing, not the model (FakeLLM).

Stores the messages in a temporary SQLite database through the real History + group commit
(timed), fetches them back the way the scheduler's history seam does (the baseline), then runs
``plugins.digest:post_digest`` with the context of a small local model (2,048 tokens) and of a
large one (32,768). For each it prints the model calls (map / combine / final), total time, time
outside the fake model, and the ratio of that to the plain fetch; then, in a second run under
tracemalloc, the peak Python memory and the RSS growth.

The messages are the bilingual test transcript (tests/fixtures/group_transcript.py) and an
English stand-up, resampled over 40 speakers and one day; private-flagged lines are among them,
and the bench checks that none reaches a prompt.

    .venv/bin/python bench/digest_bench.py [--messages 10000] [--contexts 2048 32768]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import random
import resource
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import Field

from bots.agent.tokens import estimate_tokens
from bots.core.events import ChannelKind, ChannelRef, MessageEvent, UserRef
from bots.core.groupcommit import GroupCommit
from bots.core.history import History
from bots.core.sanitize import clean_user_text
from bots.core.storage import Database, as_utc
from bots.plugins.jobs import JobContext, LoggedMessage, PersonaView
from bots.testing import FakeLLM
from plugins.digest import Line, extract_topics, post_digest

ROOT = Path(__file__).resolve().parents[1]
BOT, PLATFORM, CHAT_ID = "bench", "wechat", "5551234@chatroom"
CHAT = f"{PLATFORM}:{CHAT_ID}"
PERSONA = PersonaView(
    name="老灯", system_prompt="你是老灯，一盏在读书会角落里亮了三十年的台灯。", language="zh"
)
NOTES = (
    "老王张罗周六七点半北安河站集合爬凤凰岭，Tom 开车带 Lily 和阿杰；陈老师定周日下午两点读《故乡》，"
    "地点未定（书店或线上）；阿杰的项目上线推迟。未决：谁带急救包，下雨怎么办。"
)


def load_fixture() -> ModuleType:
    """The test transcript, loaded by path (the bench is not a test package)."""
    path = ROOT / "tests" / "fixtures" / "group_transcript.py"
    spec = importlib.util.spec_from_file_location("group_transcript", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def make_messages(count: int, seed: int = 11) -> tuple[datetime, list[tuple[datetime, str, str, str]]]:
    """(at, user id, name, text) over one day, oldest first, and the end of that day."""
    fixture = load_fixture()
    pool = [line.text for line in fixture.in_window(fixture.transcript())]
    pool += [line.text for line in fixture.english_day()]
    names = (
        list(fixture.SPEAKERS.values()) + [f"群友{i}" for i in range(20)] + [f"user{i}" for i in range(10)]
    )
    rng = random.Random(seed)
    start = fixture.DAY
    step = 86_400 / count
    messages = []
    for i in range(count):
        text = rng.choice(pool)
        if rng.random() < 0.3:  # people riff on what was said: vary the text a little
            text = f"{text} {rng.choice(pool)[:40]}"
        person = rng.randrange(len(names))
        messages.append((start + timedelta(seconds=i * step), f"wxid_{person:04d}", names[person], text))
    return fixture.DIGEST_AT, messages


def rss_bytes() -> int:
    """Current resident set size (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class CountingLLM(FakeLLM):
    """FakeLLM that adds up the time spent in ``ainvoke`` and sorts the calls by kind."""

    spent_s: float = 0.0
    kinds: dict[str, int] = Field(default_factory=dict)

    async def ainvoke(self, messages: Any, *args: Any, **kwargs: Any) -> Any:
        system = str(messages[0].content)
        kind = "map" if "Take notes" in system else "combine" if "Merge these" in system else "final"
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        started = time.perf_counter()
        try:
            return await super().ainvoke(messages, *args, **kwargs)
        finally:
            self.spent_s += time.perf_counter() - started


@dataclass
class Run:
    post: str | None
    total_s: float
    model_s: float
    calls: dict[str, int]
    prompt_chars: int
    leaked: bool


async def digest_once(history: History, until: datetime, context: int) -> Run:
    async def fetch(chat: str, since: datetime, end: datetime) -> list[LoggedMessage]:
        rows = await history.between(BOT, chat, since, end)
        return [
            LoggedMessage(as_utc(r.at), r.chat, r.author, r.author_name, r.text, r.message_id) for r in rows
        ]

    llm = CountingLLM(default=NOTES)
    ctx = JobContext(
        bot=BOT,
        job_id="bench",
        scheduled_at=until,
        options={},
        persona=PERSONA,
        llm=llm,
        context_tokens=context,
        count_tokens=estimate_tokens,
        target_chat=CHAT,
        _history=fetch,
    )
    started = time.perf_counter()
    post = await post_digest(ctx)
    total = time.perf_counter() - started
    contents = [str(m.content) for prompt in llm.prompts for m in prompt]
    leaked = any(token in c for c in contents for token in ("PRIVATE-TOKEN-7731", "OTR-TOKEN-4402"))
    return Run(post, total, llm.spent_s, llm.kinds, sum(map(len, contents)), leaked)


async def run(count: int, contexts: list[int]) -> None:
    until, messages = make_messages(count)
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.in_data_dir(Path(tmp))
        await db.start()
        writes = GroupCommit(db)
        await writes.start()
        history = History(db, writes)
        try:
            started = time.perf_counter()
            for number, (at, user, name, text) in enumerate(messages):
                event = MessageEvent(
                    platform=PLATFORM,
                    message_id=str(number),
                    author=UserRef(PLATFORM, user, name),
                    channel=ChannelRef(PLATFORM, CHAT_ID, ChannelKind.GROUP),
                    text=text,
                    timestamp=at,
                )
                history.record(BOT, event, clean_user_text(text))
            await writes.flush()
            store_s = time.perf_counter() - started

            await history.between(BOT, CHAT, until - timedelta(days=1), until)  # warm the page cache
            started = time.perf_counter()
            rows = await history.between(BOT, CHAT, until - timedelta(days=1), until)
            fetch_s = time.perf_counter() - started
            started = time.perf_counter()  # jieba loads its dictionary on first use: time it apart
            await asyncio.to_thread(extract_topics, [Line(until, "x", "周六去凤凰岭爬山", ())], 8)
            jieba_s = time.perf_counter() - started

            print(
                f"messages: {count:,} stored through History + group commit in {store_s:.2f} s "
                f"({count / store_s:,.0f} msgs/s)"
            )
            print(f"baseline, plain history fetch: {len(rows):,} rows in {fetch_s * 1000:.1f} ms")
            print(f"one-time jieba dictionary load (not in the runs below): {jieba_s:.2f} s")
            for context in contexts:
                result = await digest_once(history, until, context)
                outside = result.total_s - result.model_s
                calls = ", ".join(
                    f"{k} {n}" for k in ("map", "combine", "final") if (n := result.calls.get(k, 0))
                )
                print(
                    f"context {context:>6,} tokens: {sum(result.calls.values())} model calls ({calls}); "
                    f"prompts {result.prompt_chars / 1e6:.2f} M chars; private leaked: {result.leaked}"
                )
                print(
                    f"  total {result.total_s:.2f} s, in the fake model {result.model_s:.2f} s, "
                    f"excluding it {outside:.2f} s = {outside / fetch_s:.1f}x the plain fetch"
                )
                rss_before = rss_bytes()
                tracemalloc.start()
                await digest_once(history, until, context)
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                print(
                    f"  memory (second run, under tracemalloc): peak Python {peak / 2**20:.1f} MiB, "
                    f"RSS +{(rss_bytes() - rss_before) / 2**20:.1f} MiB"
                )
                if result.post:
                    print(
                        "  post: "
                        + result.post.splitlines()[0]
                        + " | "
                        + next((line for line in result.post.splitlines() if line.startswith("话题")), "")
                    )
            peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"process peak RSS: {peak_rss:.0f} MiB")
        finally:
            await writes.close()
            await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--contexts", type=int, nargs="+", default=[2048, 32768])
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.contexts))


if __name__ == "__main__":
    main()
