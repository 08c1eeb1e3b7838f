"""Soak the real `bots run` host with kill -9 and restarts, or flood it, and print comparable lines.

The host runs as a subprocess against a channel emulator (Telegram or Discord) with an
OpenAI-compatible stub as the model (bots/testing/crashsuite.py has the driver and what each count
means). One line per run: sent, acknowledged, answered, lost, duplicated, order violations, kills,
wall time. Targets (issues 14 and 22): lost 0 and order_violations 0 on every seed; duplicated 0 on
Discord and at most one per kill on Telegram.

    .venv/bin/python bench/soak.py --messages 2000 --chats 20 --kills 5 --seed 1 --channel telegram
    .venv/bin/python bench/soak.py --messages 2000 --chats 20 --kills 5 --seeds 1,2,3,4,5

Flood mode posts N group messages without kills, a share of them mentions (the rest is chatter the
bot records but does not answer), samples the host's RSS (psutil) and reads the event-loop lag the
host writes when BOTS_LOOP_LAG_LOG is set; it prints RSS after warm-up (20% of the messages posted)
and at the end, their difference (target < 16 MiB) and the lag p95 after warm-up (target < 250 ms):

    .venv/bin/python bench/soak.py --flood 10000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shlex
import sys
import tempfile
import time
from pathlib import Path

from bots.testing.crashsuite import SoakPlan, SoakResult, run_soak


def pair(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    return float(low), float(high or low)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--channel", choices=["telegram", "discord"], default="telegram")
    parser.add_argument("--messages", type=int, default=2000, help="group mentions to post")
    parser.add_argument("--chats", type=int, help="groups they are spread over (default 20; flood: 50)")
    parser.add_argument("--rate", type=float, default=100.0, help="messages posted per second")
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs, each followed by a restart")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seeds", help="several runs, e.g. 1,2,3,4,5 (overrides --seed)")
    parser.add_argument("--latency", type=pair, default=(0.1, 0.3), help="model answer time range, s")
    parser.add_argument("--answer-chars", type=int, default=0, help="long answers (split into parts)")
    parser.add_argument("--kill-after", type=pair, default=(0.5, 4.0), help="s after a run's first reply")
    parser.add_argument("--wait-while-down", action="store_true", help="users pause while the host is down")
    parser.add_argument("--flood", type=int, default=0, metavar="N", help="flood mode: N messages, no kills")
    parser.add_argument("--mention-share", type=float, default=0.1, help="flood: share that mentions the bot")
    parser.add_argument("--settle", type=float, default=3600.0, help="overall limit for the end, s")
    parser.add_argument("--workdir", type=Path, help="keep config, database and host.log here")
    parser.add_argument(
        "--host-command",
        default=f"{sys.executable} -m bots",
        help="how to start the host (run --config ... is appended)",
    )
    parser.add_argument("--host-pythonpath", help="PYTHONPATH for the host (another checkout's code)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return parser.parse_args(argv)


def plans(args: argparse.Namespace) -> list[SoakPlan]:
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    common = {
        "channel": args.channel,
        "rate": args.rate,
        "latency": args.latency,
        "answer_chars": args.answer_chars,
        "kill_after": args.kill_after,
        "post_while_down": not args.wait_while_down,
        "settle_s": args.settle,
    }
    if args.flood:
        mentions = round(args.flood * args.mention_share)
        flood = {"messages": mentions, "chatter": args.flood - mentions, "kills": 0, "sample_rss": True}
        return [SoakPlan(chats=args.chats or 50, seed=seed, **common, **flood) for seed in seeds]
    return [
        SoakPlan(messages=args.messages, chats=args.chats or 20, kills=args.kills, seed=seed, **common)
        for seed in seeds
    ]


async def run_all(args: argparse.Namespace) -> list[SoakResult]:
    results = []
    env = {"PYTHONPATH": args.host_pythonpath} if args.host_pythonpath else None

    def progress(text: str) -> None:
        if not args.quiet:
            print(f"  {time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)

    for plan in plans(args):
        keep = args.workdir / f"{plan.channel}-seed{plan.seed}" if args.workdir else None
        workdir = keep or Path(tempfile.mkdtemp(prefix="soak-"))
        result = await run_soak(
            plan, workdir, host_command=shlex.split(args.host_command), host_env=env, progress=progress
        )
        print(result.line(), flush=True)
        if keep and result.duplicates:
            (keep / "duplicates.json").write_text(json.dumps(result.duplicates, indent=1, ensure_ascii=False))
        if args.flood:
            print(result.flood_line(), flush=True)
        progress(f"host log: {result.log_path}")
        results.append(result)
    if len(results) > 1:
        total = {k: sum(getattr(r, k) for r in results) for k in ("lost", "duplicated", "order_violations")}
        print("all seeds: " + " ".join(f"{k}={v}" for k, v in total.items()))
    return results


def main(argv: list[str] | None = None) -> None:
    # the emulators' server logs a traceback for each request a killed host left half-sent
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    asyncio.run(run_all(parse_args(argv)))


if __name__ == "__main__":
    main()
