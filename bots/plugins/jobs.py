"""Scheduled content, as plugins see it: a job function writes one post and returns its text.

A job is an importable async function (``"plugins.digest:post_digest"``) called with a
:class:`JobContext`; the scheduler does the rest (when, where, review, exactly once):

    async def post_motto(ctx: JobContext) -> str | None:
        if not ctx.options.get("enabled", True):
            ctx.skip("disabled")
            return None
        return "Stay curious."

Return ``None`` to post nothing (say why with :meth:`JobContext.skip`, which logs it).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from langchain_core.language_models import BaseChatModel

from bots.core.gate import GateStats

JobFunction = Callable[["JobContext"], Awaitable[str | None]]


@dataclass(frozen=True, slots=True)
class PersonaView:
    """What a post needs of the persona."""

    name: str
    system_prompt: str
    style: list[str] = field(default_factory=list)
    language: str = "en"
    opening_lines: list[str] = field(default_factory=list)
    closing_lines: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class LoggedMessage:
    """One message of a group's stored history."""

    at: datetime
    chat: str  # canonical chat id ("telegram:-100123")
    author: str  # canonical author id
    author_name: str  # display name; linked identities share the person's name
    text: str
    message_id: str = ""


@dataclass(frozen=True, slots=True)
class Source:
    """A passage of the persona's knowledge, with where it came from (for citations)."""

    text: str
    title: str
    location: str = ""


HistoryFn = Callable[[str, datetime, datetime], Awaitable[list[LoggedMessage]]]
RetrieveFn = Callable[[str, int], Awaitable[list[Source]]]


@dataclass
class JobContext:
    bot: str
    job_id: str
    scheduled_at: datetime  # the run this call is for, aware, in the job's time zone
    options: dict[str, Any]  # the job's JSON kwargs
    persona: PersonaView
    llm: BaseChatModel
    context_tokens: int  # the model's context window: keep each prompt within it
    count_tokens: Callable[[str], int]
    target_chat: str = ""  # canonical id of the chat the post goes to
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("bots.jobs"))
    _history: HistoryFn | None = field(default=None, repr=False)
    _retrieve: RetrieveFn | None = field(default=None, repr=False)
    skipped: str = ""  # the reason given to skip(), if any
    gate_stats: GateStats | None = None  # where the quality gate's verdicts on posts are counted

    async def history(self, chat: str, since: datetime, until: datetime) -> list[LoggedMessage]:
        """Stored messages of ``chat`` (canonical id) in [since, until), oldest first."""
        if self._history is None:
            return []
        return await self._history(chat, since, until)

    async def retrieve(self, query: str, k: int = 4) -> list[Source]:
        """Passages of the persona's knowledge collections most relevant to ``query``."""
        if self._retrieve is None:
            return []
        return await self._retrieve(query, k)

    def skip(self, reason: str) -> None:
        """Post nothing this time; the reason goes to the log (and the job's ledger)."""
        self.skipped = reason
        self.logger.info("job %s (%s): skipped: %s", self.job_id, self.scheduled_at.isoformat(), reason)
