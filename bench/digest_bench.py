"""Digest quality and cost on real group chat, with the real bundled model; plumbing at 10,000 messages.

Real transcripts: the WeChat group discussions inside ``../shared/corpus/000_c84f42c56e3adfd5.txt``
(read from there at run time, never copied into the project; skipped with a message when the
folder is missing). Each discussion (a 《title》 line, then "name:text" lines; a line without a
name is another message of the last speaker) with at least 30 messages and 4 speakers is given
minute timestamps and digested by ``plugins.digest:post_digest`` with the bundled local model
(SmolLM2-135M on llama.cpp, 2,048 tokens), as the scheduler runs it. For each it prints:

- the top speakers (by messages) and how many of them the digest names;
- topics covered: the discussion's keywords (jieba tf-idf over it, each used by 3 messages or
  more, the 8 strongest) found in the digest's body (the topics line does not count);
- seconds for the whole job, and for the extractive digest alone (``rewrite = "never"``);
- whether the model's rewrite was posted, and if not, the gate's reasons.

``--synthetic N`` instead stores N resampled messages of the bilingual test transcript through the
real History + group commit and times the digest with FakeLLM (the plumbing, not the model).

    .venv/bin/python bench/digest_bench.py [--show] [--synthetic 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import random
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

from langchain_core.language_models import BaseChatModel

from bots.agent.tokens import estimate_tokens, token_counter
from bots.core.config import LLMConfig, Secrets
from bots.core.events import ChannelKind, ChannelRef, MessageEvent, UserRef
from bots.core.gate import GateStats
from bots.core.groupcommit import GroupCommit
from bots.core.history import History
from bots.core.sanitize import clean_user_text
from bots.core.storage import Database, as_utc
from bots.plugins.jobs import JobContext, LoggedMessage, PersonaView
from bots.testing import FakeLLM
from plugins.digest import post_digest, useful_topic

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "000_c84f42c56e3adfd5.txt"
BOT, PLATFORM, CHAT_ID = "bench", "wechat", "5551234@chatroom"
CHAT = f"{PLATFORM}:{CHAT_ID}"
PERSONA = PersonaView(
    name="老灯", system_prompt="你是老灯，一盏在读书会角落里亮了三十年的台灯。", language="zh"
)
START = datetime(2023, 2, 20, 9, 0, tzinfo=UTC)
MIN_MESSAGES, MIN_SPEAKERS, TOP = 30, 4, 3

_TITLE = re.compile(r"^《[^《》]{2,60}》\s*$")
_SAID = re.compile(
    r"^(?P<name>[\u4e00-\u9fff]{1,4}|[A-Z][A-Za-z.-]{1,15}(?: [A-Z][A-Za-z.-]{1,15})?)\s*[:：](?P<text>\S.*)$"
)


# --- the real transcripts -----------------------------------------------------------------------------


@dataclass
class Discussion:
    title: str
    said: list[tuple[str, str]]  # (speaker, text), in order


def discussions(path: Path) -> list[Discussion]:
    """The group discussions in the corpus file. Lines repeated three times or more in the file
    (a blog's footer) are not messages."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    boilerplate = {line for line, n in Counter(lines).items() if n >= 3}
    found: list[Discussion] = []
    speaker = ""
    for line in lines:
        if _TITLE.match(line):
            found.append(Discussion(line, []))
            speaker = ""
        elif line and line not in boilerplate and found:
            if said := _SAID.match(line):
                speaker = said.group("name")
                found[-1].said.append((speaker, said.group("text").strip()))
            elif speaker:
                found[-1].said.append((speaker, line))
    return [d for d in found if len(d.said) >= MIN_MESSAGES and len({s for s, _ in d.said}) >= MIN_SPEAKERS]


def reference_topics(texts: list[str], limit: int = 8) -> list[str]:
    """What the discussion is about, independently of the digest: jieba's keywords over all of
    it, each used by at least 3 messages."""
    import jieba
    import jieba.analyse

    ranked = jieba.analyse.extract_tags("\n".join(texts), topK=200)
    per_message = [{w.lower() for w in jieba.lcut(text)} for text in texts]
    used = (
        w for w in ranked if useful_topic(w.lower(), set()) and sum(w.lower() in m for m in per_message) >= 3
    )
    return [w for _, w in zip(range(limit), used, strict=False)]


def body_of(post: str) -> str:
    parts = post.split("\n\n")[1:]
    return "\n\n".join(p for p in parts if not p.startswith(("话题：", "链接：", "Topics: ", "Links:")))


async def digest_real(
    discussion: Discussion, llm: BaseChatModel, rewrite: str
) -> tuple[str, float, GateStats]:
    rows = [
        LoggedMessage(START + timedelta(minutes=i), CHAT, name, name, clean_user_text(text), str(i))
        for i, (name, text) in enumerate(discussion.said)
    ]

    async def history(chat: str, since: datetime, until: datetime) -> list[LoggedMessage]:
        return [row for row in rows if since <= row.at < until]

    stats = GateStats()
    ctx = JobContext(
        bot=BOT,
        job_id="bench",
        scheduled_at=START + timedelta(days=1),
        options={"rewrite": rewrite},
        persona=PERSONA,
        llm=llm,
        context_tokens=2048,  # the bundled model's context, as configured by default
        count_tokens=token_counter(llm),
        target_chat=CHAT,
        _history=history,
        gate_stats=stats,
    )

    started = time.perf_counter()
    post = await post_digest(ctx)
    return post or f"(no post: {ctx.skipped})", time.perf_counter() - started, stats


async def run_real(show: bool) -> None:
    if not CORPUS.is_file():
        print(f"skipped: the real transcripts are not here ({CORPUS}); the shared corpus folder is missing")
        return
    from bots.agent.providers.local import build_local_llm

    llm = build_local_llm(LLMConfig(), Secrets())
    await llm.ainvoke("hi")  # load the model once, outside the timings
    print(f"model: bundled SmolLM2-135M (llama.cpp), context 2,048 tokens; corpus: {CORPUS.name}")
    for discussion in discussions(CORPUS):
        texts = [text for _, text in discussion.said]
        people = Counter(name for name, _ in discussion.said)
        top = [name for name, _ in people.most_common(TOP)]
        post, seconds, stats = await digest_real(discussion, llm, "auto")
        extractive_post, extractive_s, _ = await digest_real(discussion, llm, "never")
        body = body_of(post)
        named = [name for name in top if name in body]
        topics = reference_topics(texts)
        covered = [t for t in topics if t.lower() in body.lower()]
        used = stats.counts["digest.passed"] == 1
        why = ", ".join(k.split(".")[-1] for k in stats.snapshot() if k.startswith("digest.failed."))
        print(
            f"\n{discussion.title} {len(texts)} messages, {len(people)} speakers\n"
            f"  top speakers named: {len(named)}/{len(top)} ({', '.join(top)})\n"
            f"  topics covered: {len(covered)}/{len(topics)}"
            f" (missing: {', '.join(t for t in topics if t not in covered) or 'none'})\n"
            f"  seconds: {seconds:.1f} with the model, {extractive_s:.2f} extractive only\n"
            f"  model rewrite used: {'yes' if used else 'no'}" + (f" (failed: {why})" if why else "")
        )
        if show:
            print("  ---\n  " + post.replace("\n", "\n  "))
        assert post == extractive_post or used  # what is posted: the checked rewrite or the extractive one


# --- the plumbing at scale ----------------------------------------------------------------------------


def load_fixture() -> ModuleType:
    """The test transcript, loaded by path (the bench is not a test package)."""
    path = ROOT / "tests" / "fixtures" / "group_transcript.py"
    spec = importlib.util.spec_from_file_location("group_transcript", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def run_synthetic(count: int, seed: int = 11) -> None:
    fixture = load_fixture()
    pool = [line.text for line in fixture.in_window(fixture.transcript())]
    names = (
        list(fixture.SPEAKERS.values()) + [f"群友{i}" for i in range(20)] + [f"user{i}" for i in range(10)]
    )
    rng = random.Random(seed)
    until, step = fixture.DIGEST_AT, 86_400 / count
    with tempfile.TemporaryDirectory() as tmp:
        db = Database.in_data_dir(Path(tmp))
        await db.start()
        writes = GroupCommit(db)
        await writes.start()
        history = History(db, writes)
        try:
            for i in range(count):
                text = rng.choice(pool)
                person = rng.randrange(len(names))
                event = MessageEvent(
                    platform=PLATFORM,
                    message_id=str(i),
                    author=UserRef(PLATFORM, f"wxid_{person:04d}", names[person]),
                    channel=ChannelRef(PLATFORM, CHAT_ID, ChannelKind.GROUP),
                    text=text,
                    timestamp=fixture.DAY + timedelta(seconds=i * step),
                )
                history.record(BOT, event, clean_user_text(text))
            await writes.flush()

            async def fetch(chat: str, since: datetime, end: datetime) -> list[LoggedMessage]:
                rows = await history.between(BOT, chat, since, end)
                return [LoggedMessage(as_utc(r.at), r.chat, r.author, r.author_name, r.text) for r in rows]

            started = time.perf_counter()
            await fetch(CHAT, until - timedelta(days=1), until)
            fetch_s = time.perf_counter() - started

            for context in (2048, 32768):
                llm = FakeLLM(default="大家聊了爬山。")
                ctx = JobContext(
                    bot=BOT, job_id="bench", scheduled_at=until, options={}, persona=PERSONA, llm=llm,
                    context_tokens=context, count_tokens=estimate_tokens, target_chat=CHAT, _history=fetch,
                )  # fmt: skip
                started = time.perf_counter()
                post = await post_digest(ctx)
                total = time.perf_counter() - started
                prompts = "\n".join(str(m.content) for p in llm.prompts for m in p)
                leaked = any(token in prompts or token in (post or "") for token in fixture.PRIVATE_TOKENS)
                print(
                    f"{count:,} messages, context {context:,}: {total:.2f} s "
                    f"({total / fetch_s:.1f}x the plain fetch of {fetch_s * 1000:.0f} ms), "
                    f"{len(llm.prompts)} model call, prompt {len(prompts):,} chars, private leaked: {leaked}"
                )
        finally:
            await writes.close()
            await db.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--show", action="store_true", help="print each post")
    parser.add_argument("--synthetic", type=int, default=0, help="time the plumbing over N messages")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run_synthetic(args.synthetic) if args.synthetic else run_real(args.show))


if __name__ == "__main__":
    main()
