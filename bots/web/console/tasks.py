"""Long console actions (re-ingest, persona eval) run in the background; pages poll their state."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("bots.web.console")
KEEP = 50  # finished tasks remembered for their pages


@dataclass
class Task:
    id: int
    kind: str  # "ingest" | "eval"
    title: str
    operator: str
    state: str = "running"  # running | done | failed
    total: int = 0  # files to go through (ingest) or questions (eval)
    done: int = 0
    chunks: int = 0
    message: str = ""  # the outcome, in words
    result: Any = None  # what the page shows when done (the eval's report)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "title": self.title,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "chunks": self.chunks,
            "message": self.message,
        }


@dataclass
class Tasks:
    _items: dict[int, Task] = field(default_factory=dict)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _running: set[asyncio.Task[None]] = field(default_factory=set)

    def get(self, task_id: int) -> Task | None:
        return self._items.get(task_id)

    def recent(self, kind: str) -> list[Task]:
        return sorted((t for t in self._items.values() if t.kind == kind), key=lambda t: -t.id)

    def start(
        self,
        kind: str,
        title: str,
        operator: str,
        work: Callable[[Task], Awaitable[str]],
        on_end: Callable[[Task], Awaitable[None]] | None = None,
    ) -> Task:
        """Run ``work`` in the background; its return value is the task's message. ``on_end``
        runs after it either way (the audit entry with the outcome)."""
        task = Task(next(self._ids), kind, title, operator)
        self._items[task.id] = task
        for old in sorted(self._items)[:-KEEP]:
            if self._items[old].state != "running":
                del self._items[old]

        async def run() -> None:
            try:
                task.message = await work(task)
                task.state = "done"
            except asyncio.CancelledError:
                task.state, task.message = "failed", "stopped with the host"
                raise
            except Exception as exc:
                log.warning("console %s %r failed: %s", kind, title, exc)
                task.message = str(exc).strip("'\"") or type(exc).__name__
                task.state = "failed"
            if on_end is not None:
                try:
                    await on_end(task)
                except Exception:
                    log.exception("console %s %r: recording its end failed", kind, title)

        runner = asyncio.create_task(run())
        self._running.add(runner)
        runner.add_done_callback(self._running.discard)
        return task

    async def stop(self) -> None:
        for runner in list(self._running):
            runner.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
